"""Pre-trained SkeletonMAE encoders shipped with the package, by name: ``skelmae finetune
--pretrained coco17`` and ``SSLClassifier(...).from_pretrained("coco17")``. Each is a skelmae
pre-training checkpoint without its training state (optimizer, random generators), so
everything that takes a pre-training checkpoint takes it; README.md in this folder says what
data and recipe made each one.
"""

import os

import torch

FOLDER = os.path.dirname(os.path.abspath(__file__))
# name -> file in this folder
ENCODERS = {"coco17": "coco17.pth"}
# what a shipped checkpoint keeps of a pre-training checkpoint
KEPT = ("format", "kind", "model", "model_class", "model_args", "layout", "class_names", "epoch", "step", "config",
        "versions")


def path(name):
    """The file of the shipped encoder ``name``."""
    if name not in ENCODERS:
        raise ValueError(f"no shipped encoder {name!r}: the package has {sorted(ENCODERS)}")
    return os.path.join(FOLDER, ENCODERS[name])


def resolve(source):
    """``source`` itself, or the file of a shipped encoder when it names one and no file or
    folder of that name exists."""
    if isinstance(source, str) and source in ENCODERS and not os.path.exists(source):
        return path(source)
    return source


def export(checkpoint, out):
    """Writes the pre-training ``checkpoint`` (a path) to ``out`` without its training state,
    in float32 (a few hundred KB for the default widths)."""
    from ..train.checkpoint import load  # here: skelmae_ext.train imports this module

    state = load(checkpoint)
    if state["kind"] != "pretrain":
        raise ValueError(f"{checkpoint}: a {state['kind']!r} checkpoint; a pre-training one is needed")
    kept = {key: state[key] for key in KEPT if key in state}
    kept["model"] = {key: value.float() if value.is_floating_point() else value for key, value in state["model"].items()}
    torch.save(kept, out)
    return out
