"""``SkeletonDataset`` (one split of an annotation source through a pipeline) and
``make_loader`` (its PyTorch DataLoader).

Randomness, for exact resumption and results that do not depend on the worker count: sample
``index`` of epoch ``epoch`` is transformed with its own generator
``np.random.default_rng([seed, epoch, index])`` (``results['rng']``), and the shuffled order of
an epoch is a permutation drawn from ``(seed, epoch)``. ``make_loader``'s sampler hands each
index to the workers together with the epoch it belongs to (read from ``dataset.epoch`` when
an epoch's iteration starts), so persistent workers see ``dataset.set_epoch(e)`` too. The same
seed therefore gives the same batches with any number of workers, and a resumed run that calls
``set_epoch(e)`` reproduces epoch ``e``.

A batch is ``(x [B, num_clips, M, T, V, C] float32, labels [B] int64)``; the models take
``x.flatten(0, 1)`` ([B * num_clips, M, T, V, C]); with several test clips, average the
per-clip outputs of each sample (``logits.view(B, num_clips, -1)``; PYSKL averages softmax
probabilities).
"""

import ctypes
import gc
import os
import pickle
import random
import signal

import numpy as np
import torch
from skelmae_reference.layouts import is_index

from .pipelines import Compose, default_pipeline
from .readers import load_annotations
from .validation import (
    DataError,
    check_annotations,
    num_classes_of,
    resolve_layout,
    select_split,
    source_name,
)


class SkeletonDataset(torch.utils.data.Dataset):
    """One split of a skeleton source (a path ``load_annotations`` reads, or its loaded dict:
    pass the same dict to build several splits from one read), validated, through a pipeline.

    ``split`` None takes every sample. ``pipeline`` is a list of transforms or PYSKL-style config
    dicts (or a Compose); None builds ``default_pipeline(mode, clip_len, num_clips, feats, ...)``
    for the data's dimensionality (``num_person``, ``augment`` and ``with_score`` go to it).
    ``layout`` is a name, dict, JSON path or Layout; None takes the one implied by the joint
    count. ``label_fraction`` < 1 keeps a class-balanced subset (that share of each class,
    at least one sample per class), fixed by ``seed``, in file order.

    ``name`` is how error messages call the source (default: its path, or a marker for loaded
    data: pass the path when you pass its loaded dict).

    ``dataset[i]`` is ``(x [num_clips, M, T, V, C] float32 tensor, label int)``.
    """

    def __init__(self, source, split, pipeline=None, layout=None, label_fraction=1.0, seed=0, *,
                 mode="train", clip_len=64, num_clips=1, feats=("j",), num_person=2, augment=True,
                 with_score=False, name=None):
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if not is_index(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not 0 < label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction!r}")
        where = source_name(source) if name is None else str(name)
        data = load_annotations(source)
        annotations = select_split(data, split, where)
        self.layout = resolve_layout(layout, annotations, where)
        self.num_classes = num_classes_of(data, where)
        self.class_names = list(data["classes"]) if data.get("classes") is not None else None
        check_annotations(annotations, self.layout, f"{where} (split {split!r})", self.num_classes)
        if label_fraction < 1:
            annotations = _class_balanced(annotations, label_fraction, seed)
        self.source, self.split, self.mode, self.seed = where, split, mode, int(seed)
        self.epoch = 0
        self.frame_dirs = [a["frame_dir"] for a in annotations]
        self.labels = [int(a["label"]) for a in annotations]
        self._annotations = PackedAnnotations(annotations)
        if pipeline is None:
            dims = annotations[0]["keypoint"].shape[-1]
            pipeline = default_pipeline(mode, clip_len, num_clips, feats, dims=dims, num_person=num_person,
                                        augment=augment, with_score=with_score)
        self.pipeline = pipeline if isinstance(pipeline, Compose) else Compose(pipeline)
        self.in_channels = int(self._transform(0, 0)["keypoint"].shape[-1])

    def __len__(self):
        return len(self._annotations)

    def set_epoch(self, epoch):
        """The epoch whose random draws the samples take (see the module docstring)."""
        if not is_index(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def _transform(self, index, epoch):
        results = self._annotations[index]
        results.update(rng=np.random.default_rng([self.seed, epoch, index]), layout=self.layout,
                       test_mode=self.mode == "test")
        return self.pipeline(results)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        if not 0 <= index < len(self._annotations):
            raise IndexError(f"index {index} is out of range for {len(self._annotations)} samples")
        keypoint = self._transform(index, epoch)["keypoint"]
        return torch.from_numpy(keypoint), self.labels[index]

    def __repr__(self):
        return (f"SkeletonDataset({self.source!r}, split={self.split!r}, mode={self.mode!r}, samples={len(self)}, "
                f"layout={self.layout.name!r}, classes={self.num_classes}, in_channels={self.in_channels})")


class PackedAnnotations:
    """A list of annotation dicts kept as two numpy buffers: every array's bytes in one, the
    rest of each annotation pickled in the other; ``packed[i]`` is annotation ``i`` again, its
    arrays views of the buffer. Loader workers share the buffers with the training process
    (fork's copy-on-write); a list of dicts would be copied page by page into every worker as
    it reads the samples (reading a Python object writes its reference count)."""

    ALIGN = 16  # bytes: each array starts aligned for any dtype

    def __init__(self, annotations):
        records, arrays, size = [], [], 0  # arrays: (array, its start in the buffer)
        for annotation in annotations:
            rest, placed = {}, []
            for key, value in annotation.items():
                if isinstance(value, np.ndarray) and not value.dtype.hasobject:
                    placed.append((key, value.dtype.str, value.shape, size))
                    arrays.append((value, size))
                    size += -(-value.nbytes // self.ALIGN) * self.ALIGN
                else:
                    rest[key] = value
            records.append(pickle.dumps((rest, placed), protocol=pickle.HIGHEST_PROTOCOL))
        self._buffer = np.empty(size, np.uint8)
        for value, start in arrays:
            self._view(start, value.dtype, value.shape)[...] = value
        self._records = np.frombuffer(b"".join(records), np.uint8)
        self._ends = np.cumsum([len(record) for record in records])

    def _view(self, start, dtype, shape):
        return self._buffer[start:start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize].view(dtype).reshape(shape)

    def __len__(self):
        return len(self._ends)

    def __getitem__(self, index):
        begin = self._ends[index - 1] if index else 0
        rest, placed = pickle.loads(self._records[begin:self._ends[index]].tobytes())
        for key, dtype, shape, start in placed:
            rest[key] = self._view(start, np.dtype(dtype), shape)
        return rest


def _class_balanced(annotations, fraction, seed):
    """``fraction`` of each class (rounded, at least one), drawn with ``seed``, in file order."""
    rng = np.random.default_rng(seed)
    labels = np.array([a["label"] for a in annotations])
    kept = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, int(round(fraction * len(members))))
        kept.append(rng.choice(members, count, replace=False))
    return [annotations[i] for i in np.sort(np.concatenate(kept))]


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(index, epoch)``: every index of ``dataset`` once, shuffled by ``(seed, epoch)``
    when ``shuffle``, with the ``dataset.epoch`` current when the iteration starts.

    ``repeat`` > 1 (PYSKL's RepeatDataset) makes an epoch ``repeat`` passes, each its own
    permutation with its own random draws: pass ``c`` of epoch ``e`` is yielded as the epoch
    ``e * repeat + c`` (so ``repeat`` 1 is the plain order).

    ``start`` skips the first ``start`` indices of each epoch's order (set it before iterating:
    a run resumed in the middle of an epoch goes on from there without loading what it did).

    Several processes (``rank`` of ``world_size``, as torch's DistributedSampler): each takes
    every ``world_size``-th index of the order, from its rank on, so that the processes' k-th
    batches of size b make up the one process's k-th batch of size b * world_size; ``start``
    counts in that order (a multiple of ``world_size``). ``drop_last`` cuts the order to a
    multiple of ``world_size`` so that every process yields as many (training); without it the
    last indices go to the first ranks, none twice and none padded (evaluation)."""

    def __init__(self, dataset, shuffle, seed, rank=0, world_size=1, drop_last=False, repeat=1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1} (world_size {world_size}), got {rank!r}")
        if not is_index(repeat) or repeat < 1:
            raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
        self.dataset, self.shuffle, self.seed = dataset, shuffle, seed
        self.rank, self.world_size, self.drop_last, self.repeat = rank, world_size, drop_last, int(repeat)
        self.start = 0

    def _positions(self):
        if self.start % self.world_size:
            raise ValueError(f"start must be a multiple of world_size {self.world_size}, got {self.start}")
        count = len(self.dataset) * self.repeat
        end = count - count % self.world_size if self.drop_last else count
        return range(self.start + self.rank, end, self.world_size)

    def __len__(self):
        return len(self._positions())

    def __iter__(self):
        count, passes = len(self.dataset), range(self.dataset.epoch * self.repeat, (self.dataset.epoch + 1) * self.repeat)
        order = np.concatenate([np.random.default_rng([self.seed, draw]).permutation(count) if self.shuffle
                                else np.arange(count) for draw in passes])
        return ((int(order[position]), passes[position // count]) for position in self._positions())


def release_freed_memory():
    """Hands the free pages of the C heap back to the system (glibc; elsewhere nothing): what
    the loaded annotations took stays in the process once datasets have packed them, and
    every forked worker would count it again."""
    gc.collect()
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return
    if trim is not None:
        trim(0)


def default_workers():
    """Loader worker processes by default: the usable CPUs, at most 8 (a worker loads about 3.4k
    samples/s; an H200's pre-training step takes about 17k: benchmarks/README.md)."""
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _seed_worker(worker_id):
    # The transforms draw only from their per-sample generators; this seeds numpy's and
    # Python's global state too, in case a custom transform uses them.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # Ctrl-C in a terminal reaches every process: the training process handles it (it finishes
    # its step and saves, in step with the other ranks), and needs its workers until it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset, batch_size, *, shuffle=True, workers=None, seed=None, drop_last=False, device="cpu",
                persistent_workers=True, rank=0, world_size=1, repeat=1):
    """A DataLoader over a SkeletonDataset: the epoch's order from ``(seed, epoch)`` (``seed``
    defaults to the dataset's), ``workers`` processes (None: ``default_workers()``; 0 loads in
    this process), each seeded; pinned memory when ``device`` is a CUDA device. Call
    ``dataset.set_epoch(epoch)`` before iterating each epoch. With several processes, process
    ``rank`` of ``world_size`` loads its share (``EpochSampler``) in batches of ``batch_size``.
    ``repeat`` passes over the dataset make one epoch (``EpochSampler``)."""
    if not isinstance(dataset, SkeletonDataset):
        raise DataError(f"make_loader takes a SkeletonDataset, got {type(dataset).__name__}")
    workers = default_workers() if workers is None else workers
    if workers:
        release_freed_memory()
    seed = dataset.seed if seed is None else seed
    sampler = EpochSampler(dataset, shuffle, seed, rank=rank, world_size=world_size, drop_last=drop_last,
                           repeat=repeat)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=torch.device(device).type == "cuda", drop_last=drop_last, worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed), persistent_workers=persistent_workers and workers > 0)
