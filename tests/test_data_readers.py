"""Readers: PYSKL pickles (plain, compressed, legacy lists), the restricted unpickler, CTR-GCN
.npz files, raw NTU .skeleton files and folders, convert, and the bundled dataset."""

import gzip
import lzma
import os
import pickle
import shutil
import tracemalloc

import numpy as np
import pytest

from skelmae_ext.data import (
    BUNDLED,
    DataError,
    UnsafePickleError,
    convert,
    load_annotations,
    ntu_splits,
    read_ntu_skeleton,
    save_annotations,
)

from annotations import COCO2D_SAMPLE, NTU_SAMPLE, annotation, ctrgcn_arrays, dataset, write_pickle


def assert_same_annotations(got, expected):
    assert got["split"] == expected["split"]
    assert len(got["annotations"]) == len(expected["annotations"])
    for a, b in zip(got["annotations"], expected["annotations"]):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], np.ndarray):
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def test_pyskl_pickle_sample():
    data = load_annotations(COCO2D_SAMPLE)
    assert sorted(data["split"]) == ["xstyle_train", "xstyle_val"]
    first = data["annotations"][0]
    assert first["keypoint"].dtype == np.float16 and first["keypoint"].shape[2:] == (17, 2)
    assert first["keypoint_score"].shape == first["keypoint"].shape[:3]
    assert first["total_frames"] == first["keypoint"].shape[1]


@pytest.mark.parametrize("suffix", [".pkl", ".pkl.gz", ".pkl.xz", ".pkl.bz2"])
def test_compressed_pickles_round_trip(tmp_path, suffix):
    data = dataset()
    data["classes"] = ["a", "b", "c"]
    path = save_annotations(data, tmp_path / f"d{suffix}")
    assert_same_annotations(load_annotations(path), data)
    assert load_annotations(path)["classes"] == ["a", "b", "c"]


def test_loaded_dict_is_returned_as_is():
    data = dataset()
    assert load_annotations(data) is data  # splits of one file share it


def test_legacy_list_pickle_is_one_split(tmp_path):
    annotations = [annotation(f"s{i}", i % 2, seed=i) for i in range(3)]
    data = load_annotations(write_pickle(tmp_path / "ntu60_xsub_train.pkl", annotations))
    assert data["split"] == {"all": ["s0", "s1", "s2"]}
    assert [a["frame_dir"] for a in data["annotations"]] == ["s0", "s1", "s2"]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {target}",)

    path = write_pickle(tmp_path / "evil.pkl", {"split": {}, "annotations": [Payload()]})
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refused to load: .*global (posix|os)\.system"):
        load_annotations(path)
    assert not target.exists()
    # the payload is live: an ordinary unpickler runs it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(type("P", (), {"__reduce__": lambda self: (os.system, (f"touch {control}",))})()))
    assert control.exists()


def test_malicious_compressed_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return shutil.rmtree, (str(tmp_path),)

    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump([Payload()], handle)
    with pytest.raises(UnsafePickleError, match=r"shutil\.rmtree"):
        load_annotations(path)
    assert path.exists()


class _Reduced:
    """Pickles as ``reduce()`` says: a crafted object built from allowed globals only."""

    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce()


def crafted_array(shape, dtype_state):
    """An ndarray pickle whose dtype's pickled state is ``dtype_state(state)``."""
    def dtype():
        new, args, state = np.dtype({"names": ["f"], "formats": ["<f2"], "offsets": [0], "itemsize": 2}).__reduce__()
        return new, args, dtype_state(list(state))

    def array():
        new, args, state = np.zeros(shape, np.float16).__reduce__()
        return new, args, (state[0], state[1], _Reduced(dtype), *state[3:])
    return _Reduced(array)


def field_past_the_item(state):
    state[4] = {"f": (np.dtype("<f2"), 1 << 20)}  # a 2-byte item whose field lies 1 MiB on
    return tuple(state)


@pytest.mark.parametrize("value, dtype", [
    (crafted_array((1, 20, 17), field_past_the_item), r"\{'names': \['f'\].*'offsets': \[1048576\]"),
    (np.ones((1, 20, 17), dtype=[("a", "<f2")]), r"\[\('a', '<f2'\)\]"),
    (np.array([1.0, "a"], dtype=object), r"object"),
    (np.zeros((1, 20, 17), "datetime64[s]"), r"datetime64\[s\]"),
])
def test_arrays_of_other_dtypes_are_refused(tmp_path, value, dtype):
    data = dataset()
    data["annotations"][2]["keypoint_score"] = value
    path = write_pickle(tmp_path / "odd.pkl", data)
    with pytest.raises(UnsafePickleError, match=r"odd\.pkl: refused to load: the pickle\['annotations'\]\[2\]"
                                                r"\['keypoint_score'\] is an array of dtype " + dtype):
        load_annotations(path)


@pytest.mark.parametrize("name, content, message", [
    ("empty.pkl", b"", r"empty\.pkl: the file is empty"),
    ("notes.pkl", b'{"split": {}, "annotations": []}', r"notes\.pkl: not a file this library reads"),
    ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(64), r"image\.png: not a file this library reads"),
])
def test_files_of_another_kind(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_annotations(tmp_path / name)


@pytest.mark.parametrize("suffix", [".pkl", ".pkl.xz"])
def test_truncated_pickle_names_the_file(tmp_path, suffix):
    whole = save_annotations(dataset(), tmp_path / f"whole{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(open(whole, "rb").read()[: os.path.getsize(whole) // 2])
    with pytest.raises(DataError, match=rf"cut{suffix.replace('.', r'[.]')}: truncated or corrupt .*again"):
        load_annotations(cut)


def test_missing_file_and_directory_without_skeletons(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.pkl: no such file"):
        load_annotations(tmp_path / "nothing.pkl")
    with pytest.raises(DataError, match=r"a directory without \.skeleton files"):
        load_annotations(tmp_path)
    with pytest.raises(DataError, match=r"must be a path or loaded annotations"):
        load_annotations(42)


@pytest.mark.parametrize("obj, message", [
    ({"annotations": "x"}, r"not skeleton annotations: .*got a dict with keys \['annotations'\]"),
    (np.zeros(3), r"not skeleton annotations: .*got ndarray"),
    ([{"label": 0}], r"annotation #0 is not a dict with a 'frame_dir'"),
    ({"split": ["a"], "annotations": []}, r"'split' must map split names to lists"),
    ({"split": {}, "annotations": [], "classes": [1, 2]}, r"'classes' must be a list of class names"),
    ([annotation("a"), annotation(["b"])], r"annotation #1's frame_dir must be a str \(its sample id\), got list"),
    ([annotation("a", 0), annotation("b", 1), annotation("a", 2)],
     r"annotations #0 and #2 share the frame_dir 'a': each sample needs its own name"),
])
def test_pickles_of_other_structure(tmp_path, obj, message):
    with pytest.raises(DataError, match=r"odd\.pkl: " + message):
        load_annotations(write_pickle(tmp_path / "odd.pkl", obj))


def test_loading_holds_at_most_twice_the_file(tmp_path):
    data = {"split": {"all": [f"s{i}" for i in range(300)]},
            "annotations": [annotation(f"s{i}", frames=100, seed=i) for i in range(300)]}
    path = write_pickle(tmp_path / "big.pkl", data)
    del data
    tracemalloc.start()  # numpy reports its array memory to tracemalloc
    loaded = load_annotations(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(loaded["annotations"]) == 300
    assert peak < 2 * os.path.getsize(path), (peak, os.path.getsize(path))


def test_ctrgcn_npz(tmp_path):
    x_train, train = ctrgcn_arrays(3, 30, lengths=[30, 12, 20], persons_present=[2, 1, 2])
    x_test, test = ctrgcn_arrays(2, 30, lengths=[5, 30], persons_present=[1, 1], seed=1)
    y_train = np.eye(4)[[3, 0, 2]]  # one-hot
    path = tmp_path / "NTU60_CS.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=np.array([1, 2]))
    data = load_annotations(path)
    assert data["split"] == {"train": ["train_0", "train_1", "train_2"], "test": ["test_0", "test_1"]}
    for got, expected, label in zip(data["annotations"], train + test, [3, 0, 2, 1, 2]):
        assert got["label"] == label
        assert got["total_frames"] == expected.shape[1] == got["keypoint"].shape[1]
        np.testing.assert_array_equal(got["keypoint"], expected)  # cut to its frames and persons


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(DataError, match=r"other\.npz: a \.npz without x_train / x_test"):
        load_annotations(tmp_path / "other.npz")
    np.savez(tmp_path / "nolabels.npz", x_train=np.zeros((2, 10, 150), np.float32))
    with pytest.raises(DataError, match=r"has x_train but no y_train"):
        load_annotations(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "width.npz", x_train=np.zeros((2, 10, 100), np.float32), y_train=np.array([0, 1]))
    with pytest.raises(DataError, match=r"x_train must be \[N, T, M\*V\*C\] .* got shape \(2, 10, 100\)"):
        load_annotations(tmp_path / "width.npz")
    data = load_annotations(tmp_path / "width.npz", npz_persons=1, npz_channels=2)
    assert data["annotations"][0]["keypoint"].shape == (1, 0, 50, 2)  # all zeros: no frames (validation says so)
    all_zero, multi_hot = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]]), np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    for labels, row, count in [(all_zero, 1, 0), (multi_hot, 2, 2)]:
        np.savez(tmp_path / "hot.npz", x_train=np.ones((3, 10, 150), np.float32), y_train=labels)
        with pytest.raises(DataError, match=rf"hot\.npz: y_train row {row} \(sample train_{row}\) is not one-hot: it "
                                            rf"has {count} non-zero entries; expected a single 1"):
            load_annotations(tmp_path / "hot.npz")
    np.savez(tmp_path / "fields.npz", x_train=np.zeros((2, 10, 150), [("a", "<f4")]), y_train=np.array([0, 1]))
    with pytest.raises(DataError, match=r"fields\.npz: x_train has dtype \[\('a', '<f4'\)\]; expected numbers"):
        load_annotations(tmp_path / "fields.npz")
    whole = tmp_path / "width.npz"
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.npz: truncated or corrupt"):
        load_annotations(cut)


def test_npz_header_of_a_huge_shape(tmp_path):
    path = tmp_path / "huge.npz"
    np.savez(path, x_train=np.zeros((2, 10, 150), np.float32), y_train=np.array([0, 1]))
    # a shape of 10**13 bytes in the header's padding: the same length, the zip entry stored as is
    path.write_bytes(path.read_bytes().replace(b"(2, 10, 150), }      ", b"(20000000000, 150), }"))
    with pytest.raises(DataError, match=r"huge\.npz: x_train declares shape \(20000000000, 150\) of float32 "
                                        r"\(12000000000000 bytes\) but holds 12000 bytes: the file is damaged"):
        load_annotations(path)


def test_ntu_skeleton_file():
    data = load_annotations(NTU_SAMPLE)
    (sample,) = data["annotations"]
    assert sample["frame_dir"] == "S001C001P001R001A001" and sample["label"] == 0
    assert sample["keypoint"].shape == (1, 103, 25, 3) and sample["total_frames"] == 103
    # the file's first and last joint lines (x y z of joint 0 in frame 0 and frame 102)
    np.testing.assert_allclose(sample["keypoint"][0, 0, 0], [0.2181153, 0.1725972, 3.785547], rtol=1e-6)
    np.testing.assert_allclose(sample["keypoint"][0, 102, 0], [0.2203939, 0.1678406, 3.788755], rtol=1e-6)
    # performer 1 trains in cross-subject, camera 1 tests in cross-view
    assert data["split"] == {"xsub_train": [sample["frame_dir"]], "xsub_val": [],
                             "xview_train": [], "xview_val": [sample["frame_dir"]]}


def skeleton_text(frames):
    """A raw .skeleton file: ``frames`` is a list of [(body_id, xyz [25, 3]), ...] per frame."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body_id, xyz in bodies:
            lines += [f"{body_id} 0 1 1 1 1 0 0.01 0.02 2", "25"]
            lines += [f"{x} {y} {z} 1 2 3 4 0 0 0 0 2" for x, y, z in xyz]
    return "\n".join(lines) + "\n"


def body(frame, wiggle, wide=False, seed=0):
    """A 25-joint pose, tall (or wide), moving by ``wiggle`` over frames."""
    rng = np.random.default_rng(seed)
    pose = rng.random((25, 3)) * ([0.4, 1.7, 0.3] if not wide else [4.0, 0.2, 0.3])
    return pose + wiggle * np.sin(frame / 3.0)


def test_ntu_bodies_are_chosen_as_pyskl(tmp_path):
    frames = []
    for t in range(30):
        bodies = []
        if t >= 2:  # frames 0 and 1 hold no body: trimmed
            bodies += [("111", body(t, 0.5, seed=1)), ("222", body(t, 0.05, seed=2)),
                       ("444", body(t, 2.0, wide=True, seed=4))]  # wide in every frame: dropped
            if t < 8:
                bodies.append(("333", body(t, 3.0, seed=3)))  # 6 frames only: dropped
        frames.append(bodies)
    frames[5][0] = ("111", np.where(np.arange(25)[:, None] == 0, np.nan, body(5, 0.5, seed=1)))
    path = tmp_path / "S018C002P045R001A061.skeleton"
    path.write_text(skeleton_text(frames))
    sample = read_ntu_skeleton(str(path))
    assert sample["label"] == 60 and sample["total_frames"] == 28
    keypoint = sample["keypoint"]
    assert keypoint.shape == (2, 28, 25, 3)
    np.testing.assert_allclose(keypoint[0, 0], body(2, 0.5, seed=1), rtol=1e-5)  # most motion first
    np.testing.assert_allclose(keypoint[1, 0], body(2, 0.05, seed=2), rtol=1e-5)
    np.testing.assert_array_equal(keypoint[0, 3, 0], [0, 0, 0])  # NaN -> 0


def test_ntu_bodies_in_disjoint_frames_share_a_person(tmp_path):
    frames = [[("1", body(t, 1.0, seed=1)), ("2" if t < 15 else "3", body(t, 0.1, seed=2 if t < 15 else 3))]
              for t in range(30)]
    path = tmp_path / "S001C001P002R002A005.skeleton"
    path.write_text(skeleton_text(frames))
    keypoint = read_ntu_skeleton(str(path))["keypoint"]
    assert keypoint.shape == (2, 30, 25, 3)
    np.testing.assert_allclose(keypoint[1, 0], body(0, 0.1, seed=2), rtol=1e-5)
    np.testing.assert_allclose(keypoint[1, 20], body(20, 0.1, seed=3), rtol=1e-5)


def test_ntu_folder_splits_and_bad_files(tmp_path):
    for name in ("S001C001P001R001A001", "S001C002P003R001A002", "S018C003P045R002A061"):
        shutil.copy(NTU_SAMPLE, tmp_path / f"{name}.skeleton")
    (tmp_path / "S001C001P001R001A003.skeleton").write_text("1\n0\n")  # no body: skipped
    with pytest.warns(UserWarning, match=r"1 \.skeleton files hold no skeleton .*S001C001P001R001A003"):
        data = load_annotations(tmp_path)
    assert [a["label"] for a in data["annotations"]] == [0, 1, 60]
    # A061 makes it NTU-120: cross-subject (P001 trains, P003 and P045 train too) and cross-setup
    assert data["split"]["xsub_train"] == ["S001C001P001R001A001", "S018C003P045R002A061"]
    assert data["split"]["xset_train"] == ["S018C003P045R002A061"]
    assert "xview_train" not in data["split"]
    truncated = tmp_path / "S002C001P001R001A001.skeleton"
    truncated.write_text("".join(open(NTU_SAMPLE).readlines()[:50]))
    with pytest.raises(DataError, match=r"S002C001P001R001A001\.skeleton: not a valid NTU \.skeleton file at line"):
        load_annotations(truncated)
    truncated.unlink()
    (tmp_path / "recording.skeleton").write_text("1\n0\n")
    with pytest.raises(DataError, match=r"'recording' is not an NTU name"):
        load_annotations(tmp_path)


def test_ntu60_splits_by_rule():
    names = ["S001C001P001R001A001", "S001C002P003R001A001", "S017C003P040R002A060"]
    splits = ntu_splits(names)
    assert splits == {"xsub_train": [names[0]], "xsub_val": names[1:],
                      "xview_train": names[1:], "xview_val": [names[0]]}


def test_convert_writes_pyskl_pickles(tmp_path):
    x, _ = ctrgcn_arrays(2, 10, lengths=[10, 4], persons_present=[1, 2])
    np.savez(tmp_path / "a.npz", x_train=x, y_train=np.array([0, 1]), x_test=x, y_test=np.array([1, 0]))
    out = convert(tmp_path / "a.npz", tmp_path / "a.pkl.gz")
    assert_same_annotations(load_annotations(out), load_annotations(tmp_path / "a.npz"))
    out = convert(NTU_SAMPLE, tmp_path / "ntu.pkl")
    with open(out, "rb") as handle:  # an ordinary pickle PYSKL can read
        assert pickle.load(handle)["annotations"][0]["frame_dir"] == "S001C001P001R001A001"


def test_bundled_dataset():
    assert os.path.getsize(BUNDLED) <= 10 * 2**20
    with lzma.open(BUNDLED) as handle:  # a plain xz-compressed pickle
        assert handle.read(1) == b"\x80"
    data = load_annotations(BUNDLED)
    assert data["classes"][:4] == ["walk", "walk-turn-left", "walk-turn-right", "run"] and len(data["classes"]) == 10
    assert {k: len(v) for k, v in data["split"].items()} == {"xstyle_train": 2187, "xstyle_val": 715}
    annotations = {a["frame_dir"]: a for a in data["annotations"]}
    assert sum(a["total_frames"] for a in annotations.values()) == 384931  # every frame, full length
    for split in data["split"].values():
        assert {annotations[name]["label"] for name in split} == set(range(10))  # every class in both splits
    assert {a["keypoint"].shape[2:] for a in annotations.values()} == {(17, 2)}
    assert os.path.exists(os.path.join(os.path.dirname(BUNDLED), "LICENSE.txt"))
