"""Skeleton layouts as data: joints, edges, centre, left/right pairs and the body-part partition
that SkeletonMAE masks.

Built in: ``coco`` (17), ``nturgb+d`` (25) and ``openpose`` (18) with PYSKL's joint order and
edge lists, and the layouts of the bundled real datasets, ``bandai2`` (21, optical mocap) and
``msr_action3d`` (20, Kinect v1); their ``*_coco2d`` twins use ``coco``.

Every built-in partition lists six parts in the same order, so part indices mean the same body
part in every layout: 0 head, 1 torso, 2 left arm, 3 right arm, 4 left leg, 5 right leg
("left" is the subject's left). COCO's is the paper's (Fig. 2(d)); the limbs of the others hold
the joints from the elbow / knee outwards, like COCO's, and the torso the shoulders and hips.

Each joint has a bone parent (``parents``; the root is its own parent, so its bone is zero): the
bone features (PYSKL's ``JointToBone``) are ``joint - joint[parent]``. The built-in standard
layouts use PYSKL's bone pairs exactly, quirks included (COCO's hips hang off the nose, not the
shoulders; NTU's hand tips chain through the thumbs; OpenPose's neck hangs off the nose), so
bone features match PYSKL's; the bundled datasets' layouts use their skeletons' parents.

A custom layout is a dict (or a JSON file of one) of the form
``{"name": str, "joints": [str, ...], "edges": [[i, j], ...], "center": int,
"parts": [[int, ...], ...], "flip_pairs": [[i, j], ...], "parents": [int, ...]}``
(``flip_pairs`` and ``parents`` optional). Without ``parents``, each joint's parent is its
neighbour on the way to the centre (a breadth-first tree of the edges from the centre); in
``parents`` the root may be given as itself or as -1.
"""

import json
import numbers
import os
from dataclasses import dataclass

import torch

PART_NAMES = ("head", "torso", "left arm", "right arm", "left leg", "right leg")


@dataclass(frozen=True)
class Layout:
    name: str
    joints: tuple  # joint names, index = joint id
    edges: tuple  # (i, j) pairs, "inward": j is nearer the centre (PYSKL)
    center: int
    parts: tuple  # tuples of joint ids, disjoint and non-empty
    flip_pairs: tuple = ()  # (left, right) joint pairs
    parents: tuple = None  # bone parent per joint (the root: itself); None: derived from the edges

    def __post_init__(self):
        _validate(self)
        if self.parents is None:
            object.__setattr__(self, "parents", _tree_parents(self))  # frozen dataclass
        else:
            object.__setattr__(self, "parents", _checked_parents(self))

    @property
    def num_joints(self):
        return len(self.joints)

    def adjacency(self, dtype=torch.float32):
        """[V, V] binary symmetric adjacency without self-loops: GIN's neighbour sets."""
        matrix = torch.zeros(self.num_joints, self.num_joints, dtype=dtype)
        for i, j in self.edges:
            matrix[i, j] = matrix[j, i] = 1
        return matrix

    def spatial(self, dtype=torch.float32):
        """[3, V, V] PYSKL ``spatial`` stack: identity, then the column-normalised inward and
        outward matrices (``edge2mat`` puts A[j, i] = 1 for each pair (i, j))."""
        inward = torch.zeros(self.num_joints, self.num_joints, dtype=dtype)
        for i, j in self.edges:
            inward[j, i] = 1
        return torch.stack([torch.eye(self.num_joints, dtype=dtype), _normalize_columns(inward),
                            _normalize_columns(inward.t().contiguous())])

    def part_membership(self):
        """[P, V] bool: row p marks the joints of part p."""
        membership = torch.zeros(len(self.parts), self.num_joints, dtype=torch.bool)
        for p, joints in enumerate(self.parts):
            membership[p, list(joints)] = True
        return membership

    def to_dict(self):
        return {"name": self.name, "joints": list(self.joints), "edges": [list(e) for e in self.edges],
                "center": self.center, "parts": [list(p) for p in self.parts],
                "flip_pairs": [list(p) for p in self.flip_pairs], "parents": list(self.parents)}


def _normalize_columns(matrix):
    sums = matrix.sum(dim=0)
    return matrix / torch.where(sums > 0, sums, torch.ones_like(sums))


def _fail(layout_name, message):
    raise ValueError(f"layout {layout_name!r}: {message}")


def is_index(value):
    """Whether `value` is an integer index (numpy's included; a bool or a float is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_indices(layout):
    """Every joint index is an int: a float such as 2.7 would silently be truncated to a joint."""
    if type(layout.center) is not int:
        _fail(layout.name, f"center must be an integer joint index, got {layout.center!r}")
    groups = [("edge", pair) for pair in layout.edges] + [("flip pair", pair) for pair in layout.flip_pairs]
    groups += [(f"part {p}", joints) for p, joints in enumerate(layout.parts)]
    for what, indices in groups:
        bad = [i for i in indices if type(i) is not int]
        if bad:
            _fail(layout.name, f"{what} {tuple(indices)} holds {bad[0]!r}, not an integer joint index")


def _validate(layout):
    v = len(layout.joints)
    name = layout.name
    if v < 2:
        _fail(name, f"needs at least 2 joints, got {v}")
    if len(set(layout.joints)) != v:
        _fail(name, "joint names must be unique")
    _check_indices(layout)
    for i, j in layout.edges:
        if not (0 <= i < v and 0 <= j < v):
            _fail(name, f"edge ({i}, {j}) is out of range for {v} joints (valid: 0..{v - 1})")
        if i == j:
            _fail(name, f"edge ({i}, {j}) is a self-loop")
    if not 0 <= layout.center < v:
        _fail(name, f"center {layout.center} is out of range for {v} joints")
    _check_connected(layout)
    if not layout.parts:
        _fail(name, "needs at least one body part")
    seen = {}
    for p, joints in enumerate(layout.parts):
        if not joints:
            _fail(name, f"part {p} is empty")
        for joint in joints:
            if not 0 <= joint < v:
                _fail(name, f"part {p} holds joint {joint}, out of range for {v} joints")
            if joint in seen:
                _fail(name, f"joint {joint} is in parts {seen[joint]} and {p}: parts must be disjoint")
            seen[joint] = p
    for i, j in layout.flip_pairs:
        if not (0 <= i < v and 0 <= j < v) or i == j:
            _fail(name, f"flip pair ({i}, {j}) must be two distinct joints in 0..{v - 1}")


def _check_connected(layout):
    neighbours = {v: set() for v in range(len(layout.joints))}
    for i, j in layout.edges:
        neighbours[i].add(j)
        neighbours[j].add(i)
    reached, frontier = {layout.center}, [layout.center]
    while frontier:
        for u in neighbours[frontier.pop()] - reached:
            reached.add(u)
            frontier.append(u)
    if len(reached) != len(layout.joints):
        missing = sorted(set(neighbours) - reached)
        _fail(layout.name, f"graph is not connected: joints {missing} cannot be reached from the center")


def _tree_parents(layout):
    """Each joint's neighbour on its way to the centre (breadth-first from the centre)."""
    neighbours = {v: [] for v in range(len(layout.joints))}
    for i, j in layout.edges:
        neighbours[i].append(j)
        neighbours[j].append(i)
    parents = {layout.center: layout.center}
    frontier = [layout.center]
    while frontier:
        following = []
        for u in frontier:
            for v in neighbours[u]:
                if v not in parents:
                    parents[v] = u
                    following.append(v)
        frontier = following
    return tuple(parents[v] for v in range(len(layout.joints)))


def _checked_parents(layout):
    v = len(layout.joints)
    if len(layout.parents) != v:
        _fail(layout.name, f"parents must give one parent per joint ({v}), got {len(layout.parents)}")
    parents = []
    for joint, parent in enumerate(layout.parents):
        if isinstance(parent, bool) or not isinstance(parent, int):
            _fail(layout.name, f"parent of joint {joint} must be an integer joint index, got {parent!r}")
        if not -1 <= parent < v:
            _fail(layout.name, f"parent {parent} of joint {joint} is out of range for {v} joints (-1 or 0..{v - 1})")
        parents.append(joint if parent == -1 else parent)
    return tuple(parents)


def _pairs(flat):
    return tuple(tuple(pair) for pair in flat)


def _parents_of_bone_pairs(pairs):
    """Parents from PYSKL's ``JointToBone`` pairs ``(joint, parent)``."""
    parent_of = dict(pairs)
    return tuple(parent_of[v] for v in range(len(parent_of)))


def _flip_pairs_by_name(joints, left, right):
    """(left, right) pairs of joints whose names differ only in the side marker."""
    index = {name: i for i, name in enumerate(joints)}
    return tuple((i, index[name.replace(left, right)]) for i, name in enumerate(joints)
                 if left in name and name.replace(left, right) in index)


_COCO_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
_NTU_JOINTS = ("spine_base", "spine_mid", "neck", "head", "left_shoulder", "left_elbow",
               "left_wrist", "left_hand", "right_shoulder", "right_elbow", "right_wrist",
               "right_hand", "left_hip", "left_knee", "left_ankle", "left_foot", "right_hip",
               "right_knee", "right_ankle", "right_foot", "spine_shoulder", "left_hand_tip",
               "left_thumb", "right_hand_tip", "right_thumb")
_OPENPOSE_JOINTS = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
                    "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
                    "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear")
_BANDAI_JOINTS = ("Hips", "Spine", "Chest", "Neck", "Head", "Shoulder_L", "UpperArm_L", "LowerArm_L",
                  "Hand_L", "Shoulder_R", "UpperArm_R", "LowerArm_R", "Hand_R", "UpperLeg_L",
                  "LowerLeg_L", "Foot_L", "Toes_L", "UpperLeg_R", "LowerLeg_R", "Foot_R", "Toes_R")
_MSR_JOINTS = ("left shoulder", "right shoulder", "neck", "spine", "left hip", "right hip",
               "hip centre", "left elbow", "right elbow", "left wrist", "right wrist", "left hand",
               "right hand", "left knee", "right knee", "left ankle", "right ankle", "left foot",
               "right foot", "head")

BUILTIN_LAYOUTS = {
    "coco": Layout(
        "coco", _COCO_JOINTS,
        _pairs([(15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8),
                (8, 6), (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2)]),
        center=0,
        parts=((0, 1, 2, 3, 4), (5, 6, 11, 12), (7, 9), (8, 10), (13, 15), (14, 16)),
        flip_pairs=_flip_pairs_by_name(_COCO_JOINTS, "left", "right"),
        parents=_parents_of_bone_pairs([(0, 0), (1, 0), (2, 0), (3, 1), (4, 2), (5, 0), (6, 0), (7, 5), (8, 6),
                                        (9, 7), (10, 8), (11, 0), (12, 0), (13, 11), (14, 12), (15, 13),
                                        (16, 14)]),
    ),
    "nturgb+d": Layout(
        "nturgb+d", _NTU_JOINTS,
        _pairs([(0, 1), (1, 20), (2, 20), (3, 2), (4, 20), (5, 4), (6, 5), (7, 6), (8, 20), (9, 8),
                (10, 9), (11, 10), (12, 0), (13, 12), (14, 13), (15, 14), (16, 0), (17, 16),
                (18, 17), (19, 18), (21, 7), (22, 7), (23, 11), (24, 11)]),
        center=20,
        parts=((2, 3), (0, 1, 4, 8, 12, 16, 20), (5, 6, 7, 21, 22), (9, 10, 11, 23, 24),
               (13, 14, 15), (17, 18, 19)),
        flip_pairs=_flip_pairs_by_name(_NTU_JOINTS, "left", "right"),
        parents=_parents_of_bone_pairs([(0, 1), (1, 20), (2, 20), (3, 2), (4, 20), (5, 4), (6, 5), (7, 6),
                                        (8, 20), (9, 8), (10, 9), (11, 10), (12, 0), (13, 12), (14, 13),
                                        (15, 14), (16, 0), (17, 16), (18, 17), (19, 18), (21, 22), (20, 20),
                                        (22, 7), (23, 24), (24, 11)]),
    ),
    "openpose": Layout(
        "openpose", _OPENPOSE_JOINTS,
        _pairs([(4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5), (8, 2),
                (5, 1), (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14)]),
        center=1,
        parts=((0, 14, 15, 16, 17), (1, 2, 5, 8, 11), (6, 7), (3, 4), (12, 13), (9, 10)),
        flip_pairs=_flip_pairs_by_name(_OPENPOSE_JOINTS, "left", "right"),
        parents=_parents_of_bone_pairs([(0, 0), (1, 0), (2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6), (8, 2),
                                        (9, 8), (10, 9), (11, 5), (12, 11), (13, 12), (14, 0), (15, 0),
                                        (16, 14), (17, 15)]),
    ),
    # Bandai-Namco-Research-Motiondataset-2: BVH joints; a joint's position is where its bone
    # starts (UpperArm_L = shoulder, LowerArm_L = elbow, Hand_L = wrist).
    "bandai2": Layout(
        "bandai2", _BANDAI_JOINTS,
        _pairs([(1, 0), (2, 1), (3, 2), (4, 3), (5, 2), (6, 5), (7, 6), (8, 7), (9, 2), (10, 9),
                (11, 10), (12, 11), (13, 0), (14, 13), (15, 14), (16, 15), (17, 0), (18, 17),
                (19, 18), (20, 19)]),
        center=0,
        parts=((3, 4), (0, 1, 2, 5, 6, 9, 10, 13, 17), (7, 8), (11, 12), (14, 15, 16), (18, 19, 20)),
        flip_pairs=_flip_pairs_by_name(_BANDAI_JOINTS, "_L", "_R"),
        # the BVH hierarchy's parents (bandai2.json), root -1
        parents=(-1, 0, 1, 2, 3, 2, 5, 6, 7, 2, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19),
    ),
    # MSR Action3D (Kinect v1, 20 joints), native order of the bundled pickle.
    "msr_action3d": Layout(
        "msr_action3d", _MSR_JOINTS,
        _pairs([(0, 2), (1, 2), (2, 3), (3, 6), (4, 6), (5, 6), (7, 0), (8, 1), (9, 7), (10, 8),
                (11, 9), (12, 10), (13, 4), (14, 5), (15, 13), (16, 14), (17, 15), (18, 16), (19, 2)]),
        center=6,
        parts=((2, 19), (0, 1, 3, 4, 5, 6), (7, 9, 11), (8, 10, 12), (13, 15, 17), (14, 16, 18)),
        flip_pairs=_flip_pairs_by_name(_MSR_JOINTS, "left", "right"),
        # the parents of msr_action3d.json's (child, parent) edges, root 6 (hip centre)
        parents=(2, 2, 3, 6, 6, 6, 6, 0, 1, 7, 8, 9, 10, 4, 5, 13, 14, 15, 16, 2),
    ),
}
BUILTIN_LAYOUTS["bandai2_coco2d"] = BUILTIN_LAYOUTS["coco"]
BUILTIN_LAYOUTS["msr_action3d_coco2d"] = BUILTIN_LAYOUTS["coco"]

_REQUIRED_KEYS = ("name", "joints", "edges", "center", "parts")
_OPTIONAL_KEYS = ("flip_pairs", "parents")


def layout_from_dict(spec):
    """A Layout from the dict form described in the module docstring, validated."""
    if not isinstance(spec, dict):
        raise ValueError(f"a custom layout must be a dict, got {type(spec).__name__}")
    missing = [key for key in _REQUIRED_KEYS if key not in spec]
    if missing:
        raise ValueError(f"custom layout is missing keys {missing} (needs {list(_REQUIRED_KEYS)})")
    unknown = sorted(set(spec) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"custom layout has unknown keys {unknown}")
    try:
        return Layout(
            name=str(spec["name"]),
            joints=tuple(str(j) for j in spec["joints"]),
            edges=tuple((_index(i), _index(j)) for i, j in spec["edges"]),
            center=_index(spec["center"]),
            parts=tuple(tuple(_index(j) for j in part) for part in spec["parts"]),
            flip_pairs=tuple((_index(i), _index(j)) for i, j in spec.get("flip_pairs", ())),
            parents=None if spec.get("parents") is None else tuple(spec["parents"]),
        )
    except (TypeError, ValueError) as error:
        if "layout" in str(error):
            raise
        raise ValueError(f"custom layout {spec.get('name')!r} is malformed: {error}") from error


def _layout_from_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"layout file {os.fspath(path)!r} is not valid JSON ({error}): "
                         "write the layout as a JSON object (see skelmae_ext.layouts)") from error
    try:
        return layout_from_dict(spec)
    except ValueError as error:
        raise ValueError(f"layout file {os.fspath(path)!r}: {error}") from error


def _index(value):
    """An integer index as an int (numpy's too); anything else as it is, for Layout to reject."""
    return int(value) if is_index(value) else value


def get_layout(layout):
    """A Layout from a built-in name, a Layout, a dict, or the path of a JSON file."""
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, dict):
        return layout_from_dict(layout)
    if isinstance(layout, (str, os.PathLike)):
        if str(layout) in BUILTIN_LAYOUTS:
            return BUILTIN_LAYOUTS[str(layout)]
        if os.path.isfile(layout):
            return _layout_from_json(layout)
        raise ValueError(
            f"unknown layout {str(layout)!r}: not a built-in ({sorted(BUILTIN_LAYOUTS)}) nor a JSON file"
        )
    raise ValueError(f"layout must be a name, a dict, a JSON path or a Layout, got {type(layout).__name__}")
