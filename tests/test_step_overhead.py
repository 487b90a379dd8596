"""What a training step of the fast twins asks of the host, counted on the CPU: no host syncs
(on a GPU each one drains the queue), clearly fewer dispatched ops than the reference models,
and no graph breaks under torch.compile."""

import collections

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import skelmae_ext
import skelmae_reference

from helpers import seeded

pytestmark = pytest.mark.skipif(not skelmae_ext.EXTENSION.loaded, reason="needs the compiled kernels")

# The twins' dispatched ops per forward + backward, at most this share of the reference's.
OP_SHARE = {"pretraining": 0.4, "fine-tuning": 0.7}


class DispatchedOps(TorchDispatchMode):
    """Counts the ATen and custom ops dispatched, by name (a host sync reads a tensor's value:
    `.item()`, `bool()`, `float()` dispatch aten::_local_scalar_dense)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def batch(count=4, frames=16):
    x = torch.randn(count, 2, frames, 17, 2, generator=seeded(3))
    x[0, 1] = 0  # a padded person, as real batches have
    return x, torch.arange(count) % 5


def pretraining(package):
    return package.SkeletonMAE(), lambda model, x, labels: model(x).loss


def fine_tuning(package):
    return package.SSLClassifier(5, num_frames=16), lambda model, x, labels: F.cross_entropy(model(x), labels)


SETUPS = {"pretraining": pretraining, "fine-tuning": fine_tuning}


def step_ops(package, setup):
    """The ops of one training-mode forward + backward, after a first one (the gradients set to
    None in between, as optimizer.zero_grad does)."""
    torch.manual_seed(0)
    model, loss_of = setup(package)
    model.train()
    x, labels = batch()
    loss_of(model, x, labels).backward()
    model.zero_grad(set_to_none=True)
    with DispatchedOps() as counter:
        loss_of(model, x, labels).backward()
    return counter.counts


def test_the_counter_sees_a_host_sync():
    with DispatchedOps() as counter:
        torch.ones(3).sum().item()
    assert counter.counts["_local_scalar_dense"] == 1


@pytest.mark.parametrize("name", SETUPS)
def test_a_training_step_of_the_twins_has_no_host_sync(name):
    counts = step_ops(skelmae_ext, SETUPS[name])
    assert sum(counts.values()) > 0
    assert counts["_local_scalar_dense"] == 0, counts


@pytest.mark.parametrize("name", SETUPS)
def test_the_twins_dispatch_clearly_fewer_ops_than_the_reference(name):
    twin, reference = step_ops(skelmae_ext, SETUPS[name]), step_ops(skelmae_reference, SETUPS[name])
    share = sum(twin.values()) / sum(reference.values())
    assert share <= OP_SHARE[name], f"{share:.2f} of the reference's ops; the twin's most frequent: " \
                                    f"{twin.most_common(12)}"


@pytest.mark.parametrize("name", SETUPS)
def test_no_graph_breaks_in_the_twins_forward(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, _ = SETUPS[name](skelmae_ext)
    model.train()
    explanation = torch._dynamo.explain(model)(batch()[0])
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
