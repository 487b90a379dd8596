"""One process's results for test_reproducibility.py: `python reproducible_run.py OUT 1,3`
saves, computed with each of those numbers of intra-op threads in turn, the loss and the fused
BatchNorm (outputs, gradients, running statistics) on the CPU kernels and a few training steps
of both models."""

import sys

import torch
import torch.nn.functional as F

import skelmae_ext
from skelmae_ext import ops

from test_models import real_batch


def loss_results(generator):
    """The loss over 8 chunks of rows (512 each: the CPU kernel's unit of work)."""
    pred = torch.randn(4096, 16, generator=generator, requires_grad=True)
    target = torch.randn(4096, 16, generator=generator, requires_grad=True)
    mask = torch.rand(4096, generator=generator) < 0.5
    loss = ops.cosine_reconstruction_loss(pred, target, mask, backend="cpu")
    grads = torch.autograd.grad(loss * 1.3, [pred, target])
    return {"loss": loss, "loss d pred": grads[0], "loss d target": grads[1]}


def batch_norm_results(generator):
    """BatchNorm + PReLU in training mode over 16 chunks of rows (64 each)."""
    norm, prelu = torch.nn.BatchNorm1d(32), torch.nn.PReLU(32)
    x = torch.randn(1024, 32, generator=generator).mul_(3).add_(1).requires_grad_()
    y = ops.batch_norm_prelu(x, norm, prelu, backend="cpu")
    grads = torch.autograd.grad(y, [x, norm.weight, norm.bias, prelu.weight], torch.randn(y.shape, generator=generator))
    names = ("bn d x", "bn d weight", "bn d bias", "bn d slopes")
    return {"bn": y, "bn running mean": norm.running_mean, "bn running var": norm.running_var,
            **dict(zip(names, grads))}


def training_results(name, steps=2):
    """`steps` steps of a fast model (CPU kernels) from seed 0 on real sequences: the losses and
    the final state (weights, BatchNorm statistics)."""
    torch.manual_seed(0)
    x, labels = real_batch(count=2, clip_len=16)
    if name == "SkeletonMAE":
        model = skelmae_ext.SkeletonMAE(mask_strategy="random_parts", num_mask_parts=2, backend="cpu")
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_of = lambda: model(x).loss  # noqa: E731
    else:
        model = skelmae_ext.SSLClassifier(10, embed_dim=32, num_frames=16, backend="cpu")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        loss_of = lambda: F.cross_entropy(model(x), labels)  # noqa: E731
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_of()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return {f"{name} losses": torch.stack(losses), **{f"{name} {k}": v for k, v in model.state_dict().items()}}


def results_with(threads):
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    results = {**loss_results(generator), **batch_norm_results(generator),
               **training_results("SkeletonMAE"), **training_results("SSLClassifier")}
    return {key: value.detach() for key, value in results.items()}


if __name__ == "__main__":
    out, counts = sys.argv[1], sys.argv[2]
    torch.save({threads: results_with(threads) for threads in map(int, counts.split(","))}, out)
