"""The default run's report names what it does not collect (tests/left_out.py)."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from left_out import TRITON_COMMAND
from runs import CWD, environment


@pytest.mark.parametrize("interpreted", [False, True], ids=["default", "interpreter"])
def test_the_report_names_the_triton_tests_it_leaves_out(interpreted):
    """Without Triton's interpreter, on a machine where Triton cannot run (no GPU), the report's
    end names the Triton tests and the command that runs them; in the interpreter's process, or
    beside a GPU and Triton, which collect them, it says nothing."""
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
    triton_on_gpu = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
    assert said == (not interpreted and not triton_on_gpu), result.stdout
