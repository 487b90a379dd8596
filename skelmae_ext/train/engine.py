"""The training loop of pre-training and fine-tuning: optimiser, learning-rate schedule (linear
warm-up, then constant or cosine, per step), AMP, torch.compile, checkpoints, exact resume,
Ctrl-C and logs.

A recipe (pretraining.py, finetuning.py) resolves its configuration with ``start``, builds a
``Plan`` (model, training set, the loss of a batch, a validation) and hands it to ``fit``.

Exact resume: a checkpoint holds every state the next steps depend on (weights, optimiser,
schedule, scaler, the generators, the loader's position), and the loader's order and per-sample
draws are functions of (seed, epoch, index); a run resumed in the middle of an epoch skips the
batches done without loading them. On the CPU, a run killed and resumed ends with the same
weights, bit for bit, as one that was not (tests/test_train_resume.py).

Steps do not wait for the device: the loss and the count of right answers are summed on it and
read (``.item()``) only when a log record or checkpoint is written.

Several processes (torchrun; distributed.py): the model is wrapped in DistributedDataParallel,
which averages the gradients of every parameter over the processes; each process loads its
share of every global batch (``train.batch_size``), so the optimiser steps are those of one
process on the global batch, but for BatchNorm, whose statistics are each process's own unless
``train.sync_bn``. The log's sums are over every process; a checkpoint holds each process's
generators and sums, and resume hands rank 0's reading of it to every process. Ctrl-C stops
every process after the same step.
"""

import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..data import DataError
from . import checkpoint, distributed, inputs, sync_batch_norm
from .config import AUTO, OPTIMIZERS, build, resolve_device, resolve_lr, resolve_workers
from .environment import kernels, versions
from .logs import RunLog, format_fields, peak_memory_mb, progress
from .workdir import BEST, LATEST, RUN_RECORD, append_json_line, epoch_checkpoint, file_record, write_config


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training: the step finished and latest.pth was written."""


class Diverged(RuntimeError):
    """The loss of a log interval or an epoch is not finite; nothing of it was saved."""


@dataclass
class Plan:
    """What ``fit`` trains: built by a recipe from its resolved configuration."""

    kind: str  # "pretrain" or "finetune": the checkpoints' kind
    config: dict  # resolved: what config.yaml and the checkpoints hold
    device: torch.device
    model: torch.nn.Module
    record: dict  # model_class, model_args, layout (dict), class_names: rebuilds the model
    train_set: object  # a SkeletonDataset
    loss: Callable  # (forward, x, y) -> (0-d loss, number of right answers or None)
    validate: Callable = None  # model -> {"top1", "top5", "mean_class_accuracy"}
    weights: str = None  # the file the model's weights started from (--pretrained), if any
    loaded: list = field(default_factory=list)  # the state_dict names --pretrained loaded
    notes: list = field(default_factory=list)  # lines the log opens with (what --pretrained loaded)


@dataclass
class Totals:
    """This process's sums over some steps; loss and right answers stay on the device until
    read. ``fields`` reads the sums over every process (a collective: every process calls it
    at the same step). Rates count only the steps since this process started (a resumed
    epoch's sums start from the checkpoint's)."""

    steps: int = 0
    samples: int = 0
    loss: object = 0.0
    right: object = None
    timed_samples: int = 0
    wait: float = 0.0  # seconds spent waiting for batches
    began: float = field(default_factory=time.perf_counter)

    def add(self, loss, right, samples, wait):
        self.steps += 1
        self.samples += samples
        self.timed_samples += samples
        self.loss = self.loss + loss.detach().float()
        if right is not None:
            self.right = right if self.right is None else self.right + right
        self.wait += wait

    def fields(self):
        elapsed = max(time.perf_counter() - self.began, 1e-9)
        processes = distributed.world_size()
        loss, samples, right, timed_samples, wait = distributed.sum_over_ranks(
            [self.loss, self.samples, 0 if self.right is None else self.right, self.timed_samples, self.wait])
        return {"loss": loss / max(self.steps * processes, 1),
                "train_top1": None if self.right is None else right / max(samples, 1),
                "samples_per_s": round(timed_samples / elapsed, 2), "data_wait": round(wait / processes / elapsed, 4)}

    def state(self):
        """What a checkpoint keeps of this process's sums."""
        return {"steps": self.steps, "samples": self.samples, "loss": float(self.loss),
                "right": None if self.right is None else int(self.right)}


def start(command, config):
    """``config`` checked, with the run-wide "auto" values resolved (device, threads, workers,
    learning rate), and the process seeded: a recipe's first step."""
    config = build(command, config or {})
    train, data, optim = config["train"], config["data"], config["optim"]
    device = distributed.start(resolve_device(train["device"], train["amp"], "train.device"), train["dist_timeout"],
                               "train.device")
    distributed.local_batch(train["batch_size"], "train.batch_size")  # checked before the data is read
    train["device"] = str(device)
    if train["threads"] == AUTO:
        train["threads"] = torch.get_num_threads()
    torch.set_num_threads(train["threads"])
    data["workers"] = resolve_workers(data["workers"], device)
    optim["lr"] = resolve_lr(optim, train["batch_size"])
    # one seed in every process: the models draw for the global batch and take their share (batch_share)
    seed = train["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return config, device


def schedule(optim, steps_per_epoch, epochs):
    """The learning-rate factor of each step: linear warm-up over ``warmup_epochs``, then
    constant or a cosine down to 0 at the last step."""
    warmup = round(optim["warmup_epochs"] * steps_per_epoch)
    total = steps_per_epoch * epochs

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if optim["schedule"] == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


def fit(plan, callbacks=()):
    """Trains ``plan`` to the configured epochs, resuming from a checkpoint when there is one.
    Returns the last epoch's metrics, the step, and the checkpoints' paths. ``callbacks``:
    objects with any of ``on_step_end(step)`` (after each optimiser step) and
    ``on_checkpoint_written(temporary, path)`` (a checkpoint written to its temporary file,
    before the rename onto ``path``)."""
    return _Trainer(plan, callbacks).run()


class _Trainer:
    def __init__(self, plan, callbacks=()):
        self.plan, self.config = plan, plan.config
        self.callbacks = list(callbacks)
        self.train, self.optim = self.config["train"], self.config["optim"]
        self.work_dir = self.train["work_dir"]
        self.device = plan.device
        self.model = plan.model.to(self.device)
        self.parallel = self.model  # what the steps call: the model, or with several processes its DDP wrapper
        if distributed.world_size() > 1:
            if self.train["sync_bn"]:
                self.model = sync_batch_norm.convert(self.model, self.device)
            self.parallel = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            for module in self.model.modules():  # K processes draw the masks one process would
                if hasattr(module, "batch_share"):
                    module.batch_share = (distributed.rank(), distributed.world_size())
        data = self.config["data"]
        data["repeat"] = inputs.resolve_repeat(data["repeat"], len(plan.train_set))
        self.loader = inputs.loader(plan.train_set, self.train["batch_size"], data["workers"], self.device, train=True,
                                    repeat=data["repeat"])
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise DataError(f"{self.config['data']['source']}: the training split has {len(plan.train_set)} samples, "
                            f"fewer than one batch of {self.train['batch_size']}: lower --batch-size")
        self.optimizer = OPTIMIZERS[self.optim["optimizer"]](self._parameter_groups(), lr=self.optim["lr"],
                                                               **self.optim["args"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, schedule(self.optim, self.steps_per_epoch, self.train["epochs"]))
        self.amp_dtype = getattr(torch, self.train["amp_dtype"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.train["amp"] and self.amp_dtype == torch.float16)
        self.epoch = self.batch = self.step = 0
        self.saved_step = None  # the step of this run's last latest.pth (what a divergence leaves there)
        self.best = None
        self.epoch_totals = Totals()
        self.log = RunLog(self.work_dir)

    def _parameter_groups(self):
        """The trainable parameters: one group, or when fine-tuning from pre-trained weights with
        optim.encoder_lr_scale != 1, the parameters --pretrained loaded (a per-frame encoder's:
        the embedding and every layer's encoder copy; a trunk's: every trunk weight) at
        lr * scale, then the rest at lr (the one logged). The schedule scales both. From scratch
        nothing is pre-trained."""
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        loaded = set(self.plan.loaded)
        scale = self.optim["encoder_lr_scale"] if loaded else 1.0
        if scale == 1.0:
            return [p for _, p in named]
        groups = [{"params": [p for name, p in named if name in loaded], "lr": self.optim["lr"] * scale},
                  {"params": [p for name, p in named if name not in loaded]}]
        return [group for group in groups if group["params"]]  # a frozen encoder leaves its group empty

    # --- the run ---------------------------------------------------------------------------------

    def run(self):
        if distributed.is_main():
            os.makedirs(self.work_dir, exist_ok=True)
            checkpoint.remove_partial(self.work_dir)
        resumed_from = self._resume()
        self._write_records(resumed_from)
        compile_mode = self.train["compile"]
        forward = self.parallel
        if compile_mode:
            forward = torch.compile(self.parallel, mode=None if compile_mode is True else compile_mode)
        epochs = self.train["epochs"]
        processes = distributed.world_size()
        batch = f"batch size {self.train['batch_size']}" + (
            f" ({self.loader.batch_size} in each of {processes} processes"
            f"{', SyncBatchNorm' if self.train['sync_bn'] else ''})" if processes > 1 else "")
        where = (f"{self.epoch} epochs done of {epochs}: nothing to train (raise --epochs to go on)"
                 if self.epoch >= epochs else f"epoch {self.epoch + 1}/{epochs}, batch {self.batch}/{self.steps_per_epoch}")
        self.log.text(f"{self.plan.kind} {'resumed from ' + resumed_from if resumed_from else 'started'}: {where}, "
                      f"step {self.step}, "
                      f"{len(self.plan.train_set)} samples, {batch}, device {self.device}, "
                      f"kernels {kernels(self.device)['backend']}, work dir {self.work_dir}")
        for note in [] if resumed_from else self.plan.notes:  # a resumed run's weights are its own
            self.log.text(note)
        self.log.record("start", epoch=self.epoch, step=self.step, resumed_from=resumed_from)
        last = {}
        with _CtrlC() as ctrl_c:
            while self.epoch < epochs:
                self._train_epoch(forward, ctrl_c)
                last = self._end_epoch()
        self.log.text(f"{self.plan.kind} finished: {epochs} epochs, {self.step} steps")
        return dict(last, kind=self.plan.kind, work_dir=self.work_dir, epoch=self.epoch, step=self.step,
                    checkpoint=os.path.join(self.work_dir, LATEST),
                    best_checkpoint=os.path.join(self.work_dir, BEST) if self.best else None)

    def _train_epoch(self, forward, ctrl_c):
        dataset, sampler = self.plan.train_set, self.loader.sampler
        dataset.set_epoch(self.epoch)
        sampler.start = self.batch * self.train["batch_size"]  # mid-epoch resume: skip, unread
        self.model.train()
        interval = Totals()
        self.epoch_totals.began = time.perf_counter()
        bar = progress(self.steps_per_epoch, self.batch, f"epoch {self.epoch + 1}/{self.train['epochs']}")
        batches = iter(self.loader)
        while True:
            waited = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            waited = time.perf_counter() - waited
            loss, right = self._step(forward, x, y)
            self.batch += 1
            self.step += 1
            for totals in (interval, self.epoch_totals):
                totals.add(loss, right, y.shape[0], waited)
            if bar is not None:
                bar.update()
            if self.step % self.train["log_every_steps"] == 0:
                self._log_step(interval, bar)
                interval = Totals()
            self._call("on_step_end", self.step)
            if distributed.any_rank(ctrl_c.requested):
                self._interrupt()
            if (self.train["save_every_steps"] and self.step % self.train["save_every_steps"] == 0
                    and self.batch < self.steps_per_epoch):  # an epoch's end saves anyway
                self._save(LATEST)
        if bar is not None:
            bar.close()

    def _interrupt(self):
        self._save(LATEST)
        raise Interrupted(f"interrupted at epoch {self.epoch + 1}, batch {self.batch}, step {self.step}: "
                          f"{os.path.join(self.work_dir, LATEST)} written; run the same command to resume")

    def _step(self, forward, x, y):
        x = x.to(self.device, non_blocking=True).flatten(0, 1)
        y = y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.train["amp"]):
            loss, right = self.plan.loss(forward, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.optim["clip_grad_norm"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim["clip_grad_norm"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, right

    def _end_epoch(self):
        self.epoch += 1
        self.batch = 0
        fields = dict(self.epoch_totals.fields(), lr=self.scheduler.get_last_lr()[-1],
                      epoch_time=round(time.perf_counter() - self.epoch_totals.began, 3))
        self.epoch_totals = Totals()
        self._check_finite(fields["loss"])
        every = self.train.get("val_every", 1)
        if self.plan.validate is not None and (self.epoch == self.train["epochs"] or every and self.epoch % every == 0):
            began = time.perf_counter()
            metrics = self.plan.validate(self.model)
            fields.update({f"val_{name}": value for name, value in metrics.items()},
                          val_time=round(time.perf_counter() - began, 3))
            if self.best is None or metrics["top1"] > self.best["top1"]:
                self.best = {"top1": metrics["top1"], "epoch": self.epoch}
                self._save(BEST)
            fields.update(best_top1=self.best["top1"], best_epoch=self.best["epoch"])
        fields.update(peak_memory_mb=peak_memory_mb(self.device), backend=kernels(self.device)["backend"])
        self.log.record("epoch", epoch=self.epoch, step=self.step, **fields)
        self.log.text(f"epoch {self.epoch}/{self.train['epochs']} step {self.step} {format_fields(fields)}")
        self._save(LATEST)
        if self.train["save_every"] and self.epoch % self.train["save_every"] == 0:
            self._save(epoch_checkpoint(self.epoch))
        return fields

    def _check_finite(self, loss):
        # every rank sees the same reduced loss, so all raise together
        if not math.isfinite(loss):
            self._diverged(f"the training loss is {loss}")

    def _diverged(self, what):
        latest = os.path.join(self.work_dir, LATEST)
        kept = (f"{latest} keeps the finite state of step {self.saved_step}" if self.saved_step is not None
                else "nothing was saved")
        raise Diverged(f"{what} at epoch {self.epoch + (self.batch > 0)}, step {self.step}: the run diverged (try a "
                       f"lower --lr, or --set optim.clip_grad_norm=1); {kept}")

    def _log_step(self, interval, bar):
        fields = dict(interval.fields(), lr=self.scheduler.get_last_lr()[-1], peak_memory_mb=peak_memory_mb(self.device))
        self._check_finite(fields["loss"])
        self.log.record("step", epoch=self.epoch + 1, batch=self.batch, batches=self.steps_per_epoch, step=self.step,
                        **fields)
        if bar is not None:
            bar.set_postfix(loss=f"{fields['loss']:.4g}", lr=f"{fields['lr']:.3g}")

    # --- checkpoints --------------------------------------------------------------------------------

    def _payload(self, ranks):
        return dict(
            format=checkpoint.FORMAT, kind=self.plan.kind, model=self.model.state_dict(), **self.plan.record,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), epoch=self.epoch, batch=self.batch, step=self.step, best=self.best,
            # each process's: its sums of this epoch so far (so that the epoch's log record covers
            # the whole epoch after a resume), its generators
            totals=[entry["totals"] for entry in ranks], rng=[entry["rng"] for entry in ranks],
            loader={"seed": self.plan.train_set.seed, "epoch": self.epoch,
                    "position": self.batch * self.train["batch_size"]},
            config=self.config, versions=versions())

    def _save(self, name):
        """Writes checkpoint ``name`` (every process calls it: it gathers their states), never of
        non-finite weights: a divergence keeps the last finite state."""
        if distributed.any_rank(bool(checkpoint.non_finite(self.model.state_dict()))):
            self._diverged("the weights hold NaN / inf values")
        ranks = distributed.all_gather({"totals": self.epoch_totals.state(), "rng": checkpoint.rng_state()})
        if distributed.is_main():
            path = os.path.join(self.work_dir, name)
            checkpoint.save(path, self._payload(ranks),
                            before_rename=lambda temporary: self._call("on_checkpoint_written", temporary, path))
        if name == LATEST:
            self.saved_step = self.step

    def _call(self, hook, *args):
        for callback in self.callbacks:
            if hasattr(callback, hook):
                getattr(callback, hook)(*args)

    def _find_resume(self):
        """(path, checkpoint) to resume from, or None."""
        resume = self.train["resume"]
        path = os.path.join(self.work_dir, LATEST) if resume == AUTO else resume or None
        if path is None or (resume == AUTO and not os.path.isfile(path)):
            return None
        return path, checkpoint.load(path)

    def _resume(self):
        # rank 0 reads: the work directory need only be on its machine
        found = distributed.from_main(self._find_resume, checkpoint.CheckpointError)
        if found is None:
            return None
        path, state = found
        checkpoint.require_kind(state, self.plan.kind, path, "resume a run with the command that started it, or "
                                "pass --no-resume to start over")
        configured = [{key: value for key, value in group.items() if key != "params"}
                      for group in self.optimizer.param_groups]
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as error:
            raise checkpoint.CheckpointError(
                f"{path} was written by a run of another model or optimiser ({' '.join(str(error).split())[:300]}): "
                "resume with the configuration that wrote it, or pass --no-resume or another --work-dir") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self._configure_optimizer(configured)
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step, self.best = state["epoch"], state["batch"], state["step"], state["best"]
        if path == os.path.join(self.work_dir, LATEST):
            self.saved_step = self.step
        rank, saved = distributed.rank(), checkpoint.per_rank(state)
        if rank < len(saved):  # a process more than the run that wrote it had starts this epoch's sums at 0
            totals, rng = saved[rank]
            self.epoch_totals = Totals(steps=totals["steps"], samples=totals["samples"], loss=totals["loss"],
                                       right=totals["right"])
            checkpoint.set_rng_state(rng)
        if len(saved) != distributed.world_size():
            self.log.text(f"{path} was written by a run of {len(saved)} processes, this one has "
                          f"{distributed.world_size()}: the random draws differ from those of an uninterrupted run")
        changed = _differences(state["config"], self.config)
        if changed:
            self.log.text(f"the configuration differs from {path}'s in {', '.join(changed)}: the run goes on with "
                          "this one (the optimiser keeps its state, such as momenta, and takes this configuration's "
                          "learning rate, schedule and arguments)")
        return path

    def _configure_optimizer(self, configured):
        """This configuration's optimiser arguments (``configured``: the fresh optimiser's
        groups) on the restored optimiser, at the resumed step's point of the schedule (a
        checkpoint's own values, for an unchanged configuration)."""
        for group, values in zip(self.optimizer.param_groups, configured):
            group.update(values)
        scheduler = self.scheduler
        scheduler.base_lrs = [values["initial_lr"] for values in configured]
        for group, base, factor in zip(self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)

    def _write_records(self, resumed_from):
        if not distributed.is_main():
            return
        write_config(self.work_dir, self.config)
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv, "cwd": os.getcwd(),
            "kind": self.plan.kind, "seed": self.train["seed"], "resumed_from": resumed_from,
            "data": file_record(self.config["data"]["source"]),
            "versions": versions(), "kernels": kernels(self.device), "threads": torch.get_num_threads(),
            "world_size": distributed.world_size()}
        if self.plan.weights:
            record["weights"] = file_record(self.plan.weights)
        append_json_line(os.path.join(self.work_dir, RUN_RECORD), record)


def _differences(before, after, prefix=""):
    """The dotted keys whose values differ between two configurations."""
    keys = []
    for key in sorted(set(before) | set(after)):
        first, second = before.get(key), after.get(key)
        if isinstance(first, dict) and isinstance(second, dict):
            keys += _differences(first, second, f"{prefix}{key}.")
        elif first != second:
            keys.append(f"{prefix}{key}")
    return keys


class _CtrlC:
    """While training: the first Ctrl-C asks the loop to stop after its step (``requested``); a
    second one interrupts at once. Only in the main thread (where Python runs handlers)."""

    def __enter__(self):
        self.requested = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False
