"""``skelmae demo``: the library's whole job on the bundled data (``skelmae_ext.data.BUNDLED``,
Bandai-Namco motions as COCO-17 2D keypoints, 10 classes) in a few minutes on a CPU:

1. pre-train SkeletonMAE on the training split, without its labels;
2. fine-tune the SSL classifier on a small class-balanced share of the training labels, once
   from the pre-trained encoder and once from scratch, with the same budget and seed (so the
   same labelled sequences);
3. test both on the validation split (softmax averaged over clips), each after its last epoch;
4. extract the pre-trained encoder's features of the validation split;
5. draw every figure of ``skelmae_ext.plot`` into ``WORK_DIR/figures``;

and print both accuracies, their difference and where the figures are. The runs are ordinary
work directories (``WORK_DIR/pretrain``, ``finetune_pretrained``, ``finetune_scratch``): every
other command takes them. The budget is a YAML file, ``skelmae_ext/configs/demo.yaml`` (and
``demo_quick.yaml`` for ``--quick``); ``demo(config=...)`` and ``skelmae demo --config`` take a
copy.
"""

import collections
import copy
import os
import time

from . import configs, plot
from .data import BUNDLED, load_annotations, save_annotations
from .train import ConfigError, evaluate, extract, finetune, pretrain
from .train.config import DEFAULTS, build, load_yaml
from .train.workdir import LATEST

WORK_DIR = "skelmae-demo"
MARK = ".skelmae-demo"  # marks a directory the demo made: a later demo may start its runs over there
TRAIN_SPLIT, VAL_SPLIT = "xstyle_train", "xstyle_val"
FEATURES = f"features_{VAL_SPLIT}.npz"  # the pre-trained encoder's, in its work directory
RECONSTRUCTED_CLASS = "wave-right-hand"  # the figure's sequence: its right arm, a masked part, moves


SECTIONS = ("per_class", "pretrain", "finetune", "test")  # the keys of a demo configuration
TEST_OPTIONS = ("num_clips", "batch_size")


def load_config(config=None, quick=False):
    """The demo configuration ``config`` (a YAML file's path or a dict; default the shipped
    demo.yaml, or demo_quick.yaml with ``quick``), checked: unknown keys are errors naming them."""
    if config is None:
        config = configs.path("demo_quick" if quick else "demo")
    loaded = copy.deepcopy(config) if isinstance(config, dict) else load_yaml(config)
    where = config if isinstance(config, str) else "the demo configuration"
    for key, allowed in ((None, SECTIONS), ("test", TEST_OPTIONS)):
        section = loaded if key is None else loaded.get(key) or {}
        unknown = sorted(set(section) - set(allowed))
        if unknown:
            raise ConfigError("--config", f"{where}: unknown key {(key + '.') if key else ''}{unknown[0]}; "
                              f"known: {list(allowed)}")
    missing = [key for key in SECTIONS if key not in loaded]
    if missing:
        raise ConfigError("--config", f"{where}: missing {missing[0]} (demo.yaml has every key)")
    return loaded


def _subset(source, per_class, path):
    """The first ``per_class`` sequences of each class of each split of ``source``, written to
    ``path`` as a PYSKL pickle (the splits and classes keep their names)."""
    data = load_annotations(source)
    label = {a["frame_dir"]: a["label"] for a in data["annotations"]}
    splits = {}
    for split, names in data["split"].items():
        taken = collections.Counter()
        splits[split] = []
        for name in names:
            taken[label[name]] += 1
            if taken[label[name]] <= per_class:
                splits[split].append(name)
    kept = {name for names in splits.values() for name in names}
    save_annotations(dict(data, split=splits, annotations=[a for a in data["annotations"] if a["frame_dir"] in kept]),
                     path)
    return path


def _reconstructed_sample(data):
    """The first validation sequence of RECONSTRUCTED_CLASS (else the first one)."""
    wanted = data["classes"].index(RECONSTRUCTED_CLASS) if RECONSTRUCTED_CLASS in data["classes"] else None
    label = {a["frame_dir"]: a["label"] for a in data["annotations"]}
    return next((name for name in data["split"][VAL_SPLIT] if label[name] == wanted), 0)


def demo(work_dir=WORK_DIR, quick=False, config=None, threads="auto", seed=0, echo=print, force=False):
    """Runs the demo (see the module docstring) in ``work_dir`` with the demo configuration
    ``config`` (see load_config); ``echo`` prints its report. Returns the two test results, the
    figures' paths and the wall time in seconds. ``work_dir`` must be new, empty or an earlier
    demo's (whose runs start over), unless ``force``."""
    began = time.perf_counter()
    plot.require()  # before minutes of training, not after
    recipe = load_config(config, quick)
    claim_work_dir(work_dir, force)
    source = BUNDLED if recipe["per_class"] is None else _subset(BUNDLED, recipe["per_class"],
                                                                 os.path.join(work_dir, "data.pkl"))
    data = load_annotations(source)
    counts = {split: len(data["split"][split]) for split in (TRAIN_SPLIT, VAL_SPLIT)}
    runs = {name: os.path.join(work_dir, name) for name in ("pretrain", "finetune_pretrained", "finetune_scratch")}
    run_options = {"threads": threads, "seed": seed, "resume": False}
    test_options = dict({key: DEFAULTS["test"][key] for key in TEST_OPTIONS}, **(recipe["test"] or {}))
    # the configurations checked before minutes of training, not after
    pretraining = build("pretrain", recipe["pretrain"], {"data": {"source": source, "split": TRAIN_SPLIT},
                                                         "train": dict(run_options, work_dir=runs["pretrain"])})
    finetunings = {name: build("finetune", recipe["finetune"],
                               {"data": {"source": source, "train_split": TRAIN_SPLIT, "val_split": VAL_SPLIT},
                                "train": dict(run_options, work_dir=runs[name], pretrained=start)})
                   for name, start in (("finetune_pretrained", runs["pretrain"]), ("finetune_scratch", None))}
    budget = {"clip_len": pretraining["data"]["clip_len"], "pretrain_epochs": pretraining["train"]["epochs"],
              "finetune_epochs": finetunings["finetune_scratch"]["train"]["epochs"],
              "label_fraction": finetunings["finetune_scratch"]["data"]["label_fraction"],
              "test_clips": test_options["num_clips"]}
    echo(f"skelmae demo ({'quick: a smoke test' if quick else 'a small-budget demo'}): SkeletonMAE on the bundled "
         f"Bandai-Namco motions as COCO-17 2D keypoints ({len(data['classes'])} classes; CC BY-NC 4.0, "
         f"{os.path.dirname(BUNDLED)}), work directory {os.path.abspath(work_dir)}")

    echo(f"[1/4] pre-training SkeletonMAE on {TRAIN_SPLIT} ({counts[TRAIN_SPLIT]} sequences, labels unused), "
         f"{budget['pretrain_epochs']} epochs, clips of {budget['clip_len']} frames")
    pretrained = pretrain(pretraining)

    echo(f"[2/4] fine-tuning the SSL classifier on {budget['label_fraction']:.0%} of the {TRAIN_SPLIT} labels "
         f"(class-balanced), {budget['finetune_epochs']} epochs, from the pre-trained encoder and from scratch")
    for finetuning in finetunings.values():
        finetune(finetuning)

    echo(f"[3/4] testing both on {VAL_SPLIT} ({counts[VAL_SPLIT]} sequences, {budget['test_clips']} clips each)")
    # each run's last epoch (latest.pth), not its best.pth: that epoch was chosen on this split
    tests = {name: evaluate(source, VAL_SPLIT, os.path.join(runs[name], LATEST), **test_options)
             for name in ("finetune_pretrained", "finetune_scratch")}
    extract(source, VAL_SPLIT, runs["pretrain"], os.path.join(runs["pretrain"], FEATURES),
            batch_size=test_options["batch_size"])

    echo("[4/4] drawing the figures")
    figures_dir = os.path.join(work_dir, "figures")
    figures = draw(runs, figures_dir, budget, _reconstructed_sample(data))
    seconds = time.perf_counter() - began
    _report(echo, pretrained, tests, budget, counts, figures_dir, figures, seconds, quick)
    return {"pretrain": pretrained, "pretrained": tests["finetune_pretrained"], "scratch": tests["finetune_scratch"],
            "figures": figures, "seconds": seconds}


def claim_work_dir(work_dir, force):
    """Makes ``work_dir`` the demo's (marked by MARK), refusing a directory that holds other files."""
    if os.path.exists(work_dir) and not os.path.isdir(work_dir):
        raise ConfigError("--work-dir", f"{work_dir} is a file; expected a directory for the demo's runs")
    mark = os.path.join(work_dir, MARK)
    if os.path.isdir(work_dir) and os.listdir(work_dir) and not os.path.isfile(mark) and not force:
        raise ConfigError("--work-dir", f"{work_dir} holds files of something other than the demo, which would "
                                        "overwrite them: choose a new or empty directory, or pass --force")
    os.makedirs(work_dir, exist_ok=True)
    with open(mark, "w", encoding="utf-8") as handle:
        handle.write("skelmae demo work directory: the next demo here starts its runs over\n")


def draw(runs, figures_dir, budget, sample):
    """The demo's figures of its ``runs`` ({"pretrain", "finetune_pretrained",
    "finetune_scratch": work directory}) in ``figures_dir``; ``sample`` the reconstructed sequence."""
    pretrained_label, scratch_label = "from SkeletonMAE pre-training", "from scratch"
    return [
        plot.curves(runs["pretrain"], os.path.join(figures_dir, "curves_pretrain.png"),
                    title=f"SkeletonMAE pre-training on {TRAIN_SPLIT} (no labels): reconstruction loss"),
        plot.curves([runs["finetune_pretrained"], runs["finetune_scratch"]],
                    os.path.join(figures_dir, "curves_finetune.png"), labels=[pretrained_label, scratch_label],
                    title=f"Fine-tuning on {budget['label_fraction']:.0%} of the {TRAIN_SPLIT} labels: "
                          f"{pretrained_label} vs {scratch_label}"),
        plot.confusion(runs["finetune_pretrained"], os.path.join(figures_dir, "confusion_pretrained.png"),
                       title=f"Confusion matrix on {VAL_SPLIT}, fine-tuned {pretrained_label}"),
        plot.confusion(runs["finetune_scratch"], os.path.join(figures_dir, "confusion_scratch.png"),
                       title=f"Confusion matrix on {VAL_SPLIT}, fine-tuned {scratch_label}"),
        plot.reconstruction(runs["pretrain"], os.path.join(figures_dir, "reconstruction.png"), split=VAL_SPLIT,
                            sample=sample),
        plot.tsne(os.path.join(runs["pretrain"], FEATURES),
                  os.path.join(figures_dir, "tsne_pretrained_encoder.png")),
    ]


def _report(echo, pretrained, tests, budget, counts, figures_dir, figures, seconds, quick):
    with_pretraining, scratch = tests["finetune_pretrained"], tests["finetune_scratch"]
    difference = 100 * (with_pretraining["top1"] - scratch["top1"])
    echo("")
    echo(f"Test on {VAL_SPLIT} ({counts[VAL_SPLIT]} sequences, {budget['test_clips']} clips each) after the last of "
         f"{budget['finetune_epochs']} epochs of fine-tuning on {budget['label_fraction']:.0%} of the {TRAIN_SPLIT} labels:")
    for name, result in (("from SkeletonMAE pre-training", with_pretraining), ("from scratch", scratch)):
        echo(f"  {name:<31} top-1 {100 * result['top1']:5.1f}%   mean class accuracy "
             f"{100 * result['mean_class_accuracy']:5.1f}%")
    echo(f"  {'difference':<31} {difference:+.1f} points of top-1 "
         f"({'pre-training ahead' if difference > 0 else 'scratch ahead' if difference < 0 else 'a tie'})")
    echo(f"Pre-training: {budget['pretrain_epochs']} epochs on {counts[TRAIN_SPLIT]} sequences, last epoch's "
         f"reconstruction loss {pretrained['loss']:.3f}.")
    if quick:
        echo("This was the quick smoke test: its budget is far too small for the accuracies to mean anything.")
    else:
        echo("One run with one seed on a small budget: this shows the whole path working, not whether pre-training "
             "helps in general (for that, compare several seeds and budgets).")
    echo(f"Figures in {os.path.abspath(figures_dir)}:")
    for path in figures:
        echo(f"  {os.path.basename(path)}")
    minutes, rest = divmod(round(seconds), 60)
    echo(f"Wall time {minutes} min {rest} s.")
