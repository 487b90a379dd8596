"""Exact resume: a run killed with SIGKILL in the middle of an epoch, then run again with the
same command, ends with bitwise the same weights, optimiser state and log as a run that was
not killed (CPU, fixed seed, 0 and 2 loader workers); a kill while latest.pth is being written
leaves the previous one whole; Ctrl-C finishes the step, writes latest.pth and exits 130.

The kills come from a callback of the engine (killed_run.py): a real SIGKILL at a chosen point,
so the test does not race."""

import os
import signal
import subprocess
import sys
import time

import pytest

from skelmae_ext.train import checkpoint, engine

from runs import CWD, TINY, assert_same_run, environment, killed, load, records, skelmae, write_stick

# 12 samples / batch 4 = 3 batches an epoch, 3 epochs: random body parts masked (the torch
# generator matters), latest.pth every 2 steps.
PRETRAIN = ["pretrain", "--split", "train", "--epochs", 3, "--mask-strategy", "random_parts",
            "--num-mask-parts", 2, "--save-every-steps", 2, "--log-every-steps", 1, *TINY]
FINETUNE = ["finetune", "--train-split", "train", "--val-split", "val", "--epochs", 3, "--warmup-epochs", 1,
            "--save-every-steps", 2, "--log-every-steps", 1, *TINY]


@pytest.fixture(scope="module")
def stick(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stick")
    return write_stick(folder)


def command(arguments, data, layout, work_dir, workers):
    return [*arguments, "--data", data, "--layout", layout, "--work-dir", work_dir, "--workers", workers]


@pytest.mark.parametrize("arguments, workers", [(PRETRAIN, 0), (PRETRAIN, 2), (FINETUNE, 0)],
                         ids=["pretrain-workers0", "pretrain-workers2", "finetune-workers0"])
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(stick, tmp_path, arguments, workers):
    data, layout = stick
    skelmae(*command(arguments, data, layout, tmp_path / "whole", workers))
    work_dir = tmp_path / "killed"
    # step 5 is the second batch of epoch 2; the last latest.pth is step 4's (epoch 2, batch 1)
    result = killed(*command(arguments, data, layout, work_dir, workers), at_step=5)
    assert result.returncode == -signal.SIGKILL, result.stderr
    state = load(work_dir / "latest.pth")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 4)
    resumed = skelmae(*command(arguments, data, layout, work_dir, workers))
    assert f"resumed from {work_dir / 'latest.pth'}: epoch 2/3, batch 1/3, step 4" in resumed.stderr
    assert_same_run(tmp_path / "whole", work_dir)


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one(stick, tmp_path):
    data, layout = stick
    work_dir = tmp_path / "run"
    # latest.pth is written at step 2, at step 3 (the first epoch's end), then at step 4: killed in the third
    result = killed(*command(PRETRAIN, data, layout, work_dir, 0), in_save=3)
    assert result.returncode == -signal.SIGKILL, result.stderr
    partial = [name for name in os.listdir(work_dir) if name.startswith(".latest.pth.") and name.endswith(".partial")]
    assert len(partial) == 1  # the third checkpoint was written, not renamed
    state = checkpoint.load(str(work_dir / "latest.pth"))  # the second: whole and loadable
    assert (state["epoch"], state["batch"], state["step"]) == (1, 0, 3)
    skelmae(*command(PRETRAIN, data, layout, work_dir, 0))
    assert not [name for name in os.listdir(work_dir) if name.endswith(".partial")]  # the partial file is cleared
    skelmae(*command(PRETRAIN, data, layout, tmp_path / "whole", 0))
    assert_same_run(tmp_path / "whole", work_dir)


def test_ctrl_c_finishes_the_step_and_exits_130(stick, tmp_path):
    data, layout = stick
    work_dir = tmp_path / "run"
    arguments = command(PRETRAIN, data, layout, work_dir, 0)
    arguments[arguments.index("--epochs") + 1] = 10**6  # runs until interrupted
    process = subprocess.Popen([sys.executable, "-m", "skelmae_ext", *map(str, arguments)], env=environment(),
                               cwd=CWD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (os.path.exists(work_dir / "log.jsonl") and records(work_dir, "step")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted at epoch" in stderr and "Traceback" not in stderr
    state = checkpoint.load(str(work_dir / "latest.pth"))
    assert state["step"] == records(work_dir, "step")[-1]["step"]  # the step in flight was finished and saved


def test_compiled_run_resumes(stick, tmp_path):
    data, layout = stick
    arguments = command(PRETRAIN, data, layout, tmp_path / "run", 0) + ["--compile"]
    arguments[arguments.index("--epochs") + 1] = 1
    skelmae(*arguments)
    arguments[arguments.index("--epochs") + 1] = 2
    assert "resumed from" in skelmae(*arguments).stderr
    state = load(tmp_path / "run" / "latest.pth")
    assert state["step"] == 6 and not any(key.startswith("_orig_mod") for key in state["model"])  # the module's keys


def test_resume_takes_the_new_learning_rate_and_weight_decay(stick, tmp_path):
    data, layout = stick
    arguments = command(FINETUNE, data, layout, tmp_path / "run", 0)
    arguments[arguments.index("--epochs") + 1] = 1
    skelmae(*arguments, "--lr", 0.01, "--weight-decay", 0.001)
    arguments[arguments.index("--epochs") + 1] = 2
    resumed = skelmae(*arguments, "--lr", 0.002, "--weight-decay", 0.01)
    assert ("differs from" in resumed.stderr and "optim.args.weight_decay, optim.lr" in resumed.stderr
            and "takes this configuration's learning rate, schedule and arguments" in resumed.stderr)
    state = load(tmp_path / "run" / "latest.pth")
    (group,) = state["optimizer"]["param_groups"]
    assert group["weight_decay"] == 0.01 and group["initial_lr"] == 0.002 and state["scheduler"]["base_lrs"] == [0.002]
    factor = engine.schedule({"warmup_epochs": 1, "schedule": "cosine"}, steps_per_epoch=3, epochs=2)
    assert [r["lr"] for r in records(tmp_path / "run", "step")][3:] == [0.002 * factor(step) for step in (4, 5, 6)]
