"""The SSL classifier against independent expectations: STRL's pooling written out
by hand, padded persons, training against evaluation mode, the paper-literal variant, the
CenterSkeleton transform the default pipeline gains, and a few dozen steps of the default
fine-tuning recipe on real sequences."""

import json

import numpy as np
import pytest
import torch

import skelmae_ext
import skelmae_reference
from skelmae_ext import layouts, train
from skelmae_ext.data import BUNDLED, SkeletonDataset
from skelmae_ext.data.transforms import CenterSkeleton
from skelmae_ext.train.checkpoint import load, rebuild
from skelmae_reference.ops import ReferenceOps
from skelmae_reference.strl import STRLLayer, present_persons

BACKENDS = ["reference", "cpu"]


def persons_batch(n=3, m=2, t=8, seed=0):
    """[N, M, T, 17, 2] with sample 0's second person padding and sample 1 a two-person clip."""
    x = torch.randn(n, m, t, 17, 2, generator=torch.Generator().manual_seed(seed))
    x[0, 1] = 0
    return x


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_pooling_over_joints_and_present_persons_by_hand(pooling):
    layer = STRLLayer(4, 1, layouts.get_layout("coco").adjacency(), ReferenceOps(), pooling=pooling)
    spatial = torch.randn(2, 3, 5, 17, 4, dtype=torch.float64)
    persons = torch.tensor([[True, True, False], [False, True, False]])
    expected = torch.zeros(2, 5, 4, dtype=torch.float64)
    for n in range(2):
        present = [m for m in range(3) if persons[n, m]]
        for t in range(5):
            total = sum(spatial[n, m, t, v] for m in present for v in range(17))
            expected[n, t] = total / (len(present) * 17) if pooling == "mean" else total
    torch.testing.assert_close(layer.pool(spatial, persons), expected)


def test_present_persons_are_those_not_all_zero():
    x = persons_batch()
    x[2, 0, 3, 5] = 0  # one zero joint does not make a person padding
    assert present_persons(x).tolist() == [[True, False], [True, True], [True, True]]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("twin", ["reference", "fast"])
def test_strl_layer_by_hand(twin, mode):
    """One STRL layer (mean pooling) against Eq. 3 and 4 and the temporal module's equations,
    written out with plain tensor operations on a hand-sized input; the fast layer (folded
    Linears, stacked 1x1 convolutions, fused BatchNorm) too, and in training mode, where every
    BatchNorm normalises with its batch's statistics, the padded person's rows included."""
    torch.manual_seed(0)
    adjacency = layouts.get_layout("coco").adjacency()
    layer = STRLLayer(8, 1, adjacency, ReferenceOps()).double()
    for parameter in layer.parameters():  # non-trivial BatchNorm affine terms
        parameter.data.uniform_(-0.5, 0.5)
    for module in layer.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    if twin == "fast":
        fast = skelmae_ext.models.STRLLayer(8, 1, adjacency, skelmae_ext.models.BackendOps()).double()
        fast.load_state_dict(layer.state_dict())
        layer = fast
    layer.train(mode == "train")
    h = torch.randn(2, 2, 6, 17, 8, dtype=torch.float64)
    h[1, 1] = 0
    persons = present_persons(h)

    def batch_norm(x, norm, channel_dim):
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        if mode == "train":
            others = [d for d in range(x.dim()) if d != channel_dim % x.dim()]
            mean, var = x.mean(others), x.var(others, unbiased=False)
        else:
            mean, var = norm.running_mean, norm.running_var
        scale = (norm.weight / torch.sqrt(var + norm.eps)).view(shape)
        return (x - mean.view(shape)) * scale + norm.bias.view(shape)

    adjacency = adjacency.double()

    def gin_layer(x, gin):  # x [G, V, D]: MLP((1 + eps) x + A x), GraphMAE's encoding layer
        first, norm, prelu, second = gin.mlp
        z = first(x + torch.einsum("vu,gud->gvd", adjacency, x))
        z = second(torch.nn.functional.prelu(batch_norm(z, norm, -1), prelu.weight))
        return torch.nn.functional.prelu(batch_norm(z, gin.post[0], -1), gin.post[1].weight)

    spatial = gin_layer(h.reshape(-1, 17, 8), layer.encoder.layers[0]).reshape(h.shape)
    weights = persons.double()[:, :, None, None]
    interaction = (spatial.mean(3) * weights).sum(1) / weights.sum(1)  # [N, T, D]
    updated = torch.relu(layer.update(h + interaction[:, None, :, None, :] + layer.residual(h)))

    x = updated.reshape(4, 6, 17, 8).permute(0, 3, 1, 2)  # [B, D, T, V]
    branches = []
    for index, branch in enumerate(layer.temporal.branches):
        y = branch[0](x)
        y = batch_norm(y, branch[1], 1)
        if index < 2:  # dilated temporal convolutions
            y = batch_norm(branch[3](torch.relu(y)), branch[4], 1)
        elif index == 2:  # max-pool over 3 frames
            y = batch_norm(torch.nn.functional.max_pool2d(torch.relu(y), (3, 1), 1, (1, 0)), branch[4], 1)
        branches.append(y)
    out = torch.relu(torch.cat(branches, 1) + x).permute(0, 2, 3, 1).reshape(h.shape)
    expected = out * persons[:, :, None, None, None]
    torch.testing.assert_close(layer(h, persons), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_padded_person_changes_nothing_in_eval_mode(backend):
    torch.manual_seed(0)
    two = skelmae_ext.SSLClassifier(10, num_frames=8, num_persons=2, backend=backend).eval()
    one = skelmae_ext.SSLClassifier(10, num_frames=8, num_persons=1, backend=backend).eval()
    one.load_state_dict(two.state_dict())
    x = persons_batch()[:1]  # a single-person clip padded with a zero person
    torch.testing.assert_close(two(x), one(x[:, :1]), rtol=1e-5, atol=1e-6)
    assert torch.equal(two.features(x), two.features(torch.cat([x[:, :1], torch.zeros_like(x[:, :1])], 1)))


def running_statistics_from(model, x):
    """Training mode's output on x, with each BatchNorm's running statistics set to x's batch
    statistics (a cumulative average of that one batch; the unbiased variance made the biased
    one the normalisation used)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    counts = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: counts.__setitem__(m, args[0].numel() // m.num_features))
             for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    with torch.no_grad():
        output = model.train()(x)
    for module, hook in zip(norms, hooks):
        hook.remove()
        module.running_var.mul_((counts[module] - 1) / counts[module])
    return output


@pytest.mark.parametrize("padding", [False, True], ids=["no-padding", "padding"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_and_evaluation_mode_agree(backend, padding):
    """With running statistics equal to the batch's, evaluation mode gives training mode's
    logits: nothing else differs between the modes, padded persons included."""
    torch.manual_seed(1)
    model = skelmae_ext.SSLClassifier(10, num_frames=8, num_persons=2, backend=backend).double()
    x = persons_batch(n=6).double()
    if not padding:
        x[0, 1] = x[1, 1]
    train_logits = running_statistics_from(model, x)
    with torch.no_grad():
        eval_logits = model.eval()(x)
    torch.testing.assert_close(eval_logits, train_logits, rtol=1e-9, atol=1e-9)


def test_paper_literal_variant_sums_and_has_no_joint_embedding():
    torch.manual_seed(0)
    paper = skelmae_reference.SSLClassifier(10, num_frames=8, pooling="sum", joint_embedding=False)
    assert paper.strl.joint_position is None and all(layer.pooling == "sum" for layer in paper.strl.layers)
    assert "strl.joint_position" in skelmae_reference.SSLClassifier(10, num_frames=8).state_dict()
    with pytest.raises(ValueError, match="pooling must be one of"):
        skelmae_reference.SSLClassifier(10, pooling="max")


def test_joint_embedding_tells_mirror_joints_apart():
    """Swapping the left and right joints' labels maps COCO's graph onto itself: without a
    joint embedding the model cannot see the swap (which hand waved?); with it, it can."""
    layout = layouts.get_layout("coco")
    swap = [layout.joints.index(n.replace("left", "@").replace("right", "left").replace("@", "right"))
            for n in layout.joints]
    assert {tuple(sorted((swap[i], swap[j]))) for i, j in layout.edges} == {tuple(sorted(e)) for e in layout.edges}
    x = torch.randn(1, 1, 4, 17, 2, generator=torch.Generator().manual_seed(0))
    mirrored = x[..., swap, :]
    for joint_embedding, same in ((False, True), (True, False)):
        torch.manual_seed(0)
        model = skelmae_reference.SSLClassifier(10, num_frames=4, num_persons=1,
                                                joint_embedding=joint_embedding).eval()
        with torch.no_grad():
            assert torch.allclose(model.features(x), model.features(mirrored), atol=1e-5) == same


def test_center_skeleton_moves_the_start_to_the_origin():
    keypoint = np.zeros((2, 3, 4, 2), np.float32)
    keypoint[0, 1:] = [[1, 2], [3, 2], [0, 0], [2, 5]]  # frame 0 empty, joint 2 undetected
    keypoint[1, 2] = [[4, 4], [4, 4], [4, 4], [4, 4]]
    out = CenterSkeleton()({"keypoint": keypoint})["keypoint"]
    centre = np.array([2, 3], np.float32)  # mean of the shown joints of person 0's first shown frame
    expected = np.where(keypoint.any(-1, keepdims=True), keypoint - centre, 0)
    np.testing.assert_array_equal(out, expected)
    assert not out[0, 0].any() and not out[0, 1, 2].any()  # empty frames and missing joints stay zero
    np.testing.assert_array_equal(CenterSkeleton(joint=1)({"keypoint": keypoint})["keypoint"][0, 1, 1], [0, 0])
    empty = np.zeros((1, 2, 4, 2), np.float32)
    assert CenterSkeleton()({"keypoint": empty})["keypoint"] is empty


ACTIVATION_BOUND = 30.0  # largest |h| an STRL layer may output on real data after a few dozen steps


def few_dozen_steps(work_dir, model=None):
    """Three epochs of the default fine-tuning recipe (from scratch) on a tenth of the bundled
    training split, 13 steps each; returns the log's losses and the STRL layers' largest
    activations on a real training batch afterwards."""
    train.finetune({"data": {"source": BUNDLED, "train_split": "xstyle_train", "val_split": "xstyle_val",
                             "clip_len": 16, "label_fraction": 0.1, "repeat": 1},
                    "model": model or {},
                    "train": {"work_dir": str(work_dir), "epochs": 3, "threads": 1, "log_every_steps": 3,
                              "save_every": 0, "val_every": 0}})
    with open(work_dir / "log.jsonl", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    classifier = rebuild(load(str(work_dir / "latest.pth"))).train()
    dataset = SkeletonDataset(BUNDLED, "xstyle_train", clip_len=16, num_person=1)
    x = torch.stack([dataset[i][0][0] for i in range(0, 1600, 100)])
    largest = []
    hooks = [layer.register_forward_hook(lambda module, args, out: largest.append(out.abs().max().item()))
             for layer in classifier.strl.layers]
    with torch.no_grad():
        classifier(x)
    for hook in hooks:
        hook.remove()
    return records, largest


def test_default_recipe_learns_on_real_data_within_bounds(tmp_path):
    records, largest = few_dozen_steps(tmp_path / "default")
    steps = [r["loss"] for r in records if r["event"] == "step"]
    epochs = [r["loss"] for r in records if r["event"] == "epoch"]
    assert len(steps) >= 12 and all(np.isfinite(steps))
    assert epochs[-1] < epochs[0] - 0.1, epochs  # the loss falls
    assert max(largest) < ACTIVATION_BOUND, largest
    # The bound means something: the paper's model as written grows about ten times larger.
    _, paper = few_dozen_steps(tmp_path / "paper", {"pooling": "sum", "joint_embedding": False})
    assert max(paper) > ACTIVATION_BOUND, paper
