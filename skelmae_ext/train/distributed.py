"""Ranks: the one place that knows about several processes. The runs are single-process (world
size 1) for now; with torchrun and DistributedDataParallel, only the main process writes logs
and checkpoints (``is_main``)."""

import torch.distributed


def _initialized():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size():
    return torch.distributed.get_world_size() if _initialized() else 1


def rank():
    return torch.distributed.get_rank() if _initialized() else 0


def is_main():
    return rank() == 0
