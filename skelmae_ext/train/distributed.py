"""Several processes: the one place that knows about them. Under torchrun (which sets RANK,
WORLD_SIZE and LOCAL_RANK), ``start`` joins the process group (NCCL on GPUs, gloo on the CPU)
and gives each process its device, cuda:LOCAL_RANK; the helpers below are the collectives the
engine and the evaluation use. Without torchrun there is one process (world size 1) and every
helper returns at once: the same code runs.

Only the main process (rank 0) writes logs, records, checkpoints and results (``is_main``).
A collective that waits longer than the timeout raises (gloo) or aborts (NCCL), so a process
that is stuck brings the run down; a process that exits is seen by torchrun's agent, which
stops the others and reports the rank that failed first.
"""

import datetime
import os

import torch
import torch.distributed

from .config import ConfigError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_control = None  # NCCL runs: a gloo group for the flags the CPU decides on (no wait for the GPU)


def launched():
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def _initialized():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size():
    return torch.distributed.get_world_size() if _initialized() else 1


def rank():
    """This process's rank; torchrun's RANK before the group is joined."""
    if _initialized():
        return torch.distributed.get_rank()
    return int(os.environ["RANK"]) if launched() else 0


def is_main():
    return rank() == 0


def start(device, timeout, key="device"):
    """This process's device (``device`` resolved: cpu, cuda or cuda:N), after joining the
    process group when torchrun launched it: then a GPU run takes cuda:LOCAL_RANK, and a
    collective that waits ``timeout`` seconds fails. Without torchrun: ``device`` as it is."""
    global _control
    if not launched():
        return device
    if device.type == "cuda":
        local, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if device.index is not None and int(os.environ["WORLD_SIZE"]) > 1:
            raise ConfigError(key, f"{device} names one GPU, but under torchrun each process takes its own "
                                   "(cuda:LOCAL_RANK): pass cuda or auto")
        if local >= count:
            raise ConfigError(key, f"process {local} of this machine has no GPU of its own ({count} visible): "
                                   f"start at most {count} processes a machine (torchrun --nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not _initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(seconds=timeout),
                                             device_id=device if device.type == "cuda" else None)
        if torch.distributed.get_backend() == "nccl":
            _control = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
    return device


def stop():
    """Leaves the process group (the command line's last step)."""
    global _control
    if _initialized():
        torch.distributed.destroy_process_group()
    _control = None


def local_batch(batch_size, key):
    """This process's share of the global ``batch_size`` (``key``: the option, for the error)."""
    processes = world_size()
    if batch_size % processes:
        raise ConfigError(key, f"the batch of {batch_size} does not divide over the {processes} processes: pass a "
                               f"multiple of {processes} (the batch is the global one, split over the processes)")
    return batch_size // processes


def _device():
    """Where the backend's collectives take tensors."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(values):
    """The sums over every process of ``values`` (numbers or 0-d tensors), as floats."""
    if world_size() == 1:
        return [float(value) for value in values]
    stacked = torch.stack([torch.as_tensor(value, dtype=torch.float64).to(_device()) for value in values])
    torch.distributed.all_reduce(stacked)
    return stacked.tolist()


def mean_over_ranks(tensor):
    """The mean over every process of ``tensor`` (a copy, outside autograd)."""
    if world_size() == 1:
        return tensor
    mean = tensor.detach().clone()
    torch.distributed.all_reduce(mean)
    return mean / world_size()


def any_rank(flag):
    """Whether ``flag`` is true in any process (on the CPU: never waits for the GPU)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device="cpu" if _control is not None else _device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, group=_control)
    return bool(value)


def all_gather(obj):
    """The list of every process's ``obj`` (picklable), in rank order."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def from_main(function, *errors):
    """``function()`` run by rank 0 and its result handed to every process; an exception of
    ``errors`` raised there is raised in every process (so they stop alike)."""
    if world_size() == 1:
        return function()
    box = [None]
    if is_main():
        try:
            box = [(True, function())]
        except errors as error:
            box = [(False, error)]
    torch.distributed.broadcast_object_list(box, src=0)
    done, value = box[0]
    if not done:
        raise value
    return value
