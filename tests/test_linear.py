"""linear, F.linear with its large outputs from the CPU output cache, against F.linear.

The op is a CPU kernel; other backends run F.linear itself."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from skelmae_ext import ops

from helpers import TOLERANCES, seeded

pytestmark = pytest.mark.skipif(not ops.EXTENSION.loaded, reason="compiled kernels not built")
OP = torch.ops.skelmae_ext.linear if ops.EXTENSION.loaded else None
BACKWARD = torch.ops.skelmae_ext.linear_backward if ops.EXTENSION.loaded else None


def make_inputs(shape, out_features, with_bias, dtype=torch.float32, seed=0):
    generator = seeded(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(out_features, shape[-1], generator=generator, dtype=torch.float64)
    bias = torch.randn(out_features, generator=generator, dtype=torch.float64) if with_bias else None
    grad_output = torch.randn(*shape[:-1], out_features, generator=generator, dtype=torch.float64)
    params = [t.to(dtype).requires_grad_() for t in (x, weight, bias) if t is not None]
    return params, grad_output.to(dtype)


def run(function, params, grad_output):
    """[y, dx, dweight(, dbias)]."""
    y = function(*params)
    return [y, *torch.autograd.grad(y, params, grad_output)]


def exact(params, grad_output):
    """F.linear in float64: the oracle."""
    wide = [p.detach().double().requires_grad_() for p in params]
    return [t.detach() for t in run(F.linear, wide, grad_output.double())]


# float32 products run through oneDNN where torch.backends.mkldnn is enabled (the default),
# through MKL into the output cache where it is not: both are tested.
ENGINES = [pytest.param(True, id="onednn"), pytest.param(False, id="mkl")]


@contextlib.contextmanager
def onednn_enabled(enabled):
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@pytest.mark.parametrize("onednn", ENGINES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape,out_features",
                         [((5, 3), 4), ((0, 3), 4), ((2, 5, 0), 4), ((4, 17, 2), 64), ((300, 64), 64),
                          ((34816, 4), 64)],
                         ids=["tiny", "no-rows", "no-features", "joints", "square", "large-skinny"])
def test_matches_f_linear(shape, out_features, with_bias, dtype, onednn):
    params, grad_output = make_inputs(shape, out_features, with_bias, dtype)
    rtol, atol = TOLERANCES[dtype]
    with onednn_enabled(onednn):
        got = run(lambda *p: ops.linear(*p, backend="cpu"), params, grad_output)
    for name, g, e in zip(("y", "dx", "dweight", "dbias"), got, exact(params, grad_output)):
        scale = float(e.abs().max()) if e.numel() else 0.0  # sums over up to 34816 rows: relative to the largest
        torch.testing.assert_close(g, e.to(dtype), rtol=rtol, atol=atol * max(scale, 1.0), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("rows,onednn", [(34816, False), (140000, True)], ids=["mkl", "above-32MiB"])
def test_reused_buffers_hold_new_results(rows, onednn):
    """Through MKL (oneDNN off, or outputs above 32 MiB: 140000 x 64 float32 is 35.8 MB), y and
    dx come from the output cache: a second call with other inputs, after the first results
    are freed, reuses the buffers and gets new values."""
    ops.empty_cpu_cache()
    addresses = []
    for seed in (1, 2):
        params, grad_output = make_inputs((rows, 64), 64, True, seed=seed)
        with onednn_enabled(onednn):
            got = run(lambda *p: ops.linear(*p, backend="cpu"), params, grad_output)
        for g, e in zip(got, exact(params, grad_output)):
            torch.testing.assert_close(g, e.float(), rtol=1e-5, atol=1e-5 * float(e.abs().max()))
        addresses.append({got[0].data_ptr(), got[1].data_ptr()})
        del got
        assert ops.cpu_cache_bytes() >= 2 * rows * 64 * 4  # y and dx went back to the cache
    assert addresses[0] == addresses[1]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_gradcheck(with_bias):
    params, _ = make_inputs((6, 5), 3, with_bias, torch.float64)
    assert torch.autograd.gradcheck(lambda *p: OP(p[0], p[1], p[2] if with_bias else None), params)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_gradgradcheck(with_bias):
    """create_graph=True on float64 (MKL's route, which once failed with "mm(): functions with
    out=... arguments don't support automatic differentiation")."""
    params, _ = make_inputs((6, 5), 3, with_bias, torch.float64)
    assert torch.autograd.gradgradcheck(lambda *p: OP(p[0], p[1], p[2] if with_bias else None), params)


@pytest.mark.parametrize("onednn", ENGINES)
def test_second_order_gradients_on_both_engines(onednn):
    """A gradient penalty's gradients through float32 linear on either engine: oneDNN's route
    once gave silently wrong ones, MKL's an error."""
    params, grad_output = make_inputs((40, 3), 8, True)

    def penalty_gradients(linear, params):
        grads = torch.autograd.grad(linear(*params), params, grad_output, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), params, materialize_grads=True)

    with onednn_enabled(onednn):
        got = penalty_gradients(lambda *p: ops.linear(*p, backend="cpu"), params)
    wide = [p.detach().double().requires_grad_() for p in params]
    grad_output = grad_output.double()
    for g, e in zip(got, penalty_gradients(F.linear, wide)):
        torch.testing.assert_close(g, e.float(), rtol=1e-5, atol=1e-5 * float(e.abs().max()))


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(with_bias, requires_grad):
    params, grad_output = make_inputs((11, 5), 3, with_bias)
    args = [p.detach().requires_grad_(requires_grad) for p in params] + ([] if with_bias else [None])
    torch.library.opcheck(OP.default, tuple(args))
    x, weight = args[0].detach(), args[1].detach()
    torch.library.opcheck(BACKWARD.default, (grad_output, x, weight, [True, True, with_bias]))
    torch.library.opcheck(BACKWARD.default, (grad_output, x, weight, [False, True, False]))


def test_compiles_without_graph_breaks():
    params, grad_output = make_inputs((40, 17, 8), 16, True)
    compiled = torch.compile(lambda *p: ops.linear(*p, backend="cpu"), fullgraph=True)
    for g, e in zip(run(compiled, params, grad_output), run(lambda *p: ops.linear(*p, backend="cpu"), params,
                                                              grad_output)):
        torch.testing.assert_close(g, e)


def test_reference_backend_is_f_linear():
    params, _ = make_inputs((7, 3), 5, True)
    assert torch.equal(ops.linear(*params, backend="reference"), F.linear(*params))


@pytest.mark.parametrize("args,message", [
    ((torch.randn(4, 3), torch.randn(5, 2), None), r"linear: weight must be of shape \[out, 3\] .* got shape \(5, 2\)"),
    ((torch.randn(4, 3), torch.randn(5, 3, dtype=torch.float64), None), r"linear: weight must be of x's dtype"),
    ((torch.randn(4, 3), torch.randn(5, 3), torch.randn(4)), r"linear: bias must be of shape \(5,\) .* got shape \(4,\)"),
    ((torch.randint(0, 3, (4, 3)), torch.randn(5, 3), None), r"linear: x must be a floating-point tensor"),
])
def test_bad_inputs_name_the_argument(args, message):
    with pytest.raises(ValueError, match=message):
        ops.linear(*args, backend="cpu")
