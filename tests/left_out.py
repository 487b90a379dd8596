"""What a plain `pytest tests/` does not collect, said at the end of its report (the conftest
imports the hook): the Triton backend's tests, which on a machine without a GPU run only in a
process of their own with Triton's interpreter on (.ci/run's "Triton kernels" stage)."""

import torch

from skelmae_ext import ops

TRITON_COMMAND = "TRITON_INTERPRET=1 pytest tests/ -m triton"


def triton_left_out():
    """Why this process collects none of the Triton backend's tests, or None where it does."""
    reasons = []
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        try:
            ops.resolve_backend("triton", torch.device(device))
            return None
        except RuntimeError as error:
            reasons.append(str(error).split("is not available: ", 1)[-1])
    return reasons[0]


def pytest_terminal_summary(terminalreporter):
    reason = triton_left_out()
    if reason is None:
        return
    terminalreporter.section("not collected in this process", sep="-")
    terminalreporter.line(f"the Triton backend's tests (marker `triton`): Triton is not available here ({reason}).")
    terminalreporter.line(f"Run them on their own: {TRITON_COMMAND}  (.ci/run does)")
