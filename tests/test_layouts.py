"""Layouts: built-ins, derived matrices, custom layouts and their validation."""

import json
import os

import numpy as np
import pytest
import torch

from skelmae_ext import layouts

import skeletons

BUILTIN = ["coco", "nturgb+d", "openpose", "bandai2", "msr_action3d"]
SKELETONS = os.path.join(os.path.dirname(__file__), "data", "skeletons")


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_adjacency_is_binary_symmetric_without_self_loops(name):
    layout = layouts.get_layout(name)
    adjacency = layout.adjacency()
    assert adjacency.shape == (layout.num_joints,) * 2
    assert torch.equal(adjacency, adjacency.t())
    assert set(adjacency.unique().tolist()) == {0.0, 1.0}
    assert adjacency.diagonal().sum() == 0
    assert adjacency.sum() == 2 * len(layout.edges)
    # A skeleton is a tree: V - 1 edges, connected (checked at construction).
    assert len(layout.edges) == layout.num_joints - 1


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_partition_is_six_disjoint_parts_covering_every_joint(name):
    layout = layouts.get_layout(name)
    membership = layout.part_membership()
    assert membership.shape == (6, layout.num_joints)
    assert torch.equal(membership.sum(0), torch.ones(layout.num_joints, dtype=torch.long))


@pytest.mark.parametrize("name", ["coco", "openpose", "nturgb+d"])
def test_standard_layouts_have_pyskl_edges(name):
    # tests/skeletons.py holds PYSKL's edge lists, written out independently of the library.
    layout = layouts.get_layout(name)
    assert sorted(layout.edges) == sorted(skeletons.EDGES[layout.num_joints])


def test_coco_partition_is_the_papers():
    coco = layouts.get_layout("coco")
    assert coco.parts == ((0, 1, 2, 3, 4), (5, 6, 11, 12), (7, 9), (8, 10), (13, 15), (14, 16))
    assert layouts.PART_NAMES[3] == "right arm" and layouts.PART_NAMES[5] == "right leg"


@pytest.mark.parametrize("name", BUILTIN)
def test_parts_and_flip_pairs_follow_the_joint_names(name):
    layout = layouts.get_layout(name)
    for part, side in ((2, "l"), (3, "r"), (4, "l"), (5, "r")):
        for joint in layout.parts[part]:
            lowered = layout.joints[joint].lower()
            assert lowered.startswith("left" if side == "l" else "right") or lowered.endswith("_" + side), (
                layout.joints[joint], layouts.PART_NAMES[part])
    for left, right in layout.flip_pairs:
        assert layout.joints[left].lower().replace("left", "right").replace("_l", "_r") == layout.joints[right].lower()


def test_spatial_stack_matches_pyskl_on_coco():
    spatial = layouts.get_layout("coco").spatial()
    assert spatial.shape == (3, 17, 17)
    assert torch.equal(spatial[0], torch.eye(17))
    # edge2mat puts A[j, i] = 1 for inward (i, j); columns are normalised to 1 (0 for no edges)
    assert spatial[1][13, 15] == 1.0 and spatial[2][15, 13] == 1.0
    for matrix in spatial[1:]:
        sums = matrix.sum(0)
        assert torch.all(((sums - 1).abs() < 1e-6) | (sums == 0))
    # The nose has four children (both eyes, both shoulders): outward entries of 1/4.
    assert spatial[2][[1, 2, 5, 6], 0].tolist() == [0.25] * 4


STAR = {"name": "star", "joints": ["hub", "a", "b", "c", "d"], "edges": [[1, 0], [2, 0], [3, 0], [4, 0]],
        "center": 0, "parts": [[0], [1, 2], [3, 4]], "flip_pairs": [[1, 2]]}


def test_custom_layout_from_dict_and_json(tmp_path):
    path = tmp_path / "star.json"
    path.write_text(json.dumps(STAR))
    for source in (STAR, str(path), path):
        layout = layouts.get_layout(source)
        assert layout.num_joints == 5 and layout.parts == ((0,), (1, 2), (3, 4))
        assert layout.to_dict()["edges"] == STAR["edges"]


def test_numpy_integer_indices_are_ints():
    spec = _with(edges=np.array(STAR["edges"]), center=np.int64(0), parts=[np.array([0]), [1, 2], [3, 4]])
    layout = layouts.get_layout(spec)
    assert layout == layouts.get_layout(STAR) and type(layout.edges[0][0]) is int


def _with(**changes):
    return dict(STAR, **changes)


INVALID = {
    "edge out of range": (_with(edges=[[1, 0], [2, 0], [3, 0], [5, 0]]), r"edge \(5, 0\) is out of range for 5 joints"),
    "self-loop": (_with(edges=[[1, 0], [2, 0], [3, 0], [4, 4]]), r"edge \(4, 4\) is a self-loop"),
    "disconnected": (_with(edges=[[1, 0], [2, 0], [4, 3]]), r"not connected: joints \[3, 4\]"),
    "overlapping parts": (_with(parts=[[0, 1], [1, 2]]), r"joint 1 is in parts 0 and 1"),
    "empty part": (_with(parts=[[0], []]), r"part 1 is empty"),
    "part out of range": (_with(parts=[[0], [7]]), r"part 1 holds joint 7, out of range"),
    "center out of range": (_with(center=9), r"center 9 is out of range"),
    "flip pair": (_with(flip_pairs=[[1, 1]]), r"flip pair \(1, 1\)"),
    "missing key": ({k: v for k, v in STAR.items() if k != "parts"}, r"missing keys \['parts'\]"),
    "unknown key": (_with(colour="red"), r"unknown keys \['colour'\]"),
    "duplicate names": (_with(joints=["a", "a", "b", "c", "d"]), r"joint names must be unique"),
    # int() once truncated these silently: 2.7 -> joint 2, 0.9 -> joint 0
    "float edge": (_with(edges=[[0, 1], [1, 2.7], [2, 3], [3, 4]]), r"edge \(1, 2.7\) holds 2.7, not an integer joint index"),
    "float center": (_with(center=0.9), r"center must be an integer joint index, got 0.9"),
    "bool center": (_with(center=True), r"center must be an integer joint index, got True"),
    "string center": (_with(center="0"), r"center must be an integer joint index, got '0'"),
    "float part": (_with(parts=[[0, 1.5]]), r"part 0 \(0, 1.5\) holds 1.5, not an integer joint index"),
    "float flip pair": (_with(flip_pairs=[[1, 2.0]]), r"flip pair \(1, 2.0\) holds 2.0, not an integer joint index"),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_custom_layout(case):
    spec, message = INVALID[case]
    with pytest.raises(ValueError, match=message):
        layouts.get_layout(spec)


def test_unknown_layout_name():
    with pytest.raises(ValueError, match=r"unknown layout 'kinect'.*built-in"):
        layouts.get_layout("kinect")


@pytest.mark.parametrize("name", ["coco", "openpose", "nturgb+d"])
def test_standard_layouts_have_pyskl_bone_parents(name):
    # PYSKL's JointToBone pairs, quirks included (tests/skeletons.py, written out independently)
    layout = layouts.get_layout(name)
    assert sorted(enumerate(layout.parents)) == sorted(skeletons.BONE_PAIRS[layout.num_joints])


@pytest.mark.parametrize("name", ["bandai2", "msr_action3d"])
def test_dataset_layouts_are_the_datasets_own_skeletons(name):
    """Each real dataset's layout against the dataset's own joint names and (child, parent)
    edges, the .json beside its converted copy (tests/data/skeletons/, attribution kept): the
    names in order, the edges oriented towards the root, the root as centre, bone parents."""
    with open(os.path.join(SKELETONS, f"{name}.json"), encoding="utf-8") as handle:
        spec = json.load(handle)
    layout = layouts.get_layout(name)
    assert list(layout.joints) == spec["joint_names"]
    assert sorted(layout.edges) == sorted(map(tuple, spec["edges"]))
    assert layout.center == spec["root_joint"]
    parent = dict(map(tuple, spec["edges"]))
    assert layout.parents == tuple(parent.get(joint, joint) for joint in range(len(spec["joint_names"])))
    if "parents" in spec:  # bandai2.json also lists them, the root's as -1
        assert layout.parents == tuple(p if p >= 0 else j for j, p in enumerate(spec["parents"]))


def test_custom_parents_from_edges_and_centre():
    assert layouts.get_layout(STAR).parents == (0, 0, 0, 0, 0)
    chain = {"name": "chain", "joints": list("abcde"), "edges": [[0, 1], [1, 2], [3, 2], [4, 3]], "center": 2,
             "parts": [[0, 1], [2], [3, 4]]}
    assert layouts.get_layout(chain).parents == (1, 2, 2, 2, 3)  # each towards the centre, whatever the pair order
    explicit = layouts.get_layout(dict(chain, parents=[1, 2, -1, 2, 3]))
    assert explicit.parents == (1, 2, 2, 2, 3)
    assert layouts.get_layout(explicit.to_dict()) == explicit


@pytest.mark.parametrize("parents, message", [
    ([0, 0, 0], r"parents must give one parent per joint \(5\), got 3"),
    ([0, 0, 0, 0, 7], r"parent 7 of joint 4 is out of range for 5 joints"),
    ([0, 0, 0, 0.5, 0], r"parent of joint 3 must be an integer joint index, got 0\.5"),
])
def test_invalid_parents(parents, message):
    with pytest.raises(ValueError, match=message):
        layouts.get_layout(_with(parents=parents))


def test_layout_json_that_does_not_parse_names_its_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "star", "joints": [')
    with pytest.raises(ValueError, match=r"layout file '.*broken\.json' is not valid JSON \(Expecting value"):
        layouts.get_layout(broken)
    listed = tmp_path / "listed.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"layout file '.*listed\.json': a custom layout must be a dict, got list"):
        layouts.get_layout(str(listed))
