"""PYSKL's skeleton transforms, with PYSKL's names and meaning: each a small class mapping a
results dict to a results dict, built from PYSKL-style configs ``dict(type=..., **kwargs)``.

Keys read and written: ``keypoint`` [M, T, V, C], ``keypoint_score`` [M, T, V] (optional),
``img_shape``, ``total_frames``, ``frame_inds``, ``clip_len``, ``num_clips``, ``test_mode``, and
two that ``SkeletonDataset`` adds: ``rng``, a ``numpy.random.Generator``, the only source of
randomness (no transform touches numpy's global random state, so a sample's augmentation
depends only on the generator it is given), and ``layout``, the data's Layout. Transforms never
write into the arrays they are given (a dataset's annotations are shared): they make new ones.
"""

import numpy as np
from skelmae_reference.layouts import is_index

from ..layouts import get_layout

TRANSFORMS = {}  # config name -> class


def register(*names):
    def add(cls):
        for name in names or (cls.__name__,):
            TRANSFORMS[name] = cls
        return cls
    return add


class Transform:
    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _rng(results, who):
    rng = results.get("rng")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{who}: results['rng'] must be a numpy.random.Generator (SkeletonDataset passes one per "
                         f"sample; no transform uses numpy's global random state), got {type(rng).__name__}")
    return rng


def _layout(own, results, who):
    layout = own if own is not None else results.get("layout")
    if layout is None:
        raise ValueError(f"{who} needs a layout: pass layout= or run it in a SkeletonDataset (results['layout'])")
    return get_layout(layout)


def _where(results):
    return f" (sample {results['frame_dir']!r})" if "frame_dir" in results else ""


@register()
class PreNormalize2D(Transform):
    """Pixels to [-1, 1]: x by half the image width, y by half its height, from the sample's
    ``img_shape`` (height, width), else ``img_shape`` here (PYSKL's default 1080 x 1920).
    Joints whose ``keypoint_score`` is at most ``threshold`` get x = y = 0 (undetected)."""

    def __init__(self, img_shape=(1080, 1920), threshold=0.01):
        self.img_shape = tuple(img_shape)
        self.threshold = threshold

    def __call__(self, results):
        height, width = results.get("img_shape", self.img_shape)
        if not (height > 0 and width > 0):
            raise ValueError(f"PreNormalize2D: img_shape must be a positive (height, width), got "
                             f"{(height, width)}{_where(results)}")
        keypoint = results["keypoint"]
        scale = np.array([2 / width, 2 / height], dtype=np.float32)
        if keypoint.shape[-1] == 2:
            keypoint = keypoint * scale  # a new float32 array: the stored one stays as it is
            keypoint -= 1
        else:
            keypoint = keypoint.astype(np.float32)
            keypoint[..., :2] *= scale
            keypoint[..., :2] -= 1
        score = results.get("keypoint_score")
        if score is not None:
            undetected = score <= self.threshold
            if undetected.any():
                keypoint[..., :2][undetected] = 0
        results["keypoint"] = keypoint
        return results


@register()
class CenterSkeleton(Transform):
    """Moves the origin to where the subject starts: every joint that is not zero (zero joints
    are undetected or padding and stay zero) minus the mean of the non-zero joints of the main
    person's first frame in which any is non-zero (``joint=None``), or of one joint there
    (``joint`` an index). The centring PreNormalize3D does, for 2D data: after PreNormalize2D
    a pose's coordinates say where in the image the subject is, which rarely says what it does.
    A sample with no non-zero joint is left as it is."""

    def __init__(self, joint=None):
        self.joint = joint

    def __call__(self, results):
        keypoint = results["keypoint"]
        shown = keypoint.any(axis=-1)  # [M, T, V]
        frames = np.flatnonzero(shown[0].any(axis=-1))
        if frames.size == 0:
            return results
        first = keypoint[0, frames[0]]
        centre = first[shown[0, frames[0]]].mean(axis=0) if self.joint is None else first[self.joint]
        results["keypoint"] = np.where(shown[..., None], keypoint - centre.astype(keypoint.dtype), 0)
        return results


def _rotation_onto(vector, target):
    """The rotation (Rodrigues) taking the direction of ``vector`` onto ``target``, about their
    cross product; the identity for (near) zero vectors, as PYSKL's ``rotation_matrix``."""
    axis = np.cross(vector, target)
    if np.abs(vector).sum() < 1e-6 or np.abs(axis).sum() < 1e-6:
        return np.eye(3)
    cosine = np.dot(vector, target) / (np.linalg.norm(vector) * np.linalg.norm(target))
    angle = np.arccos(np.clip(cosine, -1.0, 1.0))
    if angle < 1e-6:
        return np.eye(3)
    k = axis / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


@register()
class PreNormalize3D(Transform):
    """PYSKL's PreNormalize3D (from 2s-AGCN): drop the frames where the main person is all zero
    (the second person becomes the main one if seen in more frames), centre every joint that is
    not zero on one joint of the main person's first frame, and for ``nturgb+d`` rotate the
    ``zaxis`` bone (joint 0 -> 1, the spine) onto +z, then the ``xaxis`` vector (joint 4 -> 8,
    left to right shoulder) onto +x. ``nturgb+d`` centres on joint 1 (spine middle) as PYSKL;
    other layouts on their centre joint, without the alignment (their axes are unknown)."""

    def __init__(self, zaxis=(0, 1), xaxis=(8, 4), align_spine=True, align_center=True, layout=None):
        self.zaxis, self.xaxis = tuple(zaxis), tuple(xaxis)
        self.align_spine, self.align_center = align_spine, align_center
        self.layout = layout

    def __call__(self, results):
        layout = _layout(self.layout, results, "PreNormalize3D")
        keypoint = results["keypoint"]
        seen = np.abs(keypoint).max(axis=(2, 3)) > 1e-8  # [M, T]: PYSKL's not isclose(x, 0)
        main = 1 if keypoint.shape[0] > 1 and seen[1].sum() > seen[0].sum() else 0
        frames = np.flatnonzero(seen[main])
        if frames.size == 0:
            return results  # nothing to normalise (PYSKL returns all-zero skeletons as they are)
        order = [main] + [m for m in range(keypoint.shape[0]) if m != main]
        skeleton = keypoint[order][:, frames].astype(np.float32)
        ntu = layout.name == "nturgb+d"
        if self.align_center:
            centre = skeleton[0, 0, 1 if ntu else layout.center].copy()
            skeleton = np.where((skeleton != 0).any(axis=-1, keepdims=True), skeleton - centre, 0)
        if self.align_spine and ntu:
            for (start, end), target in ((self.zaxis, (0, 0, 1)), (self.xaxis[::-1], (1, 0, 0))):
                rotation = _rotation_onto(skeleton[0, 0, end] - skeleton[0, 0, start], np.array(target, float))
                skeleton = skeleton @ rotation.T.astype(np.float32)
        results["keypoint"] = np.ascontiguousarray(skeleton)
        results["total_frames"] = skeleton.shape[1]
        if "keypoint_score" in results:
            results["keypoint_score"] = results["keypoint_score"][order][:, frames]
        return results


@register("UniformSample", "UniformSampleFrames")
class UniformSample(Transform):
    """PYSKL's UniformSample: ``num_clips`` clips of ``clip_len`` frame indices. Each clip splits
    the video (optionally a random ``p_interval`` share of it) into ``clip_len`` equal segments
    and takes one frame per segment; videos shorter than ``2 * clip_len`` instead drop or keep
    random frames in order, and shorter than ``clip_len`` loop from a start frame. Training
    draws from ``results['rng']``; testing (``results['test_mode']``) is deterministic: PYSKL's
    draws from ``np.random.seed(seed)``, reproduced exactly with a private RandomState (and
    cached per video length), so numpy's global state is never touched."""

    def __init__(self, clip_len, num_clips=1, p_interval=1, seed=255):
        for name, value in (("clip_len", clip_len), ("num_clips", num_clips)):
            if not is_index(value) or value < 1:
                raise ValueError(f"UniformSample: {name} must be an integer >= 1, got {value!r}")
        self.clip_len, self.num_clips, self.seed = clip_len, num_clips, seed
        self.p_interval = tuple(p_interval) if isinstance(p_interval, (tuple, list)) else (p_interval, p_interval)
        self._test_indices, self._segment_cache = {}, {}  # per video length

    def __call__(self, results):
        frames = results["keypoint"].shape[1]
        if results.get("test_mode", False):
            indices = self._test_indices.get(frames)
            if indices is None:
                state = np.random.RandomState(self.seed)
                indices = self._sample(frames, state.rand, state.randint, state.choice, state.randint,
                                       crop=True, test_mode=True)
                indices.flags.writeable = False
                self._test_indices[frames] = indices
        else:
            rng = _rng(results, "UniformSample")

            def within(sizes):  # one uniform draw per segment (PYSKL's randint(sizes), cheaper)
                return (rng.random(len(sizes)) * sizes).astype(np.int64)

            indices = self._sample(frames, rng.random, rng.integers, rng.choice, within,
                                   crop=self.p_interval != (1, 1), test_mode=False)
        results.update(frame_inds=indices, clip_len=self.clip_len, num_clips=self.num_clips)
        return results

    def _sample(self, frames, uniform, integers, choice, within, crop, test_mode):
        """PYSKL's draws in PYSKL's order (test mode reproduces its indices exactly); training
        without a crop skips the crop's draws."""
        clips, (low, high) = [], self.p_interval
        for clip in range(self.num_clips):
            length, offset = frames, 0
            if crop:
                length = int((uniform() * (high - low) + low) * frames)
                offset = integers(frames - length + 1)
            if length < self.clip_len:
                if test_mode:
                    start = clip if length < self.num_clips else clip * length // self.num_clips
                else:
                    start = integers(length)
                indices = np.arange(start, start + self.clip_len)
            elif length < 2 * self.clip_len:  # keep every frame, skipping (length - clip_len) random ones
                skips = np.zeros(self.clip_len + 1, dtype=np.int64)
                skips[choice(self.clip_len + 1, length - self.clip_len, replace=False)] = 1
                indices = np.arange(self.clip_len) + np.cumsum(skips)[:-1]
            else:  # one random frame per segment
                starts, sizes = self._segments(length)
                indices = starts + within(sizes)
            clips.append(indices + offset)
        return np.mod(np.concatenate(clips), frames)

    def _segments(self, length):
        if length not in self._segment_cache:
            bounds = np.arange(self.clip_len + 1) * length // self.clip_len
            self._segment_cache[length] = bounds[:-1], np.diff(bounds)
        return self._segment_cache[length]


@register()
class PoseDecode(Transform):
    """Gathers the sampled frames (``frame_inds``; every frame without it) of ``keypoint`` and
    ``keypoint_score`` as float32."""

    def __call__(self, results):
        indices = results.get("frame_inds")
        if indices is None:
            indices = np.arange(results["keypoint"].shape[1])
        for key in ("keypoint", "keypoint_score"):
            if key in results:
                results[key] = results[key][:, indices].astype(np.float32, copy=False)
        return results


@register()
class RandomRot(Transform):
    """A random rotation of the coordinates about the origin: 2D in-plane by an angle drawn from
    U(-theta, theta); 3D by Euler angles about x, y and z each drawn from U(-theta, theta),
    composed as Rz Ry Rx (PYSKL's; PYSKL's 2D branch draws from U(-theta, 1), a slip not kept).
    Run it before GenSkeFeat (on coordinates, not on a score channel)."""

    def __init__(self, theta=0.3):
        self.theta = theta

    def __call__(self, results):
        keypoint = results["keypoint"]
        if not keypoint.any():
            return results
        rng = _rng(results, "RandomRot")
        channels = keypoint.shape[-1]
        if channels == 2:
            rotation = _rotation_2d(rng.uniform(-self.theta, self.theta))
        elif channels == 3:
            x, y, z = rng.uniform(-self.theta, self.theta, size=3)
            rotation = _rotation_3d(2, z) @ _rotation_3d(1, y) @ _rotation_3d(0, x)
        else:
            raise ValueError(f"RandomRot: keypoint must have 2 or 3 coordinates, got {channels}{_where(results)}")
        results["keypoint"] = (keypoint.reshape(-1, channels) @ rotation.T.astype(keypoint.dtype)).reshape(
            keypoint.shape)  # one 2D product is several times faster than a batched one here
        return results


def _rotation_2d(angle):
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


def _rotation_3d(axis, angle):
    """Rotation by ``angle`` about coordinate axis ``axis`` (0 x, 1 y, 2 z)."""
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[[i, i, j, j], [i, j, i, j]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
    return rotation


@register()
class RandomScale(Transform):
    """Each coordinate axis scaled by 1 + U(-1, 1) * scale (``scale`` a float, or one per axis)."""

    def __init__(self, scale=0.2):
        self.scale = scale
        self._scale = np.asarray(scale, dtype=np.float64)

    def __call__(self, results):
        keypoint = results["keypoint"]
        channels = keypoint.shape[-1]
        if self._scale.ndim and len(self._scale) != channels:
            raise ValueError(f"RandomScale: scale has {len(self._scale)} values for {channels} channels{_where(results)}")
        factors = 1 + _rng(results, "RandomScale").uniform(-1, 1, size=channels) * self._scale
        results["keypoint"] = keypoint * factors.astype(keypoint.dtype)
        return results


@register()
class RandomGaussianNoise(Transform):
    """PYSKL's joint noise (the paper's "pixel noise"): each coordinate of each joint moves by
    N(0, (sigma * size)^2 / C), ``size`` the diagonal of its frame's bounding box (``base=
    "video"``: of the whole sequence's), so a joint moves sigma * size in root mean square, as in
    PYSKL (which draws a Gaussian length along a random direction; this draws an isotropic
    Gaussian). All-zero frames (padding) stay zero (PYSKL tests the bounding box's corner
    instead, which also skips real frames whose corner is near 0)."""

    def __init__(self, sigma=0.01, base="frame"):
        if base not in ("frame", "video"):
            raise ValueError(f"RandomGaussianNoise: base must be 'frame' or 'video', got {base!r}")
        self.sigma, self.base = sigma, base

    def __call__(self, results):
        keypoint = results["keypoint"]
        joints, channels = keypoint.shape[-2:]
        graphs = keypoint.reshape(-1, joints, channels)
        shown = graphs.reshape(len(graphs), -1).any(axis=1)
        if not shown.any():
            return results
        seen = graphs if self.base == "frame" else graphs[shown].reshape(1, -1, channels)
        # the bounding box's diagonal, one channel at a time (numpy reduces those fastest)
        size = np.sqrt(sum(np.square(seen[..., c].max(axis=1) - seen[..., c].min(axis=1)) for c in range(channels)))
        std = (self.sigma / np.sqrt(channels)) * size * shown
        noise = _rng(results, "RandomGaussianNoise").standard_normal(graphs.shape, dtype=np.float32)
        noise *= std.astype(np.float32)[:, None, None]
        results["keypoint"] = keypoint + noise.reshape(keypoint.shape).astype(keypoint.dtype, copy=False)
        return results


FEATURES = ("j", "b", "jm", "bm")


@register()
class GenSkeFeat(Transform):
    """PYSKL's GenSkeFeat: the features ``feats`` concatenated on the channel axis: ``j`` joints,
    ``b`` bones (joint minus its ``layout.parents`` joint), ``jm`` / ``bm`` their motion (the
    difference to the next frame, 0 at each clip's last frame). With ``with_score`` and a
    ``keypoint_score`` (2D), the score is first appended as a channel, as PYSKL always does (and
    bones and motions carry the mean score of their two ends); without it the score is dropped.
    Motion is taken within each clip when it runs after UniformSample, over consecutive frames
    when before it (PYSKL's order). ``dataset`` is PYSKL's name for ``layout``."""

    def __init__(self, feats=("j",), layout=None, with_score=False, dataset=None):
        feats = (feats,) if isinstance(feats, str) else tuple(feats)
        unknown = [f for f in feats if f not in FEATURES]
        if not feats or unknown:
            raise ValueError(f"GenSkeFeat: feats must be a non-empty list of {list(FEATURES)}, got {list(feats)}")
        self.feats, self.with_score = feats, with_score
        self.layout = layout if layout is not None else dataset

    def __call__(self, results):
        keypoint = results.pop("keypoint")
        score = results.pop("keypoint_score", None)
        scored = self.with_score and score is not None
        if scored:
            if keypoint.shape[-1] != 2:
                raise ValueError(f"GenSkeFeat: a keypoint_score goes with 2D keypoints, got "
                                 f"{keypoint.shape[-1]} channels{_where(results)}")
            keypoint = np.concatenate([keypoint, score[..., None].astype(keypoint.dtype)], axis=-1)
        features = {"j": keypoint}
        if "b" in self.feats or "bm" in self.feats:
            parents = np.asarray(_layout(self.layout, results, "GenSkeFeat").parents)
            bone = keypoint - keypoint[..., parents, :]
            if scored:
                bone[..., 2] = (keypoint[..., 2] + keypoint[..., parents, 2]) / 2
            features["b"] = bone
        clips = results.get("num_clips", 1) if "frame_inds" in results else 1
        for name in ("jm", "bm"):
            if name in self.feats:
                features[name] = _motion(features[name[0]], clips, scored)
        selected = [features[name] for name in self.feats]
        results["keypoint"] = selected[0] if len(selected) == 1 else np.concatenate(selected, axis=-1)
        return results


def _motion(data, clips, scored):
    persons, frames, joints, channels = data.shape
    per_clip = data.reshape(persons, clips, frames // clips, joints, channels)
    motion = np.zeros_like(per_clip)
    motion[:, :, :-1] = per_clip[:, :, 1:] - per_clip[:, :, :-1]
    if scored:
        motion[:, :, :-1, :, 2] = (per_clip[:, :, :-1, :, 2] + per_clip[:, :, 1:, :, 2]) / 2
    return motion.reshape(data.shape)


@register()
class FormatGCNInput(Transform):
    """The model input: ``keypoint`` [num_clips, num_person, clip_len, V, C] float32, contiguous.
    Persons beyond ``num_person`` are cut; missing ones are zeros (``mode="zero"``) or repeat
    the present ones (``"loop"``). A ``keypoint_score`` still present is appended as a channel
    (PYSKL)."""

    def __init__(self, num_person=2, mode="zero"):
        if mode not in ("zero", "loop"):
            raise ValueError(f"FormatGCNInput: mode must be 'zero' or 'loop', got {mode!r}")
        self.num_person, self.mode = num_person, mode

    def __call__(self, results):
        keypoint = results["keypoint"]
        if "keypoint_score" in results:
            keypoint = np.concatenate([keypoint, results.pop("keypoint_score")[..., None]], axis=-1)
        persons, frames, joints, channels = keypoint.shape
        clips = results.get("num_clips", 1)
        if frames % clips:
            raise ValueError(f"FormatGCNInput: {frames} frames do not split into {clips} clips{_where(results)}")
        kept = min(persons, self.num_person)
        source = keypoint[:kept].reshape(kept, clips, frames // clips, joints, channels).transpose(1, 0, 2, 3, 4)
        out = np.zeros((clips, self.num_person, frames // clips, joints, channels), dtype=np.float32)
        if self.mode == "loop":
            out[:] = source[:, np.arange(self.num_person) % kept]
        else:
            out[:, :kept] = source
        results["keypoint"] = out
        return results
