"""torch.compile(fullgraph=True) traces a chain of both ops, forward and backward."""

import pytest
import torch

from skelmae_ext import ops

from helpers import DEVICE_BACKENDS, DEVICES, compiled_backends, seeded, tracing_context
from skeletons import adjacency, make_mask


def chain(x, mask, token, adj, eps, target, backend):
    y = ops.masked_graph_conv(x, mask, token, adj, eps, backend=backend)
    y = torch.relu(y)
    y = ops.masked_graph_conv(y, None, token, adj, 0.5, backend=backend)
    return ops.cosine_reconstruction_loss(y, target, mask, 2.0, backend=backend)


def inputs(device):
    generator = seeded(11)
    x = torch.randn(40, 17, 8, generator=generator).to(device).requires_grad_()
    token = torch.randn(8, generator=generator).to(device).requires_grad_()
    eps = torch.tensor(0.1, device=device, requires_grad=True)
    target = torch.randn(40, 17, 8, generator=generator).to(device)
    mask = make_mask("parts", 40, 17, generator).to(device)
    return x, mask, token, adjacency(17).to(device), eps, target


# Inductor compiles the Triton kernels themselves only on a GPU: that case is listed (skipped,
# with the reason) where no GPU is visible.
GPU_TRITON = pytest.param(
    torch.device("cuda"), "triton", id="cuda-triton",
    marks=[pytest.mark.triton, pytest.mark.skip(reason="needs a CUDA GPU (the interpreter case keeps the ops opaque)")],
)
# "auto" also traces the backend choice (which asks about the CUDA kernels).
AUTO = [pytest.param(d, "auto", id=f"{d.type}-auto") for d in DEVICES if compiled_backends(d)]
CASES = DEVICE_BACKENDS + AUTO + ([] if "triton" in ops.available_backends("cuda") else [GPU_TRITON])


@pytest.mark.gpu_smoke
@pytest.mark.parametrize("device,backend", CASES)
def test_fullgraph_compile_matches_eager(device, backend):
    args = inputs(device)
    leaves = [args[0], args[2], args[4]]
    eager_loss = chain(*args, backend)
    eager_grads = torch.autograd.grad(eager_loss, leaves)

    graphs = []

    def counting_inductor(gm, example_inputs):
        graphs.append(gm)
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)

    compiled = torch.compile(chain, fullgraph=True, backend=counting_inductor)
    with tracing_context(device, backend):
        loss = compiled(*args, backend)
        grads = torch.autograd.grad(loss, leaves)
    assert len(graphs) == 1
    called = {str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"}
    assert any("skelmae_ext.masked_graph_conv" in name for name in called), called
    assert any("skelmae_ext.cosine_reconstruction_loss" in name for name in called), called
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
