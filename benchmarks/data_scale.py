"""The data layer at the size of the field's large sets (PYSKL's NTU-60 and NTU-120 pickles, 56k
and 114k sequences): for a synthetic PYSKL pickle of that shape at each size asked for, the time
to load it, the memory of the training process and of each loader worker at the end of an epoch
(RSS, and the share of it that is the process's own, USS, and proportional, PSS: fork shares
the loaded arrays copy-on-write), and the samples/s of the default training pipeline.

    python benchmarks/data_scale.py --sequences 10000 50000 114000 --workers 4

The file is written to a temporary folder and removed (nothing is committed); each size is
measured in a fresh process, so that its memory is the data's. The table it prints compares the
total PSS with the keypoint bytes (keypoint and keypoint_score arrays).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# NTU RGB+D 120 as PYSKL's HRNet 2D pickle holds it: COCO-17 joints, float16 coordinates and
# scores, 1 or 2 persons (about a quarter of the actions are mutual), 1920 x 1080 frames.
JOINTS, FRAMES = 17, (32, 300)
TWO_PERSONS = 0.25
CLASSES = 120


def synthetic(count, seed=0):
    """A PYSKL annotation dict of ``count`` random sequences of NTU-120's shape."""
    rng = np.random.default_rng(seed)
    annotations = []
    for index in range(count):
        persons = 2 if rng.random() < TWO_PERSONS else 1
        frames = int(rng.integers(*FRAMES))
        keypoint = (rng.random((persons, frames, JOINTS, 2), dtype=np.float32) * [1920, 1080]).astype(np.float16)
        annotations.append({"frame_dir": f"S{index:06d}", "label": index % CLASSES, "total_frames": frames,
                            "img_shape": (1080, 1920), "keypoint": keypoint,
                            "keypoint_score": rng.random((persons, frames, JOINTS), dtype=np.float32).astype(np.float16)})
    return {"split": {"train": [a["frame_dir"] for a in annotations]}, "annotations": annotations}


def memory_mb(pid):
    """(RSS, USS, PSS) of a process in MB, from /proc/PID/smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0]) / 1024
    return fields["Rss"], fields["Private_Clean"] + fields["Private_Dirty"], fields["Pss"]


def children(pid):
    pids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
            pids += [int(child) for child in handle.read().split()]
    return pids


def measure(path, workers, batch, samples):
    """Loads ``path`` and runs the training pipeline over up to ``samples`` samples: one JSON line."""
    from skelmae_ext.data import SkeletonDataset, load_annotations, make_loader

    began = time.perf_counter()
    data = load_annotations(path)
    load_s = time.perf_counter() - began
    keypoint_bytes = sum(a["keypoint"].nbytes + a["keypoint_score"].nbytes for a in data["annotations"])
    began = time.perf_counter()
    dataset = SkeletonDataset(data, "train", with_score=True)
    dataset_s = time.perf_counter() - began
    del data  # as a run does once its datasets are built: they hold what they need
    after_load = memory_mb(os.getpid())
    loader = make_loader(dataset, batch, workers=workers, drop_last=True)
    batches = len(loader) if not samples else max(1, min(len(loader), samples // batch))
    warm = min(20, batches // 2)  # batches before the clock starts: the workers started
    for step, _ in enumerate(loader):
        if step == warm:
            began = time.perf_counter()
        if step + 1 >= batches:  # the workers have read their share of the samples: measured now
            memory = {"main": memory_mb(os.getpid()), "workers": [memory_mb(pid) for pid in children(os.getpid())]}
            break
    samples_per_s = (step - warm) * batch / (time.perf_counter() - began)
    print(json.dumps({"sequences": len(dataset), "keypoint_mb": keypoint_bytes / 2**20, "file_mb": os.path.getsize(path) / 2**20,
                      "load_s": load_s, "dataset_s": dataset_s, "after_load": after_load, "workers": loader.num_workers,
                      "memory": memory, "samples_per_s": samples_per_s}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, nargs="+", default=[10000, 50000, 114000])
    parser.add_argument("--workers", type=int, default=4, help="loader workers [default 4]")
    parser.add_argument("--batch", type=int, default=64, help="batch size [default 64]")
    parser.add_argument("--samples", type=int, default=0, help="samples read per size [default 0: an epoch]")
    parser.add_argument("--measure", metavar="PKL", help=argparse.SUPPRESS)  # the fresh process of one size
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.workers, args.batch, args.samples)
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for count in args.sequences:
            path = os.path.join(folder, f"ntu120_synthetic_{count}.pkl")
            from skelmae_ext.data import save_annotations
            save_annotations(synthetic(count), path)
            result = subprocess.run([sys.executable, __file__, "--measure", path, "--workers", str(args.workers),
                                     "--batch", str(args.batch), "--samples", str(args.samples)],
                                    capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.splitlines()[-1]))
            os.remove(path)
    print("| sequences | keypoint MB | file MB | load s | main RSS MB | worker RSS / USS MB | total PSS MB "
          "| PSS / keypoint bytes | samples/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        main_rss, _, main_pss = row["memory"]["main"]
        workers = row["memory"]["workers"]
        total = main_pss + sum(pss for _, _, pss in workers)
        per_worker = (f"{np.mean([rss for rss, _, _ in workers]):.0f} / {np.mean([uss for _, uss, _ in workers]):.0f}"
                      if workers else "-")
        print(f"| {row['sequences']} | {row['keypoint_mb']:.0f} | {row['file_mb']:.0f} | {row['load_s']:.1f} "
              f"| {main_rss:.0f} | {per_worker} | {total:.0f} | {total / row['keypoint_mb']:.2f} "
              f"| {row['samples_per_s']:.0f} |")


if __name__ == "__main__":
    main()
