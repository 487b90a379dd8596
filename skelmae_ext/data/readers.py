"""Readers of the skeleton formats the field uses, each to one annotation dict (PYSKL's form):

    {"split": {name: [frame_dir, ...]}, "annotations": [dict, ...], "classes": [str, ...] (optional)}

Each annotation holds PYSKL's keys: ``frame_dir``, ``label`` (0-based), ``total_frames``,
``keypoint`` [M, T, V, C] and, for 2D data, ``keypoint_score`` [M, T, V] and ``img_shape``
(height, width). Arrays stay as stored (float16 in the released files): the transforms convert
only the frames they sample, so a loaded file takes about its own size in memory.

Sources: a PYSKL / MMAction2 pickle (also gzip, xz or bz2 compressed; the legacy plain list of
annotations too, as one split named ``all``), a CTR-GCN / MAMP ``.npz``, a folder of raw NTU
RGB+D ``.skeleton`` files (or one such file), or an already loaded dict.
"""

import bz2
import gzip
import lzma
import math
import os
import pickle
import re
import warnings
import zipfile

import numpy as np

from .validation import DataError, source_name

SUPPORTED = ("a PYSKL / MMAction2 pickle (.pkl, also .pkl.gz / .pkl.xz / .pkl.bz2), a CTR-GCN / MAMP .npz "
             "(x_train, y_train, x_test, y_test) or a folder of raw NTU RGB+D .skeleton files")
DEFAULT_SPLIT = "all"  # the split of a file that defines none (MMAction2 0.x's plain lists)

# What numpy arrays, numpy scalars and plain containers need to unpickle (numpy 1.x and 2.x
# module names; protocol 2 stores bytes through _codecs.encode, protocol 5 uses _frombuffer).
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "slice"), ("builtins", "set"), ("builtins", "frozenset"), ("collections", "OrderedDict"),
}
_COMPRESSION = ((b"\x1f\x8b", gzip.open), (b"\xfd7zXZ\x00", lzma.open), (b"BZh", bz2.open))
_ZIP_MAGIC = b"PK\x03\x04"


class UnsafePickleError(DataError):
    """A pickle that asks for something other than numpy arrays and plain containers."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{module}.{name}")


def load_annotations(source, *, npz_persons=2, npz_channels=3):
    """``{"split", "annotations"[, "classes"]}`` from a file, a folder, or loaded data (returned
    as it is when already in that form, so splits of one file can share it).

    ``npz_persons`` and ``npz_channels`` split a CTR-GCN ``.npz``'s last axis M*V*C."""
    if isinstance(source, (dict, list)):
        return _annotation_file(source, source_name(source))
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"source must be a path or loaded annotations (dict), got {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory; expected {SUPPORTED}")
    if os.path.isdir(path) or path.endswith(".skeleton"):
        return read_ntu(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        raise DataError(f"{path}: the file is empty: write or download it again")
    if head.startswith(_ZIP_MAGIC):
        return read_npz(path, persons=npz_persons, channels=npz_channels)
    return _annotation_file(_unpickle(path, head), path)


def read_pickle(path):
    """A pickle (also compressed) of numpy arrays and plain containers, through the restricted
    unpickler that ``load_annotations`` uses (anything else is refused and never runs)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    return _unpickle(path, head)


def _unpickle(path, head):
    opener = next((open_ for magic, open_ in _COMPRESSION if head.startswith(magic)), open)
    try:
        with opener(path, "rb") as handle:
            obj = _RestrictedUnpickler(handle).load()
    except UnsafePickleError as error:
        raise UnsafePickleError(
            f"{path}: refused to load: the pickle asks for the global {error}, and a skeleton pickle holds only "
            "numpy arrays and plain containers (nothing in it was run); if you wrote it, store plain data") from None
    except Exception as error:  # noqa: BLE001  (damaged input raises any of a dozen types)
        detail = f"{type(error).__name__}: {error}"
        if opener is open and head[:1] != b"\x80":
            raise DataError(f"{path}: not a file this library reads ({detail}); expected {SUPPORTED}") from error
        raise DataError(f"{path}: truncated or corrupt ({detail}): the file is incomplete or damaged; "
                        "write or download it again") from error
    _check_arrays(obj, path)
    return obj


def _plain_dtype(dtype):
    """Whether ``dtype`` is a plain number or string type, as numpy itself builds it: a pickle can
    set a dtype's fields and offsets to anything, and numpy then reads past an array's memory."""
    if dtype.kind not in "biufcUS" or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
        return False
    canonical = np.dtype(dtype.str)
    return canonical == dtype and canonical.itemsize == dtype.itemsize


def _check_arrays(obj, path):
    """Refuses a loaded pickle that holds an array or numpy scalar of any other dtype (named by
    where it lies, e.g. the pickle['annotations'][3]['keypoint'])."""
    stack = [(obj, "the pickle")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            stack += [(value, f"{where}[{key!r}]") for key, value in item.items()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack += [(value, f"{where}[{index}]") for index, value in enumerate(item)]
        elif isinstance(item, (np.ndarray, np.generic)):
            if not _plain_dtype(item.dtype):
                raise UnsafePickleError(
                    f"{path}: refused to load: {where} is an array of dtype {str(item.dtype):.120}, and a skeleton "
                    "pickle holds arrays of plain numbers (bool, int, float) or strings: store plain arrays")


def _annotation_file(obj, where):
    if isinstance(obj, list):  # MMAction2 0.x: one plain list of annotations per split file
        obj = {"annotations": obj}
    if not isinstance(obj, dict) or not isinstance(obj.get("annotations"), list):
        found = f"a dict with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{where}: not skeleton annotations: expected a dict with 'split' and 'annotations' "
                        f"(PYSKL / MMAction2) or a list of annotation dicts, got {found}")
    first = {}  # frame_dir -> index: a split names its samples by frame_dir
    for index, annotation in enumerate(obj["annotations"]):
        if not isinstance(annotation, dict) or "frame_dir" not in annotation:
            raise DataError(f"{where}: annotation #{index} is not a dict with a 'frame_dir' (its sample id)")
        name = annotation["frame_dir"]
        if not isinstance(name, str):
            raise DataError(f"{where}: annotation #{index}'s frame_dir must be a str (its sample id), got "
                            f"{type(name).__name__} {name!r:.80}")
        if first.setdefault(name, index) != index:
            raise DataError(f"{where}: annotations #{first[name]} and #{index} share the frame_dir {name!r}: each "
                            "sample needs its own name (rename or drop one)")
    if "split" not in obj:
        obj = dict(obj, split={DEFAULT_SPLIT: [a["frame_dir"] for a in obj["annotations"]]})
    split = obj["split"]
    if not isinstance(split, dict) or not all(isinstance(names, (list, tuple)) for names in split.values()):
        raise DataError(f"{where}: 'split' must map split names to lists of frame_dir, got {type(split).__name__}")
    classes = obj.get("classes")
    if classes is not None and (not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes)):
        raise DataError(f"{where}: 'classes' must be a list of class names (str), got {classes!r:.80}")
    return obj


def save_annotations(data, path, protocol=4):
    """Writes annotations as a PYSKL pickle; ``.gz``, ``.xz`` or ``.bz2`` compress it."""
    path = os.fspath(path)
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(os.path.splitext(path)[1], open)
    with opener(path, "wb") as handle:
        pickle.dump(data, handle, protocol=protocol)
    return path


def convert(source, out_path, **load_kwargs):
    """Writes any readable source (see ``load_annotations``) as a PYSKL pickle at ``out_path``."""
    return save_annotations(load_annotations(source, **load_kwargs), out_path)


# --- CTR-GCN / MAMP .npz -----------------------------------------------------------------------

def read_npz(path, persons=2, channels=3):
    """A CTR-GCN / MAMP ``.npz`` (``x_train [N, T, M*V*C]`` zero-padded, ``y_train`` one-hot or
    indices, ``x_test``, ``y_test``) as splits ``train`` and ``test``. Each sample is cut to its
    last non-zero frame and its persons present; keypoints are views of the loaded arrays."""
    try:
        archive = np.load(path, allow_pickle=False)
        files = set(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{path}: truncated or corrupt .npz ({type(error).__name__}: {error}): "
                        "write or download it again") from error
    with archive:
        splits = [name for name in ("train", "test") if f"x_{name}" in files]
        if not splits:
            raise DataError(f"{path}: a .npz without x_train / x_test (it has {sorted(files)}); expected CTR-GCN / "
                            "MAMP arrays x_train [N, T, M*V*C], y_train, x_test, y_test")
        annotations, split = [], {}
        for name in splits:
            if f"y_{name}" not in files:
                raise DataError(f"{path}: has x_{name} but no y_{name}: add the labels")
            try:
                x, y = (_npz_array(archive, path, key) for key in (f"x_{name}", f"y_{name}"))
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
                raise DataError(f"{path}: truncated or corrupt .npz ({error}): write or download it again") from error
            samples = _npz_samples(path, name, x, y, persons, channels)
            split[name] = [a["frame_dir"] for a in samples]
            annotations += samples
    return {"split": split, "annotations": annotations}


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npz_array(archive, path, key):
    """``archive[key]`` once its header is checked: numbers, and no more bytes than the member
    holds (a damaged header's huge shape would otherwise ask for the memory first)."""
    info = archive.zip.getinfo(f"{key}.npy")
    with archive.zip.open(info) as handle:
        read_header = _NPY_HEADERS.get(np.lib.format.read_magic(handle))
        if read_header is not None:
            shape, _, dtype = read_header(handle)
            if dtype.kind not in "biuf" or not _plain_dtype(dtype):
                raise DataError(f"{path}: {key} has dtype {dtype}; expected numbers (float keypoints, integer or "
                                "one-hot labels)")
            declared, held = math.prod(shape) * dtype.itemsize, info.file_size - handle.tell()
            if declared != held:
                raise DataError(f"{path}: {key} declares shape {shape} of {dtype} ({declared} bytes) but holds "
                                f"{held} bytes: the file is damaged; write or download it again")
    return archive[key]


def _npz_samples(path, name, x, y, persons, channels):
    if x.ndim != 3 or x.shape[2] % (persons * channels):
        raise DataError(f"{path}: x_{name} must be [N, T, M*V*C] with M = {persons} persons and C = {channels} "
                        f"channels, got shape {x.shape} (set npz_persons / npz_channels)")
    digits = len(str(max(len(x) - 1, 0)))
    if y.ndim == 2:
        one_hot = ((y == 1).sum(axis=1) == 1) & ((y != 0).sum(axis=1) == 1)
        if not one_hot.all():
            row = int(np.flatnonzero(~one_hot)[0])
            raise DataError(f"{path}: y_{name} row {row} (sample {name}_{row:0{digits}d}) is not one-hot: it has "
                            f"{int((y[row] != 0).sum())} non-zero entries; expected a single 1 (the class)")
        labels = y.argmax(axis=1)  # one-hot, as CTR-GCN's feeder reads it
    elif y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        labels = y
    else:
        raise DataError(f"{path}: y_{name} must be one-hot [N, classes] or integer indices [N], got {y.dtype} "
                        f"{y.shape}")
    if len(labels) != len(x):
        raise DataError(f"{path}: x_{name} holds {len(x)} samples but y_{name} {len(labels)} labels")
    count, frames, width = x.shape
    joints = width // (persons * channels)
    people = x.reshape(count, frames, persons, joints, channels)
    samples = []
    for n in range(count):
        present = np.flatnonzero(x[n].any(axis=1))
        length = int(present[-1]) + 1 if present.size else 0
        in_view = np.flatnonzero(people[n, :length].any(axis=(0, 2, 3)))
        kept = int(in_view[-1]) + 1 if in_view.size else 1
        samples.append({"frame_dir": f"{name}_{n:0{digits}d}", "label": int(labels[n]), "total_frames": length,
                        "keypoint": people[n, :length, :kept].transpose(1, 0, 2, 3)})
    return samples


# --- raw NTU RGB+D .skeleton files -------------------------------------------------------------

NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
NTU60_TRAIN_SUBJECTS = frozenset((1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38))
NTU120_TRAIN_SUBJECTS = NTU60_TRAIN_SUBJECTS | frozenset((
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93,
    94, 95, 97, 98, 100, 103))
NTU60_TRAIN_CAMERAS = frozenset((2, 3))
# PYSKL's denoising (tools/data/ntu_preproc.py): with several bodies, drop those seen in at most
# 11 frames, then those whose x-extent exceeds 0.8 times their y-extent in 69.754% of frames.
_MIN_BODY_FRAMES = 11
_SPREAD_RATIO, _SPREAD_FRACTION = 0.8, 0.69754


def read_ntu(path, num_person=2):
    """A folder of raw NTU RGB+D ``.skeleton`` files (or one file): ``frame_dir`` the file name,
    ``label`` the action - 1, ``keypoint`` float32 [M <= num_person, T, 25, 3] (camera-space
    metres), and the standard splits derived from the names: ``xsub_*`` and ``xview_*`` for
    NTU-60 (setups S001-S017, actions A001-A060), ``xsub_*`` and ``xset_*`` once a name is NTU-120.

    Bodies are chosen as PYSKL's converter does (drop short and too wide bodies when there are
    several, then pack the most moving ones into ``num_person`` slots without temporal overlap);
    NaN coordinates become 0 (untracked), and all-zero leading and trailing frames are cut.
    Files that hold no skeleton are skipped with a warning."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".skeleton"))
        if not files:
            raise DataError(f"{path}: a directory without .skeleton files; expected {SUPPORTED}")
        files = [os.path.join(path, f) for f in files]
    else:
        files = [path]
    annotations, empty = [], []
    for file in files:
        annotation = read_ntu_skeleton(file, num_person)
        if annotation is None:
            empty.append(os.path.basename(file))
        else:
            annotations.append(annotation)
    if empty:
        warnings.warn(f"{path}: {len(empty)} .skeleton files hold no skeleton and were skipped "
                      f"(first: {empty[0]})", stacklevel=2)
    if not annotations:
        raise DataError(f"{path}: no .skeleton file holds a skeleton")
    return {"split": ntu_splits([a["frame_dir"] for a in annotations], path), "annotations": annotations}


def _ntu_ids(name, where):
    match = NTU_NAME.search(name)
    if match is None:
        raise DataError(f"{where}: {name!r} is not an NTU name SsssCcccPpppRrrrAaaa: rename the file or convert "
                        "it another way")
    return tuple(int(g) for g in match.groups())  # setup, camera, performer, replication, action


def ntu_splits(frame_dirs, where="NTU files"):
    """The standard NTU-60 (xsub, xview) or NTU-120 (xsub, xset) splits of these sample names."""
    ids = {name: _ntu_ids(name, where) for name in frame_dirs}
    ntu120 = any(setup > 17 or action > 60 for setup, _, _, _, action in ids.values())
    rules = {"xsub": lambda s, c, p: p in (NTU120_TRAIN_SUBJECTS if ntu120 else NTU60_TRAIN_SUBJECTS)}
    if ntu120:
        rules["xset"] = lambda s, c, p: s % 2 == 0
    else:
        rules["xview"] = lambda s, c, p: c in NTU60_TRAIN_CAMERAS
    splits = {}
    for benchmark, is_train in rules.items():
        splits[f"{benchmark}_train"] = [n for n, (s, c, p, _, _) in ids.items() if is_train(s, c, p)]
        splits[f"{benchmark}_val"] = [n for n, (s, c, p, _, _) in ids.items() if not is_train(s, c, p)]
    return splits


def read_ntu_skeleton(path, num_person=2):
    """One raw ``.skeleton`` file as an annotation (see ``read_ntu``), or None if it holds no body."""
    name = os.path.basename(path).removesuffix(".skeleton")
    action = _ntu_ids(name, path)[4]
    frames, bodies = _parse_skeleton(path)
    slots = _pack_bodies(_denoised(bodies), num_person)
    if not slots:
        return None
    keypoint = np.zeros((len(slots), frames, 25, 3), dtype=np.float32)
    for person, slot in enumerate(slots):
        for frame_inds, xyz in slot:
            keypoint[person, frame_inds] = xyz
    present = np.flatnonzero(keypoint.any(axis=(0, 2, 3)))
    if not present.size:
        return None
    keypoint = keypoint[:, present[0]:present[-1] + 1]
    return {"frame_dir": name, "label": action - 1, "total_frames": keypoint.shape[1], "keypoint": keypoint}


def _parse_skeleton(path):
    """(number of frames, {bodyID: (frame indices, xyz [t, J, 3])}) of a .skeleton file."""
    with open(path, encoding="ascii", errors="replace") as handle:
        lines = handle.read().split("\n")
    pos, bodies = 0, {}
    try:
        frames = int(lines[0])
        pos = 1
        for frame in range(frames):
            count = int(lines[pos])
            pos += 1
            for _ in range(count):
                body_id = lines[pos].split()[0]
                joints = int(lines[pos + 1])
                pos += 2
                fields = [line.split()[:3] for line in lines[pos:pos + joints]]
                if len(fields) != joints or any(len(f) != 3 for f in fields):
                    raise ValueError(f"expected {joints} joint lines of x y z ...; the file ends or a line is short")
                xyz = np.array(fields, dtype=np.float32)
                pos += joints
                frame_list, joint_list = bodies.setdefault(body_id, ([], []))
                frame_list.append(frame)
                joint_list.append(xyz)
    except (ValueError, IndexError) as error:
        raise DataError(f"{path}: not a valid NTU .skeleton file at line {pos + 1} ({error}): the file is "
                        "truncated or of another format") from error
    parsed = {}
    for body_id, (frame_list, joint_list) in bodies.items():
        xyz = np.stack(joint_list)
        parsed[body_id] = (np.array(frame_list), np.where(np.isfinite(xyz), xyz, 0))
    return frames, parsed


def _denoised(bodies):
    candidates = list(bodies.values())
    if len(candidates) > 1:
        candidates = [b for b in candidates if len(b[0]) > _MIN_BODY_FRAMES] or candidates
    if len(candidates) > 1:
        extent = [xyz.max(axis=1) - xyz.min(axis=1) for _, xyz in candidates]
        wide = [np.mean(e[:, 0] > _SPREAD_RATIO * e[:, 1]) for e in extent]
        candidates = [b for b, w in zip(candidates, wide) if w < _SPREAD_FRACTION] or candidates
    # the most moving first: summed per-coordinate variance over the body's frames
    return sorted(candidates, key=lambda b: -float(b[1].var(axis=0).sum()))


def _pack_bodies(bodies, num_person):
    """Bodies into at most ``num_person`` slots, each slot's bodies in disjoint frames."""
    slots, occupied = [], []
    for frame_inds, xyz in bodies:
        for slot, frames in zip(slots, occupied):
            if not frames & set(frame_inds.tolist()):
                slot.append((frame_inds, xyz))
                frames.update(frame_inds.tolist())
                break
        else:
            if len(slots) < num_person:
                slots.append([(frame_inds, xyz)])
                occupied.append(set(frame_inds.tolist()))
    return slots
