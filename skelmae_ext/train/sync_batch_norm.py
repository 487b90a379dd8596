"""SyncBatchNorm for ``--sync-bn``: the BatchNorm layers of a model normalise training batches
with the statistics of the global batch (every process's share) instead of each process's
own, so a run's result does not depend on the number of processes it is split over.

On GPUs this is torch's ``nn.SyncBatchNorm``. Its kernels exist for GPUs only (and DDP refuses
it on the CPU), so on the CPU (gloo) each BatchNorm becomes a subclass of its own class whose
training statistics come from all-reduced sums, with torch's differentiable all-reduce: the
backward pass reduces the gradients of the statistics over the processes as torch's GPU
kernels do.
"""

import torch
import torch.distributed
from torch.distributed.nn.functional import all_reduce


class _Synchronised:
    """The forward pass of a BatchNorm over the global batch of every process."""

    def forward(self, x):
        if not (self.training and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        # one collective for the sums and the count; two passes (mean, then the centred
        # squares) as F.batch_norm, not E[x^2] - mean^2, which loses digits
        totals = all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() // channels])]))
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / count
        y = centred * (var + self.eps).rsqrt().view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():  # as F.batch_norm: the unbiased variance goes into the running one
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * (count / (count - 1))).to(self.running_var.dtype), factor)
        return y


class SyncBatchNorm1d(_Synchronised, torch.nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over the global batch (CPU processes)."""


class SyncBatchNorm2d(_Synchronised, torch.nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the global batch (CPU processes)."""


_SYNCHRONISED = {torch.nn.BatchNorm1d: SyncBatchNorm1d, torch.nn.BatchNorm2d: SyncBatchNorm2d}


def convert(model, device):
    """``model`` with its BatchNorm layers synchronised over the processes: torch's
    ``nn.SyncBatchNorm`` on a GPU, the classes above on the CPU (the same parameters and
    buffers, the same state_dict)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) in _SYNCHRONISED:
            module.__class__ = _SYNCHRONISED[type(module)]  # a subclass adding only the forward: the state stays
    return model
