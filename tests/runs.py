"""Helpers of the training tests: a user's own skeleton (a layout the library does not ship),
a PYSKL pickle of it, tiny run options, and the command line run in a subprocess."""

import json
import os
import subprocess
import sys

import torch

import skelmae_ext
import skelmae_reference
from annotations import annotation, write_pickle

# The packages this process imports (the source tree, or the installed build in CI), for the
# subprocesses too.
PATH = os.pathsep.join(os.path.dirname(os.path.dirname(package.__file__))
                       for package in (skelmae_ext, skelmae_reference))

# A 13-joint stick figure: 0 head, 1 neck, 2-4 left shoulder, elbow, hand, 5-7 right, 8 pelvis,
# 9-10 left knee, foot, 11-12 right.
STICK = {
    "name": "stick13",
    "joints": ["head", "neck", "l_shoulder", "l_elbow", "l_hand", "r_shoulder", "r_elbow", "r_hand", "pelvis",
               "l_knee", "l_foot", "r_knee", "r_foot"],
    "edges": [[0, 1], [2, 1], [3, 2], [4, 3], [5, 1], [6, 5], [7, 6], [8, 1], [9, 8], [10, 9], [11, 8], [12, 11]],
    "center": 1,
    "parts": [[0], [1, 2, 5, 8], [3, 4], [6, 7], [9, 10], [11, 12]],
}
# Tiny models and clips: seconds per run. One thread: the tests' timings do not depend on the load.
# One pass an epoch (the default repeats a split this small ~170 times).
TINY = ["--clip-len", "8", "--embed-dim", "8", "--batch-size", "4", "--threads", "1", "--repeat", "1"]


def write_stick(folder, train_labels=(0, 1, 2) * 4, val_labels=(0, 1, 2, 2, 1, 0)):
    """(data.pkl, layout.json) in ``folder``: 2D keypoints with scores, the first training
    sample with two persons, 3 named classes, splits ``train`` and ``val``."""
    train = [annotation(f"train_{i}", label, persons=2 if i == 0 else 1, frames=12 + i, joints=13, seed=i)
             for i, label in enumerate(train_labels)]
    val = [annotation(f"val_{i}", label, frames=10 + i, joints=13, seed=100 + i) for i, label in enumerate(val_labels)]
    data = {"split": {"train": [a["frame_dir"] for a in train], "val": [a["frame_dir"] for a in val]},
            "annotations": train + val, "classes": ["wave", "walk", "sit"]}
    layout = os.path.join(folder, "stick13.json")
    with open(layout, "w") as handle:
        json.dump(STICK, handle)
    return write_pickle(os.path.join(folder, "data.pkl"), data), layout


def skelmae(*args, env=None, check=True):
    """``python -m skelmae_ext ARGS`` with this process's packages: the CompletedProcess."""
    return _run([sys.executable, "-m", "skelmae_ext"], args, env, check)


def torchrun(*args, processes=2, script=None, env=None, check=True):
    """``torchrun --standalone --nproc_per_node PROCESSES -m skelmae_ext ARGS`` (or ``SCRIPT
    ARGS``) with this process's packages: the CompletedProcess."""
    target = [str(script)] if script else ["-m", "skelmae_ext"]
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                 *target], args, env, check)


def _run(command, args, env, check):
    command = [*command, *map(str, args)]
    # the timeout guards against a hang (the runs take seconds)
    result = subprocess.run(command, capture_output=True, text=True, env=environment(**(env or {})), cwd=CWD,
                            timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
    return result


# The subprocesses' working directory: not the repository root, whose source tree `python -m`
# would import ahead of the installed package.
CWD = os.path.dirname(os.path.abspath(__file__))


KILLED_RUN = os.path.join(CWD, "killed_run.py")


def killed(*args, at_step=None, in_save=None, processes=None):
    """``skelmae ARGS`` (under torchrun with ``processes``) SIGKILLed by killed_run.py's callback
    after optimiser step ``at_step`` or inside the ``in_save``-th checkpoint write."""
    hook = ["--at-step", at_step] if at_step is not None else ["--in-save", in_save]
    if processes:
        return torchrun(*hook, "--", *args, processes=processes, script=KILLED_RUN, check=False)
    return _run([sys.executable, KILLED_RUN], [*hook, "--", *args], None, False)


def environment(**variables):
    return dict(os.environ, PYTHONPATH=PATH, **variables)


def json_line(result):
    """The one JSON line a command prints."""
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def records(work_dir, event):
    with open(os.path.join(work_dir, "log.jsonl")) as handle:
        return [r for r in map(json.loads, handle) if r["event"] == event]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_run(a, b):
    """Same weights, optimiser state, schedule and position, bit for bit, and the same epoch losses."""
    first, second = load(os.path.join(a, "latest.pth")), load(os.path.join(b, "latest.pth"))
    assert (first["epoch"], first["step"], first["batch"]) == (second["epoch"], second["step"], second["batch"])
    assert first["model"].keys() == second["model"].keys()
    for key in first["model"]:
        assert torch.equal(first["model"][key], second["model"][key]), key
    for index, state in first["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, second["optimizer"]["state"][index][name]), (index, name)
    assert first["scheduler"] == second["scheduler"] and first["best"] == second["best"]
    assert [r["loss"] for r in records(a, "epoch")] == [r["loss"] for r in records(b, "epoch")]

