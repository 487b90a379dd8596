"""fold_weights, the twins' two Linear weights folded into one in float64, against the product
written out in float64."""

import pytest
import torch

from skelmae_ext import ops

from helpers import DEVICES, seeded

pytestmark = pytest.mark.skipif(not ops.EXTENSION.loaded, reason="compiled kernels not built")
OP = torch.ops.skelmae_ext.fold_weights if ops.EXTENSION.loaded else None

SHAPES = {"chain": ((5, 7), (7, 3), False), "plus-identity": ((6, 4), (4, 4), True)}


def make_inputs(shapes, dtype, device, seed=0):
    generator = seeded(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype).requires_grad_()
            for shape in shapes]


def exact(outer, inner, plus_identity):
    o, i = outer.detach().double(), inner.detach().double()
    return o @ i + (o if plus_identity else 0)


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.type)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", SHAPES)
def test_matches_the_float64_product_forward_and_backward(case, dtype, device):
    outer_shape, inner_shape, plus_identity = SHAPES[case]
    outer, inner = make_inputs((outer_shape, inner_shape), dtype, device)
    folded = ops.fold_weights(outer, inner, plus_identity)
    assert folded.dtype == dtype and folded.shape == (outer_shape[0], inner_shape[1])
    # float64 inside: the float32 result is the float64 product rounded once
    torch.testing.assert_close(folded, exact(outer, inner, plus_identity).to(dtype), rtol=0, atol=0)
    grad = torch.randn(folded.shape, generator=seeded(1), dtype=torch.float64).to(device, dtype)
    grad_outer, grad_inner = torch.autograd.grad(folded, (outer, inner), grad)
    grad = grad.double()
    o, i = outer.detach().double(), inner.detach().double()
    expected_outer = grad @ i.t() + (grad if plus_identity else 0)
    torch.testing.assert_close(grad_outer, expected_outer.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(grad_inner, (o.t() @ grad).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.type)
@pytest.mark.parametrize("case", SHAPES)
def test_gradcheck_and_opcheck(case, device):
    outer_shape, inner_shape, plus_identity = SHAPES[case]
    outer, inner = make_inputs((outer_shape, inner_shape), torch.float64, device)
    assert torch.autograd.gradcheck(lambda o, i: ops.fold_weights(o, i, plus_identity), (outer, inner))
    assert torch.autograd.gradgradcheck(lambda o, i: ops.fold_weights(o, i, plus_identity), (outer, inner))
    torch.library.opcheck(OP, (outer, inner, plus_identity))
    torch.library.opcheck(OP, (outer.detach(), inner, plus_identity))


def test_reference_backend_is_the_same_formula():
    outer, inner = make_inputs(((4, 4), (4, 4)), torch.float32, "cpu")
    torch.testing.assert_close(ops.fold_weights(outer, inner, True, backend="reference"),
                               ops.fold_weights(outer, inner, True), rtol=0, atol=0)


BAD = {
    "outer 1-d": (torch.zeros(3), torch.zeros(3, 2), False, r"outer must be of shape \[out, mid\]"),
    "chain": (torch.zeros(2, 3), torch.zeros(4, 2), False, r"inner must be of shape \[3, in\]"),
    "not square": (torch.zeros(2, 3), torch.zeros(3, 2), True, r"inner must be square with plus_identity"),
    "integer": (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2), False, r"outer must be a floating-point"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_the_argument(case):
    outer, inner, plus_identity, message = BAD[case]
    with pytest.raises(ValueError, match=rf"fold_weights: {message}"):
        ops.fold_weights(outer, inner, plus_identity)
