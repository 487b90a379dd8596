"""``describe``: what a skeleton source holds, per split (samples, class counts, frames, persons)
and overall (joints, channels, 2D or 3D, the implied layout)."""

import numbers

import numpy as np

from .readers import load_annotations
from .validation import LAYOUT_BY_JOINTS, source_name


def _shape_counts(annotations):
    shapes = [a["keypoint"].shape for a in annotations if getattr(a.get("keypoint"), "ndim", 0) == 4]
    return np.array([s[1] for s in shapes]), np.array([s[0] for s in shapes]), shapes


def describe(source):
    """A summary dict of ``source`` (a path or loaded annotations): ``samples``, ``joints``,
    ``channels``, ``dims`` ("2D" / "3D"), ``keypoint_score``, ``layout`` (implied by the joint
    count, or None), ``num_classes``, ``class_names`` (or None) and per split ``samples``,
    ``class_counts`` {label: count}, ``frames`` and ``persons`` (min, median, max)."""
    data = load_annotations(source)
    annotations = data["annotations"]
    by_name = {a["frame_dir"]: a for a in annotations}
    _, _, shapes = _shape_counts(annotations)
    joints = sorted({s[2] for s in shapes})
    channels = sorted({s[3] for s in shapes})
    has_score = any("keypoint_score" in a for a in annotations)
    labels = [a.get("label") for a in annotations if isinstance(a.get("label"), numbers.Integral)]
    summary = {
        "source": source_name(source),
        "samples": len(annotations),
        "joints": joints[0] if len(joints) == 1 else joints,
        "channels": channels[0] if len(channels) == 1 else channels,
        "dims": "2D" if channels == [2] else "3D" if channels == [3] else "mixed",
        "keypoint_score": has_score,
        "layout": LAYOUT_BY_JOINTS.get(joints[0]) if len(joints) == 1 else None,
        "num_classes": len(data["classes"]) if data.get("classes") is not None else (max(labels) + 1 if labels else 0),
        "class_names": list(data["classes"]) if data.get("classes") is not None else None,
        "splits": {},
    }
    for name, frame_dirs in data["split"].items():
        members = [by_name[f] for f in frame_dirs if f in by_name]
        frames, persons, _ = _shape_counts(members)
        counts = {}
        for annotation in members:
            counts[annotation.get("label")] = counts.get(annotation.get("label"), 0) + 1
        summary["splits"][name] = {
            "samples": len(members),
            "class_counts": dict(sorted(counts.items(), key=lambda item: (item[0] is None, item[0]))),
            "frames": _spread(frames),
            "persons": _spread(persons),
        }
    return summary


def _spread(values):
    if not len(values):
        return None
    return int(values.min()), float(np.median(values)), int(values.max())


def _class_name(names, label):
    return names[label] if names and isinstance(label, numbers.Integral) and 0 <= label < len(names) else label


def format_description(summary):
    """``describe``'s summary as text for a terminal."""
    names = summary["class_names"]
    lines = [
        f"{summary['source']}: {summary['samples']} samples, {summary['dims']} "
        f"(V = {summary['joints']}, C = {summary['channels']}{', with keypoint_score' if summary['keypoint_score'] else ''}), "
        f"layout {summary['layout'] or '(none implied by V: pass layout=)'}, {summary['num_classes']} classes",
    ]
    for name, split in summary["splits"].items():
        frames, persons = split["frames"], split["persons"]
        lines.append(f"  split {name}: {split['samples']} samples"
                     + (f", frames min / median / max {frames[0]} / {frames[1]:g} / {frames[2]}" if frames else "")
                     + (f", persons {persons[0]} to {persons[2]}" if persons else ""))
        counts = ", ".join(f"{_class_name(names, label)}: {n}" for label, n in split["class_counts"].items())
        lines.append(f"    classes: {counts}")
    return "\n".join(lines)
