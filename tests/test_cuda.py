"""CUDA-only checks of the CUDA kernels: stream use under torch.compile(mode="reduce-overhead"),
CUDA graph capture and replay, and offsets past 2^31 elements.

The op tests themselves (test_masked_graph_conv.py, test_cosine_reconstruction_loss.py, test_compile.py and
test_registry.py's opcheck) repeat on cuda wherever a GPU is visible (helpers.DEVICE_BACKENDS).
"""

import pytest
import torch
from torch._dynamo.utils import counters

import skelmae_reference as reference
from skelmae_ext import ops

from helpers import seeded
from skeletons import adjacency, make_mask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


class MaskedBlock(torch.nn.Module):
    """nn.Linear feeding both ops, as in the SkeletonMAE encoder."""

    def __init__(self, joints, channels):
        super().__init__()
        self.linear = torch.nn.Linear(channels, channels)
        self.token = torch.nn.Parameter(torch.randn(channels, generator=seeded(0)))
        self.eps = torch.nn.Parameter(torch.tensor(0.1))
        self.register_buffer("adjacency", adjacency(joints))

    def forward(self, x, mask, target):
        y = ops.masked_graph_conv(self.linear(x), mask, self.token, self.adjacency, self.eps, backend="cuda")
        return ops.cosine_reconstruction_loss(y, target, mask, 2.0, backend="cuda")


def batch(seed, graphs=256, joints=17, channels=64):
    generator = seeded(seed)
    x = torch.randn(graphs, joints, channels, generator=generator)
    target = torch.randn(graphs, joints, channels, generator=generator)
    mask = make_mask("partial", graphs, joints, generator)
    return x.cuda(), mask.cuda(), target.cuda()


@pytest.mark.gpu_smoke
def test_reduce_overhead_compile_with_linear_matches_eager():
    # CUDA graphs capture on a side stream: a kernel launched on another stream than the
    # current one breaks the capture or replays stale results (pytorch/extension-cpp#118).
    model = MaskedBlock(17, 64).cuda()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    counters.clear()
    parameters = list(model.parameters())
    for step in range(5):  # warm-up runs, recording, then replays on new data
        inputs = batch(step)
        expected = model(*inputs)
        expected_grads = torch.autograd.grad(expected, parameters)
        loss = compiled(*inputs)
        grads = torch.autograd.grad(loss, parameters)
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not counters["inductor"]["cudagraph_skips"], "the compiled model ran without CUDA graphs"


@pytest.mark.gpu_smoke
def test_cuda_graph_capture_and_replay():
    # Capture fails on any host sync (.item(), a pageable copy) or legacy-stream launch.
    x, mask, target = batch(0)
    x.requires_grad_()
    token = torch.randn(64, generator=seeded(1)).cuda().requires_grad_()
    eps = torch.tensor(0.2, device="cuda", requires_grad=True)
    adj = adjacency(17).cuda()

    def step():
        y = ops.masked_graph_conv(x, mask, token, adj, eps, backend="cuda")
        loss = ops.cosine_reconstruction_loss(y, target, mask, 2.0, "mean", backend="cuda")
        return [loss, *torch.autograd.grad(loss, [x, token, eps])]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graph asks
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for seed in range(1, 4):
        new_x, new_mask, new_target = batch(seed)
        with torch.no_grad():
            x.copy_(new_x)
            mask.copy_(new_mask)
            target.copy_(new_target)
        graph.replay()
        for replayed, eager in zip(captured, step()):
            assert torch.equal(replayed, eager)


def _skip_unless_free(tensors, numel, dtype):
    needed = tensors * numel * dtype.itemsize + 4 * 2**30  # + the reference's float64 chunks
    free = torch.cuda.mem_get_info()[0]
    if free < needed:
        pytest.skip(f"needs {needed / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")


@pytest.mark.gpu_smoke
def test_graph_conv_offsets_past_2_31():
    joints, channels, dtype = 17, 64, torch.bfloat16
    graphs = 2**31 // (joints * channels) + 100  # the last graphs start past 2^31 elements
    _skip_unless_free(3, graphs * joints * channels, dtype)
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(graphs, joints, channels, device="cuda", dtype=dtype, generator=generator)
    grad_y = torch.randn(graphs, joints, channels, device="cuda", dtype=dtype, generator=generator)
    token = torch.randn(channels, device="cuda", dtype=dtype, generator=generator)
    mask = make_mask("parts", graphs, joints, seeded(0)).cuda()
    adj = adjacency(joints).cuda()
    eps = torch.tensor(0.3, device="cuda")
    ends = [slice(0, 3), slice(graphs - 3, graphs)]

    y = torch.ops.skelmae_ext.masked_graph_conv(x, mask, token, adj, eps)
    for part in ends:
        expected = reference.masked_graph_conv(x[part].double(), mask[part], token.double(), adj, eps.double())
        torch.testing.assert_close(y[part].double(), expected, rtol=1e-2, atol=1e-2)
    del y

    grad_x, grad_token, grad_eps = torch.ops.skelmae_ext.masked_graph_conv_backward(
        grad_y, x, mask, token, adj, eps, [True, True, True]
    )
    # The reference gradients in float64, graph chunk by graph chunk.
    expected_token = torch.zeros(channels, device="cuda", dtype=torch.float64)
    expected_eps = torch.zeros((), device="cuda", dtype=torch.float64)
    for start in range(0, graphs, 1 << 16):
        part = slice(start, min(graphs, start + (1 << 16)))
        chunk = x[part].double().requires_grad_()
        wide_token = token.double().requires_grad_()
        wide_eps = eps.double().requires_grad_()
        out = reference.masked_graph_conv(chunk, mask[part], wide_token, adj, wide_eps)
        dx, dtoken, deps = torch.autograd.grad(out, [chunk, wide_token, wide_eps], grad_y[part].double())
        expected_token += dtoken
        expected_eps += deps
        if part.stop == graphs or start == 0:
            torch.testing.assert_close(grad_x[part].double(), dx, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grad_token.double(), expected_token, rtol=1e-2, atol=1.0)
    torch.testing.assert_close(grad_eps.double(), expected_eps.float().double(), rtol=1e-5, atol=1e-2)


@pytest.mark.gpu_smoke
def test_loss_offsets_past_2_31():
    channels, dtype = 64, torch.bfloat16
    rows = 2**31 // channels + 1000
    _skip_unless_free(4, rows * channels, dtype)
    generator = torch.Generator(device="cuda").manual_seed(1)
    pred = torch.randn(rows, channels, device="cuda", dtype=dtype, generator=generator)
    target = torch.randn(rows, channels, device="cuda", dtype=dtype, generator=generator)
    mask = torch.rand(rows, device="cuda", generator=generator) < 0.3
    ends = [slice(0, 5), slice(rows - 5, rows)]

    loss, grad_pred, grad_target = torch.ops.skelmae_ext.cosine_reconstruction_loss(
        pred, target, mask, 2.0, "none", [True, True]
    )
    for part in ends:
        wide = [t[part].double().requires_grad_() for t in (pred, target)]
        expected = reference.cosine_reconstruction_loss(*wide, mask[part], 2.0, "none")
        torch.testing.assert_close(loss[part].double(), expected, rtol=1e-2, atol=1e-2)
        for got, want in zip((grad_pred, grad_target), torch.autograd.grad(expected.sum(), wide)):
            torch.testing.assert_close(got[part].double(), want, rtol=1e-2, atol=1e-2)
    del loss, grad_pred, grad_target

    mean, _, _ = torch.ops.skelmae_ext.cosine_reconstruction_loss(pred, target, mask, 2.0, "mean", [False, False])
    chunk = 1 << 20
    total = sum(
        reference.cosine_reconstruction_loss(pred[i : i + chunk].double(), target[i : i + chunk].double(),
                                             mask[i : i + chunk], 2.0, "sum")
        for i in range(0, rows, chunk)
    )
    torch.testing.assert_close(mean.double(), total / mask.sum(), rtol=1e-2, atol=0)
