"""SkeletonMAE against independent expectations, not against its twin: the loss is
docs/design.md's formula applied to the masked joints' reconstruction and target, with its `beta`;
the embedding target passes no gradient; the masked joints' input reaches only the target; and
padded graphs count in training mode's BatchNorm statistics, as the model's docstring says.
Each test runs on both twins: the fast model inherits `forward` from the reference one, so a
bug there is in both and the drop-in tests of test_models.py cannot see it."""

import pytest
import torch

import skelmae_ext
import skelmae_reference
from skelmae_ext import layouts

from test_models import real_batch

TWINS = {"reference": skelmae_reference.SkeletonMAE, "fast": skelmae_ext.SkeletonMAE}


def cosine_error(pred, target, mask, beta):
    """docs/design.md section 4 written out: (1 - cos(pred, target))^beta, averaged over the masked rows."""
    cosine = (pred * target).sum(-1) / (pred.norm(dim=-1).clamp_min(1e-12) * target.norm(dim=-1).clamp_min(1e-12))
    return ((1 - cosine) ** beta * mask).sum() / mask.sum().clamp_min(1)


def embedded(model, x):
    """The joint embedding x W^T + b, by hand."""
    return x @ model.encoder.embedding.weight.t() + model.encoder.embedding.bias


def model_with_token(twin, **kwargs):
    """A training-mode model whose mask token is not zero (as after some training)."""
    torch.manual_seed(0)
    model = TWINS[twin](**kwargs).train()
    with torch.no_grad():
        model.mask_token.normal_()
    return model


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("beta", [0.5, 2.0, 3.0])
@pytest.mark.parametrize("target", ["input", "centred", "embedding"])
def test_loss_is_the_formula_on_the_masked_joints(twin, target, beta):
    """The loss is the cosine error of the reconstruction returned against the target, over
    exactly the joints of the mask returned (never the padded person's), raised to the
    model's beta (a model that ignored its beta would score 2 for 0.5 and 3)."""
    model = model_with_token(twin, target=target, beta=beta, mask_strategy="random_parts", num_mask_parts=2)
    x = real_batch(count=3, clip_len=8)[0]  # each sample's second person is padding
    out = model(x)
    pred = out.reconstruction
    if target == "input":
        expected_target = x
    elif target == "embedding":
        expected_target = embedded(model, x)
    else:  # relative to the mean of the frame's joints that are neither masked nor missing
        visible = (x != 0).any(-1, keepdim=True) & ~out.mask[..., None]
        centre = (x * visible).sum(3, keepdim=True) / visible.sum(3, keepdim=True).clamp_min(1)
        expected_target, pred = x - centre, pred - centre
    assert out.mask[:, 0].any() and not out.mask[:, 1].any()
    expected = cosine_error(pred, expected_target, out.mask, beta)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("twin", TWINS)
def test_embedding_target_passes_no_gradient(twin):
    """target="embedding" is the paper's stop-gradient target: every parameter's gradient is
    that of the formula with the target detached. The gradient the target would otherwise
    add to the embedding is large: without the stop-gradient this test fails."""
    model = model_with_token(twin, target="embedding")
    x = real_batch(count=2, clip_len=8)[0]
    out = model(x)
    params = dict(model.named_parameters())
    got = torch.autograd.grad(out.loss, list(params.values()), retain_graph=True, allow_unused=True,
                              materialize_grads=True)
    target = embedded(model, x)
    detached = torch.autograd.grad(cosine_error(out.reconstruction, target.detach(), out.mask, 2.0),
                                   list(params.values()), retain_graph=True, allow_unused=True, materialize_grads=True)
    scale = max(float(g.abs().max()) for g in detached)
    for name, g, e in zip(params, got, detached):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    through_target = torch.autograd.grad(cosine_error(out.reconstruction.detach(), target, out.mask, 2.0),
                                         model.encoder.embedding.weight)[0]
    assert through_target.abs().max() > 0.1 * got[list(params).index("encoder.embedding.weight")].abs().max()


@pytest.mark.parametrize("twin", TWINS)
def test_masked_joints_input_reaches_only_the_target(twin):
    """The masked joints' coordinates are replaced by the token before anything reads them
    (BatchNorm statistics included): moving them changes the loss (the target) and not one
    bit of the reconstruction. Moving a visible joint does change it."""
    model = model_with_token(twin)
    x = real_batch(count=2, clip_len=8)[0]
    out = model(x)
    moved = x.clone()
    moved[out.mask] += 0.5
    again = model(moved)
    assert torch.equal(again.mask, out.mask)
    assert torch.equal(again.reconstruction, out.reconstruction)
    assert not torch.isclose(again.loss, out.loss)
    visible = x.clone()
    visible[:, 0, :, 9] += 0.5  # the left wrist (the default masks the right arm and leg)
    assert not torch.allclose(model(visible).reconstruction[out.mask], out.reconstruction[out.mask])


@pytest.mark.parametrize("twin", TWINS)
def test_padded_graphs_count_in_batch_norm_statistics(twin):
    """The docstring's rule: in training mode every graph, the all-zero padded ones included,
    passes the encoder and counts in its BatchNorm batch statistics. The first BatchNorm's
    running statistics after one step, against the rows written out by hand (embedding, token,
    aggregation, Linear) over all graphs; the same rows without the padded graphs give other
    statistics, so the test tells the two rules apart."""
    model = model_with_token(twin).double()
    x = real_batch(count=2, clip_len=8)[0].double()
    assert (x[:, 1] == 0).all()  # the padded person
    layer = model.encoder.gin.layers[0]
    norm = layer.mlp.norm
    mask = model(x).mask.reshape(-1, 17)
    h = embedded(model, x).reshape(-1, 17, model.embed_dim)
    h = torch.where(mask[..., None], model.mask_token, h)
    adjacency = layouts.get_layout("coco").adjacency().double()
    rows = (h + adjacency @ h) @ layer.mlp.first.weight.t() + layer.mlp.first.bias  # eps = 0
    rows = rows.reshape(-1, model.embed_dim)
    momentum = norm.momentum
    torch.testing.assert_close(norm.running_mean, momentum * rows.mean(0))
    torch.testing.assert_close(norm.running_var, (1 - momentum) + momentum * rows.var(0))
    real = rows.reshape(2, 2, -1, model.embed_dim)[:, 0].reshape(-1, model.embed_dim)
    assert not torch.allclose(norm.running_mean, momentum * real.mean(0), rtol=1e-3)
