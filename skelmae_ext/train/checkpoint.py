"""Checkpoints: what they hold, written atomically, read with ``weights_only=True``, and the
model rebuilt from one.

A checkpoint is a dict:

    format       "skelmae_ext.checkpoint/1"
    kind         "pretrain" or "finetune"
    model        the model's state_dict (the module's own, also under torch.compile)
    model_class  "SkeletonMAE" or "SSLClassifier"; model_args its constructor's keyword
                 arguments but the layout; layout the layout as a dict (Layout.to_dict()):
                 ``test``, ``extract`` and ``finetune --pretrained`` rebuild the model from them
    class_names  the classes' names, or None
    optimizer, scheduler, scaler   their state_dicts (scaler: {} unless float16 AMP)
    epoch        epochs completed; batch: batches done of the next epoch; step: optimiser steps
    best         fine-tuning: {"top1", "epoch"} of the best validation so far (else None)
    rng          a list, one entry per process (rank order), of the {"python", "numpy", "torch",
                 "cuda"} generator states
    totals       a list, one entry per process, of its sums over the epoch in progress
                 {"steps", "samples", "loss", "right"} (the epoch's log record adds them up)
    loader       {"seed", "epoch", "position"}: the data loader's order and per-sample draws
                 follow from them (position: samples of the epoch done by all processes)
    config       the resolved configuration; versions: environment.versions()

Writing: a temporary file (``.NAME.XXXX.partial``) in the same folder, flushed and fsync'ed,
then renamed over the target (and the folder fsync'ed), so a crash leaves either the old or the
new file whole; a run starting in the folder deletes what a crash left (``remove_partial``).
``save``'s ``before_rename`` is called with the temporary file's path between the two (the
engine's ``on_checkpoint_written`` callbacks).
"""

import os
import random
import tempfile
import warnings

import numpy as np
import torch

from .. import models

FORMAT = "skelmae_ext.checkpoint/1"
KINDS = ("pretrain", "finetune")
MODELS = {"SkeletonMAE": models.SkeletonMAE, "TrunkMAE": models.TrunkMAE, "SSLClassifier": models.SSLClassifier}
_PARTIAL = ".partial"  # the temporary files end so


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or not the kind a command needs."""


def save(path, payload, before_rename=None):
    """Writes ``payload`` to ``path`` atomically (see the module docstring)."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=_PARTIAL)
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600: the mode of any file this user writes
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        if before_rename is not None:
            before_rename(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _umask():
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def remove_partial(folder):
    """Deletes what saves cut short by a crash left in ``folder`` (their temporary files)."""
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(_PARTIAL):
            os.remove(os.path.join(folder, name))


def load(path):
    """The checkpoint at ``path`` (weights_only: loading runs no code), checked to be one."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning: the error below says it all
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (a damaged file raises any of several types)
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: "
                              f"{' '.join(str(error).split())[:200]}): pass a .pth written by skelmae") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a skelmae_ext checkpoint (no format {FORMAT!r}): pass a .pth written "
                              "by skelmae pretrain or finetune")
    return checkpoint


def require_kind(checkpoint, kind, path, fix):
    """Raises unless ``checkpoint`` is a ``kind`` checkpoint; ``fix`` says what to pass instead."""
    if checkpoint["kind"] != kind:
        raise CheckpointError(f"{path} is a {checkpoint['kind']} checkpoint, but a {kind} checkpoint is needed: {fix}")


def construct(model_class, layout, args):
    """``model_class`` (a MODELS name) built with ``layout`` and the keyword arguments ``args``."""
    from .config import ConfigError

    try:
        return MODELS[model_class](layout=layout, **args)
    except (TypeError, ValueError) as error:
        raise ConfigError("model", f"{model_class}({', '.join(f'{k}={v!r}' for k, v in args.items())}): {error}") from None


def non_finite(weights):
    """The names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [name for name, value in weights.items() if value.is_floating_point() and not torch.isfinite(value).all()]


def rebuild(checkpoint, path="the checkpoint"):
    """The checkpoint's model, with its weights (refused when they are not finite: a diverged
    run's, whose every output would be NaN)."""
    broken = non_finite(checkpoint["model"])
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} weight tensors hold NaN / inf (first: {broken[0]}): a diverged "
                              "run's; use a checkpoint of before the divergence")
    model = construct(checkpoint["model_class"], checkpoint["layout"], checkpoint["model_args"])
    model.load_state_dict(checkpoint["model"])
    return model


def rng_state():
    """The generator states of Python, NumPy, torch and CUDA (weights_only-loadable types)."""
    numpy_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(),
            "numpy": dict(numpy_state, state={"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                              "pos": int(numpy_state["state"]["pos"])}),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def per_rank(checkpoint):
    """[(totals, rng)] of each process that wrote ``checkpoint`` (a single process's checkpoint
    of an earlier version holds one of each, not lists)."""
    totals, rng = checkpoint["totals"], checkpoint["rng"]
    return list(zip(totals, rng)) if isinstance(rng, list) else [(totals, rng)]


def set_rng_state(state):
    random.setstate(_tuples(state["python"]))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
                            "pos": state["numpy"]["state"]["pos"]}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    """random.setstate wants the tuples it gave (a save and load can make lists of them)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
