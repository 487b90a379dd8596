"""Hand-built annotation data for the data-layer tests."""

import os
import pickle

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "data")
COCO2D_SAMPLE = os.path.join(DATA, "bandai2_coco2d_sample.pkl")
BANDAI3D_SAMPLE = os.path.join(DATA, "bandai2_sample.pkl")
NTU_SAMPLE = os.path.join(DATA, "S001C001P001R001A001.skeleton")


def annotation(name, label=0, persons=1, frames=20, joints=17, channels=2, seed=0, score=True, dtype=np.float16):
    """A PYSKL annotation of random keypoints (pixels for 2D, metres for 3D)."""
    rng = np.random.default_rng(seed)
    scale = np.array([1920, 1080]) if channels == 2 else 1.0
    result = {"frame_dir": name, "label": label, "total_frames": frames,
              "keypoint": (rng.random((persons, frames, joints, channels)) * scale).astype(dtype)}
    if channels == 2:
        result["img_shape"] = (1080, 1920)
        if score:
            result["keypoint_score"] = np.ones((persons, frames, joints), dtype=dtype)
    return result


def dataset(labels=(0, 1, 2, 0, 1, 2), val_labels=(0, 1), **kwargs):
    """{split: {train, val}, annotations} of random samples with these labels."""
    train = [annotation(f"train_{i}", label, seed=i, **kwargs) for i, label in enumerate(labels)]
    val = [annotation(f"val_{i}", label, seed=100 + i, **kwargs) for i, label in enumerate(val_labels)]
    return {"split": {"train": [a["frame_dir"] for a in train], "val": [a["frame_dir"] for a in val]},
            "annotations": train + val}


def write_pickle(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=4)
    return str(path)


def ctrgcn_arrays(count, frames, lengths, persons_present, seed=0):
    """x [N, frames, 2*25*3] zero-padded as CTR-GCN writes it, and the [M, T, V, C] samples."""
    rng = np.random.default_rng(seed)
    x = np.zeros((count, frames, 2, 25, 3), dtype=np.float32)
    samples = []
    for n, (length, present) in enumerate(zip(lengths, persons_present)):
        x[n, :length, :present] = rng.standard_normal((length, present, 25, 3))
        samples.append(x[n, :length, :present].transpose(1, 0, 2, 3))
    return x.reshape(count, frames, 150), samples
