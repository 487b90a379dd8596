"""pytest's hooks for this folder; what tests share is in helpers.py, runs.py and the like."""

from left_out import pytest_terminal_summary  # noqa: F401  (what this run does not collect)
