"""A run's data: the source read once, its splits checked, the layout and persons its "auto"
options stand for, and the datasets and loaders its ``data`` configuration section describes
(the data layer does the work)."""

from ..data import DataError, SkeletonDataset, default_pipeline, layout_for_joints, load_annotations, make_loader
from ..data.validation import common_keypoint_shape, select_split
from ..layouts import BUILTIN_LAYOUTS, get_layout
from . import distributed
from .config import AUTO, MAX_PERSONS, REPEAT_TO, ConfigError


def read(source, splits):
    """The annotations of ``source``, with each of ``splits`` (names) in it."""
    data = load_annotations(source)
    for split in splits:
        if split not in data["split"]:
            raise DataError(f"{source}: unknown split {split!r}; the file has {sorted(data['split'])}")
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


def loader(dataset, batch_size, workers, device, *, train, key="train.batch_size", repeat=1):
    """This process's loader of ``dataset``: training, shuffled by (seed, epoch), ``repeat``
    passes an epoch, the last partial batch dropped; else in file order. With several
    processes, each loads its share of every batch (``batch_size`` is the global batch; ``key``
    names it in the error when it does not divide over them)."""
    return make_loader(dataset, distributed.local_batch(batch_size, key), shuffle=train, workers=workers,
                       drop_last=train, device=device, rank=distributed.rank(), world_size=distributed.world_size(),
                       repeat=repeat)


def resolve_repeat(repeat, samples):
    """data.repeat: "auto" is as many passes as make an epoch at least REPEAT_TO samples."""
    return max(1, -(-REPEAT_TO // max(samples, 1))) if repeat == AUTO else repeat


def _dims(data, split, where):
    channels = common_keypoint_shape(select_split(data, split, where), f"{where} (split {split!r})")[1]
    if channels not in (2, 3):
        raise DataError(f"{where}: the keypoints of split {split!r} have C = {channels} channels; expected 2 (x, y) "
                        "or 3 (x, y, z): check the file with skelmae describe")
    return channels


def resolve_layout(layout, data, where, key="data.layout",
                   fix="pass the layout the data was made with (--layout NAME|FILE.json)"):
    """The Layout of ``layout`` (a name, JSON path or dict; "auto": implied by the data's joint
    count), checked against the data's joints; ``fix`` ends the message of a misfit."""
    joints = common_keypoint_shape(data["annotations"], where)[0]
    if layout == AUTO:
        return layout_for_joints(joints, where)
    try:
        resolved = get_layout(layout)
    except ValueError as error:
        raise ConfigError(key, str(error)) from None
    if resolved.num_joints != joints:
        raise DataError(f"{where}: the keypoints have {joints} joints but layout {resolved.name!r} has "
                        f"{resolved.num_joints}: {fix}")
    return resolved


def layout_name(layout, option):
    """What config.yaml records of the layout: a built-in's name for "auto", else the option."""
    return layout.name if option == AUTO and BUILTIN_LAYOUTS.get(layout.name) == layout else option


def resolve_num_person(num_person, data, splits):
    """The persons per sample; "auto": the most any sample of ``splits`` has, at most 2."""
    if num_person != AUTO:
        return num_person
    wanted = {name for split in splits for name in data["split"][split]}
    most = max((a["keypoint"].shape[0] for a in data["annotations"]
                if a["frame_dir"] in wanted and getattr(a.get("keypoint"), "ndim", 0) == 4), default=1)
    return max(1, min(MAX_PERSONS, int(most)))
