"""The default run's report names what it does not collect (tests/left_out.py)."""

import os
import subprocess
import sys

import pytest

from left_out import TRITON_COMMAND
from runs import CWD, environment


@pytest.mark.parametrize("interpreted", [False, True], ids=["default", "interpreter"])
def test_the_report_names_the_triton_tests_it_leaves_out(interpreted):
    """Without Triton's interpreter the report's end names the Triton tests and the command
    that runs them; in the interpreter's process, which collects them, it says nothing."""
    if interpreted:
        pytest.importorskip("triton")
    env = environment(**({"TRITON_INTERPRET": "1"} if interpreted else {}))
    if not interpreted:
        env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, "-m", "pytest", os.path.join(CWD, "test_layouts.py"), "-q", "-p",
                             "no:cacheprovider", "-k", "unknown_layout"], cwd=CWD, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    said = "not collected in this process" in result.stdout and TRITON_COMMAND in result.stdout
    assert said != interpreted, result.stdout
