"""A run's data: the source read once, its splits checked, and the datasets and loaders its
``data`` configuration section describes (the data layer does the work)."""

from ..data import DataError, SkeletonDataset, default_pipeline, load_annotations, make_loader
from .config import check_splits


def read(source, splits):
    """The annotations of ``source``, with each of ``splits`` (names) in it."""
    data = load_annotations(source)
    check_splits(data, splits, str(source))
    return data


def dataset(data, data_config, split, layout, num_person, *, mode, num_clips=1, seed=0, label_fraction=1.0):
    """``split`` of ``data`` through the default pipeline of ``mode`` with the configuration's
    clip length, features, score channel and (training) augmentation."""
    dims = _dims(data, split, data_config["source"])
    augmentation = data_config.get("augmentation", {})
    pipeline = default_pipeline(mode, data_config["clip_len"], num_clips, tuple(data_config["feats"]), dims=dims,
                                num_person=num_person, augment=data_config.get("augment", False),
                                with_score=data_config["with_score"], **augmentation)
    return SkeletonDataset(data, split, pipeline, layout=layout, label_fraction=label_fraction, seed=seed, mode=mode,
                           name=data_config["source"])


def loader(dataset, batch_size, workers, device, *, train):
    """Training: shuffled by (seed, epoch), the last partial batch dropped. Else in file order."""
    return make_loader(dataset, batch_size, shuffle=train, workers=workers, drop_last=train, device=device)


def _dims(data, split, where):
    first = data["split"][split][0] if data["split"][split] else None
    for annotation in data["annotations"]:
        if annotation["frame_dir"] == first:
            keypoint = annotation.get("keypoint")
            if getattr(keypoint, "ndim", 0) == 4 and keypoint.shape[-1] in (2, 3):
                return keypoint.shape[-1]
    raise DataError(f"{where}: the first sample of split {split!r} has no keypoint [M, T, V, C] with C = 2 (x, y) "
                    "or 3 (x, y, z): check the file with skelmae describe")
