"""A work directory, the unit a user thinks in: the names of what a run keeps in it, and finding
a checkpoint in it.

    config.yaml      the resolved configuration (``--config`` takes it back)
    run.jsonl        one JSON line per start or resume: command line, seed, versions, data SHA-256, kernels,
                     the --pretrained file and its SHA-256
    log.txt          the text log
    log.jsonl        one JSON line per epoch and every ``log_every_steps`` steps (logs.py)
    latest.pth       the last checkpoint: a run in this directory resumes from it
    epoch_N.pth      every ``save_every`` epochs (N counts epochs from 1)
    best.pth         fine-tuning: the epoch of the best validation top-1
    scores_SPLIT.pkl ``test``'s per-sample scores (evaluate.py); test.jsonl one line per test
"""

import hashlib
import json
import os

from .checkpoint import CheckpointError
from .config import to_yaml

CONFIG = "config.yaml"
RUN_RECORD = "run.jsonl"
TEXT_LOG = "log.txt"
JSON_LOG = "log.jsonl"
LATEST = "latest.pth"
BEST = "best.pth"
TEST_RECORD = "test.jsonl"


def epoch_checkpoint(epoch):
    return f"epoch_{epoch}.pth"


def scores_file(split):
    return f"scores_{split}.pkl"


def find_checkpoint(path, option):
    """``path`` if it is a file; in a work directory its best.pth, else its latest.pth."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for name in (BEST, LATEST):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"{option} {path}: the directory holds no {BEST} or {LATEST}: pass a checkpoint "
                              "file or the work directory of a run that saved one")
    raise CheckpointError(f"{option} {path}: no such file or directory: pass a checkpoint (.pth) or a work directory")


def append_json_line(path, record):
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def write_config(work_dir, config):
    with open(os.path.join(work_dir, CONFIG), "w", encoding="utf-8") as handle:
        handle.write(to_yaml(config))


def file_record(path):
    """What run.jsonl says of a file a run read: its absolute path and SHA-256."""
    return {"source": os.path.abspath(path), "sha256": sha256(path)}


def sha256(path):
    """The SHA-256 of a file (None for a folder of raw files)."""
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
