"""The CPU kernels' output cache (csrc/common/output_buffers.h): freed large outputs are reused,
their contents never leak into a new result, and the cache can be emptied or turned off."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from skelmae_ext import get_layout, ops

pytestmark = pytest.mark.skipif(not ops.EXTENSION.loaded, reason="compiled kernels not built")

LARGE = (4096, 17, 64)  # 17.8 MB of float32: above the 1 MiB threshold


def graph_conv(x):
    token = torch.zeros(x.shape[-1])
    return ops.masked_graph_conv(x, None, token, get_layout("coco").adjacency(), backend="cpu")


def test_freed_outputs_are_kept_and_reused():
    ops.empty_cpu_cache()
    x = torch.randn(*LARGE)
    y = graph_conv(x)
    address, nbytes = y.data_ptr(), y.nbytes
    del y
    assert ops.cpu_cache_bytes() >= nbytes
    again = graph_conv(x)
    assert again.data_ptr() == address  # the same buffer, pages already resident
    assert ops.cpu_cache_bytes() < nbytes
    torch.testing.assert_close(again, ops.masked_graph_conv(x, None, torch.zeros(64), get_layout("coco").adjacency(),
                                                          backend="reference"))


def test_a_reused_buffer_holds_the_new_result():
    ops.empty_cpu_cache()
    first = graph_conv(torch.full(LARGE, 7.0))
    del first
    x = torch.randn(*LARGE)
    expected = ops.masked_graph_conv(x, None, torch.zeros(64), get_layout("coco").adjacency(), backend="reference")
    torch.testing.assert_close(graph_conv(x), expected)


def test_small_outputs_bypass_the_cache():
    ops.empty_cpu_cache()
    y = graph_conv(torch.randn(8, 17, 64))
    del y
    assert ops.cpu_cache_bytes() == 0


def test_empty_cpu_cache_frees_the_idle_buffers():
    y = graph_conv(torch.randn(*LARGE))
    del y
    assert ops.cpu_cache_bytes() > 0
    ops.empty_cpu_cache()
    assert ops.cpu_cache_bytes() == 0


def test_a_zero_limit_turns_the_cache_off():
    script = (
        "import torch, skelmae_ext\n"
        "from skelmae_ext import get_layout, ops\n"
        f"y = ops.masked_graph_conv(torch.randn{LARGE}, None, torch.zeros(64), get_layout('coco').adjacency())\n"
        "del y\n"
        "print(ops.cpu_cache_bytes())\n"
    )
    env = dict(os.environ, SKELMAE_CPU_CACHE_MB="0")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(__file__))
    assert result.stdout.strip() == "0"


def test_cached_outputs_save_pickle_and_share_like_any_tensor(tmp_path):
    y = graph_conv(torch.randn(*LARGE))
    torch.save(y, tmp_path / "y.pt")
    assert torch.equal(torch.load(tmp_path / "y.pt"), y)
    assert torch.equal(pickle.loads(pickle.dumps(y)), y)
    expected = y.clone()
    y.share_memory_()
    assert y.is_shared() and torch.equal(y, expected)
    with pytest.raises(RuntimeError, match="not resizable"):
        y.resize_(y.numel() * 2)  # the one difference: the buffer cannot grow in place
