"""SkeletonMAE, STRL and the SSL classifier: the fast twins against the reference models."""

import copy
import json
import os

import pytest
import torch

import skelmae_ext
import skelmae_reference
from skelmae_ext import layouts, ops
from skelmae_ext.data import SkeletonDataset, default_pipeline
from skelmae_ext.models import BackendOps
from skelmae_reference.ops import Ops, ReferenceOps

DATA = os.path.join(os.path.dirname(__file__), "data")
# Every backend that runs here; Triton's (the interpreter) only in the `-m triton` process.
BACKENDS = [pytest.param(b, marks=[pytest.mark.triton] if b == "triton" else []) for b in ops.available_backends("cpu")]
BUILTIN = ["coco", "nturgb+d", "openpose", "bandai2", "msr_action3d"]


def real_batch(name="bandai2_coco2d_sample.pkl", count=4, clip_len=64, layout=None, centred=True):
    """[N, 2, T, V, C] from the test data's real sequences through the test pipeline (the
    second person is padding); ``centred=False`` leaves out its CenterSkeleton."""
    pipeline = None
    if not centred:
        dims = 2 if name.startswith("bandai2_coco2d") else 3
        pipeline = [t for t in default_pipeline("test", clip_len, dims=dims) if t["type"] != "CenterSkeleton"]
    dataset = SkeletonDataset(os.path.join(DATA, name), None, pipeline, layout=layout, mode="test", clip_len=clip_len)
    x = torch.stack([dataset[i][0][0] for i in range(count)])
    return x, torch.tensor(dataset.labels[:count])


def random_batch(layout="coco", channels=2, n=3, t=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    v = layouts.get_layout(layout).num_joints
    x = torch.randn(n, 2, t, v, channels, generator=generator)
    x[0, 1] = 0  # a padded person
    x[1, :, -2:] = 0  # padded frames
    return x


def twins(model_class, seed=0, backend="auto", **kwargs):
    """(reference model, fast model on `backend`) with the reference state_dict loaded into the
    fast one."""
    torch.manual_seed(seed)
    reference = getattr(skelmae_reference, model_class)(**kwargs)
    fast = getattr(skelmae_ext, model_class)(**kwargs, backend=backend)
    fast.load_state_dict(reference.state_dict())  # strict: same keys, same shapes
    return reference, fast


def outputs_and_grads(model, x, seed=0):
    torch.manual_seed(seed)  # the same random masks for both twins
    out = model(x)
    if isinstance(out, torch.Tensor):
        tensors, scalar = [out], out.square().mean()
    else:
        tensors, scalar = [out.loss, out.reconstruction, out.mask], out.loss
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(scalar, [p for _, p in model.named_parameters() if p.requires_grad],
                                allow_unused=True, materialize_grads=True)
    return tensors, dict(zip(names, grads))


def assert_relative(actual, expected, scale, what=""):
    """Agreement to 1e-4 relative to `scale`, the largest magnitude of that kind of tensor:
    float32 sums over thousands of graphs cancel (the mask token's gradient; a bias before
    BatchNorm has a true gradient of 0), so element-wise relative error is not meaningful."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{what}: {m}")


def assert_same_outputs(reference, fast, x, seed):
    (ref_out, ref_grads), (fast_out, fast_grads) = outputs_and_grads(reference, x, seed), outputs_and_grads(fast, x, seed)
    for r, f in zip(ref_out, fast_out):
        if r.dtype == torch.bool:
            assert torch.equal(r, f)
        else:
            assert_relative(f.detach(), r.detach(), float(r.detach().abs().max()))
    assert ref_grads.keys() == fast_grads.keys()
    gradient_scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name in ref_grads:
        assert_relative(fast_grads[name], ref_grads[name], gradient_scale, name)


def assert_as_accurate(reference, fast, x, seed):
    """Each twin against the reference model in float64: the fast one's largest error at most
    twice the reference's own (+1e-4 of scale). Training-mode BatchNorm over batches with many
    padded graphs is ill-conditioned: float32 itself is off by ~3e-4 there, whichever way the
    sums are ordered, so a direct 1e-4 comparison would only measure rounding order."""
    exact_out, exact = outputs_and_grads(copy.deepcopy(reference).double(), x.double(), seed)

    def error(model):
        out, grads = outputs_and_grads(model, x, seed)
        return max(float((grads[name].double() - exact[name]).abs().max()) for name in exact), out

    reference_error, reference_out = error(reference)
    fast_error, fast_out = error(fast)
    scale = max(float(g.abs().max()) for g in exact.values())
    assert fast_error <= 2 * reference_error + 1e-4 * scale, (fast_error, reference_error, scale)
    for f, e in zip(fast_out, exact_out):
        if e.dtype == torch.bool:
            assert torch.equal(f, e)
        else:
            assert_relative(f.detach().double(), e.detach(), float(e.detach().abs().max()))


def assert_twins_agree(reference, fast, x, seed=0):
    """Eval mode: the same outputs and gradients to 1e-4. Training mode: as accurate as the
    reference, measured against float64."""
    reference.eval(), fast.eval()
    assert_same_outputs(reference, fast, x, seed)
    reference.train(), fast.train()
    assert_as_accurate(reference, fast, x, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", [dict(), dict(mask_strategy="random_parts", num_mask_parts=2),
                                      dict(mask_strategy="random_joints", mask_ratio=0.4),
                                      dict(target="embedding", learn_eps=True)],
                         ids=["parts", "random_parts", "random_joints", "embedding-target"])
def test_skeletonmae_is_a_drop_in_twin_on_random_data(backend, strategy):
    reference, fast = twins("SkeletonMAE", backend=backend, **strategy)
    assert_twins_agree(reference, fast, random_batch())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("settings", ["paper", "default"])
def test_skeletonmae_is_a_drop_in_twin_on_real_data(backend, settings):
    """The paper's settings on the batch with its zero-padded second person; the defaults
    (centred target, no re-mask) on the first person only: their gradients through BatchNorm
    over the padding are ill-conditioned in float32 (measured: the fast twin 0.07 off float64
    there, the reference 0.006, both 0.003 without the padding)."""
    x = real_batch()[0]
    if settings == "paper":
        reference, fast = twins("SkeletonMAE", backend=backend, target="input", remask=True)
    else:
        reference, fast = twins("SkeletonMAE", backend=backend)
        x = x[:, :1].contiguous()
    assert_twins_agree(reference, fast, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skeletonmae_twin_on_real_3d_mocap(backend):
    reference, fast = twins("SkeletonMAE", layout="bandai2", in_channels=3, backend=backend)
    assert_twins_agree(reference, fast, real_batch("bandai2_sample.pkl", clip_len=16, layout="bandai2")[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ssl_classifier_is_a_drop_in_twin(backend):
    kwargs = dict(num_classes=10, embed_dim=32, num_frames=16, backend=backend)
    reference, fast = twins("SSLClassifier", **kwargs)
    assert_twins_agree(reference, fast, real_batch(clip_len=16)[0])
    reference, fast = twins("SSLClassifier", **kwargs)
    assert_twins_agree(reference, fast, random_batch(t=16))



class CountingOps(ReferenceOps):
    """The reference ops, counting the calls of each."""

    def __init__(self):
        self.calls = dict.fromkeys(("masked_graph_conv", "cosine_reconstruction_loss", "batch_norm_prelu", "linear"), 0)

    def __getattribute__(self, name):
        calls = object.__getattribute__(self, "calls")
        function = object.__getattribute__(self, name)
        if name not in calls:
            return function

        def counted(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return counted


def test_both_op_sets_satisfy_the_one_ops_interface():
    assert isinstance(ReferenceOps(), Ops) and isinstance(BackendOps("cpu"), Ops) and isinstance(CountingOps(), Ops)
    assert not isinstance(object(), Ops)


def test_reference_models_run_every_hot_spot_through_the_ops_given():
    """SkeletonMAE with 3 GIN layers: 3 encoder + 1 decoder aggregations; the embedding, 2 Linear
    per encoding layer and the decoder's; 2 BatchNorm tails per encoding layer; one loss. One
    STRL layer with a 1-layer encoder copy: its aggregation, embedding + 2 Linear, 2 GIN tails
    and 7 temporal BatchNorms (2 per dilated branch and the max-pool branch, 1 in the 1x1)."""
    counting = CountingOps()
    skelmae_reference.SkeletonMAE(embed_dim=16, num_layers=3, ops=counting)(random_batch(t=4))
    assert counting.calls == {"masked_graph_conv": 4, "cosine_reconstruction_loss": 1, "batch_norm_prelu": 6,
                              "linear": 8}
    counting = CountingOps()
    skelmae_reference.SSLClassifier(3, embed_dim=16, num_layers=1, num_frames=4, num_strl_layers=1,
                                    ops=counting)(random_batch(t=4))
    assert counting.calls == {"masked_graph_conv": 1, "cosine_reconstruction_loss": 0, "batch_norm_prelu": 9,
                              "linear": 3}


def test_the_fast_twins_bind_the_backend_and_keep_the_reference_modules():
    fast = skelmae_ext.SSLClassifier(3, embed_dim=16, num_frames=4, backend="reference")
    assert isinstance(fast.strl.ops, BackendOps) and fast.strl.ops.backend == "reference"
    for layer in fast.strl.layers:
        assert layer.ops is fast.strl.ops and layer.temporal.ops is fast.strl.ops
        assert isinstance(layer, skelmae_reference.strl.STRLLayer)
        assert isinstance(layer.temporal, skelmae_reference.strl.MultiScaleTemporalConv)

@pytest.mark.parametrize("layout", BUILTIN)
def test_every_builtin_layout(layout):
    channels = 3 if layout in ("bandai2", "msr_action3d", "nturgb+d") else 2
    reference, fast = twins("SkeletonMAE", layout=layout, in_channels=channels)
    assert_twins_agree(reference, fast, random_batch(layout, channels))


def test_custom_json_layout_of_an_unseen_skeleton(tmp_path):
    # A 9-joint quadruped-like stick figure no built-in layout has.
    spec = {"name": "quadruped", "joints": ["spine", "head", "tail", "fl", "fr", "bl", "br", "neck", "hip"],
            "edges": [[7, 0], [1, 7], [8, 0], [2, 8], [3, 7], [4, 7], [5, 8], [6, 8]],
            "center": 0, "parts": [[1, 7], [0, 8, 2], [3], [4], [5], [6]], "flip_pairs": [[3, 4], [5, 6]]}
    path = tmp_path / "quadruped.json"
    path.write_text(json.dumps(spec))
    reference, fast = twins("SkeletonMAE", layout=str(path), mask_parts=(2, 5))
    x = torch.randn(2, 2, 6, 9, 2)
    assert_twins_agree(reference, fast, x)
    assert torch.equal(fast(x).mask[0, 0, 0], torch.tensor([False, False, False, True, False, False, True, False, False]))


def test_mask_is_exactly_the_chosen_parts_and_never_padding():
    model = skelmae_ext.SkeletonMAE(mask_parts=(3, 5))
    x = random_batch(t=6)
    mask = model(x).mask
    expected_joints = torch.zeros(17, dtype=torch.bool)
    expected_joints[[8, 10, 14, 16]] = True
    padding = x.abs().sum(dim=(-1, -2)) == 0
    assert padding.any()
    assert not mask[padding].any()
    assert torch.equal(mask[~padding], expected_joints.expand(int((~padding).sum()), 17))


def test_random_parts_mask_whole_parts_per_graph():
    model = skelmae_ext.SkeletonMAE(mask_strategy="random_parts", num_mask_parts=2)
    x = random_batch(t=10)
    mask = model(x).mask[x.abs().sum(dim=(-1, -2)) > 0]  # [G, V] of real graphs
    membership = model.layout.part_membership()
    per_part = (mask[:, None, :] & membership).sum(-1)  # masked joints of each part
    whole = per_part == membership.sum(-1)
    assert torch.all((per_part == 0) | whole)  # parts are masked whole or not at all
    assert torch.all(whole.sum(-1) == 2)
    assert len({tuple(row.tolist()) for row in whole}) > 1  # resampled across graphs


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_weight_gives_a_nan_loss(backend):
    """One NaN decoder weight: the loss is NaN, as the reference model's, so that a training
    loop's isfinite(loss) guard fires (the fused loss once reported a finite loss here)."""
    reference, fast = twins("SkeletonMAE", backend=backend)
    for model in (reference, fast):
        with torch.no_grad():
            model.decoder.mlp.weight[0, 0] = float("nan")
        assert model(random_batch()).loss.isnan()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_gradient_penalty_matches_the_reference_model(backend, mode):
    """d(penalty)/dW for a penalty on the loss's gradients (create_graph=True): the twins agree
    (the fused model once gave 7.2e3 for the reference's 5.0e6); backends that cannot
    differentiate a gradient again say so."""
    reference, fast = twins("SkeletonMAE", backend=backend, embed_dim=16, num_layers=2)

    def penalty_gradient(model):
        getattr(model, mode)()
        torch.manual_seed(0)
        params = list(model.parameters())
        grads = torch.autograd.grad(model(random_batch(t=4)).loss, params, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), model.encoder.embedding.weight)[0]

    expected = penalty_gradient(reference)
    if backend == "triton":
        with pytest.raises(RuntimeError, match='use backend="reference"'):
            penalty_gradient(fast)
        return
    assert_relative(penalty_gradient(fast), expected, float(expected.abs().max()), "d penalty / d embedding")


def test_random_joints_mask_the_ratio_per_graph():
    model = skelmae_ext.SkeletonMAE(mask_strategy="random_joints", mask_ratio=0.3)
    x = random_batch(t=10)
    mask = model(x).mask[x.abs().sum(dim=(-1, -2)) > 0]
    assert torch.all(mask.sum(-1) == round(0.3 * 17))


def test_padding_takes_no_part_in_the_loss():
    torch.manual_seed(0)
    model = skelmae_ext.SkeletonMAE()
    x = random_batch(t=6)
    padded = torch.cat([x, torch.zeros_like(x)], dim=1)  # two more all-zero persons
    model.eval()  # BatchNorm statistics would otherwise see the extra rows
    torch.testing.assert_close(model(padded).loss, model(x).loss)


@pytest.mark.parametrize("model_name", ["SkeletonMAE", "SSLClassifier"])
def test_one_real_batch_is_overfitted(model_name):
    torch.manual_seed(0)
    # Coordinates from the image centre: centred ones put a floor under SkeletonMAE's loss, as
    # a masked wrist whose elbow is masked too has no unmasked neighbour in the 1-layer decoder.
    x, labels = real_batch(count=4, clip_len=16, centred=model_name != "SkeletonMAE")
    if model_name == "SkeletonMAE":
        model = skelmae_ext.SkeletonMAE()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss_of = lambda: model(x).loss  # noqa: E731
    else:
        model = skelmae_ext.SSLClassifier(num_classes=10, embed_dim=32, num_frames=16)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss_of = lambda: torch.nn.functional.cross_entropy(model(x), labels)  # noqa: E731
    first = loss_of().item()
    for _ in range(300):
        optimizer.zero_grad()
        loss = loss_of()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 10, (first, loss.item())


@pytest.mark.parametrize("model_name", ["SkeletonMAE", "SSLClassifier"])
def test_fullgraph_compile_of_forward_and_backward(model_name):
    torch.manual_seed(0)
    if model_name == "SkeletonMAE":
        model = skelmae_ext.SkeletonMAE(embed_dim=16, num_layers=2)
        scalar_of = lambda out: out.loss  # noqa: E731
    else:
        model = skelmae_ext.SSLClassifier(num_classes=5, embed_dim=16, num_layers=1, num_frames=8, num_strl_layers=1)
        scalar_of = lambda out: out.square().mean()  # noqa: E731
    model.eval()  # deterministic BatchNorm, so eager and compiled see identical computations
    x = random_batch(t=8)
    eager = scalar_of(model(x))
    eager_grads = torch.autograd.grad(eager, list(model.parameters()), allow_unused=True, materialize_grads=True)
    compiled = scalar_of(torch.compile(model, fullgraph=True)(x))
    grads = torch.autograd.grad(compiled, list(model.parameters()), allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_from_pretrained_copies_exactly_the_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    mae = skelmae_ext.SkeletonMAE(embed_dim=32)
    for parameter in mae.parameters():
        parameter.data.normal_()
    torch.save({"model": mae.state_dict()}, tmp_path / "mae.pt")
    for source in (mae, mae.state_dict(), str(tmp_path / "mae.pt")):
        classifier = skelmae_ext.SSLClassifier(num_classes=3, embed_dim=32, num_frames=8).from_pretrained(source)
        assert torch.equal(classifier.strl.embedding.weight, mae.encoder.embedding.weight)
        for layer in classifier.strl.layers:
            for key, value in mae.encoder.gin.state_dict().items():
                assert torch.equal(layer.encoder.state_dict()[key], value), key


def test_from_pretrained_of_another_layout_is_refused(tmp_path):
    mae = skelmae_ext.SkeletonMAE(layout="nturgb+d", embed_dim=16)
    torch.save({"model": mae.state_dict(), "layout": mae.layout.to_dict()}, tmp_path / "ntu.pt")
    classifier = skelmae_ext.SSLClassifier(num_classes=3, layout="coco", embed_dim=16, num_frames=8)
    for source in (mae, str(tmp_path / "ntu.pt")):
        with pytest.raises(ValueError, match=r"from_pretrained: the encoder was pre-trained on layout 'nturgb\+d' "
                                             r"\(25 joints\), this classifier is built for 'coco' \(17 joints\)"):
            classifier.from_pretrained(source)
    ntu = skelmae_ext.SSLClassifier(num_classes=3, layout="nturgb+d", embed_dim=16, num_frames=8)
    assert torch.equal(ntu.from_pretrained(str(tmp_path / "ntu.pt")).strl.embedding.weight, mae.encoder.embedding.weight)


def running_variances(modules):
    return [b.clone() for module in modules for name, b in module.named_buffers() if name.endswith("running_var")]


def test_freeze_encoder_keeps_pretrained_weights_not_batch_statistics():
    classifier = skelmae_ext.SSLClassifier(num_classes=3, embed_dim=16, num_frames=8, freeze_encoder=True)
    classifier.train()
    frozen = classifier.encoder_modules()
    weights = [p.clone() for module in frozen for p in module.parameters()]
    running = running_variances(frozen)
    assert all(not p.requires_grad for module in frozen for p in module.parameters())
    assert all(module.training for module in frozen)  # batch statistics, as in fine-tuning
    assert classifier.head.training and all(p.requires_grad for p in classifier.head.parameters())
    loss = classifier(random_batch(t=8)).sum()
    loss.backward()
    assert all(p.grad is None for module in frozen for p in module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, (p for module in frozen for p in module.parameters())))
    assert running and all(not torch.equal(a, b) for a, b in zip(running, running_variances(frozen)))


def test_models_deepcopy_and_pickle(tmp_path):
    model = skelmae_ext.SkeletonMAE()
    x = random_batch(t=4)
    model.eval()
    clone = copy.deepcopy(model)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for other in (clone, loaded):
        torch.testing.assert_close(other(x).loss, model(x).loss)


@pytest.mark.parametrize("model_name", ["reference", "fast"])
def test_features_for_probes(model_name):
    """features(x): the STRL output averaged, by hand, over each sample's present persons
    (sample 0's second is padding), all frames and all joints; the logits are the head's
    output of them."""
    torch.manual_seed(0)
    module = skelmae_reference if model_name == "reference" else skelmae_ext
    classifier = module.SSLClassifier(num_classes=3, embed_dim=16, num_frames=8).eval()
    x = random_batch(t=8)
    with torch.no_grad():
        strl = classifier.strl(x)
        features = classifier.features(x)
        logits = classifier(x)
    expected = torch.stack([
        torch.stack([strl[n, m].mean(dim=(0, 1)) for m in range(2) if x[n, m].any()]).mean(0) for n in range(3)])
    assert features.shape == (3, 16)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(logits, classifier.head(expected))


# Shapes are checked on the host (ValueError), finiteness on the device (torch._assert_async:
# a RuntimeError on the CPU, no host sync on a GPU).
BAD_INPUT = {
    "wrong rank": (torch.randn(2, 8, 17, 2), ValueError, r"must be \[N, M, T, V, C\] \(5 dims\)"),
    "V vs layout": (torch.randn(2, 2, 8, 18, 2), ValueError, r"V=18 joints but layout 'coco' has 17"),
    "empty batch": (torch.randn(0, 2, 8, 17, 2), ValueError, r"x holds no sample \(N=0, shape \(0, 2, 8, 17, 2\)\)"),
    "C vs model": (torch.randn(2, 2, 8, 17, 3), ValueError, r"C=3 channels but the model expects in_channels=2"),
    "NaN": (torch.full((2, 2, 8, 17, 2), float("nan")), RuntimeError, r"contains NaN or inf"),
    "inf": (torch.full((2, 2, 8, 17, 2), float("inf")), RuntimeError, r"contains NaN or inf"),
}


MODELS = {
    "SkeletonMAE": lambda: skelmae_ext.SkeletonMAE(),
    "SSLClassifier": lambda: skelmae_ext.SSLClassifier(3, num_frames=8),
    "STRL": lambda: skelmae_ext.STRL(num_frames=8),  # on its own: it once checked nothing
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_bad_input(case, model_name):
    x, error, message = BAD_INPUT[case]
    with pytest.raises(error, match=rf"{model_name}: .*{message}"):
        MODELS[model_name]()(x)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_input_of_another_dtype_than_the_model(model_name):
    """A float64 model fed float32 input says so (the error once blamed linear's weight)."""
    with pytest.raises(ValueError, match=rf"{model_name}: x is torch.float32 but the model's parameters are "
                                         r"torch.float64"):
        MODELS[model_name]().double()(random_batch(t=8))


@pytest.mark.parametrize("model_name", ["SSLClassifier", "STRL"])
def test_num_frames_mismatch(model_name):
    with pytest.raises(ValueError, match=rf"{model_name}: x has T=12 frames but num_frames=8"):
        MODELS[model_name]()(torch.randn(1, 2, 12, 17, 2))


@pytest.mark.parametrize("source", [42, None, ["encoder.embedding.weight"]], ids=["int", "None", "list"])
def test_from_pretrained_of_something_else(source):
    with pytest.raises(ValueError, match=r"from_pretrained: source must be a SkeletonMAE or TrunkMAE, its state_dict "
                                         r"or the path of a checkpoint file holding one, got (int|NoneType|list)"):
        skelmae_ext.SSLClassifier(3, num_frames=8).from_pretrained(source)


BAD_CONFIG = {
    "mask part out of range": (dict(mask_parts=(3, 6)), r"mask_parts must be part indices in 0..5 of layout 'coco', got \(3, 6\)"),
    "no mask parts": (dict(mask_parts=()), r"mask_parts must be part indices"),
    "strategy": (dict(mask_strategy="blocks"), r"mask_strategy must be one of"),
    "random parts count": (dict(mask_strategy="random_parts", num_mask_parts=7), r"num_mask_parts in 1..6"),
    "random joints ratio": (dict(mask_strategy="random_joints", mask_ratio=1.5), r"0 < mask_ratio < 1"),
    "target": (dict(target="pixels"), r"target must be one of"),
    "backend": (dict(backend="fast"), r"backend must be one of"),
    # Once raw TypeErrors, or a part silently truncated (1.5 masked part 1):
    "mask parts None": (dict(mask_parts=None), r"mask_parts must be part indices in 0..5 of layout 'coco', got None"),
    "mask parts int": (dict(mask_parts=3), r"mask_parts must be part indices .* got 3$"),
    "mask parts str": (dict(mask_parts=("3",)), r"mask_parts must be part indices .* got \('3',\)"),
    "mask parts float": (dict(mask_parts=(1.5,)), r"mask_parts must be part indices .* got \(1.5,\)"),
    "mask parts bool": (dict(mask_parts=(True,)), r"mask_parts must be part indices .* got \(True,\)"),
    "mask ratio str": (dict(mask_strategy="random_joints", mask_ratio="0.5"), r"mask_ratio must be a number with "
                                                                              r"0 < mask_ratio < 1 .* got '0.5'"),
    "random parts bool": (dict(mask_strategy="random_parts", num_mask_parts=True), r"num_mask_parts in 1..6, got True"),
    "beta str": (dict(beta="2"), r"beta must be a number > 0, got '2'"),
    "embed_dim 0": (dict(embed_dim=0), r"embed_dim must be an integer >= 1, got 0"),
    "embed_dim float": (dict(embed_dim=64.0), r"embed_dim must be an integer >= 1, got 64.0"),
    "num_layers 0": (dict(num_layers=0), r"num_layers must be an integer >= 1, got 0"),
    "in_channels negative": (dict(in_channels=-2), r"in_channels must be an integer >= 1, got -2"),
}


@pytest.mark.parametrize("case", BAD_CONFIG, ids=list(BAD_CONFIG))
def test_bad_configuration(case):
    kwargs, message = BAD_CONFIG[case]
    with pytest.raises(ValueError, match=message):
        skelmae_ext.SkeletonMAE(**kwargs)


BAD_CLASSIFIER_CONFIG = {
    "num_classes": (dict(num_classes=0), r"num_classes must be an integer >= 1, got 0"),
    "num_persons": (dict(num_persons=1.5), r"num_persons must be an integer >= 1, got 1.5"),
    "embed_dim": (dict(embed_dim=None), r"embed_dim must be an integer >= 1, got None"),
    "num_frames": (dict(num_frames=0), r"num_frames must be an integer >= 1, got 0"),
    "num_strl_layers": (dict(num_strl_layers=-1), r"num_strl_layers must be an integer >= 1, got -1"),
    "in_channels": (dict(in_channels=True), r"in_channels must be an integer >= 1, got True"),
}


@pytest.mark.parametrize("case", BAD_CLASSIFIER_CONFIG, ids=list(BAD_CLASSIFIER_CONFIG))
def test_bad_classifier_configuration(case):
    kwargs, message = BAD_CLASSIFIER_CONFIG[case]
    with pytest.raises(ValueError, match=message):
        skelmae_ext.SSLClassifier(**dict(dict(num_classes=3), **kwargs))
