"""The data layer: readers of the field's skeleton formats, PYSKL's transforms, the dataset and
its loader, validation, ``describe``, and a bundled real dataset (``BUNDLED``).

    data = load_annotations("ntu60_hrnet.pkl")        # or .npz, a folder of .skeleton files
    train = SkeletonDataset(data, "xsub_train")        # default training pipeline
    test = SkeletonDataset(data, "xsub_val", mode="test", num_clips=10)
    loader = make_loader(train, 16, shuffle=True)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        for x, y in loader:                            # x [B, num_clips, M, T, V, C]
            out = model(x.flatten(0, 1))
"""

import os

from .dataset import EpochSampler, PackedAnnotations, SkeletonDataset, default_workers, make_loader
from .describe import describe, format_description
from .pipelines import AUGMENTATION, Compose, build_transform, default_pipeline
from .readers import (
    UnsafePickleError,
    convert,
    load_annotations,
    ntu_splits,
    read_npz,
    read_ntu,
    read_ntu_skeleton,
    read_pickle,
    save_annotations,
)
from .transforms import (
    TRANSFORMS,
    FormatGCNInput,
    GenSkeFeat,
    PoseDecode,
    PreNormalize2D,
    PreNormalize3D,
    RandomGaussianNoise,
    RandomRot,
    RandomScale,
    UniformSample,
)
from .validation import DataError, layout_for_joints, validate

# Bandai-Namco-Research-Motiondataset-2 as COCO-17 2D keypoints (CC BY-NC 4.0; see its README).
BUNDLED = os.path.join(os.path.dirname(__file__), "bundled", "bandai2_coco2d.pkl.xz")

__all__ = [
    "AUGMENTATION", "BUNDLED", "Compose", "DataError", "EpochSampler", "FormatGCNInput", "GenSkeFeat",
    "PackedAnnotations", "PoseDecode", "PreNormalize2D", "PreNormalize3D", "RandomGaussianNoise", "RandomRot",
    "RandomScale", "SkeletonDataset", "TRANSFORMS", "UniformSample", "UnsafePickleError", "build_transform", "convert",
    "default_pipeline", "default_workers", "describe", "format_description", "layout_for_joints",
    "load_annotations", "make_loader", "ntu_splits", "read_npz", "read_ntu", "read_ntu_skeleton", "read_pickle",
    "save_annotations", "validate",
]
