"""K processes draw what one process draws: each model's random masks and dropout are drawn for
the global batch and each process takes its share (``batch_share``: process r holds samples r,
r + K, ... of the global batch, as the loader deals them), checked here in one process by
running each share with the generator in the same state; one process's draws are unchanged."""

import pytest
import torch
from torch import nn

import skelmae_reference
from skelmae_reference.models import shared_dropout, shared_rand

from test_models import random_batch

PROCESSES = 2
MASKED = {
    "random parts": lambda: skelmae_reference.SkeletonMAE(mask_strategy="random_parts", num_mask_parts=2),
    "random joints": lambda: skelmae_reference.SkeletonMAE(mask_strategy="random_joints", mask_ratio=0.4),
    "trunk tubes": lambda: skelmae_reference.TrunkMAE(embed_dim=16, num_frames=8, chunk=2, mask_ratio=0.5),
}


def shares(global_batch, run):
    """run(share, this process's samples) for each process, its generator as the one process's."""
    outputs = []
    for rank in range(PROCESSES):
        torch.manual_seed(7)
        outputs.append(run((rank, PROCESSES), global_batch[rank::PROCESSES]))
    return outputs


def dealt_back(parts):
    """The processes' per-sample outputs in the global batch's order."""
    merged = torch.empty(sum(p.shape[0] for p in parts), *parts[0].shape[1:], dtype=parts[0].dtype)
    for rank, part in enumerate(parts):
        merged[rank::PROCESSES] = part
    return merged


@pytest.mark.parametrize("name", MASKED)
def test_masks_of_k_processes_are_the_one_process_masks(name):
    model = MASKED[name]()
    x = random_batch(n=4, t=8)
    x[2, 1] = 0  # padding in the second share too
    torch.manual_seed(7)
    one = model(x).mask

    def masks(share, samples):
        model.batch_share = share
        return model(samples).mask

    assert torch.equal(dealt_back(shares(x, masks)), one)
    assert one.any() and not one.all()


def test_one_process_draws_exactly_torch_rand():
    torch.manual_seed(3)
    expected = torch.rand(4, 5, 6)
    torch.manual_seed(3)
    assert torch.equal(shared_rand((0, 1), 4, 5, 6, device="cpu"), expected)


def test_dropout_of_k_processes_is_the_one_process_dropout():
    dropout = nn.Dropout(0.5).train()
    features = torch.randn(6, 32)
    torch.manual_seed(7)
    one = dropout(features)  # the module itself, as one process runs it
    parts = shares(features, lambda share, rows: shared_dropout(rows, dropout, share))
    assert torch.equal(dealt_back(parts), one)
    assert (one == 0).any() and (one != 0).any()
    assert torch.equal(shared_dropout(features, dropout.eval(), (1, PROCESSES)), features)  # eval: none
