"""cosine_reconstruction_loss on every compiled backend against the reference path and hand values."""

import math

import pytest
import torch

from skelmae_ext import ops

from helpers import DEVICE_BACKENDS, TOLERANCES, seeded, size_for, tracing_context

REDUCTIONS = ["mean", "sum", "none"]


def make_inputs(shape, mask_kind, device, dtype=torch.float32, seed=0, target_grad=True):
    generator = seeded(seed)
    pred = torch.randn(shape, generator=generator, dtype=torch.float64)
    target = torch.randn(shape, generator=generator, dtype=torch.float64)
    leading = shape[:-1]
    mask = {
        "none": lambda: None,
        "empty": lambda: torch.zeros(leading, dtype=torch.bool),
        "full": lambda: torch.ones(leading, dtype=torch.bool),
        "partial": lambda: partial_mask(leading, generator),
    }[mask_kind]()
    grad_output = torch.randn(leading, generator=generator, dtype=torch.float64)
    pred = pred.to(device, dtype).requires_grad_()
    target = target.to(device, dtype).requires_grad_(target_grad)
    return pred, target, None if mask is None else mask.to(device), grad_output.to(device, dtype)


def partial_mask(leading, generator):
    """About 30% of the rows, and always at least one counted and one left out."""
    mask = torch.rand(leading, generator=generator) < 0.3
    rows = mask.view(-1)
    if rows.numel() < 2:
        raise ValueError(f"a partial mask needs at least 2 rows, got shape {tuple(leading)}")
    rows[0], rows[-1] = True, False
    return mask


def run(inputs, backend, beta=2.0, reduction="mean", scale=1.7):
    """Loss and the gradients of pred (and target when it requires grad); grad_output is
    `scale` for reduced losses and a random tensor for reduction="none"."""
    pred, target, mask, grad_output = inputs
    loss = ops.cosine_reconstruction_loss(pred, target, mask, beta, reduction, backend=backend)
    upstream = grad_output if reduction == "none" else torch.full_like(loss, scale)
    wrt = [t for t in (pred, target) if t.requires_grad]
    return [loss] + list(torch.autograd.grad(loss, wrt, upstream))


def run_exact(inputs, **kwargs):
    """The reference path in float64 on the same inputs: the ground truth."""
    pred, target, mask, grad_output = inputs
    wide = [t.detach().double().requires_grad_(t.requires_grad) for t in (pred, target)]
    return run((*wide, mask, grad_output.double()), "reference", **kwargs)


def assert_all_close(actual, expected, dtype=torch.float32, equal_nan=False):
    rtol, atol = TOLERANCES[dtype]
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e.to(a.dtype), rtol=rtol, atol=atol, equal_nan=equal_nan)


# One row cannot be partly masked: (1, 2) runs with the other kinds only (ids as of two
# parameters, "<kind>-shape<i>").
SHAPES_AND_MASKS = [pytest.param(shape, kind, id=f"{kind}-shape{index}")
                    for kind in ["none", "empty", "full", "partial"]
                    for index, shape in enumerate([(1, 2), (37, 3), (300, 64), (2, 50, 128), (4, 5, 6, 64)])
                    if not (kind == "partial" and shape == (1, 2))]


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("shape,mask_kind", SHAPES_AND_MASKS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_matches_reference(device, backend, shape, mask_kind, reduction, beta):
    inputs = make_inputs(shape, mask_kind, device)
    kwargs = dict(beta=beta, reduction=reduction)
    assert_all_close(run(inputs, backend, **kwargs), run_exact(inputs, **kwargs))


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "partial"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backward_of_one(device, backend, mask_kind, reduction):
    """loss.backward()'s grad_output of exactly 1: the CPU autograd hands over the gradients
    the forward wrote."""
    inputs = make_inputs((300, 64), mask_kind, device)
    kwargs = dict(reduction=reduction, scale=1.0)
    assert_all_close(run(inputs, backend, **kwargs), run_exact(inputs, **kwargs))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_second_backward_through_a_retained_graph(device, backend):
    """A gradient handed over by the first backward belongs to the caller: changing it in place
    does not change what a second backward returns."""
    pred, target, mask, _ = inputs = make_inputs((200, 64), "partial", device)
    expected = run_exact(inputs, scale=1.0)[1:]
    loss = ops.cosine_reconstruction_loss(pred, target, mask, backend=backend)
    first = torch.autograd.grad(loss, [pred, target], retain_graph=True)
    assert_all_close(first, expected)
    for gradient in first:
        gradient.add_(100.0)
    assert_all_close(torch.autograd.grad(loss, [pred, target]), expected)


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_many_rows(device, backend):
    inputs = make_inputs((20_000, 64), "partial", device)
    assert_all_close(run(inputs, backend), run_exact(inputs))


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_hand_computed(device, backend):
    # Rows: orthogonal (cos 0, l = 1), opposite (cos -1, l = 4), 45 degrees
    # (l = (1 - 1/sqrt(2))^2), and one masked out; mean over the three masked rows.
    pred = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [5.0, 5.0]], device=device)
    target = torch.tensor([[0.0, 1.0], [-2.0, 0.0], [3.0, 0.0], [1.0, -1.0]], device=device)
    mask = torch.tensor([True, True, True, False], device=device)
    pred.requires_grad_()
    loss = ops.cosine_reconstruction_loss(pred, target, mask, 2.0, backend=backend)
    expected = (1 + 4 + (1 - 1 / math.sqrt(2)) ** 2) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # Row 0: dl/dc = -2 (1 - 0) = -2, dc/dp = t^ - c p^ = [0, 1] -> grad = [0, -2] / 3.
    torch.testing.assert_close(pred.grad[0].cpu(), torch.tensor([0.0, -2.0 / 3]))
    # Row 1 is at the maximum of l (cos = -1): zero gradient. Row 3 is masked out.
    torch.testing.assert_close(pred.grad[1].cpu(), torch.zeros(2))
    torch.testing.assert_close(pred.grad[3].cpu(), torch.zeros(2))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_norm_rows(device, backend, reduction):
    pred, target, mask, grad_output = make_inputs((40, 8), "full", device)
    with torch.no_grad():
        pred[3].zero_()
        target[7].zero_()
        pred[11].zero_()
        target[11].zero_()
    inputs = (pred, target, mask, grad_output)
    assert_all_close(run(inputs, backend, reduction=reduction), run_exact(inputs, reduction=reduction))


# Triton's interpreter computes in NumPy, which warns about the NaN, inf and 0 these tests feed.
NUMPY_WARNINGS = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")


def with_value(inputs, where, row, value):
    """inputs with pred[row, 2] and / or target[row, 2] set to `value`."""
    pred, target, mask, grad_output = inputs
    with torch.no_grad():
        for name, tensor in (("pred", pred), ("target", target)):
            if where in (name, "both"):
                tensor[row, 2] = value
    return pred, target, mask, grad_output


@NUMPY_WARNINGS
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("where", ["pred", "target", "both"])
@pytest.mark.parametrize("mask_kind", ["none", "partial"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [2.0, 0.5])
def test_non_finite_counted_row_propagates(device, backend, value, where, mask_kind, reduction, beta):
    """A counted row holding NaN or inf gives a NaN loss (the row's, and the reduced one) and
    NaN gradients exactly where the reference path has them; the other rows keep theirs. (The
    kernels once clamped a NaN norm to eps and a NaN distance to 0: a finite loss.)"""
    inputs = make_inputs((40, 8), mask_kind, device)
    mask = inputs[2]
    row = 0 if mask is None else int(mask.nonzero()[0, 0])
    inputs = with_value(inputs, where, row, value)
    kwargs = dict(beta=beta, reduction=reduction)
    result = run(inputs, backend, **kwargs)
    assert result[0].isnan().any()
    assert_all_close(result, run_exact(inputs, **kwargs), equal_nan=True)


@NUMPY_WARNINGS
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_finite_row_the_mask_leaves_out(device, backend, reduction):
    """A row the mask leaves out adds nothing to the loss whatever it holds, as in the reference
    path. Its gradient is 0 from the CPU kernels, which never read it; the GPU kernels, like
    the reference path, give 0 times its (NaN) derivative."""
    inputs = make_inputs((40, 8), "partial", device)
    row = int((~inputs[2]).nonzero()[0, 0])
    inputs = with_value(inputs, "both", row, math.nan)
    result, expected = run(inputs, backend, reduction=reduction), run_exact(inputs, reduction=reduction)
    assert result[0].isfinite().all()
    if backend == "cpu":
        for gradient in expected[1:]:
            gradient[row] = 0
    assert_all_close(result, expected, equal_nan=True)


@NUMPY_WARNINGS
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_finite_row_compiled(device, backend, reduction):
    """The same under torch.compile (on the CPU: the route that computes the gradients from
    the inputs in the backward)."""
    inputs = make_inputs((40, 8), "partial", device)
    pred, target, mask, grad_output = inputs = with_value(inputs, "pred", int(inputs[2].nonzero()[0, 0]), math.nan)
    compiled = torch.compile(ops.cosine_reconstruction_loss, fullgraph=True)
    with tracing_context(device, backend):
        loss = compiled(pred, target, mask, 2.0, reduction, backend=backend)
        upstream = grad_output if reduction == "none" else torch.ones_like(loss)
        result = [loss, *torch.autograd.grad(loss, [pred, target], upstream)]
    expected = run_exact(inputs, reduction=reduction, scale=1.0)
    assert_all_close(result, expected, equal_nan=True)


@NUMPY_WARNINGS
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("beta", [0.5, 0.25, 1.0])
def test_perfect_reconstruction_with_beta_up_to_one(device, backend, beta):
    """Rows whose prediction points exactly along the target (distance 0): for beta < 1 the
    slope beta * d^(beta - 1) is infinite at d = 0, but, as the reference path's clamp, the
    loss passes no gradient there: 0, not NaN."""
    target = torch.tensor([[1.0, 0.0, 0.0], [0.3, -2.0, 0.5], [4.0, 4.0, 4.0], [1.0, 2.0, 3.0]], device=device)
    pred = torch.cat([target[:3] * torch.tensor([[1.0], [2.5], [1.0]], device=device), -target[3:]])
    inputs = (pred.requires_grad_(), target.requires_grad_(), None, torch.ones(4, device=device))
    for reduction in REDUCTIONS:
        kwargs = dict(beta=beta, reduction=reduction)
        result = run(inputs, backend, **kwargs)
        assert all(t.isfinite().all() for t in result)
        assert_all_close(result, run_exact(inputs, **kwargs))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("shape", [(4, 0), (2, 3, 0)])
@pytest.mark.parametrize("mask_kind", ["none", "partial"])
def test_zero_channels(device, backend, shape, mask_kind):
    """Rows of no channels have norm 0 (clamped to eps), cosine 0 and loss 1, as in the
    reference path, and empty gradients."""
    inputs = make_inputs(shape, mask_kind, device)
    if mask_kind == "none":
        assert ops.cosine_reconstruction_loss(*inputs[:2], backend=backend).item() == 1.0
    for reduction in REDUCTIONS:
        assert_all_close(run(inputs, backend, reduction=reduction), run_exact(inputs, reduction=reduction))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 2.0, 2.5])
def test_gradcheck_float64(device, backend, reduction, beta):
    pred, target, mask, _ = make_inputs((6, 5), "partial", device, torch.float64)
    assert torch.autograd.gradcheck(
        lambda p, t: ops.cosine_reconstruction_loss(p, t, mask, beta, reduction, backend=backend),
        (pred, target),
    )


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_second_order_gradients(device, backend, reduction):
    """create_graph=True: right second-order gradients from the CPU kernels' route (the
    handed-over gradient once had no graph), one clear error from the GPU kernels, which keep
    no inputs to differentiate."""
    pred, target, mask, _ = make_inputs((6, 5), "partial", device, torch.float64)

    def loss(p, t):
        return ops.cosine_reconstruction_loss(p, t, mask, 2.0, reduction, backend=backend)

    if backend == "cpu":
        assert torch.autograd.gradgradcheck(loss, (pred, target))
    else:
        with pytest.raises(RuntimeError, match=rf"cosine_reconstruction_loss: the {backend} kernels give no "
                                               r"gradient that can be differentiated again \(create_graph=True\); "
                                               r'use backend="reference"'):
            torch.autograd.grad(loss(pred, target).sum(), pred, create_graph=True)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_target_without_grad(device, backend):
    """A target that is data (no grad): loss.backward() gives pred its right gradient, leaves
    the target without one, not requiring grad and unchanged (no gradient written into it)."""
    pred, target, mask, _ = inputs = make_inputs((50, 16), "partial", device, target_grad=False)
    before = target.clone()
    loss = ops.cosine_reconstruction_loss(pred, target, mask, backend=backend)
    (loss * 1.7).backward()
    assert target.grad is None and not target.requires_grad
    assert torch.equal(target, before)
    assert_all_close([loss, pred.grad], run_exact(inputs))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_input_saved_by_upstream_op(device, backend):
    # exp saves its output for its own backward: a kernel that wrote a gradient into its input
    # buffer would corrupt the gradient reaching `raw`.
    generator = seeded(5)
    raw = torch.randn(64, 16, generator=generator).to(device).requires_grad_()
    target = torch.randn(64, 16, generator=generator).to(device)
    grads = []
    for chosen in (backend, "reference"):
        loss = ops.cosine_reconstruction_loss(raw.exp(), target, backend=chosen)
        grads.append(torch.autograd.grad(loss * 3.0, raw)[0])
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_empty_mask_gives_zero_loss_and_gradients(device, backend):
    pred, target, mask, _ = make_inputs((10, 4), "empty", device)
    loss = ops.cosine_reconstruction_loss(pred, target, mask, backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(pred.grad) == 0 and torch.count_nonzero(target.grad) == 0


@pytest.mark.gpu_smoke
@pytest.mark.sanitize
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_non_contiguous_inputs(device, backend):
    generator = seeded(9)
    pred = torch.randn(32, 20, 3, generator=generator).to(device).transpose(0, 1).requires_grad_()
    target = torch.randn(3, 20, 32, generator=generator).to(device).permute(1, 2, 0)
    mask = (torch.rand(32, 20, generator=generator) < 0.5).to(device).t()
    grad_output = torch.randn(20, 32, generator=generator).to(device)
    inputs = (pred, target, mask, grad_output)
    for reduction in REDUCTIONS:
        assert_all_close(run(inputs, backend, reduction=reduction), run_exact(inputs, reduction=reduction))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_retain_graph_backward_twice(device, backend):
    pred, target, mask, _ = make_inputs((30, 8), "partial", device)
    loss = ops.cosine_reconstruction_loss(pred, target, mask, backend=backend)
    first = torch.autograd.grad(loss, pred, retain_graph=True)[0]
    second = torch.autograd.grad(loss, pred)[0]
    assert torch.equal(first, second)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_bitwise_deterministic(device, backend):
    inputs = make_inputs((size_for(device, backend, 50_000, 5_000), 64), "partial", device)
    first, second = run(inputs, backend), run(inputs, backend)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_within_twice_reference(device, backend, dtype):
    exact = run_exact(make_inputs((256, 64), "partial", device, torch.float64))
    low = make_inputs((256, 64), "partial", device, dtype)
    for o, t, e in zip(run(low, backend), run(low, "reference"), exact):
        ours_error = (o.double() - e).abs().max()
        reference_error = (t.double() - e).abs().max()
        assert ours_error <= 2 * reference_error + 1e-3 * e.abs().max()


def _direct(inputs, output_mask, reduction, scale=1.7):
    """The C++ op called directly with `output_mask`, differentiated by its autograd formula."""
    pred, target, mask, grad_output = inputs
    loss, _, _ = torch.ops.skelmae_ext.cosine_reconstruction_loss(
        pred, target, mask, 2.0, reduction, output_mask)
    upstream = grad_output if reduction == "none" else torch.full_like(loss, scale)
    return [loss] + list(torch.autograd.grad(loss, [pred, target], upstream))


@pytest.mark.skipif(not ops.EXTENSION.loaded, reason="compiled kernels not built")
@pytest.mark.parametrize("mask_kind", ["none", "partial"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_both_cpu_gradient_routes(mask_kind, reduction):
    """The C++ op's autograd: gradients written by the forward, handed over (grad_output 1) or
    scaled (output_mask true), or computed from the inputs by cosine_reconstruction_loss_grad
    (output_mask false: the public op's CPU route when compiled or per row)."""
    inputs = make_inputs((500, 64), mask_kind, "cpu")
    for scale in (1.0, 1.7):
        expected = run_exact(inputs, reduction=reduction, scale=scale)
        for output_mask in ([True, True], [False, False]):
            assert_all_close(_direct(inputs, output_mask, reduction, scale), expected)
