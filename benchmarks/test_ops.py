"""Per-op benchmarks: each provider against the reference path, forward and forward+backward.

    pytest benchmarks/ --benchmark-only            # every shape
    pytest benchmarks/ --benchmark-only -m quick   # the acceptance shapes only
"""

import pytest
import torch

from conftest import COPY_ELEMENTS, DEVICES, assert_matches, op_for, providers, record, run

COCO_EDGES = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8),
              (8, 6), (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2)]
NTU_EDGES = [(0, 1), (1, 20), (2, 20), (3, 2), (4, 20), (5, 4), (6, 5), (7, 6), (8, 20), (9, 8),
             (10, 9), (11, 10), (12, 0), (13, 12), (14, 13), (15, 14), (16, 0), (17, 16),
             (18, 17), (19, 18), (21, 7), (22, 7), (23, 11), (24, 11)]
RIGHT_ARM_AND_LEG = {17: [8, 10, 14, 16], 25: [8, 9, 10, 11, 23, 24, 16, 17, 18, 19]}
MODES = ["forward", "forward+backward"]


def adjacency(joints):
    matrix = torch.zeros(joints, joints)
    for i, j in COCO_EDGES if joints == 17 else NTU_EDGES:
        matrix[i, j] = matrix[j, i] = 1
    return matrix


# (G, V, C): G = N x M x T for N in {16, 128}, M = 2, T = 64. The first is the acceptance shape.
QUICK_GRAPH_SHAPES = [(16384, 17, 64)]
GRAPH_SHAPES = QUICK_GRAPH_SHAPES + [
    (g, v, c) for g in (2048, 16384) for v in (17, 25) for c in (2, 64, 128) if (g, v, c) != (16384, 17, 64)
]


def shape_params(quick, full):
    return [pytest.param(s, marks=pytest.mark.quick) for s in quick] + [s for s in full if s not in quick]


def graph_conv_inputs(graphs, joints, channels, device):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(graphs, joints, channels, generator=generator).to(device).requires_grad_()
    token = torch.randn(channels, generator=generator).to(device).requires_grad_()
    mask = torch.zeros(graphs, joints, dtype=torch.bool)
    mask[:, RIGHT_ARM_AND_LEG[joints]] = True
    grad_output = torch.randn(graphs, joints, channels, generator=generator)
    return x, mask.to(device), token, adjacency(joints).to(device), grad_output.to(device)


def graph_conv_step(conv, inputs, mode):
    x, mask, token, adj, grad_output = inputs

    def step():
        if mode == "forward":
            with torch.no_grad():
                return (conv(x, mask, token, adj, 0.0),)
        y = conv(x, mask, token, adj, 0.0)
        return (y.detach(), *torch.autograd.grad(y, [x, token], grad_output))

    return step


def device_providers():
    return [pytest.param(d, p, id=f"{d}-{p}") for d in DEVICES for p in providers(d)]


def on(device):
    """Group name suffix: CPU groups keep their names."""
    return "" if device == "cpu" else f" on {device}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device,provider", device_providers())
@pytest.mark.parametrize("shape", shape_params(QUICK_GRAPH_SHAPES, GRAPH_SHAPES), ids=lambda s: "G%d-V%d-C%d" % s)
def test_masked_graph_conv(benchmark, rounds, copy_bandwidth, shape, device, provider, mode):
    benchmark.group = f"masked_graph_conv {mode} G={shape[0]} V={shape[1]} C={shape[2]}{on(device)}"
    inputs = graph_conv_inputs(*shape, device)
    step = graph_conv_step(op_for(provider, "masked_graph_conv"), inputs, mode)
    expected = graph_conv_step(op_for("reference", "masked_graph_conv"), inputs, mode)()
    assert_matches(step(), expected, provider)
    run(benchmark, step, rounds, device)
    elements = shape[0] * shape[1] * shape[2]
    # forward reads x and writes y; backward reads dy and writes dx (4 bytes each, float32)
    record(benchmark, (2 if mode == "forward" else 4) * elements * 4, copy_bandwidth(device), device, provider=provider)


# Rows of the loss: the masked joints' features of G graphs, [G * V, C]; 278,528 = 16384 x 17.
QUICK_LOSS_SHAPES = [(278528, 64)]
LOSS_SHAPES = QUICK_LOSS_SHAPES + [(rows, c) for rows in (34816, 278528, 409600) for c in (2, 64, 128) if (rows, c) != (278528, 64)]


def loss_step(loss_fn, pred, target, mask, mode):
    def step():
        if mode == "forward":
            with torch.no_grad():
                return (loss_fn(pred, target, mask),)
        loss = loss_fn(pred, target, mask)
        return (loss.detach(), *torch.autograd.grad(loss, [pred]))

    return step


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device,provider", device_providers())
@pytest.mark.parametrize("shape", shape_params(QUICK_LOSS_SHAPES, LOSS_SHAPES), ids=lambda s: "R%d-C%d" % s)
def test_cosine_reconstruction_loss(benchmark, rounds, copy_bandwidth, shape, device, provider, mode):
    benchmark.group = f"cosine_reconstruction_loss {mode} rows={shape[0]} C={shape[1]}{on(device)}"
    generator = torch.Generator().manual_seed(1)
    pred = torch.randn(*shape, generator=generator).to(device).requires_grad_()
    target = torch.randn(*shape, generator=generator).to(device)
    mask = (torch.rand(shape[0], generator=generator) < 0.25).to(device)
    step = loss_step(op_for(provider, "cosine_reconstruction_loss"), pred, target, mask, mode)
    expected = loss_step(op_for("reference", "cosine_reconstruction_loss"), pred, target, mask, mode)()
    assert_matches(step(), expected, provider)
    run(benchmark, step, rounds, device)
    elements = shape[0] * shape[1]
    # forward reads pred and target; the backward pass writes, reads and writes dpred once more
    record(benchmark, (2 if mode == "forward" else 5) * elements * 4, copy_bandwidth(device), device, provider=provider)


@pytest.mark.quick
@pytest.mark.parametrize("device", DEVICES)
def test_copy_bandwidth(benchmark, rounds, device):
    """The device's memory bandwidth in this run: a warm copy of a 142 MB tensor."""
    benchmark.group = f"memory bandwidth{on(device)}"
    source = torch.randn(COPY_ELEMENTS, device=device)
    destination = torch.empty_like(source)
    run(benchmark, lambda: destination.copy_(source), rounds, device)
    record(benchmark, 2 * source.numel() * 4, device=device, provider="copy")
