"""Pipelines: ``Compose`` of transforms built from PYSKL-style configs ``dict(type=...,
**kwargs)``, and the default pipelines (docs/design.md section 7) as such config lists, which a
command line can print and override, with the augmentation magnitudes they use: tune them here."""

from .transforms import TRANSFORMS, Transform

# Training augmentation: RandomRot's theta (radians; 2D in-plane), RandomScale's scale (per
# axis, 1 +- scale), RandomGaussianNoise's sigma (relative to each frame's skeleton size), and
# crop, the share of a sequence UniformSample may cut away (its p_interval is (1 - crop, 1)).
AUGMENTATION = {"rotation": 0.2, "scale": 0.1, "noise": 0.01, "crop": 0.5}


def default_pipeline(mode="train", clip_len=64, num_clips=1, feats=("j",), *, dims=2, num_person=2,
                     augment=True, with_score=False, rotation=None, scale=None, noise=None, crop=None):
    """The transforms for ``mode`` ("train" or "test") on ``dims``-D data (2 or 3):
    UniformSample(clip_len, num_clips), PoseDecode, PreNormalize2D and CenterSkeleton (2D; 3D:
    PreNormalize3D, which centres, first), in training with ``augment`` a random temporal crop,
    RandomRot, RandomScale and RandomGaussianNoise (magnitudes from AUGMENTATION unless given;
    0 leaves one out), then GenSkeFeat(feats,
    with_score) and FormatGCNInput(num_person). The output channels are the coordinates (2 or 3)
    per feature, plus the score channel with ``with_score``."""
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3 (the keypoints' coordinates), got {dims!r}")
    augmenting = mode == "train" and augment
    magnitudes = dict(AUGMENTATION)
    magnitudes.update({k: v for k, v in (("rotation", rotation), ("scale", scale), ("noise", noise), ("crop", crop))
                       if v is not None})
    sample = [{"type": "UniformSample", "clip_len": clip_len, "num_clips": num_clips}, {"type": "PoseDecode"}]
    if augmenting and magnitudes["crop"]:
        sample[0]["p_interval"] = [1 - magnitudes["crop"], 1]
    # PreNormalize2D acts on each joint alone: on the sampled frames it gives PYSKL's values (which
    # normalises first) for less work. PreNormalize3D drops frames and needs the whole sequence.
    pipeline = (sample + [{"type": "PreNormalize2D"}, {"type": "CenterSkeleton"}] if dims == 2
                else [{"type": "PreNormalize3D"}] + sample)
    if augmenting:
        for name, config in (("rotation", {"type": "RandomRot", "theta": magnitudes["rotation"]}),
                             ("scale", {"type": "RandomScale", "scale": magnitudes["scale"]}),
                             ("noise", {"type": "RandomGaussianNoise", "sigma": magnitudes["noise"]})):
            if magnitudes[name]:
                pipeline.append(config)
    pipeline += [{"type": "GenSkeFeat", "feats": list(feats), "with_score": with_score},
                 {"type": "FormatGCNInput", "num_person": num_person}]
    return pipeline


class Compose(Transform):
    """Runs transforms in order; each item a transform or a config ``dict(type=..., **kwargs)``."""

    def __init__(self, transforms):
        if isinstance(transforms, dict) or not isinstance(transforms, (list, tuple)):
            raise ValueError(f"a pipeline is a list of transforms or config dicts, got {type(transforms).__name__}")
        self.transforms = [build_transform(t) if isinstance(t, dict) else t for t in transforms]
        for transform in self.transforms:
            if not callable(transform):
                raise ValueError(f"pipeline item {transform!r} is neither a config dict nor callable")

    def __call__(self, results):
        for transform in self.transforms:
            results = transform(results)
        return results


_NOT_NEEDED = ("Collect", "ToTensor")  # PYSKL's last steps; SkeletonDataset returns (tensor, label) itself


def build_transform(config):
    """A transform from ``dict(type=name, **kwargs)`` (PYSKL's config form)."""
    kwargs = dict(config)
    name = kwargs.pop("type", None)
    if name not in TRANSFORMS:
        hint = " (not needed: SkeletonDataset returns (keypoint tensor, label) itself; drop it)" \
            if name in _NOT_NEEDED else ""
        raise ValueError(f"unknown transform type {name!r}{hint}; known: {sorted(TRANSFORMS)}")
    try:
        return TRANSFORMS[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"transform {name}: bad arguments {kwargs} ({error})") from error
