"""Each transform's contract on hand-computed cases, the config builder and the default
pipelines; no transform touches numpy's global random state."""

import numpy as np
import pytest

from skelmae_ext import get_layout
from skelmae_ext.data import (
    AUGMENTATION,
    TRANSFORMS,
    Compose,
    FormatGCNInput,
    GenSkeFeat,
    PoseDecode,
    PreNormalize2D,
    PreNormalize3D,
    RandomGaussianNoise,
    RandomRot,
    RandomScale,
    UniformSample,
    build_transform,
    default_pipeline,
)

import skeletons


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def global_random_state_untouched():
    before = np.random.get_state()[1].copy()
    yield
    assert np.array_equal(np.random.get_state()[1], before), "a transform used numpy's global random state"


def test_pre_normalize_2d_by_image_shape_and_score():
    keypoint = np.array([[[[150, 25], [0, 100], [200, 50]]]], dtype=np.float16)  # [1, 1, 3, 2] pixels
    score = np.array([[[0.9, 0.5, 0.01]]], dtype=np.float16)
    results = PreNormalize2D()({"keypoint": keypoint, "keypoint_score": score, "img_shape": (100, 200)})
    # x: (x - 100) / 100, y: (y - 50) / 50; the third joint's score <= 0.01: zeroed
    np.testing.assert_allclose(results["keypoint"], [[[[0.5, -0.5], [-1, 1], [0, 0]]]], atol=1e-6)
    assert results["keypoint"].dtype == np.float32
    assert keypoint[0, 0, 0, 0] == 150  # the input is not modified


def test_pre_normalize_2d_rejects_an_empty_image_shape():
    with pytest.raises(ValueError, match=r"img_shape must be a positive \(height, width\), got \(0, 0\) \(sample 'a'\)"):
        PreNormalize2D()({"keypoint": np.ones((1, 2, 17, 2)), "img_shape": (0, 0), "frame_dir": "a"})


def test_pre_normalize_2d_default_shape_bounds_pixels_to_unit_box():
    keypoint = rng().random((2, 30, 17, 2)) * [1919, 1079]
    normalised = PreNormalize2D()({"keypoint": keypoint})["keypoint"]  # no img_shape: 1080 x 1920
    assert normalised.min() >= -1 and normalised.max() <= 1
    np.testing.assert_allclose(normalised[..., 0], keypoint[..., 0] / 960 - 1, rtol=1e-6, atol=1e-6)


def rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def ntu_pose():
    """A canonical NTU pose: spine (joint 0 -> 1) along +z, joint 1 at the origin, the
    shoulders (4 left, 8 right) on a line along +x, other joints anywhere."""
    pose = rng(3).standard_normal((25, 3))
    pose[0], pose[1] = [0, 0, -0.3], [0, 0, 0]
    pose[4], pose[8] = [-0.2, 0.1, 0.25], [0.2, 0.1, 0.25]
    return pose


def test_pre_normalize_3d_undoes_a_rotation_and_translation_on_ntu():
    canonical = ntu_pose()
    motion = rng(4).standard_normal((6, 25, 3)) * 0.01
    motion[0] = 0  # frame 0 sets the centre and the axes
    moved = (canonical + motion) @ rotation([1, 2, 3], 1.1).T + [0.5, -1.0, 3.0]  # camera space
    keypoint = np.zeros((2, 8, 25, 3), dtype=np.float32)
    keypoint[0, 2:] = moved  # two leading empty frames
    keypoint[1, 2:5] = moved[:3] + 1.0  # a second person, seen in fewer frames
    keypoint[0, 4, 7] = 0  # an untracked joint
    results = PreNormalize3D()({"keypoint": keypoint, "total_frames": 8, "layout": get_layout("nturgb+d")})
    out = results["keypoint"]
    assert out.shape == (2, 6, 25, 3) and results["total_frames"] == 6
    expected = canonical + motion
    expected[2, 7] = 0  # zero joints stay zero
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    np.testing.assert_array_equal(out[1, 3:], 0)  # the second person's missing frames stay zero


def test_pre_normalize_3d_swaps_persons_and_centres_other_layouts():
    keypoint = np.zeros((2, 5, 21, 3), dtype=np.float32)
    keypoint[1] = rng().standard_normal((5, 21, 3))  # the second person is seen in more frames
    keypoint[0, 1:3] = rng(1).standard_normal((2, 21, 3))
    out = PreNormalize3D()({"keypoint": keypoint, "layout": get_layout("bandai2")})["keypoint"]
    # bandai2: centred on its centre joint (0, hips) of the main person's first frame, no rotation
    np.testing.assert_allclose(out[0], keypoint[1] - keypoint[1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[1, 1:3], keypoint[0, 1:3] - keypoint[1, 0, 0], atol=1e-6)


def test_uniform_sample_training_takes_one_frame_per_segment():
    sample = UniformSample(clip_len=64)
    indices = sample({"keypoint": np.zeros((1, 200, 17, 2)), "rng": rng()})["frame_inds"]
    bounds = np.arange(65) * 200 // 64
    assert np.all((indices >= bounds[:-1]) & (indices < bounds[1:]))
    again = sample({"keypoint": np.zeros((1, 200, 17, 2)), "rng": rng()})["frame_inds"]
    other = sample({"keypoint": np.zeros((1, 200, 17, 2)), "rng": rng(1)})["frame_inds"]
    assert np.array_equal(indices, again) and not np.array_equal(indices, other)


def test_uniform_sample_medium_and_short_videos():
    medium = UniformSample(clip_len=64)({"keypoint": np.zeros((1, 100, 17, 2)), "rng": rng()})["frame_inds"]
    steps = np.diff(medium)  # every frame kept in order, 36 of the 100 skipped
    assert set(steps) <= {1, 2} and medium[0] in (0, 1) and medium[-1] <= 99
    assert (medium[-1] - medium[0]) - 63 == np.count_nonzero(steps == 2) <= 36
    short = UniformSample(clip_len=64)({"keypoint": np.zeros((1, 10, 17, 2)), "rng": rng()})["frame_inds"]
    assert np.array_equal(short, (np.arange(64) + short[0]) % 10)  # loops from a random start


def test_uniform_sample_test_mode_is_pyskls_seed_255_sampling():
    sample = UniformSample(clip_len=64, num_clips=3)
    results = sample({"keypoint": np.zeros((1, 10, 17, 2)), "test_mode": True})
    # short videos, clip i starts at i * T // num_clips: 0, 3, 6
    expected = np.concatenate([(np.arange(64) + start) % 10 for start in (0, 3, 6)])
    assert np.array_equal(results["frame_inds"], expected) and results["num_clips"] == 3
    # long videos: PYSKL seeds numpy with 255, then per clip draws rand(), randint(1) and one
    # offset per segment; here with a private generator of the same seed
    state = np.random.RandomState(255)
    bounds = np.arange(65) * 200 // 64
    expected = []
    for _ in range(3):
        state.rand(), state.randint(1)
        expected.append(bounds[:-1] + state.randint(np.diff(bounds)))
    got = sample({"keypoint": np.zeros((1, 200, 17, 2)), "test_mode": True})["frame_inds"]
    assert np.array_equal(got, np.concatenate(expected))
    again = UniformSample(clip_len=64, num_clips=3)({"keypoint": np.zeros((1, 200, 17, 2)), "test_mode": True})
    assert np.array_equal(again["frame_inds"], got)


def test_pose_decode_gathers_frames_as_float32():
    keypoint = np.arange(2 * 5 * 3 * 2, dtype=np.float16).reshape(2, 5, 3, 2)
    score = np.arange(2 * 5 * 3, dtype=np.float16).reshape(2, 5, 3)
    results = PoseDecode()({"keypoint": keypoint, "keypoint_score": score, "frame_inds": np.array([4, 0, 0])})
    np.testing.assert_array_equal(results["keypoint"], keypoint[:, [4, 0, 0]])
    np.testing.assert_array_equal(results["keypoint_score"], score[:, [4, 0, 0]])
    assert results["keypoint"].dtype == results["keypoint_score"].dtype == np.float32


def bone_lengths(keypoint, layout="coco"):
    parents = list(get_layout(layout).parents)
    return np.linalg.norm(keypoint - keypoint[..., parents, :], axis=-1)


@pytest.mark.parametrize("channels", [2, 3])
def test_random_rotation_preserves_bone_lengths_within_theta(channels):
    keypoint = rng().standard_normal((2, 16, 17, channels)).astype(np.float32)
    rotated = RandomRot(theta=0.3)({"keypoint": keypoint, "rng": rng(5)})["keypoint"]
    np.testing.assert_allclose(bone_lengths(rotated), bone_lengths(keypoint), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(keypoint, axis=-1), rtol=1e-4)
    assert not np.allclose(rotated, keypoint)
    if channels == 2:
        angles = np.arctan2(rotated[..., 1], rotated[..., 0]) - np.arctan2(keypoint[..., 1], keypoint[..., 0])
        angle = np.angle(np.exp(1j * angles))
        np.testing.assert_allclose(angle, np.full(angle.shape, angle.flat[0]), atol=1e-4)  # one in-plane angle
        assert abs(angle.flat[0]) <= 0.3


def test_random_scale_per_axis_within_bounds():
    keypoint = rng().standard_normal((1, 8, 17, 3)).astype(np.float32) + 2
    scaled = RandomScale(scale=0.1)({"keypoint": keypoint, "rng": rng()})["keypoint"]
    factors = scaled / keypoint
    np.testing.assert_allclose(factors, np.broadcast_to(factors[0, 0, 0], factors.shape), rtol=1e-5)  # per axis
    assert np.all(np.abs(factors[0, 0, 0] - 1) <= 0.1)
    scaled = RandomScale(scale=(0.0, 0.5, 0.0))({"keypoint": keypoint, "rng": rng()})["keypoint"]
    np.testing.assert_allclose(scaled[..., [0, 2]], keypoint[..., [0, 2]])


def test_gaussian_noise_scales_with_frame_size_and_skips_padding():
    keypoint = np.zeros((2, 200, 17, 2), dtype=np.float32)
    keypoint[0] = rng().random((200, 17, 2)) * [0.3, 0.4]  # frames of size about 0.5
    noisy = RandomGaussianNoise(sigma=0.01)({"keypoint": keypoint, "rng": rng(1)})["keypoint"]
    np.testing.assert_array_equal(noisy[1], 0)  # a padded person stays zero
    graphs = keypoint[0]
    size = np.linalg.norm(graphs.max(axis=1) - graphs.min(axis=1), axis=-1)  # [T] bounding-box diagonals
    relative = (noisy[0] - graphs) / (0.01 * size[:, None, None])
    # a joint moves sigma * size in root mean square, the same in every direction
    assert 0.95 < np.sqrt(np.mean(np.square(relative).sum(-1))) < 1.05
    assert abs(relative[..., 0].std() - relative[..., 1].std()) < 0.05 and abs(relative.mean()) < 0.05


def test_random_transforms_need_a_generator_and_skip_empty_skeletons():
    keypoint = rng().random((1, 4, 17, 2)).astype(np.float32)
    for transform in (RandomRot(), RandomScale(), RandomGaussianNoise(), UniformSample(4)):
        with pytest.raises(ValueError, match=r"results\['rng'\] must be a numpy\.random\.Generator"):
            transform({"keypoint": keypoint})
    zeros = np.zeros((1, 4, 17, 2), dtype=np.float32)
    assert RandomRot()({"keypoint": zeros, "rng": rng()})["keypoint"] is zeros


def coco_pose():
    """Joint v of frame t at (v + t, v * v): easy to check by hand."""
    v = np.arange(17, dtype=np.float32)
    return np.stack([np.stack([v + t, v * v], axis=-1) for t in range(4)])[None]  # [1, 4, 17, 2]


def test_bones_follow_pyskl_pairs():
    keypoint = coco_pose()
    bones = GenSkeFeat(feats=["b"], layout="coco")({"keypoint": keypoint})["keypoint"]
    assert bones.shape == keypoint.shape
    for joint, parent in skeletons.BONE_PAIRS[17]:
        np.testing.assert_array_equal(bones[..., joint, :], keypoint[..., joint, :] - keypoint[..., parent, :])
    np.testing.assert_array_equal(bones[0, 0, 11], [11, 121])  # left hip hangs off the nose (PYSKL)
    np.testing.assert_array_equal(bones[0, 0, 0], [0, 0])  # the root's bone is zero


def test_motion_features_and_channel_order():
    keypoint = coco_pose()
    out = GenSkeFeat(feats=["j", "jm", "b", "bm"], layout="coco")({"keypoint": keypoint})["keypoint"]
    assert out.shape == (1, 4, 17, 8)
    np.testing.assert_array_equal(out[..., :2], keypoint)
    np.testing.assert_array_equal(out[0, :3, :, 2], np.ones((3, 17)))  # x grows by 1 per frame
    np.testing.assert_array_equal(out[0, :3, :, 3], np.zeros((3, 17)))
    np.testing.assert_array_equal(out[0, 3, :, 2:4], 0)  # the last frame has no motion
    np.testing.assert_array_equal(out[..., 6:], 0)  # bones do not change over frames here


def test_motion_stays_within_each_clip():
    keypoint = coco_pose()  # 4 frames: 2 clips of 2
    results = GenSkeFeat(feats=["jm"])({"keypoint": keypoint, "frame_inds": np.arange(4), "num_clips": 2})
    np.testing.assert_array_equal(results["keypoint"][0, [0, 2], :, 0], np.ones((2, 17)))
    np.testing.assert_array_equal(results["keypoint"][0, [1, 3]], 0)


def test_score_channel_only_with_score():
    keypoint, score = coco_pose(), np.full((1, 4, 17), 0.5, dtype=np.float32)
    score[0, :, 0] = 1.0
    plain = GenSkeFeat(layout="coco")({"keypoint": keypoint, "keypoint_score": score})
    assert plain["keypoint"].shape[-1] == 2 and "keypoint_score" not in plain
    scored = GenSkeFeat(feats=["j", "b"], layout="coco", with_score=True)({"keypoint": keypoint,
                                                                          "keypoint_score": score})["keypoint"]
    assert scored.shape[-1] == 6
    np.testing.assert_array_equal(scored[..., 2], score)
    np.testing.assert_array_equal(scored[0, 0, [0, 1, 3], 5], [1.0, 0.75, 0.5])  # mean of the bone's ends


def test_format_gcn_input_pads_cuts_and_splits_clips():
    keypoint = np.arange(1 * 6 * 2 * 2, dtype=np.float32).reshape(1, 6, 2, 2)
    out = FormatGCNInput(num_person=2)({"keypoint": keypoint, "num_clips": 3})["keypoint"]
    assert out.shape == (3, 2, 2, 2, 2) and out.flags.c_contiguous
    for clip in range(3):
        np.testing.assert_array_equal(out[clip, 0], keypoint[0, 2 * clip:2 * clip + 2])
    np.testing.assert_array_equal(out[:, 1], 0)
    three = np.stack([keypoint[0], keypoint[0] + 100, keypoint[0] + 200])
    np.testing.assert_array_equal(FormatGCNInput(2)({"keypoint": three})["keypoint"][0], three[:2])
    looped = FormatGCNInput(2, mode="loop")({"keypoint": keypoint})["keypoint"]
    np.testing.assert_array_equal(looped[0, 1], keypoint[0])


def test_build_from_configs_and_errors():
    pipeline = Compose([dict(type="UniformSample", clip_len=4), dict(type="PoseDecode"), FormatGCNInput(1)])
    out = pipeline({"keypoint": np.ones((1, 9, 17, 2), np.float16), "rng": rng()})["keypoint"]
    assert out.shape == (1, 1, 4, 17, 2) and out.dtype == np.float32
    assert isinstance(build_transform({"type": "UniformSampleFrames", "clip_len": 8}), UniformSample)
    with pytest.raises(ValueError, match=r"unknown transform type 'Flip'; known: \["):
        build_transform({"type": "Flip"})
    with pytest.raises(ValueError, match=r"'ToTensor' \(not needed: SkeletonDataset returns"):
        build_transform({"type": "ToTensor", "keys": ["keypoint"]})
    with pytest.raises(ValueError, match=r"transform RandomRot: bad arguments \{'angle': 1\}"):
        build_transform({"type": "RandomRot", "angle": 1})
    with pytest.raises(ValueError, match=r"feats must be a non-empty list of \['j', 'b', 'jm', 'bm'\]"):
        GenSkeFeat(feats=["x"])
    with pytest.raises(ValueError, match=r"GenSkeFeat needs a layout"):
        GenSkeFeat(feats=["b"])({"keypoint": coco_pose()})
    with pytest.raises(ValueError, match=r"a pipeline is a list"):
        Compose({"type": "PoseDecode"})
    assert sorted(TRANSFORMS) == sorted(["PreNormalize2D", "PreNormalize3D", "CenterSkeleton", "UniformSample",
                                         "UniformSampleFrames",
                                         "PoseDecode", "RandomRot", "RandomScale", "RandomGaussianNoise",
                                         "GenSkeFeat", "FormatGCNInput"])


def test_default_pipelines():
    train = default_pipeline("train", clip_len=32)
    assert [t["type"] for t in train] == ["UniformSample", "PoseDecode", "PreNormalize2D", "CenterSkeleton",
                                          "RandomRot", "RandomScale", "RandomGaussianNoise", "GenSkeFeat",
                                          "FormatGCNInput"]
    assert (train[4]["theta"], train[5]["scale"], train[6]["sigma"]) == (
        AUGMENTATION["rotation"], AUGMENTATION["scale"], AUGMENTATION["noise"])
    test = default_pipeline("test", num_clips=10, dims=3)
    assert [t["type"] for t in test] == ["PreNormalize3D", "UniformSample", "PoseDecode", "GenSkeFeat",
                                         "FormatGCNInput"]
    assert test[1]["num_clips"] == 10
    assert "RandomScale" not in [t["type"] for t in default_pipeline(scale=0)]
    assert [t["type"] for t in default_pipeline(augment=False)] == [t["type"] for t in default_pipeline("test")]
    with pytest.raises(ValueError, match=r"mode must be 'train' or 'test', got 'val'"):
        default_pipeline("val")


@pytest.mark.parametrize("kwargs, message", [
    (dict(clip_len=0), r"UniformSample: clip_len must be an integer >= 1, got 0"),
    (dict(clip_len=8.5), r"UniformSample: clip_len must be an integer >= 1, got 8\.5"),
    (dict(clip_len=8, num_clips=0), r"UniformSample: num_clips must be an integer >= 1, got 0"),
])
def test_uniform_sample_of_no_frames_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UniformSample(**kwargs)
