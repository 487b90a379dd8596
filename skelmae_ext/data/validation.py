"""Checks of annotation data before any training: every message names the file, the sample
(``frame_dir``) and what to do.

``validate`` checks a whole source (or one split of it); ``SkeletonDataset`` runs the same
checks on its split when it is built.
"""

import collections
import numbers

import numpy as np

from ..layouts import BUILTIN_LAYOUTS, Layout, get_layout

# The layout a joint count stands for when none is given (PYSKL's three standard skeletons).
LAYOUT_BY_JOINTS = {17: "coco", 25: "nturgb+d", 18: "openpose"}
MAX_REPORTED = 5  # problems listed in one error; the rest are counted
# Pixels or metres lie far below this; larger values overflow the normalisation's squares.
MAX_COORDINATE = 1e6


class DataError(ValueError):
    """Annotation data that cannot be used as it is (the message says where and what to do)."""


def source_name(source):
    """How messages name a source: its path, or a marker for data loaded in memory."""
    return "<annotations in memory>" if isinstance(source, (dict, list)) else str(source)


def layout_for_joints(num_joints, where="the data"):
    """The built-in layout of a joint count (17 coco, 25 nturgb+d, 18 openpose)."""
    if num_joints in LAYOUT_BY_JOINTS:
        return get_layout(LAYOUT_BY_JOINTS[num_joints])
    builtins = ", ".join(f"{name} ({layout.num_joints})" for name, layout in BUILTIN_LAYOUTS.items())
    raise DataError(
        f"{where}: no layout is implied by {num_joints} joints (only 17 -> coco, 25 -> nturgb+d, "
        f"18 -> openpose are); pass layout= one of the built-ins [{builtins}] or a custom layout "
        "as a dict or the path of a JSON file {\"name\", \"joints\", \"edges\", \"center\", \"parts\"} "
        "(see skelmae_ext.layouts)")


def common_keypoint_shape(annotations, where):
    """(joints V, channels C) of most samples' keypoint [M, T, V, C]: what the data is, so that
    validation blames the few samples of another shape, not the others."""
    shapes = collections.Counter(a["keypoint"].shape[2:] for a in annotations if isinstance(a, dict)
                                 and isinstance(a.get("keypoint"), np.ndarray) and a["keypoint"].ndim == 4)
    if not shapes:
        raise DataError(f"{where}: no sample has a keypoint array [M, T, V, C]: check the file with skelmae describe")
    return shapes.most_common(1)[0][0]


def resolve_layout(layout, annotations, where):
    """``layout`` as a Layout, or the one implied by most samples' joint count."""
    if layout is not None:
        return layout if isinstance(layout, Layout) else get_layout(layout)
    return layout_for_joints(common_keypoint_shape(annotations, where)[0], where)


def select_split(data, split, where):
    """The annotations of ``split`` (every one for None), in the split list's order."""
    annotations = data["annotations"]
    if split is None:
        selected = list(annotations)
    else:
        known = data["split"]
        if split not in known:
            raise DataError(f"{where}: unknown split {split!r}; the file has {sorted(known)} "
                            "(or pass split=None for every sample)")
        by_name = {annotation["frame_dir"]: annotation for annotation in annotations}
        missing = [name for name in known[split] if name not in by_name]
        if missing:
            raise DataError(f"{where}: split {split!r} lists {len(missing)} samples that have no annotation "
                            f"(first: {missing[0]!r}): remove them from the split or add their annotations")
        selected = [by_name[name] for name in known[split]]
    if not selected:
        raise DataError(f"{where}: split {split!r} is empty: choose another split ({sorted(data['split'])}) "
                        "or fill this one")
    return selected


def num_classes_of(data, where):
    """Classes of a whole file: ``len(classes)`` when it names them, else the largest label + 1."""
    if data.get("classes") is not None:
        return len(data["classes"])
    labels = [a.get("label") for a in data["annotations"]]
    labels = [label for label in labels if _is_integer(label)]
    if not labels:
        raise DataError(f"{where}: no sample has an integer label: add 'label' (0-based class index) to each")
    return int(max(labels)) + 1


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def sample_problems(annotation, layout, num_classes=None):
    """What is wrong with one annotation, as a list of 'problem: what to do' strings."""
    problems = []
    label = annotation.get("label")
    if label is None:
        problems.append("has no 'label': add its 0-based class index")
    elif not _is_integer(label):
        problems.append(f"label {label!r} is not an integer: labels are 0-based class indices")
    elif label < 0 or (num_classes is not None and label >= num_classes):
        upper = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        problems.append(f"label {label} is out of range ({upper}): fix the label or the file's 'classes'")

    keypoint = annotation.get("keypoint")
    if keypoint is None:
        problems.append("has no 'keypoint': add its array [M, T, V, C] or drop the sample")
        return problems
    if not isinstance(keypoint, np.ndarray):
        problems.append(f"'keypoint' must be a numpy array [M, T, V, C], got {type(keypoint).__name__}")
        return problems
    if keypoint.ndim != 4:
        hint = " (a single person's [T, V, C]: add the person axis, keypoint[None])" if keypoint.ndim == 3 else ""
        problems.append(f"keypoint must be [M, T, V, C] (4 dims), got shape {keypoint.shape}{hint}")
        return problems
    if not np.issubdtype(keypoint.dtype, np.floating):
        problems.append(f"keypoint must be floating point, got {keypoint.dtype}")
        return problems
    persons, frames, joints, channels = keypoint.shape
    if persons == 0 or frames == 0:
        problems.append(f"has no {'persons' if persons == 0 else 'frames'} (keypoint shape {keypoint.shape}): "
                        "drop the sample or extract its skeletons again")
        return problems
    if joints != layout.num_joints:
        problems.append(f"keypoint has {joints} joints but layout {layout.name!r} has {layout.num_joints}: "
                        "pass the layout the data was made with (layout=)")
    if channels not in (2, 3):
        problems.append(f"keypoint has {channels} channels; expected 2 (x, y) or 3 (x, y, z)")
    total = annotation.get("total_frames", frames)
    if not _is_integer(total) or total != frames:
        problems.append(f"total_frames is {total!r} but keypoint has {frames} frames: set total_frames = "
                        "keypoint.shape[1]")
    score = annotation.get("keypoint_score")
    if score is not None and (not isinstance(score, np.ndarray) or score.shape != keypoint.shape[:3]):
        shape = score.shape if isinstance(score, np.ndarray) else type(score).__name__
        problems.append(f"keypoint_score must be [M, T, V] = {keypoint.shape[:3]}, got {shape}")
    elif score is not None and not (np.issubdtype(score.dtype, np.integer) or np.issubdtype(score.dtype, np.floating)):
        problems.append(f"keypoint_score must hold confidences (float), got dtype {score.dtype}")
    img_shape = annotation.get("img_shape")
    if img_shape is not None and not _valid_image_shape(img_shape):
        problems.append(f"img_shape must be (height, width) in pixels, both > 0, got {img_shape!r}")
    finite = np.isfinite(keypoint)
    if not finite.all():
        m, t, v, _ = np.argwhere(~finite)[0]
        problems.append(f"keypoint holds {int((~finite).sum())} NaN / inf values (first at person {m}, frame {t}, "
                        f"joint {v}): set missing joints to 0 (as undetected) or drop the sample")
    elif float(np.finfo(keypoint.dtype).max) > MAX_COORDINATE:  # float16 cannot hold such values
        huge = np.abs(keypoint) > MAX_COORDINATE
        if huge.any():
            m, t, v, c = np.argwhere(huge)[0]
            problems.append(f"keypoint holds {int(huge.sum())} coordinates beyond +-{MAX_COORDINATE:g} (first at "
                            f"person {m}, frame {t}, joint {v}: {float(keypoint[m, t, v, c]):g}); expected pixels "
                            "or metres: fix the coordinates or drop the sample")
    return problems


def _valid_image_shape(img_shape):
    try:
        height, width = img_shape
    except (TypeError, ValueError):
        return False
    numbers_only = all(isinstance(n, numbers.Real) and not isinstance(n, (bool, np.bool_)) for n in (height, width))
    return numbers_only and height > 0 and width > 0 and np.isfinite([height, width]).all()


def check_annotations(annotations, layout, where, num_classes=None):
    """Raises a DataError listing the samples with problems (up to MAX_REPORTED of them)."""
    reports, bad = [], 0
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or "frame_dir" not in annotation:
            problems, name = ["is not a dict with a 'frame_dir'"], f"#{index}"
        else:
            problems, name = sample_problems(annotation, layout, num_classes), repr(annotation["frame_dir"])
        if problems:
            bad += 1
            if len(reports) < MAX_REPORTED:
                reports.append(f"sample {name}: " + "; ".join(problems))
    if bad:
        more = f"\n  ... and {bad - len(reports)} more samples with problems" if bad > len(reports) else ""
        raise DataError(f"{where}: {bad} of {len(annotations)} samples cannot be used:\n  "
                        + "\n  ".join(reports) + more)


def validate(source, split=None, layout=None):
    """Checks ``source`` (a path or loaded annotations), or one split of it: raises a DataError
    naming the file, each bad sample and what to do. Returns the layout the data fits (``layout``,
    else the one its joint count implies)."""
    from .readers import load_annotations  # here: readers imports this module for DataError

    where = source_name(source)
    data = load_annotations(source)
    if split is None:  # every sample, and every split's names (an empty split is no error here)
        for name, names in data["split"].items():
            if names:
                select_split(data, name, where)
        annotations = data["annotations"]
    else:
        annotations = select_split(data, split, where)
    layout = resolve_layout(layout, annotations, where)
    check_annotations(annotations, layout, where, num_classes_of(data, where))
    return layout
