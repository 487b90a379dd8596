"""Bitwise reproducibility across processes and thread counts, each run
tests/reproducible_run.py in a process of its own (the graph convolution's thread counts are
in test_masked_graph_conv.py).

Across thread counts, the training steps are not bitwise identical: the forward passes are,
but the weight gradients of the Linear layers (MKL's GEMM behind ops.linear, with 2 threads)
and of the temporal convolutions (oneDNN's, with 3 or 4) sum in an order that depends on the
thread count. So another thread count is checked on the loss, the fused BatchNorm and each
model's first forward pass; another process with as many threads, on everything."""

import os
import subprocess
import sys

import pytest
import torch

from skelmae_ext import ops
from runs import CWD, environment

pytestmark = pytest.mark.skipif(not ops.EXTENSION.loaded, reason="compiled kernels not built")


def run_in_process(out, thread_counts):
    """{threads: results} of one process that runs with each thread count in turn."""
    subprocess.run([sys.executable, os.path.join(CWD, "reproducible_run.py"), str(out),
                    ",".join(map(str, thread_counts))], cwd=CWD, env=environment(), check=True, capture_output=True,
                   timeout=600)
    return torch.load(out, weights_only=True)


def thread_invariant(results):
    """The results that do not depend on the thread count: the kernels' and the first losses."""
    kept = {key: value for key, value in results.items() if key.startswith(("loss", "bn"))}
    first_losses = {f"{name} first loss": results[f"{name} losses"][0] for name in ("SkeletonMAE", "SSLClassifier")}
    return dict(kept, **first_losses)


def assert_same_bits(first, second):
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, different


def test_bitwise_identical_across_processes_and_thread_counts(tmp_path):
    first = run_in_process(tmp_path / "first.pt", [1, 3, 2])
    second = run_in_process(tmp_path / "second.pt", [3, 1])  # another process, another order
    assert {"loss", "loss d pred", "bn", "bn d weight", "bn running var", "SkeletonMAE losses",
            "SSLClassifier losses", "SkeletonMAE mask_token"} <= first[1].keys()
    for threads in (1, 3):
        assert_same_bits(first[threads], second[threads])
    for threads in (2, 3):
        assert_same_bits(thread_invariant(first[1]), thread_invariant(first[threads]))
