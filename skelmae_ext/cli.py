"""The ``skelmae`` command line (also ``python -m skelmae_ext``): parsing, configuration files
(``--config FILE``, then the options given, which win), ``--print-config``, one-line errors
(exit status 2; ``--debug`` shows the traceback) and exit status 130 after Ctrl-C. Each command
calls ``skelmae_ext.train`` (or the data layer's ``describe``) and prints its result.

``plot`` and ``demo`` take their own few options (``skelmae_ext.plot``, ``skelmae_ext.demo``).

Every option maps to one configuration key (``--epochs`` to ``train.epochs``); ``--set KEY=VALUE``
sets any key, such as a model argument without an option of its own (``--set model.beta=3``).
"""

import argparse
import json
import sys
import traceback

import yaml
from torch.distributed.elastic.multiprocessing.errors import record

from skelmae_reference.models import LOSSES, MASK_STRATEGIES, TARGETS
from skelmae_reference.trunk import TRUNK_TARGETS

from . import demo, plot
from .data import DataError, describe, format_description
from .train import (CheckpointError, ConfigError, Diverged, distributed, ensemble, evaluate, extract, finetune, info,
                    knn, pretrain)
from .train.config import COMPILE_MODES, DEFAULTS, FEATS, PRETRAIN_MODELS, build, load_yaml, nest, parse_yaml, to_yaml
from .train.finetuning import plan as finetune_plan
from .train.pretraining import plan as pretrain_plan


def _auto_int(text):
    return text if text == "auto" else int(text)


# (flags, key, argparse keywords); the help shows each key's default from config.DEFAULTS
_RUN = [
    ("--data", "data.source", dict(metavar="SRC", help="skeleton data: a PYSKL pickle, a CTR-GCN .npz or a folder "
                                                       "of NTU .skeleton files")),
    ("--work-dir", "train.work_dir", dict(metavar="DIR", help="where the run keeps config, logs and checkpoints")),
    ("--layout", "data.layout", dict(metavar="NAME|FILE.json", help="skeleton layout (auto: from the joint count)")),
    ("--clip-len", "data.clip_len", dict(type=int, metavar="T", help="frames per clip")),
    ("--num-person", "data.num_person", dict(type=_auto_int, metavar="M",
                                             help="persons per sample (auto: the most in the data, at most 2)")),
    ("--feats", "data.feats", dict(nargs="+", choices=FEATS, help="input features: joint, bone, and their motions")),
    ("--workers", "data.workers", dict(type=_auto_int, metavar="K", help="loader worker processes")),
    ("--repeat", "data.repeat", dict(type=_auto_int, metavar="R", help="passes over the training split an epoch "
                                                                       "(auto: enough for 2000 samples)")),
    ("--epochs", "train.epochs", dict(type=int)),
    ("--batch-size", "train.batch_size", dict(type=int)),
    ("--lr", "optim.lr", dict(type=float, help="learning rate (auto: base_lr scaled by batch / base_batch_size)")),
    ("--weight-decay", "optim.args.weight_decay", dict(type=float)),
    ("--warmup-epochs", "optim.warmup_epochs", dict(type=float)),
    ("--embed-dim", "model.embed_dim", dict(type=int, metavar="D")),
    ("--num-layers", "model.num_layers", dict(type=int, metavar="L", help="GIN encoder layers")),
    ("--device", "train.device", dict(metavar="DEVICE", help="auto, cpu, cuda or cuda:N")),
    ("--seed", "train.seed", dict(type=int)),
    ("--threads", "train.threads", dict(type=_auto_int, metavar="N", help="torch's CPU threads")),
    ("--amp", "train.amp", dict(action="store_const", const=True, help="bfloat16 autocast (CUDA)")),
    ("--compile", "train.compile", dict(nargs="?", const=True, choices=COMPILE_MODES, metavar="MODE",
                                        help="torch.compile the model; MODE: default, reduce-overhead (CUDA graphs "
                                             "on a GPU) or max-autotune")),
    ("--save-every", "train.save_every", dict(type=int, metavar="N", help="epoch_N.pth every N epochs (0: never)")),
    ("--save-every-steps", "train.save_every_steps", dict(type=int, metavar="N", help="latest.pth every N steps too")),
    ("--log-every-steps", "train.log_every_steps", dict(type=int, metavar="N")),
    ("--resume", "train.resume", dict(metavar="CKPT", help="resume from this checkpoint (auto: the work dir's "
                                                           "latest.pth)")),
    ("--no-resume", "train.resume", dict(action="store_const", const=False, help="start over")),
    ("--sync-bn", "train.sync_bn", dict(action="store_const", const=True, help="under torchrun: BatchNorm "
                                                                                "statistics of the global batch")),
    ("--dist-timeout", "train.dist_timeout", dict(type=float, metavar="S", help="under torchrun: seconds a "
                                                                                "process waits for the others")),
]
OPTIONS = {
    "pretrain": _RUN + [
        ("--split", "data.split", dict(help="the split to pre-train on")),
        ("--mask-strategy", "model.mask_strategy", dict(choices=MASK_STRATEGIES)),
        ("--mask-parts", "model.mask_parts", dict(type=int, nargs="+", metavar="P", help="body parts masked")),
        ("--num-mask-parts", "model.num_mask_parts", dict(type=int, metavar="N", help="parts drawn per graph "
                                                                                      "(random_parts)")),
        ("--objective", "model.objective", dict(choices=list(PRETRAIN_MODELS), help="frame: the paper's per-frame "
                                                "SkeletonMAE; trunk: masked tubes over the whole STRL trunk")),
        ("--mask-ratio", "model.mask_ratio", dict(type=float, metavar="R", help="share of the joints drawn per graph "
                                                                                "(random_joints), of the tubes (trunk)")),
        ("--chunk", "model.chunk", dict(type=int, metavar="K", help="frames per masked tube (trunk)")),
        ("--target", "model.target", dict(choices=TARGETS + TRUNK_TARGETS, help="reconstruction target (frame: input, "
                                          "centred or embedding; trunk: motion, position or both)")),
        ("--loss", "model.loss", dict(choices=LOSSES, help="reconstruction error")),
        ("--remask", "model.remask", dict(action="store_const", const=True, help="the decoder sees masked joints' "
                                                                                 "codes as zeros (the paper)")),
    ],
    "finetune": _RUN + [
        ("--train-split", "data.train_split", dict()),
        ("--val-split", "data.val_split", dict()),
        ("--pretrained", "train.pretrained", dict(metavar="CKPT|WORK_DIR|NAME", help="a pre-training checkpoint, its "
                                                                                     "work directory, or coco17 (shipped)")),
        ("--label-fraction", "data.label_fraction", dict(type=float, metavar="F",
                                                         help="class-balanced share of the training labels")),
        ("--freeze-encoder", "model.freeze_encoder", dict(action="store_const", const=True,
                                                          help="linear probe: pre-trained encoder frozen")),
        ("--val-clips", "data.val_clips", dict(type=int)),
        ("--val-every", "train.val_every", dict(type=int, metavar="N",
                                                help="validate every N epochs and after the last (0: after the last only)")),
        ("--label-smoothing", "optim.label_smoothing", dict(type=float)),
        ("--encoder-lr-scale", "optim.encoder_lr_scale", dict(type=float, metavar="F",
                                                              help="the pre-trained parts' learning rate, times the "
                                                                   "head's (1: the same)")),
    ],
    "test": [
        ("--data", "data", dict(metavar="SRC")), ("--split", "split", dict()),
        ("--checkpoint", "checkpoint", dict(metavar="CKPT|WORK_DIR")),
        ("--num-clips", "num_clips", dict(type=int, metavar="K", help="test clips, softmax averaged")),
        ("--out", "out", dict(metavar="SCORES.pkl", help="score dump (default: scores_SPLIT.pkl beside the "
                                                         "checkpoint)")),
        ("--batch-size", "batch_size", dict(type=int)), ("--device", "device", dict(metavar="DEVICE")),
        ("--workers", "workers", dict(type=_auto_int)),
        ("--dist-timeout", "dist_timeout", dict(type=float, metavar="S", help="under torchrun: seconds a process "
                                                                              "waits for the others")),
    ],
    "knn": [
        ("--train", "train", dict(metavar="FEATS.npz")), ("--test", "test", dict(metavar="FEATS.npz")),
        ("--k", "k", dict(type=int)), ("--temperature", "temperature", dict(type=float)),
    ],
    "ensemble": [
        ("--scores", "scores", dict(nargs="+", metavar="SCORES.pkl")),
        ("--weights", "weights", dict(nargs="+", type=float, help="default: 2 2 1 1 for four dumps, else equal")),
    ],
}
OPTIONS["extract"] = [option for option in OPTIONS["test"] if option[0] != "--out"] + [
    ("--out", "out", dict(metavar="FEATS.npz"))]
SUMMARIES = {
    "pretrain": "pre-train SkeletonMAE",
    "finetune": "fine-tune the SSL classifier (or probe with --freeze-encoder)",
    "test": "top-1, top-5, mean class accuracy of a fine-tuned checkpoint; score dump",
    "extract": "pooled features of a checkpoint as .npz",
    "knn": "KNN accuracy of extracted features",
    "ensemble": "fuse score dumps (multi-stream)",
    "describe": "what a skeleton data file holds",
    "info": "versions, kernels, CPU and GPUs",
    "plot": "figures of a work directory: training curves, confusion matrix, reconstruction, t-SNE",
    "demo": "pre-train, fine-tune, compare with training from scratch and draw the figures, on the bundled data",
}
RUNS = {"pretrain": (pretrain, pretrain_plan), "finetune": (finetune, finetune_plan)}
CALLS = {"test": evaluate, "extract": extract, "knn": knn, "ensemble": ensemble}


def _default(command, key):
    node = DEFAULTS[command]
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _plot_arguments(sub):
    sub.add_argument("work_dir", metavar="WORK_DIR", help="the work directory of a skelmae run")
    sub.add_argument("--kind", choices=plot.KINDS + ("all",), default="all",
                     help="the figure (all: every one the work directory has the inputs of) [default all]")
    sub.add_argument("--out", metavar="DIR", help="where the PNGs go [default WORK_DIR]")
    sub.add_argument("--data", metavar="SRC", help="reconstruction: the data [default the pre-training's]")
    sub.add_argument("--split", help="reconstruction: the split [default the pre-training's]")
    sub.add_argument("--sample", default="0", metavar="INDEX|FRAME_DIR",
                     help="reconstruction: the sequence, by index in the split or name [default 0]")
    sub.add_argument("--frames", type=int, default=4, metavar="K", help="reconstruction: frames shown [default 4]")


def _demo_arguments(sub):
    sub.add_argument("--work-dir", default=demo.WORK_DIR, metavar="DIR",
                     help=f"where the runs and figures go; its runs start over [default {demo.WORK_DIR}]")
    sub.add_argument("--quick", action="store_true", help="a tiny budget (under a minute: a smoke test, for CI)")
    sub.add_argument("--config", metavar="FILE.yaml",
                     help="the budget [default skelmae_ext/configs/demo.yaml, with --quick demo_quick.yaml]")
    sub.add_argument("--threads", type=_auto_int, default="auto", metavar="N",
                     help="torch's CPU threads (1 on a machine busy with other work) [default auto]")
    sub.add_argument("--seed", type=int, default=0, metavar="N", help="[default 0]")
    sub.add_argument("--force", action="store_true", help="run in a --work-dir that holds other files (the demo's "
                                                          "overwrite theirs of the same name)")


OWN_ARGUMENTS = {"describe": lambda sub: (sub.add_argument("source", metavar="SRC"),
                                          sub.add_argument("--json", action="store_true",
                                                           help="print the summary as JSON")),
                 "info": lambda sub: None, "plot": _plot_arguments, "demo": _demo_arguments}


def build_parser():
    parser = argparse.ArgumentParser(prog="skelmae", description="SkeletonMAE pre-training, fine-tuning and "
                                     "evaluation (skelmae_ext)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, summary in SUMMARIES.items():
        sub = commands.add_parser(command, help=summary, description=summary)
        sub.add_argument("--debug", action="store_true", help="show the traceback of an error")
        if command in OWN_ARGUMENTS:
            OWN_ARGUMENTS[command](sub)
            continue
        sub.add_argument("--config", metavar="FILE.yaml", help="options from a YAML file (the command line wins)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="set any configuration key (VALUE in YAML), e.g. model.beta=3")
        sub.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
        for flags, key, keywords in OPTIONS[command]:
            default = _default(command, key)
            keywords = dict(keywords, dest=key, default=argparse.SUPPRESS)
            shown = f"; default {default}" if default is not None and keywords.get("action") != "store_const" else ""
            keywords["help"] = f"{keywords.get('help', '')} [{key}{shown}]".lstrip()
            if "action" not in keywords and "choices" not in keywords:
                keywords.setdefault("metavar", {int: "N", float: "X"}.get(keywords.get("type"), "NAME"))
            sub.add_argument(flags, **keywords)
    return parser


def _updates(command, args):
    """The configuration updates of a command line: the YAML file's, then --set, then the options."""
    updates = [load_yaml(args.config)] if args.config else []
    for assignment in args.set:
        key, equals, value = assignment.partition("=")
        if not equals or not key:
            raise ConfigError("--set", f"expected KEY=VALUE, got {assignment!r}")
        try:
            updates.append(nest({key: parse_yaml(value)}))
        except yaml.YAMLError as error:
            raise ConfigError("--set", f"{assignment!r}: the value is not plain YAML ({' '.join(str(error).split())})"
                              ) from None
    given = {key: value for key, value in vars(args).items() if "." in key or key in DEFAULTS[command]}
    updates.append(nest(given))
    return updates


def run(args):
    """The command's result (a dict), or None when it printed the configuration."""
    if args.command == "info":
        return info()
    if args.command == "describe":
        return describe(args.source)
    if args.command == "plot":
        return plot.plot(args.work_dir, args.kind, args.out, args.data, args.split, args.sample, args.frames)
    if args.command == "demo":
        demo.demo(args.work_dir, quick=args.quick, config=args.config, threads=args.threads, seed=args.seed,
                  force=args.force)
        return None
    config = build(args.command, *_updates(args.command, args))
    if args.command in RUNS:
        execute, plan = RUNS[args.command]
        if args.print_config:
            print(to_yaml(plan(config).config), end="")
            return None
        return execute(config)
    if args.print_config:
        print(to_yaml(config), end="")
        return None
    return CALLS[args.command](**config)


def _flag(command, key):
    return next((flags for flags, option_key, _ in OPTIONS.get(command, []) if option_key == key), None)


# What a path was expected to be, by the error the system gave for it
_OS_EXPECTED = {IsADirectoryError: "expected a file, found a directory",
                NotADirectoryError: "expected a directory, found a file (or a file on the path)",
                FileExistsError: "expected a directory (or no file), found a file",
                FileNotFoundError: "no such file or directory (a folder on the path is missing?)",
                PermissionError: "permission denied: choose a path this user may read and write"}


def _os_message(error):
    """One line of a file system error: the path, what was expected and what the system said."""
    path = f"{error.filename}: " if error.filename is not None else ""
    expected = next((text for kind, text in _OS_EXPECTED.items() if isinstance(error, kind)), None)
    return f"{path}{expected or error.strerror or error} ({type(error).__name__}, errno {error.errno})"


def main(argv=None):
    # under torchrun, torch's @record hands an unexpected error's traceback to torchrun's summary
    return (record(_main) if distributed.launched() else _main)(argv)


def _main(argv):
    args = build_parser().parse_args(argv)
    who = f"skelmae {args.command}" + (f" (rank {distributed.rank()})" if distributed.launched() else "")
    try:
        result = run(args)
    except KeyboardInterrupt as interrupt:
        print(f"{who}: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return 130
    except (ConfigError, DataError, CheckpointError, Diverged, plot.PlotError, OSError, MemoryError) as error:
        if args.debug:
            traceback.print_exc()
        message = str(error)
        if isinstance(error, ConfigError) and _flag(args.command, error.key):
            message = f"{_flag(args.command, error.key)} ({error.key}): {error.message}"
        elif isinstance(error, OSError):
            message = _os_message(error)
        elif isinstance(error, MemoryError):
            message = "out of memory: lower --batch-size or --workers, or use a machine with more memory"
        print(f"{who}: error: {message}", file=sys.stderr)
        return 2
    distributed.stop()
    if result is not None and distributed.is_main():
        if args.command == "describe" and not args.json:
            print(format_description(result))
        elif args.command == "plot":
            for kind, why in result["skipped"].items():
                print(f"skelmae plot: no {kind} figure: {why}", file=sys.stderr)
            print("\n".join(result["figures"]))
        else:
            print(json.dumps(result, indent=2 if args.command == "info" else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
