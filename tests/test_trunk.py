"""Trunk pre-training (TrunkMAE): masked tubes over the whole STRL trunk, its targets, that the
masked joints' values never reach the reconstruction, gradients to every trunk part, the fast
twin, and the transfer of every trunk weight into the classifier."""

import pytest
import torch

import skelmae_ext
import skelmae_reference
from skelmae_reference.trunk import NORM_EPS

from test_models import BACKENDS, assert_twins_agree, random_batch, real_batch, twins

ARGS = dict(embed_dim=32, num_frames=16, chunk=4)


def model(**kwargs):
    torch.manual_seed(0)
    return skelmae_reference.TrunkMAE(**dict(ARGS, **kwargs))


def test_masks_whole_tubes_of_the_present_persons_at_the_ratio():
    x = random_batch(t=16)  # sample 0's second person and sample 1's last two frames are padding
    mask = model(mask_ratio=0.75)(x).mask
    assert mask.shape == (3, 2, 16, 17)
    tubes = mask.reshape(3, 2, 4, 4, 17)
    # a tube is masked on all its frames but padding
    assert torch.equal(tubes[2].all(dim=2), tubes[2].any(dim=2))
    assert not mask[0, 1].any() and not mask[1, :, -2:].any()
    # round(0.75 * 4 tubes in time * 17 joints) = 51 tubes of each present person
    assert tubes[2].any(dim=2).sum(dim=(1, 2)).tolist() == [51, 51]


def test_targets_by_hand():
    """One joint moving 0, 1, 3, 6 then padding: its motion is 1, 2, 3 then 0 (the next frame is
    padding); the normalised tube has zero mean and unit variance."""
    trunk = model(target="both")
    x = torch.zeros(1, 1, 16, 17, 2)
    x[0, 0, :4, 0, 0] = torch.tensor([0.0, 1.0, 3.0, 6.0])
    x[0, 0, :4, 1] = 1  # keeps the frames real
    real = x.flatten(3).ne(0).any(-1)
    motion, position = trunk.targets(x, real)
    assert motion[0, 0, :4, 0, 0].tolist() == [1.0, 2.0, 3.0, 0.0]
    assert torch.equal(position, x)
    tube = trunk.normalised(motion)[0, 0, 0, :, 0, :]  # the first tube of joint 0: 4 frames x 2
    values = torch.tensor([1.0, 0, 2, 0, 3, 0, 0, 0])
    expected = (values - values.mean()) / (values.var(unbiased=False) + NORM_EPS).sqrt()
    torch.testing.assert_close(tube.flatten(), expected)


def test_masked_joints_never_reach_the_reconstruction():
    """Whatever the masked joints hold, the reconstruction (the trunk's output) is the same: the
    target cannot leak. The loss does change (its target is theirs)."""
    trunk = model()
    x = real_batch(count=3, clip_len=16)[0]
    torch.manual_seed(1)
    first = trunk(x)
    changed = torch.where(first.mask[..., None], x + 5 * torch.randn_like(x), x)
    torch.manual_seed(1)
    second = trunk(changed)
    assert torch.equal(first.mask, second.mask) and first.mask.any()
    torch.testing.assert_close(second.reconstruction, first.reconstruction, rtol=0, atol=0)
    assert not torch.isclose(second.loss, first.loss)


@pytest.mark.parametrize("target", ["motion", "position", "both"])
def test_gradients_reach_every_trunk_part(target):
    trunk = model(target=target)
    trunk(real_batch(count=3, clip_len=16)[0]).loss.backward()
    missing = [name for name, p in trunk.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    names = {name.split(".")[0] for name, _ in trunk.named_parameters()}
    assert names == {"strl", "mask_token", "decoder"}
    assert any(".encoder.layers." in name for name, _ in trunk.named_parameters())  # the GIN copies
    assert any(".temporal." in name for name, _ in trunk.named_parameters())


def test_the_loss_learns_on_a_real_batch():
    trunk = model()
    x = real_batch(count=4, clip_len=16)[0]
    optimizer = torch.optim.Adam(trunk.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        torch.manual_seed(step % 2)  # two masks, alternating
        loss = trunk(x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_fast_twin_matches_the_reference(backend):
    reference, fast = twins("TrunkMAE", backend=backend, target="both", **ARGS)
    assert_twins_agree(reference, fast, real_batch(count=3, clip_len=16)[0])


def test_every_trunk_weight_loads_into_the_classifier_and_only_the_head_starts_random():
    trunk = model()
    with torch.no_grad():
        for p in trunk.parameters():
            p.normal_()
    classifier = skelmae_ext.SSLClassifier(5, embed_dim=32, num_frames=16)
    loaded, random = classifier.load_pretrained(trunk)
    assert random and all(name.startswith("head.") for name in random)
    assert set(loaded) == {f"strl.{key}" for key in trunk.strl.state_dict()}
    for key, value in trunk.strl.state_dict().items():
        assert torch.equal(classifier.strl.state_dict()[key], value), key


def test_a_frame_encoder_loads_into_the_encoder_copies_and_says_what_starts_random():
    torch.manual_seed(0)
    mae = skelmae_reference.SkeletonMAE(embed_dim=32)
    classifier = skelmae_reference.SSLClassifier(5, embed_dim=32, num_frames=16)
    loaded, random = classifier.load_pretrained(mae)
    assert "strl.embedding.weight" in loaded and "strl.layers.2.encoder.layers.0.mlp.0.weight" in loaded
    assert {"strl.position", "strl.layers.0.update.weight", "head.0.weight"} <= set(random)
    assert not set(loaded) & set(random) and set(loaded) | set(random) == set(classifier.state_dict())


def test_a_trunk_of_other_arguments_is_refused_by_name():
    trunk = model(num_strl_layers=2)
    classifier = skelmae_reference.SSLClassifier(5, embed_dim=32, num_frames=32)
    with pytest.raises(ValueError, match=r"does not fit this classifier .*strl.position \(16, 32\) \(here \(32, 32\)\)"):
        classifier.load_pretrained(trunk)


BAD = {
    "chunk": (dict(num_frames=18), r"num_frames must be a multiple of chunk=4, got 18"),
    "ratio": (dict(mask_ratio=1.0), r"mask_ratio must be a number with 0 < mask_ratio < 1, got 1.0"),
    "target": (dict(target="velocity"), r"target must be one of \('motion', 'position', 'both'\)"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_configuration(case):
    kwargs, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        model(**kwargs)
