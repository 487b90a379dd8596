"""SkeletonDataset and make_loader: output contract, attributes, the label_fraction subset,
seeded reproducibility across worker counts and epochs, every reader through the default
pipelines, and describe."""

import numpy as np
import pytest
import torch

from skelmae_ext.data import (
    BUNDLED,
    EpochSampler,
    PackedAnnotations,
    SkeletonDataset,
    describe,
    format_description,
    load_annotations,
    make_loader,
    validate,
)

from annotations import BANDAI3D_SAMPLE, COCO2D_SAMPLE, NTU_SAMPLE, ctrgcn_arrays, dataset


@pytest.fixture(scope="module")
def bundled():
    return load_annotations(BUNDLED)  # one read (xz) shared by the tests


def test_training_samples(bundled):
    train = SkeletonDataset(bundled, "xstyle_train")
    assert len(train) == 2187 and train.frame_dirs == bundled["split"]["xstyle_train"]
    assert train.layout.name == "coco" and train.num_classes == 10 and train.class_names[3] == "run"
    assert train.in_channels == 2
    x, label = train[0]
    assert x.shape == (1, 2, 64, 17, 2) and x.dtype == torch.float32 and label == train.labels[0]
    assert x[:, 1].abs().sum() == 0  # one person, the second is padding
    assert x.abs().max() <= 1.5  # normalised coordinates (plus augmentation)
    assert torch.equal(train[0][0], x)  # the same epoch gives the same sample
    train.set_epoch(1)
    assert not torch.equal(train[0][0], x)


def test_test_samples_are_deterministic_clips(bundled):
    val = SkeletonDataset(bundled, "xstyle_val", mode="test", num_clips=3, clip_len=32)
    x, _ = val[0]
    assert x.shape == (3, 2, 32, 17, 2)
    val.set_epoch(5)
    assert torch.equal(val[0][0], x)
    assert not any(type(t).__name__.startswith("Random") for t in val.pipeline.transforms)


def test_features_and_channels(bundled):
    assert SkeletonDataset(bundled, "xstyle_val", feats=("j", "b")).in_channels == 4
    assert SkeletonDataset(bundled, "xstyle_val", with_score=True).in_channels == 3
    mocap = SkeletonDataset(BANDAI3D_SAMPLE, None, layout="bandai2", clip_len=16)
    assert mocap.in_channels == 3 and mocap[0][0].shape == (1, 2, 16, 21, 3)


def test_label_fraction_is_a_class_balanced_subset(bundled):
    full = SkeletonDataset(bundled, "xstyle_train")
    tenth = SkeletonDataset(bundled, "xstyle_train", label_fraction=0.1, seed=3)
    full_counts = np.bincount(full.labels)
    assert np.array_equal(np.bincount(tenth.labels), np.maximum(1, np.round(full_counts * 0.1)).astype(int))
    assert set(tenth.frame_dirs) <= set(full.frame_dirs)
    assert tenth.frame_dirs == [f for f in full.frame_dirs if f in set(tenth.frame_dirs)]  # file order
    assert SkeletonDataset(bundled, "xstyle_train", label_fraction=0.1, seed=3).frame_dirs == tenth.frame_dirs
    assert SkeletonDataset(bundled, "xstyle_train", label_fraction=0.1, seed=4).frame_dirs != tenth.frame_dirs
    tiny = SkeletonDataset(bundled, "xstyle_train", label_fraction=0.001)
    assert np.array_equal(np.bincount(tiny.labels), np.ones(10))  # at least one per class
    assert tiny.num_classes == 10


def batches(loader, epoch):
    loader.dataset.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_seeded_loaders_give_identical_batches_with_any_workers():
    data = load_annotations(COCO2D_SAMPLE)

    def loader(workers):
        return make_loader(SkeletonDataset(data, "xstyle_train", seed=7), 3, shuffle=True, workers=workers)

    two, again, inline = loader(2), loader(2), loader(0)
    epoch0, epoch1 = batches(two, 0), batches(two, 1)  # persistent workers see the new epoch
    assert_same_batches(epoch0, batches(again, 0))
    assert_same_batches(epoch1, batches(inline, 1))
    assert_same_batches(epoch0, batches(inline, 0))
    assert not torch.equal(epoch0[0][0], epoch1[0][0])
    resumed = loader(1)  # a resumed run that starts at epoch 1
    assert_same_batches(epoch1, batches(resumed, 1))
    assert sorted(torch.cat([y for _, y in epoch0]).tolist()) == sorted(two.dataset.labels)
    assert [x.shape for x, _ in epoch0] == [(3, 1, 2, 64, 17, 2)] * 2 + [(1, 1, 2, 64, 17, 2)]
    other_seed = make_loader(SkeletonDataset(data, "xstyle_train", seed=8), 3, workers=0)
    assert not torch.equal(batches(other_seed, 0)[0][0], epoch0[0][0])


def test_loader_starting_in_the_middle_of_an_epoch():
    data = load_annotations(COCO2D_SAMPLE)
    for workers in (0, 2):
        loader = make_loader(SkeletonDataset(data, "xstyle_train", seed=7), 2, shuffle=True, workers=workers)
        whole = batches(loader, 1)
        loader.sampler.start = 4  # two batches of 2 done: the rest, not loaded again
        assert len(loader) == 2
        assert_same_batches(batches(loader, 1), whole[2:])
        loader.sampler.start = 0
        assert_same_batches(batches(loader, 1), whole)


class Numbered:
    """What EpochSampler reads of a dataset: its length and epoch."""

    epoch = 3

    def __len__(self):
        return 23


def rank_batches(world, batch, start=0):
    """Each rank's batches of sample indices (training: shuffled, drop_last) as its loader makes them."""
    batches = []
    for rank in range(world):
        sampler = EpochSampler(Numbered(), True, 5, rank=rank, world_size=world, drop_last=True)
        sampler.start = start
        indices = [index for index, epoch in sampler]
        assert len(indices) == len(sampler)
        batches.append([indices[k:k + batch] for k in range(0, len(indices) - batch + 1, batch)])
    return batches


@pytest.mark.parametrize("start", [0, 8])
def test_ranks_split_each_batch_of_one_process(start):
    order = np.random.default_rng([5, Numbered.epoch]).permutation(23)[start:].tolist()
    one = [order[k:k + 4] for k in range(0, len(order) - 3, 4)]  # one process, batch 4, drop_last
    assert rank_batches(1, 4, start)[0] == one
    for world in (2, 4):  # the global batch of 4 over 2 and 4 processes
        ranks = rank_batches(world, 4 // world, start)
        assert [len(batches) for batches in ranks] == [len(one)] * world  # every rank steps alike
        for k, batch in enumerate(one):
            assert sorted(index for batches in ranks for index in batches[k]) == sorted(batch)


def test_evaluation_shards_hold_each_sample_once():
    for world in (2, 3, 4):
        shards = [[index for index, _ in EpochSampler(Numbered(), False, 0, rank=rank, world_size=world)]
                  for rank in range(world)]
        assert sorted(index for shard in shards for index in shard) == list(range(23))  # no padding, no gaps
        assert [len(shard) for shard in shards] == [len(range(rank, 23, world)) for rank in range(world)]


def test_repeated_epochs_are_consecutive_plain_epochs():
    """repeat R: epoch e is the plain epochs e*R .. e*R+R-1 one after the other (each pass its
    own permutation and its own random draws), and a rank's share is still one process's."""
    class Plain(Numbered):
        pass
    repeated = list(EpochSampler(Numbered(), True, 5, repeat=3))
    expected = []
    for draw in range(3 * Numbered.epoch, 3 * Numbered.epoch + 3):
        Plain.epoch = draw
        expected += list(EpochSampler(Plain(), True, 5))
    assert repeated == expected and len(EpochSampler(Numbered(), True, 5, repeat=3)) == 69
    assert sorted(index for index, _ in repeated) == sorted(list(range(23)) * 3)
    shards = [list(EpochSampler(Numbered(), True, 5, rank=rank, world_size=2, drop_last=True, repeat=3))
              for rank in range(2)]
    assert [pair for pairs in zip(*shards) for pair in pairs] == expected[:68]
    assert list(EpochSampler(Numbered(), False, 0, repeat=2)) == [(i, 2 * 3 + c) for c in range(2) for i in range(23)]


def test_sampler_errors():
    with pytest.raises(ValueError, match=r"rank must be in 0..1 \(world_size 2\), got 2"):
        EpochSampler(Numbered(), True, 0, rank=2, world_size=2)
    for repeat in (0, 1.5, True):
        with pytest.raises(ValueError, match=rf"repeat must be an integer >= 1, got {repeat!r}"):
            EpochSampler(Numbered(), True, 0, repeat=repeat)
    sampler = EpochSampler(Numbered(), True, 0, rank=0, world_size=2)
    sampler.start = 3
    with pytest.raises(ValueError, match="start must be a multiple of world_size 2, got 3"):
        list(sampler)


def test_loader_order_and_drop_last():
    data = load_annotations(COCO2D_SAMPLE)
    ordered = make_loader(SkeletonDataset(data, "xstyle_train", mode="test"), 2, shuffle=False, workers=0,
                          drop_last=True)
    labels = torch.cat([y for _, y in ordered]).tolist()
    assert labels == ordered.dataset.labels[:6] and not ordered.pin_memory


def test_every_reader_through_the_default_pipelines(tmp_path):
    x, _ = ctrgcn_arrays(4, 40, lengths=[40, 30, 20, 35], persons_present=[2, 1, 2, 1])
    np.savez(tmp_path / "NTU60_CS.npz", x_train=x, y_train=np.eye(60)[[0, 1, 2, 3]], x_test=x[:2],
             y_test=np.eye(60)[[4, 5]])
    sources = [(COCO2D_SAMPLE, "xstyle_train", None, 2), (BANDAI3D_SAMPLE, "xstyle_train", "bandai2", 3),
               (NTU_SAMPLE, "xsub_train", None, 3), (str(tmp_path / "NTU60_CS.npz"), "train", None, 3)]
    for source, split, layout, channels in sources:
        assert validate(source, layout=layout).num_joints in (17, 21, 25)
        for mode in ("train", "test"):
            data = SkeletonDataset(source, split, layout=layout, mode=mode, clip_len=16)
            assert data.in_channels == channels
            xb, yb = next(iter(make_loader(data, 2, workers=0)))
            assert xb.shape[2:] == (2, 16, data.layout.num_joints, channels) and torch.isfinite(xb).all()
        assert describe(source)["samples"] >= 1


def test_describe_counts(tmp_path):
    summary = describe(COCO2D_SAMPLE)
    assert summary["dims"] == "2D" and summary["joints"] == 17 and summary["channels"] == 2
    assert summary["layout"] == "coco" and summary["keypoint_score"]
    data = load_annotations(COCO2D_SAMPLE)
    train = [a for a in data["annotations"] if a["frame_dir"] in data["split"]["xstyle_train"]]
    frames = sorted(a["total_frames"] for a in train)
    split = summary["splits"]["xstyle_train"]
    assert split["samples"] == len(train) == 7
    assert split["frames"] == (frames[0], float(np.median(frames)), frames[-1])
    assert split["class_counts"] == {0: 2, 3: 2, 4: 1, 9: 2}
    assert split["persons"] == (1, 1.0, 1)
    text = format_description(summary)
    assert "split xstyle_train: 7 samples" in text and "layout coco" in text
    named = dataset(labels=(0, 1, 1))
    named["classes"] = ["sit", "stand"]
    assert "stand: 2" in format_description(describe(named))


def test_packed_annotations_give_back_each_annotation():
    x, samples = ctrgcn_arrays(2, 30, lengths=[30, 12], persons_present=[2, 1])
    annotations = [
        {"frame_dir": "a", "label": 3, "keypoint": samples[0], "img_shape": (1080, 1920),  # a strided view
         "keypoint_score": np.linspace(0, 1, 2 * 30 * 25, dtype=np.float16).reshape(2, 30, 25)},
        {"frame_dir": "b", "label": 0, "keypoint": samples[1].astype(np.float64), "extra": np.array([None, 1])},
    ]
    packed = PackedAnnotations(annotations)
    assert len(packed) == 2
    for index, expected in enumerate(annotations):
        got = packed[index]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype and got[key].shape == value.shape
                assert np.array_equal(got[key], value) and not np.shares_memory(got[key], value), key
            else:
                assert got[key] == value, key
    assert packed[0]["keypoint"].ctypes.data % PackedAnnotations.ALIGN == 0
    assert packed[1]["keypoint"].ctypes.data % PackedAnnotations.ALIGN == 0
