"""Several processes: the command line under torchrun (DistributedDataParallel, gloo on the CPU,
two processes, one thread each).

- With --sync-bn and the same global batch, two processes train as one: the same parameters
  after six steps of random part masks (the mask token and GIN's learnt eps included: the fused
  ops' gradients are reduced like any other), the same step losses in fine-tuning with dropout,
  the same validation; without --sync-bn the BatchNorm statistics are each process's and the
  parameters differ.
- A two-process run killed in the middle of an epoch resumes to bitwise the weights of one that
  was not (each process's generators restored: random masks).
- ``test`` and ``extract`` over two processes give the one process's metrics, scores and
  features on a split of 7 samples (each sample counted once).
- torch.compile under DDP; the batch that does not divide; a process that raises, is killed or
  hangs brings the run down, and torchrun names its rank.
"""

import json
import pickle
import re

import numpy as np
import pytest
import torch

from runs import TINY, assert_same_run, json_line, load, records, skelmae, torchrun, write_stick
from runs import killed as killed_run

ON_CPU = ["--device", "cpu", *TINY]  # TINY: batch 4 (2 a process), one thread
# 12 samples / batch 4 = 3 steps an epoch; SGD (its steps are proportional to the gradients:
# Adam's would magnify the float noise of gradients that are 0 in exact arithmetic, those of
# the biases before a BatchNorm); GIN's eps learnt; the paper's target and re-mask, whose
# trajectory float32 follows (the default centred cosine target's amplifies the reduction order's
# rounding past 1e-4 in six steps at this learning rate); random part masks and (fine-tuning)
# dropout: the processes draw them for the global batch and take their share, as one process draws
PRETRAIN = ["pretrain", "--split", "train", "--epochs", 2, "--set", "model.learn_eps=true", "--set",
            "optim.optimizer=sgd", "--lr", 0.5, "--log-every-steps", 1, "--target", "input", "--remask",
            "--mask-strategy", "random_parts", "--num-mask-parts", 2, *ON_CPU]
FINETUNE = ["finetune", "--train-split", "train", "--val-split", "val", "--epochs", 1, "--warmup-epochs", 0,
            "--lr", 0.05, "--log-every-steps", 1, *ON_CPU]


@pytest.fixture(scope="module")
def stick(tmp_path_factory):
    """(folder, data and layout options): a validation split of 7 samples, which 2 does not divide."""
    folder = tmp_path_factory.mktemp("stick")
    data, layout = write_stick(folder, val_labels=(0, 1, 2, 2, 1, 0, 1))
    return folder, ["--data", data, "--layout", layout]


@pytest.fixture(scope="module")
def pretraining(stick):
    """Pre-training work directories: one process, two with --sync-bn, two without."""
    folder, data = stick
    runs = {"one": folder / "one", "synced": folder / "synced", "unsynced": folder / "unsynced"}
    skelmae(*PRETRAIN, *data, "--work-dir", runs["one"])
    torchrun(*PRETRAIN, *data, "--work-dir", runs["synced"], "--sync-bn")
    torchrun(*PRETRAIN, *data, "--work-dir", runs["unsynced"])
    return runs


def weights(work_dir):
    return load(work_dir / "latest.pth")["model"]


def test_two_processes_with_sync_bn_train_as_one(pretraining):
    one, two = weights(pretraining["one"]), weights(pretraining["synced"])
    assert {"mask_token", "encoder.gin.layers.0.eps", "encoder.gin.layers.2.eps"} <= set(one)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert torch.count_nonzero(one["mask_token"]) and one["encoder.gin.layers.0.eps"] != 0  # they were learnt
    # the log: every process's losses, written by rank 0 only
    losses = [r["loss"] for r in records(pretraining["synced"], "step")]
    assert losses == pytest.approx([r["loss"] for r in records(pretraining["one"], "step")], rel=1e-5)
    assert len(records(pretraining["synced"], "start")) == 1 and len(losses) == 6
    run = json.loads((pretraining["synced"] / "run.jsonl").read_text().splitlines()[0])
    assert run["world_size"] == 2
    state = load(pretraining["synced"] / "latest.pth")
    assert len(state["rng"]) == len(state["totals"]) == 2  # each process's


def test_without_sync_bn_the_statistics_are_each_process(pretraining):
    one, two = weights(pretraining["one"]), weights(pretraining["unsynced"])
    worst = max(float((two[key] - one[key]).abs().max() / one[key].abs().max()) for key in one
                if one[key].is_floating_point())
    assert worst > 1e-2  # far beyond the tolerance above: the comparison sees the statistics


def test_compiled_under_ddp(stick):
    folder, data = stick
    # fixed part masks: Inductor draws random numbers from a generator of its own
    fixed = ["--mask-strategy", "parts"]
    torchrun(*PRETRAIN, *data, *fixed, "--work-dir", folder / "compiled", "--sync-bn", "--compile")
    torchrun(*PRETRAIN, *data, *fixed, "--work-dir", folder / "fixed", "--sync-bn")
    compiled, eager = weights(folder / "compiled"), weights(folder / "fixed")
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5, msg=key)


def test_killed_two_process_run_resumes_to_the_same_weights(stick, tmp_path):
    _, data = stick
    # random body parts masked (PRETRAIN): the processes' generators matter
    arguments = [*PRETRAIN, *data, "--save-every-steps", 2, "--sync-bn"]
    torchrun(*arguments, "--work-dir", tmp_path / "whole")
    killed = tmp_path / "killed"
    # step 5 is the second batch of epoch 2; the last latest.pth is step 4's (epoch 2, batch 1)
    result = killed_run(*arguments, "--work-dir", killed, at_step=5, processes=2)
    assert result.returncode != 0 and "SIGKILL" in result.stderr
    state = load(killed / "latest.pth")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 4)
    # one seed, the same global draws in each process (each takes its share of them)
    assert len(state["rng"]) == 2 and torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    resumed = torchrun(*arguments, "--work-dir", killed)
    assert f"resumed from {killed / 'latest.pth'}: epoch 2/2, batch 1/3, step 4" in resumed.stderr
    assert_same_run(tmp_path / "whole", killed)


@pytest.fixture(scope="module")
def finetuning(stick):
    folder, data = stick
    runs = {"one": folder / "ssl_one", "synced": folder / "ssl_synced"}
    skelmae(*FINETUNE, *data, "--work-dir", runs["one"])
    torchrun(*FINETUNE, *data, "--work-dir", runs["synced"], "--sync-bn")
    return runs


def test_two_processes_fine_tune_as_one(finetuning):
    # The parameters after the epoch's three steps, each within 1e-4 of its tensor's largest value
    # (they drift apart at the float noise's level, as one process's fused and reference kernels
    # do); the losses of each step, which follow from the weights of the step before; the validation.
    one, two = weights(finetuning["one"]), weights(finetuning["synced"])
    for key in one:
        if one[key].is_floating_point():
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-4 * float(one[key].abs().max()), msg=key)
    one, two = records(finetuning["one"], "step"), records(finetuning["synced"], "step")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert [r["train_top1"] for r in two] == [r["train_top1"] for r in one]
    one, two = records(finetuning["one"], "epoch")[-1], records(finetuning["synced"], "epoch")[-1]
    assert {key: two[key] for key in two if key.startswith("val_") and key != "val_time"} == {
        key: one[key] for key in one if key.startswith("val_") and key != "val_time"}


def test_test_and_extract_over_two_processes(stick, finetuning):
    folder, data = stick
    checkpoint = finetuning["one"] / "latest.pth"
    evaluation = ["--data", data[1], "--split", "val", "--checkpoint", checkpoint, "--num-clips", 2, "--batch-size", 4,
                  "--device", "cpu"]
    one = json_line(skelmae("test", *evaluation, "--out", folder / "one.pkl"))
    two = json_line(torchrun("test", *evaluation, "--out", folder / "two.pkl"))  # rank 0 prints
    assert {key: two[key] for key in two if key != "scores"} == {key: one[key] for key in one if key != "scores"}
    assert two["num_samples"] == 7
    first, second = (pickle.load(open(folder / name, "rb")) for name in ("one.pkl", "two.pkl"))
    assert second["frame_dir"] == first["frame_dir"] == [f"val_{i}" for i in range(7)]
    assert list(second["label"]) == list(first["label"]) == [0, 1, 2, 2, 1, 0, 1]
    np.testing.assert_allclose(second["scores"], first["scores"], rtol=1e-5, atol=1e-6)
    evaluation[evaluation.index("--num-clips") + 1] = 1
    skelmae("extract", *evaluation, "--out", folder / "one.npz")
    assert json_line(torchrun("extract", *evaluation, "--out", folder / "two.npz"))["num_samples"] == 7
    with np.load(folder / "one.npz") as first, np.load(folder / "two.npz") as second:
        assert list(second["frame_dir"]) == list(first["frame_dir"]) and list(second["label"]) == list(first["label"])
        np.testing.assert_allclose(second["features"], first["features"], rtol=1e-5, atol=1e-6)


def test_a_batch_that_does_not_divide(stick, tmp_path):
    _, data = stick
    result = torchrun(*PRETRAIN, *data, "--work-dir", tmp_path, "--batch-size", 5, check=False)
    assert result.returncode != 0
    for rank in (0, 1):
        assert (f"skelmae pretrain (rank {rank}): error: --batch-size (train.batch_size): the batch of 5 does not "
                "divide over the 2 processes: pass a multiple of 2") in result.stderr


# Rank 1 fails in its third step, while rank 0 waits for its gradients.
FAILING = """
import os, signal, sys, time
from skelmae_ext import cli
from skelmae_ext.train import engine

step = engine._Trainer._step

def failing(self, *args):
    if os.environ["RANK"] == "1" and self.step == 2:
        if sys.argv[1] == "raise":
            raise RuntimeError("a failure in rank 1")
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)
    return step(self, *args)

engine._Trainer._step = failing
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("failure, failed, message", [
    ("raise", 1, r"RuntimeError: a failure in rank 1"),
    ("kill", 1, r"Signal 9 \(SIGKILL\)"),
    ("hang", 0, r"Timed out|timeout"),  # rank 0 waits --dist-timeout seconds for rank 1 (gloo's words vary)
])
def test_a_failing_process_brings_the_run_down(stick, tmp_path, failure, failed, message):
    _, data = stick
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    result = torchrun(failure, *PRETRAIN, *data, "--work-dir", tmp_path / "run", "--dist-timeout", 5, script=script,
                      check=False)
    assert result.returncode != 0
    root_cause = result.stderr[result.stderr.index("Root Cause"):]
    assert f"rank      : {failed} (local_rank: {failed})" in root_cause and re.search(message, root_cause)
