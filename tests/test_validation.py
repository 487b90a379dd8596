"""Bad input raises a ValueError naming the argument, the expected and the actual value."""

import pytest
import torch

from skelmae_ext import ops
from skelmae_ext.ops import backends

from helpers import DEVICE_BACKENDS
from skeletons import adjacency

# Inputs are checked before the backend is resolved: the same errors whatever the backend, even
# one that cannot run here.
BACKENDS = ["auto", "reference", "triton"]


def graph_conv_args(**overrides):
    args = dict(
        x=torch.randn(4, 17, 3),
        mask=torch.zeros(4, 17, dtype=torch.bool),
        token=torch.zeros(3),
        adjacency=adjacency(17),
        eps=0.0,
    )
    args.update(overrides)
    return args


GRAPH_CONV_CASES = {
    "x rank": (dict(x=torch.randn(4, 17)), r"x must be of shape \[G, V, C\] \(3 dims\), got shape \(4, 17\)"),
    "x integer": (dict(x=torch.ones(4, 17, 3, dtype=torch.int64)), r"x must be a floating-point tensor .*got torch.int64"),
    "x not a tensor": (dict(x=[[1.0]]), r"x must be a torch.Tensor, got list"),
    "V of adjacency": (dict(adjacency=adjacency(25)), r"adjacency must be of shape \(17, 17\) \(V of x\), got shape \(25, 25\)"),
    "adjacency integer": (dict(adjacency=adjacency(17).long()), r"adjacency must be a floating-point or bool tensor, got torch.int64"),
    "adjacency learnable": (dict(adjacency=adjacency(17).requires_grad_()), r"adjacency must be a fixed layout buffer"),
    "mask shape": (dict(mask=torch.zeros(4, 18, dtype=torch.bool)), r"mask must be of shape \(4, 17\), got \(4, 18\)"),
    "mask dtype": (dict(mask=torch.zeros(4, 17)), r"mask must be a bool tensor, got torch.float32"),
    "token length": (dict(token=torch.zeros(4)), r"token must be of shape \(3,\) \(C of x\), got shape \(4,\)"),
    "token dtype": (dict(token=torch.zeros(3, dtype=torch.float64)), r"token must be of x's dtype torch.float32, got torch.float64"),
    "mixed devices": (dict(adjacency=adjacency(17).to("meta")), r"adjacency must be on x's device cpu, got meta"),
    "eps shape": (dict(eps=torch.zeros(2)), r"eps must be a float or a 0-d floating-point tensor, got torch.float32 of shape \(2,\)"),
    "eps type": (dict(eps="0.1"), r"eps must be a float or a 0-d floating-point tensor, got str"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", GRAPH_CONV_CASES, ids=list(GRAPH_CONV_CASES))
def test_graph_conv_rejects(case, backend):
    overrides, message = GRAPH_CONV_CASES[case]
    with pytest.raises(ValueError, match="masked_graph_conv: " + message):
        ops.masked_graph_conv(**graph_conv_args(**overrides), backend=backend)


def loss_args(**overrides):
    args = dict(
        pred=torch.randn(4, 5, 3),
        target=torch.randn(4, 5, 3),
        mask=torch.ones(4, 5, dtype=torch.bool),
        beta=2.0,
        reduction="mean",
    )
    args.update(overrides)
    return args


LOSS_CASES = {
    "target shape": (dict(target=torch.randn(4, 5, 2)), r"target must be of pred's shape \(4, 5, 3\), got shape \(4, 5, 2\)"),
    "target dtype": (dict(target=torch.randn(4, 5, 3, dtype=torch.float64)), r"target must be of pred's dtype torch.float32, got torch.float64"),
    "pred integer": (dict(pred=torch.ones(4, 5, 3, dtype=torch.int32)), r"pred must be a floating-point tensor .*got torch.int32"),
    "pred 0-d": (dict(pred=torch.tensor(1.0), target=torch.tensor(1.0), mask=None), r"pred must be of shape \[..., C\]"),
    "mask shape": (dict(mask=torch.ones(4, 3, dtype=torch.bool)), r"mask must be of shape \(4, 5\), got \(4, 3\)"),
    "mask dtype": (dict(mask=torch.ones(4, 5, dtype=torch.uint8)), r"mask must be a bool tensor, got torch.uint8"),
    "mixed devices": (dict(target=torch.randn(4, 5, 3, device="meta")), r"target must be on pred's device cpu, got meta"),
    "beta zero": (dict(beta=0.0), r"beta must be a float > 0, got 0.0"),
    "beta negative": (dict(beta=-1), r"beta must be a float > 0, got -1"),
    "reduction": (dict(reduction="max"), r"reduction must be one of \('mean', 'sum', 'none'\), got 'max'"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", LOSS_CASES, ids=list(LOSS_CASES))
def test_loss_rejects(case, backend):
    overrides, message = LOSS_CASES[case]
    with pytest.raises(ValueError, match="cosine_reconstruction_loss: " + message):
        ops.cosine_reconstruction_loss(**loss_args(**overrides), backend=backend)


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_direct_op_calls_still_check(device, backend):
    # torch.ops calls skip the Python wrapper; the kernels still refuse bad shapes.
    x = torch.randn(4, 17, 3, device=device)
    graph_conv = backends.compiled_op("masked_graph_conv", backend)
    loss = backends.compiled_op("cosine_reconstruction_loss", backend)
    with pytest.raises(RuntimeError, match=r"adjacency must be \[17, 17\]"):
        graph_conv(x, None, torch.zeros(3, device=device), adjacency(18).to(device), torch.tensor(0.0, device=device))
    with pytest.raises(RuntimeError, match="reduction must be 'mean', 'sum' or 'none'"):
        loss(x[0], x[0], None, 2.0, "max", [False, False])
