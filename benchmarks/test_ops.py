"""Per-op benchmarks: each provider against the reference path, forward and forward+backward.

    pytest benchmarks/ --benchmark-only            # every shape
    pytest benchmarks/ --benchmark-only -m quick   # the acceptance shapes only
"""

import pytest
import torch

from conftest import COPY_ELEMENTS, COPY_GBPS, DEVICES, assert_matches, on, op_for, providers, record, run

from skelmae_ext import get_layout

MODES = ["forward", "forward+backward"]
LAYOUTS = {17: get_layout("coco"), 25: get_layout("nturgb+d")}
RIGHT_ARM_AND_LEG = (3, 5)  # part indices: the paper's best masking


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
    layout = LAYOUTS[joints]
    mask = layout.part_membership()[list(RIGHT_ARM_AND_LEG)].any(0).expand(graphs, joints).contiguous()
    grad_output = torch.randn(graphs, joints, channels, generator=generator)
    return x, mask.to(device), token, layout.adjacency().to(device), grad_output.to(device)


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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device,provider", device_providers())
@pytest.mark.parametrize("shape", shape_params(QUICK_GRAPH_SHAPES, GRAPH_SHAPES), ids=lambda s: "G%d-V%d-C%d" % s)
def test_masked_graph_conv(benchmark, rounds, shape, device, provider, mode):
    benchmark.group = f"masked_graph_conv {mode} G={shape[0]} V={shape[1]} C={shape[2]}{on(device)}"
    inputs = graph_conv_inputs(*shape, device)
    step = graph_conv_step(op_for(provider, "masked_graph_conv"), inputs, mode)
    expected = graph_conv_step(op_for("reference", "masked_graph_conv"), inputs, mode)()
    assert_matches(step(), expected, provider)
    run(benchmark, step, rounds, device)
    elements = shape[0] * shape[1] * shape[2]
    # forward reads x and writes y; backward reads dy and writes dx (4 bytes each, float32)
    record(benchmark, (2 if mode == "forward" else 4) * elements * 4, device, provider=provider)


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
def test_cosine_reconstruction_loss(benchmark, rounds, shape, device, provider, mode):
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
    # Nominal traffic, the same for every provider: pred and target read, and dpred written in
    # forward+backward. A provider that skips the rows the mask leaves out moves less (its
    # "GB/s" is then effective, and can pass the copy bandwidth).
    record(benchmark, (2 if mode == "forward" else 3) * elements * 4, device, provider=provider)


@pytest.mark.quick
@pytest.mark.parametrize("device", DEVICES)
def test_copy_bandwidth(benchmark, rounds, device):
    """The device's memory bandwidth in this run: a warm copy of a 142 MB tensor. It runs first
    (conftest), and every op benchmark's fraction_of_copy divides by it."""
    benchmark.group = f"memory bandwidth{on(device)}"
    source = torch.randn(COPY_ELEMENTS, device=device)
    destination = torch.empty_like(source)
    run(benchmark, lambda: destination.copy_(source), rounds, device)
    COPY_GBPS[device] = record(benchmark, 2 * source.numel() * 4, device=device, provider="copy")
