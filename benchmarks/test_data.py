"""Data loading: samples/s of the default training pipeline (UniformSample(64), PoseDecode,
PreNormalize2D, RandomRot, RandomScale, RandomGaussianNoise, GenSkeFeat, FormatGCNInput: the
model input [2, 64, 17, 2]) through make_loader, batch 16, over the bundled data's training
split (2187 sequences), with 0 workers (in this process), 1 and the default count.

Target: at least 10x the samples/s of the SkeletonMAE pre-training step at N = 16 on the CPU
(skelmae_ext's kernels, eager), which this module measures in the same process so that the ratio
(extra_info ``vs_pretraining_step``) compares the two under the same machine load.
"""

import statistics
import time

import pytest

from skelmae_ext.data import BUNDLED, SkeletonDataset, default_workers, load_annotations, make_loader

from conftest import record, run
from test_models import build, pretraining_setup

BATCH = 16
WORKERS = [pytest.param(0, marks=[pytest.mark.quick], id="workers0"), pytest.param(1, id="workers1"),
           pytest.param(None, id="workers-default")]


@pytest.fixture(scope="module")
def bundled():
    return load_annotations(BUNDLED)


@pytest.fixture(scope="module")
def pretraining_samples_per_s():
    """The pre-training step's samples/s at N = 16 (cpu backend, eager; median of 10 steps)."""
    x, reference, model_class, loss_of, optimizer_class, optimizer_kwargs = pretraining_setup(BATCH, "cpu")
    model, forward = build(model_class, "cpu", reference, "cpu")
    optimizer = optimizer_class(model.parameters(), **optimizer_kwargs)
    times = []
    for step in range(13):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_of(forward(x)).backward()
        optimizer.step()
        if step >= 3:  # warm-up
            times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times)


@pytest.mark.parametrize("workers", WORKERS)
def test_training_pipeline(benchmark, rounds, bundled, pretraining_samples_per_s, workers):
    benchmark.group = "data: training pipeline through the loader, batch 16, M=2 T=64 V=17 C=2"
    dataset = SkeletonDataset(bundled, "xstyle_train")
    loader = make_loader(dataset, BATCH, shuffle=True, workers=workers, drop_last=True)
    samples = len(loader) * BATCH
    epochs = iter(range(10**6))

    def epoch():
        dataset.set_epoch(next(epochs))
        for x, _ in loader:
            assert x.shape == (BATCH, 1, 2, 64, 17, 2)

    run(benchmark, epoch, rounds, warmup_rounds=1)  # the warm-up epoch starts the persistent workers
    samples_per_s = samples / benchmark.stats.stats.median
    record(benchmark, provider=f"workers={loader.num_workers}", samples_per_s=round(samples_per_s, 1),
           default_workers=default_workers(), pretraining_samples_per_s=round(pretraining_samples_per_s, 1),
           vs_pretraining_step=round(samples_per_s / pretraining_samples_per_s, 2))
