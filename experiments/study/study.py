"""Does SkeletonMAE pre-training help? The whole comparison through the public API
(skelmae_ext.train: the same code as the ``skelmae`` command line), written as a markdown table
and a plot:

    python experiments/study/study.py --dataset bandai2_coco2d=PATH.pkl:xstyle_train:xstyle_val \\
        --dataset msr_action3d_coco2d=PATH.pkl:xsub_train:xsub_val ... --out runs/study \\
        [--pretrain-epochs 30] [--finetune-epochs 15] [--seeds 0 1 2] [--fractions 1 0.1 0.01] \\
        [--clip-len 32] [--transfer bandai2_coco2d msr_action3d_coco2d] [--jobs 2] [--probe-seeds 0] \\
        [--pretrain-set model.target=input ...] [--finetune-set ...]

For each dataset: the logistic-regression floor (floor.py) per label fraction; SkeletonMAE
pre-trained on the training split without labels; the SSL classifier fine-tuned from scratch and
from the pre-trained encoder with the same budget, per label fraction (class-balanced subsets,
at least one sample per class) and seed; the linear probe (encoder frozen) and KNN of the
pre-trained encoder against a random one (one pre-training epoch at a learning rate of 1e-9:
the initial weights, BatchNorm statistics fitted to the data); with ``--transfer``, SkeletonMAE
pre-trained on the union of those datasets' training splits, then fine-tuned on each. Every run
keeps its work directory under --out: a second call reuses what finished (results.json; the
engine resumes the rest) and computes only what is missing. ``--jobs N`` runs N at a time, each
in its own process with one CPU thread. Accuracies are the last epoch's validation top-1 (no model
selection on the validation split)."""

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from floor import logistic_regression_floor  # noqa: E402

from skelmae_ext import train  # noqa: E402
from skelmae_ext.data import load_annotations, save_annotations  # noqa: E402
from skelmae_ext.train.config import parse_yaml  # noqa: E402


def parse_dataset(text):
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    if not name or len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"--dataset {text!r}: expected NAME=PATH:TRAIN_SPLIT:VAL_SPLIT[:LAYOUT]")
    return {"name": name, "path": parts[0], "train": parts[1], "val": parts[2],
            "layout": parts[3] if len(parts) == 4 else "auto"}


def parse_settings(items):
    """KEY=VALUE strings (VALUE in YAML) -> a nested dict."""
    settings = {}
    for item in items or []:
        key, _, value = item.partition("=")
        node = settings
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = parse_yaml(value)
    return settings


def merge(base, update):
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def last_epoch(work_dir):
    with open(os.path.join(work_dir, "log.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    return [r for r in records if r.get("event") == "epoch"][-1]


# --- jobs: module-level functions, so that --jobs N can run them in spawned processes -------------


def pretrain_job(config):
    train.pretrain(config)
    return config["train"]["work_dir"]


def finetune_job(config):
    train.finetune(config)
    return 100 * last_epoch(config["train"]["work_dir"])["val_top1"]


def knn_job(dataset, checkpoint_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    features = {}
    for split in (dataset["train"], dataset["val"]):
        features[split] = os.path.join(out_dir, f"features_{split}.npz")
        train.extract(dataset["path"], split, os.path.join(checkpoint_dir, "latest.pth"), features[split],
                      workers=0)
    return 100 * train.knn(features[dataset["train"]], features[dataset["val"]])["top1"]


def _quiet_worker():
    """A pool process: one CPU thread (the jobs run side by side), its console output in the job's log."""
    import torch

    torch.set_num_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


class Study:
    def __init__(self, args):
        self.args = args
        self.results_path = os.path.join(args.out, "results.json")
        self.results = {}
        if os.path.exists(self.results_path):
            with open(self.results_path, encoding="utf-8") as handle:
                self.results = json.load(handle)
        self.pretrain_settings = parse_settings(args.pretrain_set)
        self.finetune_settings = parse_settings(args.finetune_set)

    def save(self):
        with open(self.results_path, "w", encoding="utf-8") as handle:
            json.dump(self.results, handle, indent=1, sort_keys=True)

    def store(self, key, value, done, total):
        self.results[key] = value
        self.save()
        print(f"[{done}/{total}] {key}: {value}", flush=True)

    def run(self, jobs):
        """Computes the jobs ({key: (function, args)}) whose keys are not in results.json; with
        --jobs N, N at a time in spawned processes."""
        todo = [(key, job) for key, job in jobs.items() if key not in self.results]
        if self.args.jobs == 1 or len(todo) <= 1:
            for done, (key, (function, arguments)) in enumerate(todo, 1):
                self.store(key, function(*arguments), done, len(todo))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(self.args.jobs, mp_context=context, initializer=_quiet_worker) as pool:
                futures = {pool.submit(function, *arguments): key for key, (function, arguments) in todo}
                for done, future in enumerate(as_completed(futures), 1):
                    self.store(futures[future], future.result(), done, len(todo))

    def common_train(self, work_dir, epochs, seed=0):
        threads = 1 if self.args.jobs > 1 else self.args.threads
        return {"work_dir": work_dir, "epochs": epochs, "seed": seed, "threads": threads, "save_every": 0}

    def pretrain(self, dataset, work_dir, lr=None, epochs=None):
        """(key, job) of a SkeletonMAE pre-training on the dataset's training split."""
        config = {"data": {"source": dataset["path"], "split": dataset["train"], "clip_len": self.args.clip_len,
                           "layout": dataset["layout"]},
                  "train": self.common_train(work_dir, epochs or self.args.pretrain_epochs)}
        config = merge(config, self.pretrain_settings)
        if lr is not None:
            config = merge(config, {"optim": {"lr": lr}})
        return work_dir, (pretrain_job, (config,))

    def finetune(self, dataset, work_dir, fraction, seed, pretrained=None, freeze=False):
        config = {"data": {"source": dataset["path"], "train_split": dataset["train"], "val_split": dataset["val"],
                           "clip_len": self.args.clip_len, "label_fraction": fraction, "layout": dataset["layout"]},
                  "model": {"freeze_encoder": freeze},
                  "train": dict(self.common_train(work_dir, self.args.finetune_epochs, seed),
                                pretrained=pretrained, val_every=0)}
        return work_dir, (finetune_job, (merge(config, self.finetune_settings),))

    def dataset_jobs(self, dataset, pretrained, random, transfer_dir=None):
        """The floors (computed here: seconds), then the dataset's jobs: [fine-tunes of each label
        fraction (in --fractions' order)..., probes and KNN]."""
        name, out = dataset["name"], os.path.join(self.args.out, dataset["name"])
        # each seed's label subset is the one its fine-tunes get
        self.run({f"{name}/floor/{fraction}/seed{seed}": (logistic_regression_floor, (
            dataset["path"], dataset["train"], dataset["val"], fraction, seed,
            None if dataset["layout"] == "auto" else dataset["layout"]))
            for fraction in self.args.fractions for seed in self.args.seeds})
        groups = []
        for fraction in self.args.fractions:
            jobs = []
            for seed in self.args.seeds:
                tag = f"{fraction}/seed{seed}"
                jobs.append(self.finetune(dataset, os.path.join(out, "scratch", tag), fraction, seed))
                jobs.append(self.finetune(dataset, os.path.join(out, "pretrained", tag), fraction, seed, pretrained))
                if transfer_dir:
                    jobs.append(self.finetune(dataset, os.path.join(out, "transfer", tag), fraction, seed,
                                              transfer_dir))
            groups.append(dict(jobs))
        jobs = []
        for seed in self.args.probe_seeds:
            for init, checkpoint in (("random", random), ("pretrained", pretrained)):
                jobs.append(self.finetune(dataset, os.path.join(out, f"probe-{init}", f"seed{seed}"), 1.0, seed,
                                          checkpoint, freeze=True))
        for init, checkpoint in (("random", random), ("pretrained", pretrained)):
            jobs.append((os.path.join(out, f"knn-{init}", "knn"),
                         (knn_job, (dataset, checkpoint, os.path.join(out, f"knn-{init}")))))
        return groups + [dict(jobs)]

    def transfer_source(self, datasets):
        """(key, job) of SkeletonMAE pre-trained on the union of the datasets' training splits (one pickle)."""
        out = os.path.join(self.args.out, "transfer")
        os.makedirs(out, exist_ok=True)
        union = os.path.join(out, "union.pkl")
        if not os.path.exists(union):
            annotations = []
            for dataset in datasets:
                data = load_annotations(dataset["path"])
                keep = set(data["split"][dataset["train"]])
                annotations += [dict(a, frame_dir=f"{dataset['name']}/{a['frame_dir']}", label=0)
                                for a in data["annotations"] if a["frame_dir"] in keep]
            save_annotations({"split": {"train": [a["frame_dir"] for a in annotations]}, "annotations": annotations},
                             union)
        source = {"name": "union", "path": union, "train": "train", "layout": "auto"}
        return self.pretrain(source, os.path.join(out, "pretrain"))

    def run_all(self, datasets):
        """Every pre-training first (the fine-tunes start from them), then every other job: each
        label fraction's fine-tunes on every dataset before the next fraction's (an interrupted
        study has its 100% cells first), then the probes and KNN."""
        pretraining = {}
        transfer_key = None
        if self.args.transfer:
            transfer_key, job = self.transfer_source([d for d in datasets if d["name"] in self.args.transfer])
            pretraining[transfer_key] = job
        for dataset in datasets:
            out = os.path.join(self.args.out, dataset["name"])
            pretraining.update([self.pretrain(dataset, os.path.join(out, "pretrain")),
                                self.pretrain(dataset, os.path.join(out, "random"), lr=1e-9, epochs=1)])
        self.run(pretraining)
        per_dataset = []
        for dataset in datasets:
            out = os.path.join(self.args.out, dataset["name"])
            per_dataset.append(self.dataset_jobs(dataset, os.path.join(out, "pretrain"), os.path.join(out, "random"),
                                                 transfer_key if dataset["name"] in self.args.transfer else None))
        self.run({key: job for stage in zip(*per_dataset) for jobs in stage for key, job in jobs.items()})


def mean_spread(values, expected):
    """("mean ± sd", (mean, sd)) of the values, the text marked "(n of expected)" while runs are missing."""
    if not values:
        return "", None
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    missing = f" (n = {len(values)} of {expected})" if len(values) < expected else ""
    return f"{mean:.1f} ± {spread:.1f}{missing}", (mean, spread)


def paired(differences):
    """(mean, standard deviation, standard error, t) of paired differences (two or more)."""
    mean, spread = statistics.mean(differences), statistics.stdev(differences)
    error = spread / len(differences) ** 0.5
    return mean, spread, error, (mean / error if error else math.inf)


def report(study, datasets, transfer):
    args, results = study.args, study.results
    lines = [f"Pre-training {args.pretrain_epochs} epochs, fine-tuning {args.finetune_epochs} epochs, T = "
             f"{args.clip_len}, seeds {args.seeds}; validation top-1 (%) of the last epoch, mean ± standard "
             f"deviation over the seeds (each seed its own label subset, the same in every column; linear probes: "
             f"seeds {args.probe_seeds}). Gain: the paired difference pre-trained minus from scratch (same seed), "
             "its mean ± standard error and paired t (of two seeds or more); each seed's values follow the table.",
             "",
             "| dataset | labels | floor (logistic regression) | from scratch | pre-trained | gain | paired t |"
             + (" transfer (union pre-training) |" if transfer else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if transfer else "")]
    per_seed = []
    bars = []
    for dataset in datasets:
        name, out = dataset["name"], os.path.join(args.out, dataset["name"])
        for fraction in args.fractions:
            by_seed = {init: {s: results.get(os.path.join(out, init, f"{fraction}/seed{s}")) for s in args.seeds}
                       for init in ("scratch", "pretrained", "transfer")}
            by_seed["floor"] = {s: results.get(f"{name}/floor/{fraction}/seed{s}") for s in args.seeds}
            cells = {init: mean_spread([v for v in values.values() if v is not None], len(args.seeds))
                     for init, values in by_seed.items()}
            differences = [by_seed["pretrained"][s] - by_seed["scratch"][s] for s in args.seeds
                           if by_seed["pretrained"][s] is not None and by_seed["scratch"][s] is not None]
            gain, t = "", ""
            if len(differences) > 1:
                mean, _, error, t_value = paired(differences)
                gain, t = f"{mean:+.2f} ± {error:.2f}", f"{t_value:.2f}"
            lines.append(f"| {name} | {100 * fraction:g}% | {cells['floor'][0]} | {cells['scratch'][0]} | "
                         f"{cells['pretrained'][0]} | {gain} | {t} |" + (f" {cells['transfer'][0]} |" if transfer else ""))
            per_seed.append((f"{name}, {100 * fraction:g}% of the labels", by_seed))
            bars.append((f"{name}\n{100 * fraction:g}%", cells["floor"][1][0] if cells["floor"][1] else None, cells))
    for title, by_seed in per_seed:
        lines += ["", f"{title}, each seed:", "", "| seed | floor | from scratch | pre-trained | difference |"
                  + (" transfer |" if transfer else ""), "|---:|---:|---:|---:|---:|" + ("---:|" if transfer else "")]
        for s in args.seeds:
            floor, scratch, pre, union = (by_seed[init][s] for init in ("floor", "scratch", "pretrained", "transfer"))
            cells = [floor, scratch, pre] + ([union] if transfer else [])
            difference = "" if None in (scratch, pre) else f"{pre - scratch:+.1f}"
            cells = ["" if v is None else f"{v:.1f}" for v in cells]
            lines.append(f"| {s} | " + " | ".join(cells[:3] + [difference] + cells[3:]) + " |")
    lines += ["", "| dataset | linear probe, random encoder | linear probe, pre-trained | KNN, random | "
              "KNN, pre-trained |", "|---|---:|---:|---:|---:|"]
    for dataset in datasets:
        out = os.path.join(args.out, dataset["name"])
        probe = {init: mean_spread([results[k] for k in (os.path.join(out, f"probe-{init}", f"seed{s}")
                                                          for s in args.probe_seeds) if k in results],
                                   len(args.probe_seeds))[0]
                 for init in ("random", "pretrained")}
        knn = {init: results.get(os.path.join(out, f"knn-{init}", "knn")) for init in ("random", "pretrained")}
        lines.append(f"| {dataset['name']} | {probe['random']} | {probe['pretrained']} | "
                     + " | ".join("" if knn[i] is None else f"{knn[i]:.1f}" for i in ("random", "pretrained")) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "study.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    print(table)
    plot(bars, os.path.join(args.out, "study.png"), transfer)


def plot(bars, path, transfer):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inits = ["scratch", "pretrained"] + (["transfer"] if transfer else [])
    width = 0.8 / len(inits)
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(bars)), 4.5))
    for i, init in enumerate(inits):
        means = [cells[init][1][0] if cells[init][1] else 0 for _, _, cells in bars]
        spreads = [cells[init][1][1] if cells[init][1] else 0 for _, _, cells in bars]
        positions = [j + (i - (len(inits) - 1) / 2) * width for j in range(len(bars))]
        axes.bar(positions, means, width, yerr=spreads, capsize=3, label=init)
    for j, (_, floor, _) in enumerate(bars):
        if floor is not None:
            axes.hlines(floor, j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                        label="logistic-regression floor" if j == 0 else None)
    axes.set_xticks(range(len(bars)), [label for label, _, _ in bars], fontsize=8)
    axes.set_ylabel("validation top-1 (%)")
    axes.set_title("SSL classifier: from scratch vs SkeletonMAE pre-training\n(mean ± sd over seeds)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=parse_dataset, action="append", required=True,
                        help="NAME=PATH:TRAIN_SPLIT:VAL_SPLIT[:LAYOUT]")
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=train.DEFAULTS["finetune"]["train"]["epochs"])
    parser.add_argument("--clip-len", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    parser.add_argument("--transfer", nargs="*", default=[], metavar="NAME",
                        help="pre-train on the union of these datasets' training splits, fine-tune on each")
    parser.add_argument("--threads", default="auto", help="torch's CPU threads of each run (1 with --jobs > 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("--probe-seeds", type=int, nargs="*",
                        help="seeds of the linear probes (default: --seeds; none: no probes)")
    parser.add_argument("--pretrain-set", action="append", metavar="KEY=VALUE", help="a pre-training option")
    parser.add_argument("--finetune-set", action="append", metavar="KEY=VALUE", help="a fine-tuning option")
    parser.add_argument("--report-only", action="store_true", help="write the table and plot from what has run")
    args = parser.parse_args(argv)
    args.threads = args.threads if args.threads == "auto" else int(args.threads)
    args.probe_seeds = args.seeds if args.probe_seeds is None else args.probe_seeds
    os.makedirs(args.out, exist_ok=True)
    study = Study(args)
    if not args.report_only:
        study.run_all(args.dataset)
    report(study, args.dataset, bool(args.transfer))


if __name__ == "__main__":
    main()
