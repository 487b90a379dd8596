"""Run logs in the work directory: ``log.txt`` (lines a person reads, also echoed to stderr)
and ``log.jsonl`` (one JSON object per line, what plots read), and tqdm progress bars, quiet
when stderr is not a terminal. Only the main process writes (distributed.is_main).

``log.jsonl`` records, told apart by ``event``:

    "start"  time, epoch and step the run starts (or resumes) at, resumed_from (a path or null)
    "step"   every ``log_every_steps`` optimiser steps: time, epoch (1-based, in progress),
             batch (done in this epoch), batches (per epoch), step (in all), loss (mean since the
             last record), lr, train_top1 (fine-tuning: share right since the last record),
             samples_per_s, data_wait (share of the time spent waiting for batches), peak_memory_mb
    "epoch"  at each epoch's end: the same fields over the whole epoch (epoch: the epochs
             completed), plus epoch_time (s), backend (the kernels active); fine-tuning adds
             val_top1, val_top5, val_mean_class_accuracy, val_time, best_top1, best_epoch
"""

import os
import resource
import sys
import time

import torch
from tqdm import tqdm

from . import distributed
from .workdir import JSON_LOG, TEXT_LOG, append_json_line


class RunLog:
    """Appends to a work directory's text and JSON-lines logs."""

    def __init__(self, work_dir):
        self.work_dir = work_dir

    def text(self, message):
        if not distributed.is_main():
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        with open(os.path.join(self.work_dir, TEXT_LOG), "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        tqdm.write(line, file=sys.stderr)

    def record(self, event, **fields):
        if distributed.is_main():
            append_json_line(os.path.join(self.work_dir, JSON_LOG), dict(event=event, time=round(time.time(), 3), **fields))


def progress(total, initial=0, description=""):
    """A tqdm bar with ETA on stderr; None when stderr is not a terminal (or not the main rank)."""
    if not (distributed.is_main() and sys.stderr.isatty()):
        return None
    return tqdm(total=total, initial=initial, desc=description, file=sys.stderr, leave=False, dynamic_ncols=True)


def peak_memory_mb(device):
    """The high-water mark: allocated GPU memory, or the process's resident set on the CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def format_fields(fields):
    """``key value`` pairs for the text log, numbers rounded for reading."""
    def show(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)
    return " ".join(f"{key} {show(value)}" for key, value in fields.items() if value is not None)
