"""Evaluation of checkpoints and of what they produced: ``evaluate`` (``skelmae test``),
``extract``, ``knn`` and ``ensemble``. Each returns a dict (the command line prints it as one
JSON line).

File formats (read by ``ensemble``, ``knn`` and the plots):

- score dump (``evaluate``'s ``out``; by default ``scores_SPLIT.pkl`` beside the checkpoint), a
  pickle of plain containers and numpy arrays: ``frame_dir`` [N] list of str, ``label`` [N]
  int64, ``scores`` [N, K] float32 (softmax probabilities averaged over the clips),
  ``class_names`` (list of K str, or None), ``split``, ``num_clips``, ``checkpoint``,
  ``metrics``. ``test.jsonl`` beside the checkpoint gets one line per test: its metrics, the
  split, the clips and the dump's path.
- features (``extract``'s ``out``), an ``.npz`` readable without pickle: ``features`` [N, D]
  float32, ``label`` [N] int64, ``frame_dir`` [N] str, ``class_names`` [K] str (empty when
  unknown), ``kind`` ("pretrain" / "finetune"), ``checkpoint``, ``split``.
"""

import os
import pickle
import time

import numpy as np
import torch

from ..data import DataError, read_pickle
from . import checkpoint as checkpoints
from . import distributed, inputs, metrics
from .config import DIST_TIMEOUT, ConfigError, build, resolve_device, resolve_workers
from .workdir import TEST_RECORD, append_json_line, find_checkpoint, scores_file


@torch.no_grad()
def predict(function, loader, device, num_clips):
    """``function`` ([B * clips, M, T, V, C] -> [B * clips, K]) over ``loader`` (a loader of
    ``inputs.loader``, in file order), each sample's outputs averaged over its clips: ([N, K]
    float32, labels [N]) on the CPU, in file order. With several processes, each runs its share
    of the samples and every process gets all of them, each sample once."""
    outputs, labels = [], []
    for x, y in loader:
        out = function(x.to(device, non_blocking=True).flatten(0, 1))
        outputs.append(out.float().view(x.shape[0], num_clips, -1).mean(1))
        labels.append(y)
    mine = ([index for index, _ in loader.sampler], [torch.cat(outputs).cpu()] if outputs else [], labels)
    shares = distributed.all_gather(mine)  # [(sample indices, outputs, labels)] of each process
    order = torch.tensor([index for indices, _, _ in shares for index in indices]).argsort()
    return (torch.cat([out for _, parts, _ in shares for out in parts])[order],
            torch.cat([y for _, _, parts in shares for y in parts])[order])


def _open(options, kinds, fix):
    """The checkpoint's model (eval mode, on the device) and this process's loader of the
    split through the checkpoint's test pipeline, checked to fit each other."""
    checkpoint, data, split, num_clips = options["checkpoint"], options["data"], options["split"], options["num_clips"]
    device = distributed.start(resolve_device(options["device"]), options["dist_timeout"])
    path = find_checkpoint(checkpoint, "--checkpoint")
    state = checkpoints.load(path)
    if state["kind"] not in kinds:
        checkpoints.require_kind(state, kinds[0], path, fix)
    data_config = dict(state["config"]["data"], source=data)
    annotations = inputs.read(data, [split])
    layout = inputs.resolve_layout(state["layout"], annotations, data, "layout",
                            f"this checkpoint was trained on layout {state['layout']['name']!r}: "
                            "evaluate it on data of that skeleton")
    dataset = inputs.dataset(annotations, data_config, split, layout, data_config["num_person"], mode="test",
                             num_clips=num_clips)
    model_args = state["model_args"]
    if dataset.in_channels != model_args["in_channels"]:
        raise DataError(f"{data}: its samples give {dataset.in_channels} input channels (features "
                        f"{data_config['feats']}) but the checkpoint's model takes {model_args['in_channels']}: "
                        "evaluate on data of the kind it was trained on (2D or 3D)")
    if dataset.num_classes > model_args.get("num_classes", dataset.num_classes):
        raise DataError(f"{data}: {dataset.num_classes} classes but the checkpoint's classifier has "
                        f"{model_args['num_classes']}: evaluate on the dataset it was fine-tuned on")
    model = checkpoints.rebuild(state, path).to(device).eval()
    loader = inputs.loader(dataset, options["batch_size"], resolve_workers(options["workers"], device), device,
                           train=False, key="batch_size")
    return path, state, model, dataset, loader, device


def evaluate(data, split, checkpoint, num_clips=10, out=None, batch_size=16, device="auto", workers="auto",
             dist_timeout=DIST_TIMEOUT):
    """Top-1, top-5 and mean class accuracy of a fine-tuning ``checkpoint`` (a .pth or a work
    directory: its best.pth, else latest.pth) on ``split`` of ``data``, the softmax averaged
    over ``num_clips`` clips (PYSKL's protocol). Writes the score dump (``out``, by default
    scores_SPLIT.pkl beside the checkpoint) and a line of test.jsonl there (rank 0, under
    torchrun; ``batch_size`` is then split over the processes, ``dist_timeout`` in seconds)."""
    options = build("test", dict(data=data, split=split, checkpoint=checkpoint, num_clips=num_clips, out=out,
                                 batch_size=batch_size, device=device, workers=workers, dist_timeout=dist_timeout))
    path, state, model, dataset, loader, device = _open(
        options, ("finetune",), "a pre-training checkpoint has no classifier: fine-tune it (skelmae finetune "
        "--pretrained), or probe its features with skelmae extract and skelmae knn")
    trained, named = state["class_names"], dataset.class_names
    if trained is not None and named is not None and list(trained) != list(named):
        first = next((i for i, (a, b) in enumerate(zip(trained, named)) if a != b), min(len(trained), len(named)))
        raise DataError(f"{options['data']}: its classes differ from those {path} was fine-tuned on (label {first}: "
                        f"{_name(named, first)} in the data, {_name(trained, first)} in the checkpoint): its labels "
                        "would be scored as other classes; test on the dataset it was fine-tuned on")
    out = options["out"] or os.path.join(os.path.dirname(path), scores_file(options["split"]))
    _require_writable(out)
    scores, labels = predict(lambda x: model(x).softmax(1), loader, device, options["num_clips"])
    result = metrics.accuracy(scores, labels)
    record = dict(result, scores=os.path.abspath(out))
    if not distributed.is_main():
        return record
    dump = {"frame_dir": list(dataset.frame_dirs), "label": labels.numpy(), "scores": scores.numpy(),
            "class_names": state["class_names"], "split": options["split"], "num_clips": options["num_clips"],
            "checkpoint": os.path.abspath(path), "metrics": result}
    with open(out, "wb") as handle:
        pickle.dump(dump, handle, protocol=4)
    append_json_line(os.path.join(os.path.dirname(path), TEST_RECORD),
                     dict(record, time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), checkpoint=os.path.abspath(path),
                          data=os.path.abspath(options["data"]), split=options["split"],
                          num_clips=options["num_clips"]))
    return record


def _require_writable(out):
    """Refuses an output path that cannot be a file, before the model runs over the data."""
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ConfigError("out", f"{out} is a directory; expected the path of a file to write")
    if not os.path.isdir(folder):
        raise ConfigError("out", f"{out}: the folder {folder} does not exist; create it or write elsewhere")


def _name(names, label):
    return repr(names[label]) if label < len(names) else "none"


def pooled_features(model):
    """[B, M, T, V, C] -> [B, D]: a fine-tuned classifier's or a pre-trained trunk's pooled
    STRL features (their ``features``), or a pre-trained per-frame encoder's output averaged
    over the joints and the (person, frame) graphs that are not padding."""
    if hasattr(model, "features"):
        return model.features

    def encoder_features(x):
        hidden = model.encoder(x).mean(3)  # [B, M, T, D]
        present = (x.abs().sum(dim=(3, 4)) > 0).to(hidden.dtype)[..., None]
        return (hidden * present).sum(dim=(1, 2)) / present.sum(dim=(1, 2)).clamp(min=1)
    return encoder_features


def extract(data, split, checkpoint, out, num_clips=1, batch_size=16, device="auto", workers="auto",
            dist_timeout=DIST_TIMEOUT):
    """Pooled features of ``split`` (averaged over ``num_clips`` test clips) from a pre-training
    or fine-tuning ``checkpoint``, saved as an .npz (see the module docstring; rank 0 writes
    it, under torchrun)."""
    options = build("extract", dict(data=data, split=split, checkpoint=checkpoint, out=out, num_clips=num_clips,
                                    batch_size=batch_size, device=device, workers=workers, dist_timeout=dist_timeout))
    path, state, model, dataset, loader, device = _open(options, ("pretrain", "finetune"), "")
    _require_writable(options["out"])
    features, labels = predict(pooled_features(model), loader, device, options["num_clips"])
    if distributed.is_main():
        with open(options["out"], "wb") as handle:  # np.savez would add .npz to a path without it
            np.savez(handle, features=features.numpy(), label=labels.numpy(),
                     frame_dir=np.array(dataset.frame_dirs),
                     class_names=np.array(state["class_names"] or [], dtype=str), kind=state["kind"],
                     checkpoint=os.path.abspath(path), split=options["split"])
    return {"out": os.path.abspath(options["out"]), "num_samples": int(labels.numel()), "dim": int(features.shape[1]),
            "kind": state["kind"]}


def _features(path):
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such features file: write it with skelmae extract")
    try:
        with np.load(path, allow_pickle=False) as archive:
            features, labels = archive["features"], archive["label"]
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{path}: not a features file of skelmae extract ({error})") from error
    _require_finite(features, path, "features")
    return features, labels


def _require_finite(values, path, what):
    """Refuses [N, ...] ``values`` that hold NaN or inf (of a diverged model), naming the first sample."""
    finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: the {what} of {int((~finite).sum())} of {len(values)} samples hold NaN / inf (first: "
                        f"sample #{int(np.flatnonzero(~finite)[0])}): they come from a diverged model; write them "
                        "again from a checkpoint of finite weights")


def knn(train, test, k=20, temperature=0.07):
    """KNN top-1 / top-5 of the ``test`` features classified by the ``train`` features (two
    ``extract`` outputs): cosine similarity, the k nearest vote with weights
    exp(similarity / temperature)."""
    options = build("knn", dict(train=train, test=test, k=k, temperature=temperature))
    train_features, train_labels = _features(options["train"])
    test_features, test_labels = _features(options["test"])
    if train_features.shape[1] != test_features.shape[1]:
        raise DataError(f"{options['test']}: features of width {test_features.shape[1]}, but {options['train']} has "
                        f"{train_features.shape[1]}: extract both with the same checkpoint")
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = metrics.knn_scores(train_features, train_labels, test_features, options["k"], options["temperature"],
                                classes)
    result = metrics.accuracy(scores, test_labels)
    return dict(result, k=options["k"], temperature=options["temperature"], num_train=int(len(train_labels)))


def _scores(path):
    dump = read_pickle(path)
    if not isinstance(dump, dict) or not {"frame_dir", "label", "scores"} <= set(dump):
        raise DataError(f"{path}: not a score dump of skelmae test (needs frame_dir, label, scores)")
    _require_finite(np.asarray(dump["scores"]), path, "scores")
    return dump


def ensemble(scores, weights=None):
    """Metrics of the weighted sum of several score dumps of the same samples (multi-stream
    fusion: joint, bone, joint motion, bone motion). ``weights`` default: PYSKL's 2:2:1:1 for
    four dumps, equal otherwise."""
    options = build("ensemble", dict(scores=scores, weights=weights))
    paths = options["scores"]
    weights = options["weights"] or ([2.0, 2.0, 1.0, 1.0] if len(paths) == 4 else [1.0] * len(paths))
    if len(weights) != len(paths):
        raise DataError(f"--weights: {len(weights)} weights for {len(paths)} score dumps: give one per dump")
    if not any(weights):
        raise DataError(f"--weights: all {len(weights)} weights are 0: give at least one dump a weight > 0")
    dumps = [_scores(path) for path in paths]
    first = dumps[0]
    order = {name: i for i, name in enumerate(first["frame_dir"])}
    streams = []
    for path, dump in zip(paths, dumps):
        if sorted(dump["frame_dir"]) != sorted(first["frame_dir"]):
            raise DataError(f"{path}: scores other samples than {paths[0]}: fuse dumps of the same split")
        if np.shape(dump["scores"]) != np.shape(first["scores"]):
            raise DataError(f"{path}: scores of shape {np.shape(dump['scores'])}, {paths[0]}'s are "
                            f"{np.shape(first['scores'])}: fuse dumps of one dataset")
        index = np.array([order[name] for name in dump["frame_dir"]])
        aligned, labels = np.empty_like(dump["scores"]), np.empty_like(dump["label"])
        aligned[index], labels[index] = dump["scores"], dump["label"]  # in the first dump's sample order
        if not np.array_equal(labels, first["label"]):
            raise DataError(f"{path}: its labels differ from {paths[0]}'s: fuse dumps of one dataset")
        streams.append(aligned)
    result = metrics.accuracy(metrics.fuse(streams, weights), first["label"])
    return dict(result, weights=weights, scores=[os.path.abspath(path) for path in paths])
