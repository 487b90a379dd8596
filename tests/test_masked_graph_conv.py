"""masked_graph_conv on every compiled backend against the reference path and hand values."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import skelmae_reference as reference
from skelmae_ext import ops

from helpers import DEVICE_BACKENDS, TOLERANCES, seeded, size_for
from skeletons import adjacency, make_mask

MASK_KINDS = ["none", "empty", "full", "partial", "parts"]


def make_inputs(graphs, joints, channels, mask_kind, eps, device, dtype=torch.float32, seed=0):
    """Leaf tensors (x, mask, token, adjacency, eps); eps != 0 is a learnable 0-d tensor."""
    generator = seeded(seed)
    x = torch.randn(graphs, joints, channels, generator=generator, dtype=torch.float64)
    token = torch.randn(channels, generator=generator, dtype=torch.float64)
    mask = make_mask(mask_kind, graphs, joints, generator)
    eps_value = torch.tensor(eps, dtype=torch.float64, requires_grad=True) if eps else 0.0
    grad_output = torch.randn(graphs, joints, channels, generator=generator, dtype=torch.float64)

    def place(t):
        return None if t is None else t.to(device)

    x = x.to(device, dtype).requires_grad_()
    token = token.to(device, dtype).requires_grad_()
    if isinstance(eps_value, torch.Tensor):
        eps_value = eps_value.detach().to(device).requires_grad_()
    return x, place(mask), token, adjacency(joints).to(device), eps_value, grad_output.to(device, dtype)


def run(inputs, backend):
    """Output and the gradients of every differentiable input for the given grad_output."""
    x, mask, token, adj, eps, grad_output = inputs
    y = ops.masked_graph_conv(x, mask, token, adj, eps, backend=backend)
    wrt = [x, token] + ([eps] if isinstance(eps, torch.Tensor) else [])
    return [y] + list(torch.autograd.grad(y, wrt, grad_output, materialize_grads=True))


def run_exact(inputs):
    """The reference path in float64 on the same (rounded) inputs: the ground truth."""

    def widen(t):
        if not isinstance(t, torch.Tensor) or t.dtype == torch.bool:
            return t
        return t.detach().double().requires_grad_(t.requires_grad)

    return run(tuple(widen(t) for t in inputs), "reference")


def assert_all_close(actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e.to(a.dtype), rtol=rtol, atol=atol)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("joints", [17, 18, 25])
@pytest.mark.parametrize("channels", [2, 3, 64, 128])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("eps", [0.0, 0.37])
@pytest.mark.parametrize("graphs", [1, 203])
def test_matches_reference(device, backend, joints, channels, mask_kind, eps, graphs):
    inputs = make_inputs(graphs, joints, channels, mask_kind, eps, device)
    assert_all_close(run(inputs, backend), run_exact(inputs), torch.float32)


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_many_graphs(device, backend):
    inputs = make_inputs(size_for(device, backend, 10_000, 300), 17, 64, "partial", 0.1, device)
    assert_all_close(run(inputs, backend), run_exact(inputs), torch.float32)


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_hand_computed_path_graph(device, backend):
    # Path 0 - 1 - 2, one channel, joint 1 masked by token 10, eps 0.5:
    # x~ = [1, 10, 3]; y = 1.5 x~ + neighbours = [1.5 + 10, 15 + 1 + 3, 4.5 + 10].
    x = torch.tensor([[[1.0], [2.0], [3.0]]], device=device, requires_grad=True)
    mask = torch.tensor([[False, True, False]], device=device)
    token = torch.tensor([10.0], device=device, requires_grad=True)
    adj = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.bool, device=device)
    eps = torch.tensor(0.5, device=device, requires_grad=True)
    y = ops.masked_graph_conv(x, mask, token, adj, eps, backend=backend)
    torch.testing.assert_close(y.flatten().cpu(), torch.tensor([11.5, 19.0, 14.5]))
    y.sum().backward()
    # Column sums of S = A + 1.5 I are [2.5, 3.5, 2.5]; joint 1's goes to the token.
    torch.testing.assert_close(x.grad.flatten().cpu(), torch.tensor([2.5, 0.0, 2.5]))
    torch.testing.assert_close(token.grad.cpu(), torch.tensor([3.5]))
    torch.testing.assert_close(eps.grad.cpu(), torch.tensor(14.0))  # sum of x~


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS + [pytest.param(torch.device("cpu"), "reference",
                                                                      id="cpu-reference")])
def test_no_token_is_a_zero_token(device, backend):
    # Path 0 - 1 - 2, joint 1 masked without a token (a re-mask): x~ = [1, 0, 3], eps 0:
    # y = x~ + neighbours = [1, 4, 3]; no gradient reaches joint 1.
    x = torch.tensor([[[1.0], [2.0], [3.0]]], device=device, requires_grad=True)
    mask = torch.tensor([[False, True, False]], device=device)
    adj = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.bool, device=device)
    y = ops.masked_graph_conv(x, mask, None, adj, backend=backend)
    torch.testing.assert_close(y.flatten().cpu(), torch.tensor([1.0, 4.0, 3.0]))
    y.sum().backward()
    torch.testing.assert_close(x.grad.flatten().cpu(), torch.tensor([2.0, 0.0, 2.0]))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "partial"])
def test_gradcheck_float64(device, backend, mask_kind):
    graphs = size_for(device, backend, 3, 1)
    x, mask, token, adj, eps, _ = make_inputs(graphs, 17, 4, mask_kind, 0.25, device, torch.float64)
    assert torch.autograd.gradcheck(
        lambda x_, token_, eps_: ops.masked_graph_conv(x_, mask, token_, adj, eps_, backend=backend),
        (x, token, eps),
    )


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "partial"])
def test_second_order_gradients(device, backend, mask_kind):
    """create_graph=True (a gradient penalty): the backward's gradients are differentiable
    (they were the kernels' plain outputs: silently wrong second-order gradients)."""
    x, mask, token, adj, eps, _ = make_inputs(size_for(device, backend, 3, 1), 17, 4, mask_kind, 0.25, device,
                                              torch.float64)
    assert torch.autograd.gradgradcheck(
        lambda x_, token_, eps_: ops.masked_graph_conv(x_, mask, token_, adj, eps_, backend=backend),
        (x, token, eps),
    )


class BackwardCalls(TorchDispatchMode):
    """Records the graph convolution's backward kernel calls: their output_mask and the shapes
    of the gradients they return (a gradient not asked for is an empty tensor)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.name().startswith("skelmae_ext::masked_graph_conv_backward"):
            self.calls.append((list(args[-1]), [tuple(t.shape) for t in out]))
        return out


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_gradient_flows_only_to_inputs_that_need_it(device, backend):
    """x is data (no grad), eps a number: the backward kernel is asked for the token's gradient
    alone, computes nothing for x and eps, and the token's gradient is the reference path's."""
    x, mask, token, adj, _, grad_output = make_inputs(5, 17, 8, "partial", 0.0, device)
    grads = []
    for chosen in (backend, "reference"):
        y = ops.masked_graph_conv(x.detach(), mask, token, adj, 0.2, backend=chosen)
        with BackwardCalls() as recorded:
            grads.append(torch.autograd.grad(y, [token], grad_output)[0])
        if chosen == backend:
            assert recorded.calls == [([False, True, False], [(0,), (8,), (0,)])]
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.gpu_smoke
@pytest.mark.sanitize
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_non_contiguous_inputs(device, backend):
    generator = seeded(3)
    x = torch.randn(17, 40, 6, generator=generator).to(device).transpose(0, 1).requires_grad_()
    token = torch.randn(12, generator=generator).to(device)[::2].requires_grad_()
    mask = (torch.rand(17, 40, generator=generator) < 0.5).to(device).t()
    adj = adjacency(17).to(device)
    grad_output = torch.randn(6, 17, 40, generator=generator).to(device).permute(2, 1, 0)
    assert not (x.is_contiguous() or token.is_contiguous() or mask.is_contiguous())
    inputs = (x, mask, token, adj, 0.3, grad_output)
    assert_all_close(run(inputs, backend), run_exact(inputs), torch.float32)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_bitwise_deterministic(device, backend):
    inputs = make_inputs(size_for(device, backend, 3000, 300), 25, 64, "partial", 0.2, device)
    first, second = run(inputs, backend), run(inputs, backend)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_deterministic_across_thread_counts():
    inputs = make_inputs(3000, 17, 64, "partial", 0.2, torch.device("cpu"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run(inputs, "cpu")
        torch.set_num_threads(max(2, threads))
        multi = run(inputs, "cpu")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, multi):
        assert torch.equal(a, b)


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_within_twice_reference(device, backend, dtype):
    # flash-attention's rule: the kernel's error vs float64 at most twice the reference
    # path's own error in the same dtype.
    exact = run(make_inputs(64, 17, 64, "parts", 0.1, device, torch.float64), "reference")
    low = make_inputs(64, 17, 64, "parts", 0.1, device, dtype)
    ours, theirs = run(low, backend), run(low, "reference")
    for o, t, e in zip(ours, theirs, exact):
        ours_error = (o.double() - e).abs().max()
        reference_error = (t.double() - e).abs().max()
        assert ours_error <= 2 * reference_error + 1e-3 * e.abs().max()
