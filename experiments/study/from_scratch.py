"""Trains the SSL classifier from scratch with the library's default fine-tuning recipe and
prints validation top-1 per epoch, beside the logistic-regression floor (floor.py):

    python experiments/study/from_scratch.py DATA.pkl TRAIN_SPLIT VAL_SPLIT [--clip-len 32]
        [--epochs 30] [--seeds 0 1 2] [--work-dir runs/from_scratch] [--threads 1]
        [--set model.pooling=sum ...]

Each seed is one ``skelmae finetune`` run (skelmae_ext.train.finetune) in its own work
directory; the script then checks what the recipe must give: no NaN, the best top-1
against the floor, and the largest drop between consecutive epochs in the last ten."""

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from floor import logistic_regression_floor  # noqa: E402
from study import merge, parse_settings  # noqa: E402

from skelmae_ext import train  # noqa: E402


def epochs_of(work_dir):
    with open(os.path.join(work_dir, "log.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    return [r for r in records if r.get("event") == "epoch"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("train_split")
    parser.add_argument("val_split")
    parser.add_argument("--clip-len", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--label-fraction", type=float, default=1.0)
    parser.add_argument("--layout", default="auto")
    parser.add_argument("--threads", default="auto")
    parser.add_argument("--work-dir", default="runs/from_scratch")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="change one option of the recipe (VALUE in YAML), e.g. model.pooling=sum")
    args = parser.parse_args(argv)
    threads = args.threads if args.threads == "auto" else int(args.threads)
    floor = logistic_regression_floor(args.data, args.train_split, args.val_split, args.label_fraction,
                                      layout=None if args.layout == "auto" else args.layout)
    print(f"logistic-regression floor: {floor:.1f}% top-1", flush=True)
    summary = []
    for seed in args.seeds:
        work_dir = os.path.join(args.work_dir, f"seed{seed}")
        config = {"data": {"source": args.data, "train_split": args.train_split, "val_split": args.val_split,
                           "clip_len": args.clip_len, "label_fraction": args.label_fraction, "layout": args.layout},
                  "train": {"work_dir": work_dir, "epochs": args.epochs, "seed": seed, "threads": threads,
                            "save_every": 0}}
        train.finetune(merge(config, parse_settings(args.set)))
        top1 = [100 * r["val_top1"] for r in epochs_of(work_dir)]
        losses = [r["loss"] for r in epochs_of(work_dir)]
        last = top1[-10:]
        drop = max([a - b for a, b in zip(last, last[1:])] + [0.0])
        finite = all(math.isfinite(x) for x in losses)
        print(f"seed {seed}: val top-1 per epoch " + " ".join(f"{x:.1f}" for x in top1), flush=True)
        summary.append((seed, max(top1), top1[-1], drop, finite))
    for seed, best, last, drop, finite in summary:
        print(f"seed {seed}: best {best:.1f}, last {last:.1f} (floor {floor:.1f}), largest drop in the last "
              f"ten epochs {drop:.1f} points, losses finite: {finite}")


if __name__ == "__main__":
    main()
