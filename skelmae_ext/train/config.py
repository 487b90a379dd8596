"""Run configurations: every default of the command line and the API (``DEFAULTS``, one entry
per command), merging (defaults, then a YAML file, then the command line), the checks of each
value, and the ``"auto"`` values resolved from the data and the machine.

A training configuration (``pretrain``, ``finetune``) is a nested dict of four sections:
``data`` (the source, splits and pipeline), ``model`` (keyword arguments of the model's
constructor, passed as they are: a new constructor argument needs no change here), ``optim``
(optimiser, learning rate, schedule, loss) and ``train`` (the run: epochs, batch, device,
checkpoints, logs). The evaluation commands take flat dicts of their functions' arguments.
"""

import copy
import difflib
import math
import numbers
import os
import re

import torch
import yaml

from ..data import AUGMENTATION

AUTO = "auto"

# The learning rate scales linearly with the batch: optim.lr "auto" is
# base_lr * batch_size / base_batch_size. Fine-tuning: PYSKL's 0.1 at batch 128 (0.0125 at 16).
# Pre-training: the paper's Adam 1.5e-4 (GraphMAE's graph-classification recipe) at this
# library's default batch 16 (the paper's "batch 1024" names no unit: graphs, clips or samples).
DIST_TIMEOUT = 600  # s: a compiling or checkpointing process keeps the others waiting for less
CLIP_LEN = 64  # data.clip_len of a pre-training, and of a fine-tuning that starts from no trunk
_DATA = {"source": None, "layout": AUTO, "clip_len": CLIP_LEN, "num_person": AUTO, "feats": ["j"],
         "with_score": False, "augment": True, "augmentation": dict(AUGMENTATION), "workers": AUTO,
         "repeat": AUTO}
_TRAIN = {"work_dir": None, "epochs": 50, "batch_size": 16, "seed": 0, "device": AUTO, "threads": AUTO,
          "amp": False, "amp_dtype": "bfloat16", "compile": False, "save_every": 10, "save_every_steps": 0,
          "log_every_steps": 50, "resume": AUTO,
          # several processes (torchrun): SyncBatchNorm, and the seconds a collective may wait
          "sync_bn": False, "dist_timeout": DIST_TIMEOUT}

# The model section of each pre-training objective (model.objective, which picks the defaults):
# "frame", the paper's per-frame SkeletonMAE; "trunk", the STRL trunk's (TrunkMAE: masked tubes
# of joints over time, motion target, MAMP's 90% masking).
PRETRAIN_MODELS = {
    "frame": {"embed_dim": 64, "num_layers": 3, "mask_strategy": "parts", "mask_parts": [3, 5], "target": "centred",
              "loss": "cosine", "remask": False},
    "trunk": {"embed_dim": 64, "num_layers": 3, "num_strl_layers": 3, "mask_ratio": 0.9, "chunk": 4,
              "target": "motion"},
}
# ... and its optimiser settings over DEFAULTS["pretrain"]["optim"]: the trunk's were measured
# (docs/study.md, "Every objective, paired against scratch"): at 1.5e-4 constant its loss barely
# moved in 30 epochs.
PRETRAIN_OPTIM = {
    "frame": {},
    "trunk": {"base_lr": 1e-3, "schedule": "cosine", "warmup_epochs": 1},
}
DEFAULTS = {
    # docs/design.md section 5: Adam 1.5e-4, no weight decay, no schedule; the paper's 50 epochs.
    "pretrain": {
        "data": dict(_DATA, split=None),
        "model": dict(objective="frame", **PRETRAIN_MODELS["frame"]),
        "optim": {"optimizer": "adam", "lr": AUTO, "base_lr": 1.5e-4, "base_batch_size": 16,
                  "args": {"weight_decay": 0.0}, "schedule": "constant", "warmup_epochs": 0,
                  "clip_grad_norm": None},
        "train": dict(_TRAIN),
    },
    # docs/design.md section 6 (SGD Nesterov, cosine schedule, label smoothing 0.1) as measured to
    # generalise (docs/study.md, "The classifier that learns"): weight decay 1e-3,
    # dropout 0.5 before the head, 15 epochs with 1 of warm-up (the paper: 110 and 5; 30 overfit
    # the training split: docs/study.md, "The fine-tuning schedule"). The encoder's
    # widths ("auto") are the pre-trained checkpoint's (else the model's defaults).
    "finetune": {
        # clip_len "auto": a pre-trained trunk's (resolve_clip_len)
        "data": dict(_DATA, train_split=None, val_split=None, label_fraction=1.0, val_clips=1, clip_len=AUTO),
        "model": {"embed_dim": AUTO, "num_layers": AUTO, "num_strl_layers": 3, "freeze_encoder": False,
                  "dropout": 0.5},
        "optim": {"optimizer": "sgd", "lr": AUTO, "base_lr": 0.1, "base_batch_size": 128,
                  "args": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}, "schedule": "cosine",
                  "warmup_epochs": 1, "clip_grad_norm": None, "label_smoothing": 0.1, "encoder_lr_scale": 1.0},
        "train": dict(_TRAIN, epochs=15, pretrained=None, val_every=1),
    },
    # PYSKL's test protocol: 10 clips, softmax probabilities averaged.
    "test": {"data": None, "split": None, "checkpoint": None, "num_clips": 10, "out": None, "batch_size": 16,
             "device": AUTO, "workers": AUTO, "dist_timeout": DIST_TIMEOUT},
    "extract": {"data": None, "split": None, "checkpoint": None, "out": None, "num_clips": 1, "batch_size": 16,
                "device": AUTO, "workers": AUTO, "dist_timeout": DIST_TIMEOUT},
    # Wu et al. 2018's weighted KNN (cosine similarity, votes exp(s / temperature)), as SSL papers report it.
    "knn": {"train": None, "test": None, "k": 20, "temperature": 0.07},
    "ensemble": {"scores": None, "weights": None},
}
REQUIRED = {
    "pretrain": ["data.source", "data.split", "train.work_dir"],
    "finetune": ["data.source", "data.train_split", "data.val_split", "train.work_dir"],
    "test": ["data", "split", "checkpoint"],
    "extract": ["data", "split", "checkpoint", "out"],
    "knn": ["train", "test"],
    "ensemble": ["scores"],
}
FREE_FORM = ("model", "optim.args")  # keyword arguments handed on as they are
LEAF_DICTS = FREE_FORM + ("data.augmentation",)  # dict-valued options
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULES = ("constant", "cosine")
FEATS = ("j", "b", "jm", "bm")
AMP_DTYPES = ("bfloat16", "float16")
# train.compile: false, true (torch.compile's default mode) or a torch.compile mode;
# "reduce-overhead" replays the compiled step's kernels as CUDA graphs on a GPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# Bounds of the model's sizes: far above any recipe's (3 layers, 64 wide), below what would
# take the machine's memory and minutes before the first step.
MAX_LAYERS, MAX_WIDTH = 64, 4096
MAX_PERSONS = 2  # num_person "auto" pads to the data's largest count, at most PYSKL's 2
# data.repeat "auto": a small training split (a label fraction, a small dataset) is passed over
# several times an epoch, so that an epoch is at least this many samples (PYSKL's RepeatDataset)
# and the epochs of the recipes mean about as many steps on any data.
REPEAT_TO = 2000


class ConfigError(ValueError):
    """A configuration value that cannot be used; ``key`` is its dotted name."""

    def __init__(self, key, message):
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


# ---------------------------------------------------------------------------------------------
# Checks of single values: each returns the value (normalised) or raises ValueError(what is expected)


def _integer(low, high=None):
    def check(value):
        if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low
                or (high is not None and value > high)):
            raise ValueError(f"must be an integer {f'in {low}..{high}' if high is not None else f'>= {low}'}, "
                             f"got {value!r}")
        return int(value)
    return check


def _real(low=0.0, high=None, closed=False):
    """A number above ``low`` (or equal to it when ``closed``), at most ``high``."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if not (value >= low if closed else value > low) or (high is not None and value > high):
            bound = ("[" if closed else "(") + f"{low:g}, {high:g}]" if high is not None else \
                (">= " if closed else "> ") + f"{low:g}"
            raise ValueError(f"must be {'in ' if high is not None else ''}{bound}, got {value!r}")
        return float(value)
    return check


def _auto_or(check):
    return lambda value: value if value == AUTO else check(value)


def _optional(check):
    return lambda value: None if value is None else check(value)


def _of_type(kind, expected):
    def check(value):
        if not isinstance(value, kind) or value == "":
            raise ValueError(f"must be {expected}, got {value!r}")
        return value
    return check


_boolean = _of_type(bool, "true or false")
_mapping = _of_type(dict, "a mapping of keyword arguments")


def _text(value):
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"must be a non-empty string or path, got {value!r}")
    return str(value)


def _choice(*choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {list(choices)}, got {value!r}")
        return value
    return check


def _list(item, name):
    def check(value):
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"must be a list of {name}, got {value!r}")
        return [item(entry) for entry in value]
    return check


def _augmentation(value):
    if not isinstance(value, dict) or set(value) != set(AUGMENTATION):
        raise ValueError(f"must give {sorted(AUGMENTATION)} (0 leaves one out), got {value!r}")
    return {name: _real(closed=True)(magnitude) for name, magnitude in value.items()}


def _device(value):
    if value == AUTO:
        return value
    try:
        return str(torch.device(value))
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}") from error


_positive_int, _count, _positive = _integer(1), _integer(0), _real()


def _compile(value):
    if isinstance(value, bool) or value in COMPILE_MODES:
        return value
    raise ValueError(f"must be true, false or one of {list(COMPILE_MODES)}, got {value!r}")


CHECKS = {
    "data.source": _text, "data.split": _text, "data.train_split": _text, "data.val_split": _text,
    "data.layout": lambda value: value if isinstance(value, dict) else _text(value), "data.clip_len": _auto_or(_positive_int), "data.num_person": _auto_or(_positive_int),
    "data.feats": _list(_choice(*FEATS), f"features {list(FEATS)}"), "data.with_score": _boolean,
    "data.augment": _boolean, "data.augmentation": _augmentation, "data.workers": _auto_or(_count),
    "data.repeat": _auto_or(_positive_int),
    "data.label_fraction": _real(0.0, 1.0), "data.val_clips": _positive_int,
    "model": _mapping, "model.num_layers": _auto_or(_integer(1, MAX_LAYERS)),
    "model.embed_dim": _auto_or(_integer(1, MAX_WIDTH)),
    "optim.optimizer": _choice(*OPTIMIZERS), "optim.lr": _auto_or(_positive), "optim.base_lr": _positive,
    "optim.base_batch_size": _positive_int, "optim.args": _mapping, "optim.schedule": _choice(*SCHEDULES),
    "optim.args.weight_decay": _real(closed=True), "optim.args.momentum": _real(closed=True),
    "optim.warmup_epochs": _real(closed=True), "optim.clip_grad_norm": _optional(_positive),
    "optim.label_smoothing": _real(0.0, 0.999, closed=True), "optim.encoder_lr_scale": _positive,
    "train.work_dir": _text, "train.epochs": _positive_int, "train.batch_size": _positive_int,
    "train.seed": _count, "train.device": _device, "train.threads": _auto_or(_positive_int),
    "train.amp": _boolean, "train.amp_dtype": _choice(*AMP_DTYPES), "train.compile": _compile,
    "train.save_every": _count, "train.save_every_steps": _count, "train.log_every_steps": _positive_int,
    "train.resume": lambda value: value if value in (AUTO, False) else _text(value),
    "train.pretrained": _optional(_text), "train.val_every": _count, "train.sync_bn": _boolean,
    "train.dist_timeout": _positive,
    # the evaluation commands
    "data": _text, "split": _text, "checkpoint": _text, "num_clips": _positive_int, "out": _optional(_text),
    "batch_size": _positive_int, "device": _device, "workers": _auto_or(_count), "dist_timeout": _positive,
    "train": _text, "test": _text, "k": _positive_int, "temperature": _positive,
    "scores": _list(_text, "paths"), "weights": _optional(_list(_real(closed=True), "numbers >= 0")),
}


# ---------------------------------------------------------------------------------------------
# Building a configuration


def defaults(command):
    """A fresh copy of ``command``'s defaults."""
    if command not in DEFAULTS:
        raise ConfigError(None, f"unknown command {command!r}; known: {sorted(DEFAULTS)}")
    return copy.deepcopy(DEFAULTS[command])


class _PlainLoader(yaml.SafeLoader):
    """safe_load's YAML without aliases: nested aliases expand to billions of values (a
    configuration writes its values out)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "an alias (*name): write the value out instead",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


# YAML 1.1 reads an exponent without a decimal point (1e-3, 5E4) as a string; YAML 1.2 and
# Python as a number, which is what a learning rate written that way means.
_PlainLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))


def parse_yaml(stream):
    """The value of YAML text or a text stream: plain data, no tags, no aliases."""
    return yaml.load(stream, Loader=_PlainLoader)  # noqa: S506  (a SafeLoader)


def load_yaml(path):
    """The mapping in a YAML file."""
    if not os.path.isfile(path):
        raise ConfigError("--config", f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = parse_yaml(handle)
    except UnicodeDecodeError as error:
        raise ConfigError("--config", f"{path} is not a text file ({error.reason} at byte {error.start}): pass a "
                                      "YAML file") from error
    except yaml.YAMLError as error:
        raise ConfigError("--config", f"{path} is not valid YAML ({' '.join(str(error).split())})") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of options, got {type(loaded).__name__}")
    return loaded


def merge(base, update, prefix=""):
    """``update`` merged into a copy of ``base``; a key ``base`` does not have is an error, except
    inside the free-form sections (keyword arguments)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{prefix}{key}"
        free = prefix.rstrip(".") in FREE_FORM or name in FREE_FORM
        if key not in merged and not free:
            close = difflib.get_close_matches(str(key), [str(k) for k in merged], n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known: {sorted(merged)}"
            raise ConfigError(name, f"unknown option{hint}")
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value, f"{name}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def nest(dotted):
    """``{"train.epochs": 3}`` as ``{"train": {"epochs": 3}}``."""
    nested = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return nested


def build(command, *updates):
    """``command``'s defaults with each update (nested dicts: a YAML file's, the command line's)
    merged in order, checked. A pre-training's model and optimiser defaults are its objective's
    (the last update's model.objective)."""
    config = defaults(command)
    if command == "pretrain":
        objective = next((update["model"]["objective"] for update in reversed(updates)
                          if isinstance(update.get("model"), dict) and "objective" in update["model"]), "frame")
        if not isinstance(objective, str) or objective not in PRETRAIN_MODELS:
            raise ConfigError("model.objective", f"must be one of {list(PRETRAIN_MODELS)}, got {objective!r}")
        config["model"] = dict(objective=objective, **copy.deepcopy(PRETRAIN_MODELS[objective]))
        config["optim"].update(PRETRAIN_OPTIM[objective])
    for update in updates:
        config = merge(config, update)
    return check(command, config)


def check(command, config):
    """``config`` with every value checked (and normalised); the required ones present."""
    config = copy.deepcopy(config)
    for key in REQUIRED[command]:
        if _get(config, key) is None:
            raise ConfigError(key, "is required")
    for key, value in _flatten(config, DEFAULTS[command]):
        _check_value(config, key, value)
        if key in FREE_FORM:  # the few keyword arguments with a check of their own
            for name, entry in _get(config, key).items():
                _check_value(config, f"{key}.{name}", entry)
    return config


def _check_value(config, key, value):
    if key in CHECKS:
        try:
            _set(config, key, CHECKS[key](value))
        except ValueError as error:
            raise ConfigError(key, str(error)) from None


def _flatten(config, sections, prefix=""):
    """(dotted key, value) of each option; the sections' dicts (not the leaf dicts) opened."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(sections.get(key), dict) and name not in LEAF_DICTS:
            yield from _flatten(value, sections[key], f"{name}.")
        else:
            yield name, value


def _get(config, key):
    for part in key.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def _set(config, key, value):
    *parents, last = key.split(".")
    for parent in parents:
        config = config[parent]
    config[last] = value


def to_yaml(config):
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------------
# "auto" values


def resolve_device(device, amp=False, key="device"):
    """"auto": the GPU when one is visible, else the CPU; a GPU asked for must exist; AMP needs one."""
    device = torch.device("cuda" if device == AUTO and torch.cuda.is_available() else "cpu" if device == AUTO
                          else device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, f"{device} was asked for but no CUDA GPU is visible: use --device cpu")
    if amp and device.type != "cuda":
        raise ConfigError("train.amp", f"--amp (bfloat16 / float16 autocast) needs a CUDA GPU, and this run is on "
                                       f"{device}: drop --amp")
    return device


def resolve_workers(workers, device):
    """Loader worker processes; "auto": none on the CPU (the loader then runs between steps in
    the training process, which on few cores is faster than a worker competing with the
    compute threads: benchmarks/README.md, "Training epochs"), the data layer's default beside a GPU."""
    if workers != AUTO:
        return workers
    from ..data import default_workers
    return default_workers() if device.type == "cuda" else 0


def resolve_clip_len(clip_len, trunk_frames=None):
    """data.clip_len, or for "auto" a pre-trained trunk's clip length (its position embeddings
    fit no other), else CLIP_LEN."""
    return clip_len if clip_len != AUTO else trunk_frames or CLIP_LEN


def resolve_lr(optim, batch_size):
    """optim.lr, or base_lr scaled linearly by batch_size / base_batch_size."""
    return optim["lr"] if optim["lr"] != AUTO else optim["base_lr"] * batch_size / optim["base_batch_size"]
