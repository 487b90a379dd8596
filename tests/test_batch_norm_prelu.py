"""batch_norm_prelu (the fused BatchNorm1d + PReLU tail of the GIN layers) against the modules."""

import copy

import pytest
import torch

from skelmae_ext import ops

from conftest import DEVICE_BACKENDS, seeded


def make_modules(channels, slopes, dtype, device, seed=0):
    generator = seeded(seed)
    norm = torch.nn.BatchNorm1d(channels).to(device, dtype)
    activation = torch.nn.PReLU(slopes).to(device, dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=generator))
        norm.bias.copy_(torch.randn(channels, generator=generator))
        norm.running_mean.copy_(torch.randn(channels, generator=generator))
        norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
        activation.weight.copy_(torch.rand(slopes, generator=generator))
    return norm, activation


def run(x, norm, activation, grad_output, backend):
    y = ops.batch_norm_prelu(x, norm, activation, backend=backend)
    wrt = [x, norm.weight, norm.bias, activation.weight]
    return [y, *torch.autograd.grad(y, wrt, grad_output)]


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,slopes", [(64, 1), (3, 3), (128, 1)])
@pytest.mark.parametrize("rows", [5, 777])
def test_matches_the_modules(device, backend, training, channels, slopes, rows):
    generator = seeded(1)
    x = (torch.randn(rows, channels, generator=generator) * 3 + 1).to(device).requires_grad_()
    grad_output = torch.randn(rows, channels, generator=generator).to(device)
    norm, activation = make_modules(channels, slopes, torch.float32, device)
    expected_norm, expected_activation = copy.deepcopy(norm), copy.deepcopy(activation)
    norm.train(training), expected_norm.train(training)
    ours = run(x, norm, activation, grad_output, backend)
    # The exact result: the modules in float64.
    exact = run(x.detach().double().requires_grad_(), expected_norm.double(), expected_activation.double(),
                grad_output.double(), "reference")
    for a, e in zip(ours, exact):
        torch.testing.assert_close(a.detach(), e.detach().float(), rtol=1e-5, atol=1e-5 * max(float(e.detach().abs().max()), 1.0))
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(norm, buffer), getattr(expected_norm, buffer).to(getattr(norm, buffer).dtype))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_float64(device, backend, training):
    norm, activation = make_modules(5, 5, torch.float64, device)
    x = torch.randn(9, 5, dtype=torch.float64, device=device, requires_grad=True)
    op = torch.ops.skelmae_ext.batch_norm_prelu
    assert torch.autograd.gradcheck(
        lambda x_, w, b, s: op(x_, w, b, s, norm.running_mean, norm.running_var, training, 1e-5)[0],
        (x, norm.weight, norm.bias, activation.weight))


@pytest.mark.parametrize("device", [d for d, _ in [p.values for p in DEVICE_BACKENDS]] or ["cpu"])
def test_opcheck(device):
    norm, activation = make_modules(6, 1, torch.float32, device)
    for training in (True, False):
        for requires_grad in (True, False):
            x = torch.randn(11, 6, device=device, requires_grad=requires_grad)
            args = (x, norm.weight, norm.bias, activation.weight, norm.running_mean, norm.running_var, training, 1e-5)
            torch.library.opcheck(torch.ops.skelmae_ext.batch_norm_prelu.default, args)
            _, mean, var = torch.ops.skelmae_ext.batch_norm_prelu(*args)
            backward = (torch.randn(11, 6, device=device), x.detach(), norm.weight.detach(), norm.bias.detach(),
                        activation.weight.detach(), mean, var, training, 1e-5, [True, True, True, True])
            torch.library.opcheck(torch.ops.skelmae_ext.batch_norm_prelu_backward.default, backward)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_bitwise_deterministic(device, backend):
    x = torch.randn(20000, 64, generator=seeded(2)).to(device).requires_grad_()
    grad_output = torch.randn(20000, 64, generator=seeded(3)).to(device)
    norm, activation = make_modules(64, 1, torch.float32, device)
    first = run(x, norm, activation, grad_output, backend)
    second = run(x, norm, activation, grad_output, backend)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


BAD = {
    "rank": (lambda: torch.randn(4, 3, 2), torch.nn.BatchNorm1d(3), torch.nn.PReLU(), r"x must be of shape \[R, C\]"),
    "features": (lambda: torch.randn(4, 5), torch.nn.BatchNorm1d(3), torch.nn.PReLU(), r"norm must be an nn.BatchNorm1d over C=5"),
    "slopes": (lambda: torch.randn(4, 3), torch.nn.BatchNorm1d(3), torch.nn.PReLU(2), r"activation must be an nn.PReLU with 1 or C=3"),
    "one row": (lambda: torch.randn(1, 3), torch.nn.BatchNorm1d(3), torch.nn.PReLU(), r"x must be of more than 1 row per channel when training, got shape \(1, 3\)"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input(case):
    make_x, norm, activation, message = BAD[case]
    with pytest.raises(ValueError, match="batch_norm_prelu: " + message):
        ops.batch_norm_prelu(make_x(), norm, activation)
