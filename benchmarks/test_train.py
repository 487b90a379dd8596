"""Training epochs through the engine (``skelmae_ext.train``) on the bundled data, against the
bare training step of the same model on a batch of the same data, timed in the same process.

Target: an epoch's samples/s (its ``log.jsonl`` record, the second epoch of two: the first
warms up) at least 90% of the bare step's at the same batch size (16), shape and thread count:
the loop, the loading and the logs cost at most a tenth. Pre-training runs an epoch of the
training split (2187 sequences); fine-tuning trains on the validation split (715) to keep the
run short. The bundled data is single-person, so ``num_person`` "auto" gives M = 1; the M = 2
case has the shape of benchmarks/test_models.py's step. The default configuration is the quick
one; the others compare loader workers and torch threads (benchmarks/README.md).
"""

import statistics
import time

import pytest
import torch

from skelmae_ext import train
from skelmae_ext.data import BUNDLED
from skelmae_ext.train import finetuning, pretraining
from skelmae_ext.train.config import OPTIMIZERS

from conftest import record

BATCH = 16
DATA = {"pretrain": {"source": BUNDLED, "split": "xstyle_train"},
        "finetune": {"source": BUNDLED, "train_split": "xstyle_val", "val_split": "xstyle_val"}}
RECIPES = {"pretrain": (train.pretrain, pretraining.plan), "finetune": (train.finetune, finetuning.plan)}
CASES = [pytest.param("pretrain", "auto", "auto", "auto", marks=[pytest.mark.quick], id="pretrain-defaults"),
         pytest.param("pretrain", "auto", "auto", 2, id="pretrain-M2")] + [
    pytest.param("pretrain", threads, workers, "auto", id=f"pretrain-threads{threads}-workers{workers}")
    for threads in (1, 2) for workers in (0, 1, 2)] + [
    pytest.param("finetune", "auto", "auto", "auto", id="finetune-defaults"),
    pytest.param("finetune", "auto", 2, "auto", id="finetune-workers2")]


def step_samples_per_s(plan, steps=12, warmup=3):
    """The bare step (forward, loss, backward, optimiser step) of the plan's model on one batch
    of its training data: samples/s of the median step."""
    model = plan.model.to(plan.device).train()
    x, y = next(iter(torch.utils.data.DataLoader(plan.train_set, BATCH)))
    x = x.flatten(0, 1)
    optim = plan.config["optim"]
    optimizer = OPTIMIZERS[optim["optimizer"]](model.parameters(), lr=optim["lr"], **optim["args"])
    times = []
    for step in range(warmup + steps):
        began = time.perf_counter()
        loss, _ = plan.loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - began)
    return BATCH / statistics.median(times)


@pytest.mark.parametrize("kind, threads, workers, persons", CASES)
def test_epoch_vs_step(benchmark, tmp_path, kind, threads, workers, persons):
    benchmark.group = f"train: {kind} epoch through the engine vs the bare step, batch 16, bundled data"
    execute, plan = RECIPES[kind]
    config = {"data": dict(DATA[kind], workers=workers, num_person=persons), "train": {
        "work_dir": str(tmp_path / kind), "epochs": 2, "batch_size": BATCH, "threads": threads,
        "log_every_steps": 10**6, "save_every": 0}}
    step = step_samples_per_s(plan(config))
    result = benchmark.pedantic(lambda: execute(config), rounds=1, iterations=1)
    record(benchmark, provider=f"threads={torch.get_num_threads()} workers={workers}",
           epoch_samples_per_s=result["samples_per_s"], step_samples_per_s=round(step, 1),
           epoch_vs_step=round(result["samples_per_s"] / step, 3), data_wait=result["data_wait"],
           threads=torch.get_num_threads(), workers=workers, persons=persons)
