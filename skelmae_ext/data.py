"""PYSKL / MMAction2 skeleton pickles: a safe reader and the transforms that turn one annotation
into the model input [M, T, V, C] (PYSKL names and meaning).

Pickles run code when loaded; ``load_pyskl`` admits only numpy arrays and plain containers.
"""

import pickle

import numpy as np
import torch

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("builtins", "slice"), ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a skeleton pickle holds only numpy arrays and containers"
        )


def load_pyskl(path):
    """``{"split": {name: [frame_dir]}, "annotations": [dict]}`` from a PYSKL pickle, safely."""
    with open(path, "rb") as handle:
        data = _RestrictedUnpickler(handle).load()
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{path}: not a PYSKL annotation pickle (no 'annotations' key)")
    return data


def pre_normalize_2d(keypoint, img_shape):
    """PYSKL PreNormalize2D: pixels to [-1, 1] by the image's half width and height."""
    height, width = img_shape
    return (keypoint - np.array([width / 2, height / 2])) / np.array([width / 2, height / 2])


def uniform_sample_indices(total_frames, clip_len, rng=None):
    """PYSKL UniformSample: one frame from each of ``clip_len`` equal segments (the middle of
    each in test mode, ``rng`` None; a random one per segment otherwise). Short clips loop."""
    if total_frames < clip_len:
        return np.arange(clip_len) % total_frames
    edges = np.linspace(0, total_frames, clip_len + 1)
    if rng is None:
        return ((edges[:-1] + edges[1:]) / 2).astype(np.int64)
    return np.minimum(rng.uniform(edges[:-1], edges[1:]).astype(np.int64), total_frames - 1)


def format_gcn_input(keypoint, num_persons=2):
    """PYSKL FormatGCNInput: [M, T, V, C] with exactly ``num_persons``, zero-padded or cut."""
    persons = keypoint.shape[0]
    if persons >= num_persons:
        return keypoint[:num_persons]
    padding = np.zeros((num_persons - persons,) + keypoint.shape[1:], dtype=keypoint.dtype)
    return np.concatenate([keypoint, padding], axis=0)


def annotation_to_input(annotation, clip_len=64, num_persons=2, rng=None):
    """One PYSKL annotation -> float32 tensor [M, T, V, C] (2D keypoints normalised by the
    image size, 3D ones centred on the first frame's mean joint)."""
    keypoint = np.asarray(annotation["keypoint"], dtype=np.float64)
    if "img_shape" in annotation:
        keypoint = pre_normalize_2d(keypoint, annotation["img_shape"])
    else:
        keypoint = keypoint - keypoint[0, 0].mean(axis=0)
    indices = uniform_sample_indices(keypoint.shape[1], clip_len, rng)
    keypoint = format_gcn_input(keypoint[:, indices], num_persons)
    return torch.from_numpy(keypoint.astype(np.float32))
