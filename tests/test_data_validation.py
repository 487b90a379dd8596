"""Validation: every problem in annotation data is a DataError naming the file, the sample
(frame_dir) and what to do, raised before any training (by validate and by SkeletonDataset)."""

import numpy as np
import pytest

from skelmae_ext.data import DataError, SkeletonDataset, layout_for_joints, validate

from annotations import annotation, dataset, write_pickle


def broken(change, **kwargs):
    """A dataset whose sample 'train_1' has ``change`` applied (annotation dict -> None)."""
    data = dataset(**kwargs)
    change(data["annotations"][1])
    return data


def set_key(key, value):
    return lambda a: a.__setitem__(key, value)


def drop_key(key):
    return lambda a: a.pop(key)


SAMPLE_CASES = {
    "V not the layout's": (set_key("keypoint", np.zeros((1, 20, 18, 2), np.float16)),
                           r"keypoint has 18 joints but layout 'coco' has 17: pass the layout"),
    "C neither 2 nor 3": (set_key("keypoint", np.ones((1, 20, 17, 4), np.float16)),
                          r"keypoint has 4 channels; expected 2 \(x, y\) or 3"),
    "missing label": (drop_key("label"), r"has no 'label': add its 0-based class index"),
    "negative label": (set_key("label", -1), r"label -1 is out of range \(0\.\.2\)"),
    "non-integer label": (set_key("label", 1.5), r"label 1\.5 is not an integer"),
    "NaN keypoints": (lambda a: a["keypoint"].__setitem__((0, 3, 5, 1), np.nan),
                      r"keypoint holds 1 NaN / inf values \(first at person 0, frame 3, joint 5\)"),
    "inf keypoints": (lambda a: a["keypoint"].__setitem__((0, 0, 0, 0), np.inf), r"holds 1 NaN / inf values"),
    "score shape": (set_key("keypoint_score", np.ones((1, 20, 16), np.float16)),
                    r"keypoint_score must be \[M, T, V\] = \(1, 20, 17\), got \(1, 20, 16\)"),
    "keypoint rank": (set_key("keypoint", np.ones((20, 17, 2), np.float16)),
                      r"keypoint must be \[M, T, V, C\] \(4 dims\), got shape \(20, 17, 2\) \(a single person"),
    "keypoint not an array": (set_key("keypoint", [[1, 2]]), r"'keypoint' must be a numpy array .*got list"),
    "integer keypoints": (set_key("keypoint", np.ones((1, 20, 17, 2), np.int64)),
                          r"keypoint must be floating point, got int64"),
    "no frames": (lambda a: a.update(keypoint=np.zeros((1, 0, 17, 2), np.float16), total_frames=0,
                                     keypoint_score=np.zeros((1, 0, 17))),
                  r"has no frames \(keypoint shape \(1, 0, 17, 2\)\): drop the sample"),
    "total_frames mismatch": (set_key("total_frames", 25), r"total_frames is 25 but keypoint has 20 frames"),
    "total_frames zero": (set_key("total_frames", 0), r"total_frames is 0 but keypoint has 20 frames"),
    "zero img_shape": (set_key("img_shape", (0, 0)), r"img_shape must be \(height, width\) in pixels, both > 0"),
    "bool img_shape": (set_key("img_shape", (True, True)), r"img_shape must be \(height, width\) in pixels, both > 0, "
                                                            r"got \(True, True\)"),
    "no keypoint": (drop_key("keypoint"), r"has no 'keypoint': add its array \[M, T, V, C\] or drop the sample"),
    "string score": (set_key("keypoint_score", "1"), r"keypoint_score must be \[M, T, V\] = \(1, 20, 17\), got str"),
    "score of strings": (set_key("keypoint_score", np.full((1, 20, 17), "1")),
                         r"keypoint_score must hold confidences \(float\), got dtype <U1"),
    "huge coordinate": (lambda a: a.update(keypoint=np.full((1, 20, 17, 2), 3e38, np.float32)),
                        r"keypoint holds 680 coordinates beyond \+-1e\+06 \(first at person 0, frame 0, joint 0: 3e\+38\); "
                        r"expected pixels or metres"),
}


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=list(SAMPLE_CASES))
def test_sample_problems_name_file_sample_and_fix(tmp_path, case):
    change, message = SAMPLE_CASES[case]
    path = write_pickle(tmp_path / "bad.pkl", broken(change))
    pattern = r"bad\.pkl.*: 1 of \d+ samples cannot be used:\n  sample 'train_1': .*" + message
    with pytest.raises(DataError, match=pattern):
        validate(path)
    with pytest.raises(DataError, match=pattern):
        SkeletonDataset(path, "train")
    SkeletonDataset(path, "val")  # the other split is fine


def test_label_beyond_the_named_classes(tmp_path):
    data = dataset()
    data["classes"] = ["a", "b"]  # labels go up to 2
    with pytest.raises(DataError, match=r"sample 'train_2': label 2 is out of range \(0\.\.1\): fix the label or"):
        SkeletonDataset(write_pickle(tmp_path / "named.pkl", data), "train")


def test_many_bad_samples_are_counted():
    data = dataset(labels=tuple(range(3)) * 4)
    for a in data["annotations"]:
        a["label"] = -1
    with pytest.raises(DataError, match=r"14 of 14 samples .*\n(  sample .*\n){5}  \.\.\. and 9 more samples"):
        validate(data)


def test_split_problems(tmp_path):
    path = write_pickle(tmp_path / "d.pkl", dataset())
    with pytest.raises(DataError, match=r"d\.pkl: unknown split 'test'; the file has \['train', 'val'\]"):
        SkeletonDataset(path, "test")
    empty = dataset()
    empty["split"]["test"] = []
    with pytest.raises(DataError, match=r"split 'test' is empty: choose another split"):
        SkeletonDataset(empty, "test")
    validate(empty)  # an empty split is no problem of the file itself
    missing = dataset()
    missing["split"]["val"].append("ghost")
    with pytest.raises(DataError, match=r"split 'val' lists 1 samples that have no annotation \(first: 'ghost'\)"):
        validate(missing)


def test_the_odd_sample_is_blamed_not_the_others(tmp_path):
    data = dataset()
    data["annotations"][0].update(keypoint=np.zeros((1, 20, 18, 2), np.float16),
                                  keypoint_score=np.zeros((1, 20, 18), np.float16))
    with pytest.raises(DataError, match=r"1 of 6 samples cannot be used:\n  sample 'train_0': keypoint has 18 joints "
                                        r"but layout 'coco' has 17"):
        SkeletonDataset(write_pickle(tmp_path / "odd.pkl", data), "train")


def test_legacy_list_with_bad_sample(tmp_path):
    good, bad = annotation("a", 0), annotation("b", 1)
    bad["keypoint"] = bad["keypoint"][0]  # [T, V, C]
    with pytest.raises(DataError, match=r"legacy\.pkl[\s\S]*sample 'b': keypoint must be \[M, T, V, C\]"):
        SkeletonDataset(write_pickle(tmp_path / "legacy.pkl", [good, bad]), "all")


def test_layout_from_joint_count():
    assert layout_for_joints(17).name == "coco"
    assert layout_for_joints(25).name == "nturgb+d"
    assert layout_for_joints(18).name == "openpose"
    with pytest.raises(DataError, match=r"mocap\.pkl: no layout is implied by 21 joints .*bandai2 \(21\).*JSON file"):
        layout_for_joints(21, "mocap.pkl")
    data = dataset(joints=21, channels=3)
    with pytest.raises(DataError, match=r"no layout is implied by 21 joints"):
        SkeletonDataset(data, "train")
    assert SkeletonDataset(data, "train", layout="bandai2").layout.name == "bandai2"


def test_dataset_arguments():
    data = dataset()
    for kwargs, message in [(dict(mode="val"), r"mode must be 'train' or 'test'"),
                            (dict(label_fraction=0), r"label_fraction must be in \(0, 1\]"),
                            (dict(seed=-1), r"seed must be a non-negative integer"),
                            (dict(pipeline=[{"type": "Shear"}]), r"unknown transform type 'Shear'")]:
        with pytest.raises(ValueError, match=message):
            SkeletonDataset(data, "train", **kwargs)
    train = SkeletonDataset(data, "train")
    with pytest.raises(ValueError, match=r"epoch must be a non-negative integer, got -2"):
        train.set_epoch(-2)
    with pytest.raises(IndexError, match=r"index 6 is out of range for 6 samples"):
        train[6]
