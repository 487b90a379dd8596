"""Whole training steps: SkeletonMAE pre-training and SSL classifier fine-tuning, per provider.

A step is forward, backward and the optimiser update on one batch [N, M=2, T=64, V, C] (COCO,
D = 64), on the CPU and on the GPU where one is visible. Providers: the reference models eager
and compiled, then the skelmae_ext twins on each available backend of the device (and compiled).
Each provider's loss and gradients are checked against the reference model first.
"""

import contextlib
import copy

import pytest
import torch

import skelmae_ext
import skelmae_reference

from conftest import DEVICES, PeakMemory, assert_matches, on, providers, record, run

BATCHES = [16, 128]


def step_params():
    """(device, N, provider) triples; the quick subset is N = 16 with the eager providers
    (compiling a whole model takes minutes on two cores)."""
    params = []
    for device in DEVICES:
        names = providers(device)
        names += [f"{name}-compiled" for name in names if name not in ("reference", "reference-compiled")]
        params += [pytest.param(device, n, name, id=f"N{n}-{device}-{name}",
                                marks=[pytest.mark.quick] if n == 16 and "compiled" not in name else [])
                   for n in BATCHES for name in names]
    return params


def build(model_class, provider, reference_model, device):
    """The provider's model with the reference model's weights, and its forward callable."""
    backend = provider.removesuffix("-compiled")
    if backend == "reference":
        model = copy.deepcopy(reference_model)
    else:
        model = model_class(**reference_model.init_kwargs, backend=backend).to(device)
        model.load_state_dict(reference_model.state_dict())
    forward = torch.compile(model) if provider.endswith("-compiled") else model
    return model, forward


def pretraining_setup(n, device):
    torch.manual_seed(0)
    x = torch.randn(n, 2, 64, 17, 2)
    x[::2, 1] = 0  # single-person clips: the second person is padding
    reference = skelmae_reference.SkeletonMAE().to(device)
    reference.init_kwargs = {}
    return (x.to(device), reference, skelmae_ext.SkeletonMAE, (lambda out: out.loss), torch.optim.Adam,
            dict(lr=1.5e-4))


def finetuning_setup(n, device):
    torch.manual_seed(0)
    x = torch.randn(n, 2, 64, 17, 2)
    labels = torch.randint(0, 10, (n,)).to(device)
    reference = skelmae_reference.SSLClassifier(num_classes=10).to(device)
    reference.init_kwargs = {"num_classes": 10}
    loss_of = lambda logits: torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)  # noqa: E731
    return (x.to(device), reference, skelmae_ext.SSLClassifier, loss_of, torch.optim.SGD,
            dict(lr=0.1, momentum=0.9, nesterov=True))


@contextlib.contextmanager
def full_float32():
    """cuDNN convolutions in float32 rather than TF32 (PyTorch's default on GPUs) for the
    check: the reference's 1x1 convolutions run on cuDNN, our stacked ops.linear in float32 on
    cuBLAS, and TF32's 10-bit mantissa rounds by up to 5e-4, past the check's 1e-4."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def loss_and_grads(model, forward, x, loss_of):
    model.zero_grad()
    loss = loss_of(forward(x))
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


def benchmark_step(benchmark, rounds, setup, device, n, provider):
    x, reference, fast_class, loss_of, optimizer_class, optimizer_kwargs = setup(n, device)
    model, forward = build(fast_class, provider, reference, device)
    model.eval()  # deterministic BatchNorm for the correctness check only
    with full_float32():
        expected = loss_and_grads(reference.eval(), reference, x, loss_of)
        got = loss_and_grads(model, forward, x, loss_of)
    assert_matches(got[:1], expected[:1], provider)
    # gradients to 1e-4 of the largest one (sums over many graphs cancel in float32); on a GPU
    # 5e-4, where atomic adds sum in no fixed order (N=16 pre-training on an H200 was 1.5e-4 off)
    scale = max(float(g.abs().max()) for g in expected[1:]) * (5 if torch.device(device).type == "cuda" else 1)
    assert_matches(got[1:], expected[1:], provider, scale=scale)
    model.train()
    optimizer = optimizer_class(model.parameters(), **optimizer_kwargs)

    def step():
        optimizer.zero_grad()
        loss_of(forward(x)).backward()
        optimizer.step()

    step()  # compile, warm caches
    with PeakMemory(device) as memory:
        step()
    # A step takes up to seconds at N = 128: fewer rounds keep the full suite within minutes.
    run(benchmark, step, min(rounds, 5), device, warmup_rounds=1)
    record(benchmark, device=device, provider=provider, batch=n,
           samples_per_s=round(n / benchmark.stats.stats.median, 1),
           peak_memory_MB=round(memory.peak_bytes / 2**20, 1))


@pytest.mark.parametrize("device,n,provider", step_params())
def test_pretraining_step(benchmark, rounds, device, n, provider):
    benchmark.group = f"SkeletonMAE pre-training step N={n} M=2 T=64 V=17 D=64{on(device)}"
    benchmark_step(benchmark, rounds, pretraining_setup, device, n, provider)


@pytest.mark.parametrize("device,n,provider", step_params())
def test_finetuning_step(benchmark, rounds, device, n, provider):
    benchmark.group = f"SSL classifier fine-tuning step N={n} M=2 T=64 V=17 D=64{on(device)}"
    benchmark_step(benchmark, rounds, finetuning_setup, device, n, provider)
