"""batch_norm_prelu, the fused BatchNorm1d + PReLU tail of the GIN layers, against the modules.

The fused kernel is a CPU kernel; other devices run the modules themselves."""

import copy
import os
import subprocess
import sys

import pytest
import torch

from skelmae_ext import ops

from helpers import seeded

pytestmark = pytest.mark.skipif(not ops.EXTENSION.loaded, reason="compiled kernels not built")
OP = torch.ops.skelmae_ext.batch_norm_prelu if ops.EXTENSION.loaded else None
BACKWARD = torch.ops.skelmae_ext.batch_norm_prelu_backward if ops.EXTENSION.loaded else None


def make_modules(channels, slopes, dtype=torch.float32, seed=0):
    generator = seeded(seed)
    norm = torch.nn.BatchNorm1d(channels).to(dtype)
    activation = torch.nn.PReLU(slopes).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=generator))
        norm.bias.copy_(torch.randn(channels, generator=generator))
        norm.running_mean.copy_(torch.randn(channels, generator=generator))
        norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
        activation.weight.copy_(torch.rand(slopes, generator=generator))
    return norm, activation


def run(x, norm, activation, grad_output, backend):
    """[y, dx, d weight, d bias, d slope]."""
    y = ops.batch_norm_prelu(x, norm, activation, backend=backend)
    return [y, *torch.autograd.grad(y, [x, norm.weight, norm.bias, activation.weight], grad_output)]


def inputs(rows, channels, dtype=torch.float32, seed=1):
    generator = seeded(seed)
    x = torch.randn(rows, channels, generator=generator, dtype=torch.float64) * 3 + 1
    grad_output = torch.randn(rows, channels, generator=generator, dtype=torch.float64)
    return x.to(dtype).requires_grad_(), grad_output.to(dtype)


def exact(x, grad_output, norm, activation):
    """The modules in float64 on float64 copies: the oracle. Returns results and the norm."""
    norm, activation = copy.deepcopy(norm).double(), copy.deepcopy(activation).double()
    x64 = x.detach().double().requires_grad_()
    return [t.detach() for t in run(x64, norm, activation, grad_output.double(), "reference")], norm


NAMES = ("y", "dx", "dweight", "dbias", "dslope")


def assert_no_worse_than_the_modules(got, modules, expected, relative_slack):
    """Each result's largest error against the float64 oracle is at most twice that of the
    modules run in the same precision, plus `relative_slack` of the result's magnitude."""
    for name, a, m, e in zip(NAMES, got, modules, expected):
        ours_error = float((a.detach().double() - e).abs().max())
        modules_error = float((m.detach().double() - e).abs().max())
        allowed = 2 * modules_error + relative_slack * float(e.detach().abs().max())
        assert ours_error <= allowed, f"{name}: error {ours_error:.3g}, modules' {modules_error:.3g}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels,slopes", [(64, 1), (3, 3), (130, 1)])
@pytest.mark.parametrize("rows", [2, 5, 777])
def test_matches_the_modules(training, channels, slopes, rows):
    x, grad_output = inputs(rows, channels)
    norm, activation = make_modules(channels, slopes)
    norm.train(training)
    expected, expected_norm = exact(x, grad_output, norm, activation)
    modules = run(x, copy.deepcopy(norm), copy.deepcopy(activation), grad_output, "reference")
    got = run(x, norm, activation, grad_output, "cpu")
    # The kernel sums blocks of 64 float32 rows (error up to 64 eps of a block) at any thread
    # count; PyTorch's error falls with its thread count (dslope, 777 x 130 rows, one slope:
    # 1.1e-7 of the magnitude at one thread, the kernel 1.8e-6, measured).
    assert_no_worse_than_the_modules(got, modules, expected, 64 * torch.finfo(torch.float32).eps)
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        ours, want = getattr(norm, buffer), getattr(expected_norm, buffer)
        torch.testing.assert_close(ours, want.to(ours.dtype), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_no_worse_than_the_modules(dtype):
    x, grad_output = inputs(3000, 64, dtype)
    norm, activation = make_modules(64, 1)
    expected, _ = exact(x, grad_output, norm, activation)
    norm, activation = norm.to(dtype), activation.to(dtype)  # PReLU takes one dtype only
    modules = run(x, copy.deepcopy(norm), copy.deepcopy(activation), grad_output, "reference")
    got = run(x, norm, activation, grad_output, "cpu")
    assert_no_worse_than_the_modules(got, modules, expected, 1e-3)


@pytest.mark.parametrize("batch_stats", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize("slopes", [1, 4])
def test_gradcheck_float64(batch_stats, slopes):
    norm, activation = make_modules(4, slopes, torch.float64)
    x = torch.randn(9, 4, dtype=torch.float64, generator=seeded(3)).requires_grad_()
    mean, var = (None, None) if batch_stats else (norm.running_mean, norm.running_var)
    assert torch.autograd.gradcheck(
        lambda x_, w, b, s: OP(x_, w, b, s, mean, var, 1e-5)[0], (x, norm.weight, norm.bias, activation.weight)
    )


@pytest.mark.parametrize("batch_stats", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize("slopes", [1, 4])
def test_second_order_gradients(batch_stats, slopes):
    """create_graph=True: the backward's gradients are differentiable (they were the kernel's
    plain outputs: silently wrong second-order gradients)."""
    norm, activation = make_modules(4, slopes, torch.float64)
    x = torch.randn(9, 4, dtype=torch.float64, generator=seeded(3)).requires_grad_()
    mean, var = (None, None) if batch_stats else (norm.running_mean, norm.running_var)
    assert torch.autograd.gradgradcheck(  # fast mode: the full check takes 17 s here
        lambda x_, w, b, s: OP(x_, w, b, s, mean, var, 1e-5)[0], (x, norm.weight, norm.bias, activation.weight),
        fast_mode=True,
    )


@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("batch_stats", [True, False], ids=["batch-stats", "running-stats"])
def test_opcheck(batch_stats, requires_grad):
    norm, activation = make_modules(6, 1)
    x = torch.randn(11, 6, generator=seeded(4)).requires_grad_(requires_grad)
    mean, var = (None, None) if batch_stats else (norm.running_mean, norm.running_var)
    args = (x, norm.weight, norm.bias, activation.weight, mean, var, 1e-5)
    torch.library.opcheck(OP.default, args)
    _, used_mean, used_var = OP(*args)
    backward = (torch.randn(11, 6, generator=seeded(5)), x.detach(), norm.weight.detach(), norm.bias.detach(),
                activation.weight.detach(), used_mean, used_var, 1e-5, batch_stats, [True, True, True, True])
    torch.library.opcheck(BACKWARD.default, backward)


def test_compiles_without_graph_breaks():
    x, grad_output = inputs(300, 16)
    norm, activation = make_modules(16, 1)
    eager_norm = copy.deepcopy(norm)

    def step(x_, norm_, activation_):
        return ops.batch_norm_prelu(x_, norm_, activation_, backend="cpu")

    compiled = torch.compile(step, fullgraph=True)
    y = compiled(x, norm, activation)
    torch.testing.assert_close(y, step(x, eager_norm, activation))
    torch.testing.assert_close(norm.running_mean, eager_norm.running_mean)
    torch.testing.assert_close(norm.running_var, eager_norm.running_var)
    (dx,) = torch.autograd.grad(y, [x], grad_output)
    (eager_dx,) = torch.autograd.grad(step(x, copy.deepcopy(eager_norm), activation), [x], grad_output)
    torch.testing.assert_close(dx, eager_dx)


def test_bitwise_deterministic():
    x, grad_output = inputs(20000, 64)
    norm, activation = make_modules(64, 1)
    first = run(x, norm, activation, grad_output, "cpu")
    second = run(x, norm, activation, grad_output, "cpu")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_unfused_cases_run_the_modules():
    """No momentum (cumulative average) and the reference backend use the modules as they are."""
    x, grad_output = inputs(50, 8)
    norm, activation = make_modules(8, 1)
    norm.momentum = None
    expected_norm = copy.deepcopy(norm)
    got = run(x, norm, activation, grad_output, "cpu")
    expected = run(x, expected_norm, activation, grad_output, "reference")
    for a, e in zip(got, expected):
        assert torch.equal(a, e)
    assert torch.equal(norm.running_var, expected_norm.running_var)


def run_4d(x, norm, activation, grad_output, backend):
    y = ops.batch_norm_prelu(x, norm, activation, backend=backend)
    return [y, *torch.autograd.grad(y, [x, norm.weight, norm.bias], grad_output)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("activation", [torch.nn.ReLU(), None], ids=["relu", "none"])
def test_batch_norm_2d_on_channels_last(training, activation):
    """The temporal convolutions' BatchNorm2d (+ ReLU) on the channels-last maps they get."""
    generator = seeded(6)
    x = (torch.randn(3, 16, 10, 7, generator=generator, dtype=torch.float64) * 2 + 1)
    grad_output = torch.randn(3, 16, 10, 7, generator=generator, dtype=torch.float64)
    norm = torch.nn.BatchNorm2d(16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16, generator=generator))
        norm.bias.copy_(torch.randn(16, generator=generator))
        norm.running_mean.copy_(torch.randn(16, generator=generator))
    norm.train(training)
    exact_norm = copy.deepcopy(norm).double()
    exact = [t.detach() for t in run_4d(x.clone().requires_grad_(), exact_norm, activation, grad_output, "reference")]
    x32 = x.float().contiguous(memory_format=torch.channels_last).requires_grad_()
    modules_norm, fused_norm = copy.deepcopy(norm), copy.deepcopy(norm)
    modules = run_4d(x32, modules_norm, activation, grad_output.float(), "reference")
    got = run_4d(x32, fused_norm, activation, grad_output.float(), "cpu")
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert_no_worse_than_the_modules(got, modules, exact, 1e-6)
    torch.testing.assert_close(fused_norm.running_var, exact_norm.running_var.float(), rtol=1e-6, atol=1e-6)


def test_other_memory_layouts_run_the_modules():
    x = torch.randn(2, 4, 5, 3, requires_grad=True)  # NCHW-contiguous: no [R, C] view
    norm, expected_norm = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    got = ops.batch_norm_prelu(x, norm, torch.nn.ReLU(), backend="cpu")
    assert torch.equal(got, torch.relu(expected_norm(x)))
    assert torch.equal(norm.running_var, expected_norm.running_var)


BASELINE_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import test_batch_norm_prelu as t
x, grad_output = t.inputs(1000, 64)
norm, activation = t.make_modules(64, 1)
torch.save([r.detach() for r in t.run(x, norm, activation, grad_output, "cpu")], sys.argv[2])
"""


def test_baseline_and_avx2_builds_of_the_loops_agree(tmp_path):
    """The loops run as AVX2 + FMA copies where the CPU has them; SKELMAE_CPU_BASELINE=1 keeps
    the baseline ones (what CPUs without AVX2 run). Both give the same results to rounding."""
    path = tmp_path / "baseline.pt"
    env = dict(os.environ, SKELMAE_CPU_BASELINE="1")
    subprocess.run([sys.executable, "-c", BASELINE_SCRIPT, os.path.dirname(__file__), str(path)], env=env,
                   check=True, cwd=tmp_path)
    x, grad_output = inputs(1000, 64)
    norm, activation = make_modules(64, 1)
    here = run(x, norm, activation, grad_output, "cpu")
    for a, b in zip(here, torch.load(path)):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


BAD = {
    "rank": (lambda: torch.randn(4, 3, 2), torch.nn.BatchNorm1d(3), torch.nn.PReLU(),
             r"x must be of shape \[R, C\] or \[B, C, H, W\]"),
    "norm kind": (lambda: torch.randn(2, 3, 4, 5), torch.nn.BatchNorm1d(3), None,
                  r"norm must be an nn.BatchNorm2d over C=3 features \(x is 4-d\)"),
    "activation kind": (lambda: torch.randn(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Tanh(),
                        r"activation must be None, an nn.ReLU or an nn.PReLU"),
    "dtype": (lambda: torch.ones(4, 3, dtype=torch.long), torch.nn.BatchNorm1d(3), torch.nn.PReLU(),
              r"x must be a floating-point tensor"),
    "features": (lambda: torch.randn(4, 5), torch.nn.BatchNorm1d(3), torch.nn.PReLU(),
                 r"norm must be an nn.BatchNorm1d over C=5 features"),
    "slopes": (lambda: torch.randn(4, 3), torch.nn.BatchNorm1d(3), torch.nn.PReLU(2),
               r"activation must be None, an nn.ReLU or an nn.PReLU with 1 or C=3 parameters"),
    "one row": (lambda: torch.randn(1, 3), torch.nn.BatchNorm1d(3), torch.nn.PReLU(),
                r"x must be of more than 1 value per channel when training, got shape \(1, 3\)"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input(case):
    make_x, norm, activation, message = BAD[case]
    with pytest.raises(ValueError, match="batch_norm_prelu: " + message):
        ops.batch_norm_prelu(make_x(), norm, activation)
