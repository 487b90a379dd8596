"""Figures of a work directory (``skelmae plot``), each a PNG of a fixed size (``SIZES`` at
``DPI``) that reads on its own (each function returns the matplotlib Figure when ``out`` is None):

- ``curves``: loss, learning rate and top-1 (training and validation) per epoch, from log.jsonl;
- ``confusion``: the confusion matrix of the last ``skelmae test`` (test.jsonl's last line),
  normalised per true class, with the counts on the cells when there are few classes;
- ``reconstruction``: the paper's Fig. 6 view: a few frames of one sequence, original, masked
  input and SkeletonMAE's reconstruction, drawn with the layout's edges (a pre-training run
  with ``target="centred"`` or ``"input"``);
- ``tsne``: a t-SNE of each features file (``skelmae extract``'s .npz) in the folder.

matplotlib (and scikit-learn for t-SNE) are optional dependencies: ``pip install
"skelmae_ext[plot]"``. Drawing goes through ``matplotlib.figure.Figure`` (no pyplot, no GUI).
"""

import glob
import json
import os
import warnings

import numpy as np
import torch
import yaml

from .data import PreNormalize2D, read_pickle
from .layouts import PART_NAMES
from .train import checkpoint as checkpoints
from .train import inputs
from .train.workdir import BEST, CONFIG, JSON_LOG, LATEST, TEST_RECORD, find_checkpoint

KINDS = ("curves", "confusion", "reconstruction", "tsne")
DPI = 100
SIZES = {"curves": (15, 4.5), "confusion": (9, 8), "reconstruction": (12, 9), "tsne": (10, 7)}  # inches
INSTALL = 'pip install "skelmae_ext[plot]"'
MAX_COUNTED_CLASSES = 15  # counts are written on the confusion matrix's cells up to this many classes
MAX_LEGEND_CLASSES = 20  # t-SNE: a legend up to this many classes, a colour bar beyond


class PlotError(ValueError):
    """A figure that cannot be drawn: a missing dependency or input, or the wrong kind of run."""


class MissingInput(PlotError):
    """The work directory lacks what one kind of figure is drawn from (``kind="all"`` skips it)."""


def require(tsne=True):
    """Raises PlotError naming the install command unless matplotlib (and scikit-learn) import."""
    for module, package in [("matplotlib", "matplotlib")] + ([("sklearn", "scikit-learn")] if tsne else []):
        try:
            __import__(module)
        except ImportError:
            raise PlotError(f"the figures need {package}, which is not installed: {INSTALL}") from None


def _figure(kind):
    require(tsne=kind == "tsne")
    from matplotlib.figure import Figure

    return Figure(figsize=SIZES[kind], dpi=DPI, layout="constrained")


def _finish(figure, out):
    """The figure written to ``out`` (its absolute path), or the figure itself when ``out`` is None."""
    if out is None:
        return figure
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    figure.savefig(out, dpi=DPI, facecolor="white")
    return os.path.abspath(out)


def _run_name(work_dir):
    return os.path.basename(os.path.normpath(os.path.abspath(work_dir)))


# --- training curves ---------------------------------------------------------------------------


def read_epochs(work_dir):
    """The epoch records of log.jsonl, one per epoch, of the run's last fresh start (a run
    started over in the same folder appends to the log; a resumed run goes on with it)."""
    path = os.path.join(work_dir, JSON_LOG)
    if not os.path.isfile(path):
        raise MissingInput(f"{work_dir}: no {JSON_LOG}: pass the work directory of a skelmae pretrain or finetune run")
    epochs = {}
    for record in _json_lines(path):
        if record.get("event") == "start" and not record.get("resumed_from"):
            epochs = {}
        elif record.get("event") == "epoch":
            epochs[record["epoch"]] = record  # a resume from an earlier checkpoint redoes epochs
    if not epochs:
        raise MissingInput(f"{path} holds no finished epoch yet: plot the run after its first epoch")
    return [epochs[epoch] for epoch in sorted(epochs)]


def _json_lines(path):
    """The JSON records of a .jsonl file; a damaged line (a run killed while writing it) is
    skipped with a warning."""
    records, damaged = [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                record = None
                damaged.append(number)
            if isinstance(record, dict):
                records.append(record)
    if damaged:
        warnings.warn(f"{path}: skipped {len(damaged)} damaged lines (first: line {damaged[0]}), as a run killed while "
                      "writing leaves them", stacklevel=3)
    return records


def curves(work_dirs, out=None, labels=None, title=None):
    """Loss, learning rate and top-1 per epoch of one run or several (a work directory or a
    list; ``labels`` name them in the legend); pre-training runs have no accuracy panel."""
    work_dirs = [work_dirs] if isinstance(work_dirs, (str, os.PathLike)) else list(work_dirs)
    labels = labels or [_run_name(work_dir) for work_dir in work_dirs]
    runs = [read_epochs(work_dir) for work_dir in work_dirs]
    accuracy = any(record.get("train_top1") is not None for records in runs for record in records)
    figure = _figure("curves")
    axes = figure.subplots(1, 3 if accuracy else 2)
    colours = [f"C{i}" for i in range(len(runs))]
    for records, label, colour in zip(runs, labels, colours):
        epoch = [r["epoch"] for r in records]
        axes[0].plot(epoch, [r["loss"] for r in records], "o-", color=colour, ms=3, label=label)
        axes[1].plot(epoch, [r["lr"] for r in records], "o-", color=colour, ms=3, label=label)
        if accuracy:
            for key, style, name in (("train_top1", "o--", "training"), ("val_top1", "o-", "validation")):
                values = [100 * r[key] if r.get(key) is not None else np.nan for r in records]
                if not np.all(np.isnan(values)):
                    axes[2].plot(epoch, values, style, color=colour, ms=3, label=f"{label}: {name}")
    loss = "cross-entropy" if accuracy else "reconstruction loss"  # cosine, squared or a trunk's tube error
    axes[0].set(title="Training loss (mean over each epoch)", xlabel="epoch", ylabel=loss)
    axes[1].set(title="Learning rate (at each epoch's end)", xlabel="epoch", ylabel="learning rate")
    axes[1].set_ylim(bottom=0)
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if accuracy:
        axes[2].set(title="Top-1 accuracy (training batches, validation split)", xlabel="epoch", ylabel="top-1 (%)",
                    ylim=(0, 100))
        axes[2].legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(runs) > 1:
        axes[0].legend(fontsize="small")
    kind = "fine-tuning" if accuracy else "pre-training, without labels: no accuracy"
    figure.suptitle(title or f"Training curves: {', '.join(labels)} ({kind})", fontsize="x-large")
    return _finish(figure, out)


# --- confusion matrix ---------------------------------------------------------------------------


def last_test(work_dir):
    """The score dump of the last ``skelmae test`` of the work directory's checkpoints."""
    path = os.path.join(work_dir, TEST_RECORD)
    if not os.path.isfile(path) and _pretraining(work_dir):
        raise MissingInput(f"{work_dir}: no {TEST_RECORD}: a pre-training classifies nothing; the confusion matrix "
                           "is of a skelmae finetune work directory, after skelmae test")
    if not os.path.isfile(path):
        raise MissingInput(f"{work_dir}: no {TEST_RECORD}: run skelmae test --checkpoint {work_dir} first")
    records = [record for record in _json_lines(path) if isinstance(record.get("scores"), str)]
    if not records:
        raise MissingInput(f"{path} holds no test: run skelmae test --checkpoint {work_dir} first")
    scores = records[-1]["scores"]
    if not os.path.isfile(scores):
        raise MissingInput(f"{path}: the last test's scores {scores} are gone: run skelmae test again")
    dump = read_pickle(scores)
    if not isinstance(dump, dict) or not {"label", "scores"} <= set(dump):
        raise PlotError(f"{scores}: not a score dump of skelmae test (needs label and scores)")
    return dump


def _pretraining(work_dir):
    """Whether the work directory's run is a pre-training (its config reads one split)."""
    try:
        with open(os.path.join(work_dir, CONFIG), encoding="utf-8") as handle:
            data = (yaml.safe_load(handle) or {}).get("data") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    return isinstance(data, dict) and "split" in data and "train_split" not in data


def confusion_matrix(labels, predictions, num_classes):
    """Counts [true class, predicted class]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def confusion(work_dir, out=None, title=None):
    """The confusion matrix of the work directory's last test, each row normalised by its true
    class's count (the colour), with the counts written on the cells for up to
    MAX_COUNTED_CLASSES classes."""
    dump = last_test(work_dir)
    scores, labels = np.asarray(dump["scores"]), np.asarray(dump["label"])
    classes = scores.shape[1]
    counts = confusion_matrix(labels, scores.argmax(1), classes)
    totals = counts.sum(1, keepdims=True)
    shares = np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
    names = list(dump.get("class_names") or [str(i) for i in range(classes)])
    figure = _figure("confusion")
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class's sequences")
    if classes <= MAX_COUNTED_CLASSES:
        for (row, column), count in np.ndenumerate(counts):
            if count:
                ax.text(column, row, str(count), ha="center", va="center", fontsize="small",
                        color="white" if shares[row, column] > 0.5 else "black")
    ticks = np.arange(classes)
    ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, names)
    ax.set(xlabel="predicted class", ylabel="true class")
    metrics = dump.get("metrics") or {}
    summary = (f"top-1 {100 * metrics['top1']:.1f}%, mean class accuracy {100 * metrics['mean_class_accuracy']:.1f}%"
               if {"top1", "mean_class_accuracy"} <= set(metrics) else "")
    clips = dump.get("num_clips")
    clips = f", {clips} clip{'s' if clips > 1 else ''} each" if clips else ""
    figure.suptitle(title or f"Confusion matrix of {_run_name(work_dir)} on {dump.get('split', 'the test split')}",
                    fontsize="x-large")
    tested = f"; {os.path.basename(dump['checkpoint'])}" if dump.get("checkpoint") else ""
    ax.set_title(f"{len(labels)} sequences{clips}; {summary}{tested}; counts on the cells", fontsize="medium")
    return _finish(figure, out)


# --- reconstruction (the paper's Fig. 6) -------------------------------------------------------


def _pretrained(work_dir):
    """(path, checkpoint) of a pre-training run that reconstructs joint coordinates."""
    if not any(os.path.isfile(os.path.join(work_dir, name)) for name in (BEST, LATEST)):
        raise MissingInput(f"{work_dir}: no checkpoint ({LATEST}): the reconstruction view needs the work directory "
                           "of a skelmae pretrain run")
    path = find_checkpoint(work_dir, "WORK_DIR")
    state = checkpoints.load(path)
    if state["kind"] != "pretrain":
        raise MissingInput(f"{path} is a {state['kind']} checkpoint: the reconstruction view needs the work directory "
                           "of a skelmae pretrain run")
    if state["model_class"] == "TrunkMAE":
        raise MissingInput(f"{path} pre-trained the trunk (TrunkMAE), whose targets are normalised motion or position "
                           "tubes, not joint coordinates: the view needs a run pre-trained with --objective frame")
    if state["model_args"].get("target", "input") == "embedding":
        raise PlotError(f"{path} reconstructs the embedding (target {state['model_args']['target']!r}), which cannot "
                        "be drawn as a skeleton: the view needs a run pre-trained with --target centred or input")
    if list(state["config"]["data"]["feats"]) != ["j"]:
        raise PlotError(f"{path} was pre-trained on features {state['config']['data']['feats']}: the view draws joint "
                        "coordinates, so it needs a run pre-trained with --feats j")
    return path, state


def _sample_index(dataset, sample, where):
    if isinstance(sample, str) and not sample.isdigit():
        if sample not in dataset.frame_dirs:
            raise PlotError(f"--sample {sample!r}: no such sequence in split {dataset.split!r} of {where}")
        return dataset.frame_dirs.index(sample)
    index = int(sample)
    if not 0 <= index < len(dataset):
        raise PlotError(f"--sample {index}: split {dataset.split!r} of {where} has {len(dataset)} sequences "
                        f"(0 to {len(dataset) - 1})")
    return index


def _draw(ax, points, edges, joints, colour, style="-", size=4, zorder=2):
    """``edges`` as lines, the ``joints`` (a bool mask) as dots."""
    for i, j in edges:
        ax.plot(points[[i, j], 0], points[[i, j], 1], style, color=colour, lw=1.6, zorder=zorder)
    ax.plot(points[joints, 0], points[joints, 1], "o", color=colour, ms=size, ls="none", zorder=zorder + 1)


def reconstruction(work_dir, out=None, data=None, split=None, sample=0, frames=4, title=None):
    """The paper's Fig. 6 for one sequence (``sample``: an index or frame_dir of ``split``, by
    default the pre-training's split of its data): ``frames`` frames of the original skeleton,
    the masked input (masked joints marked) and the reconstruction, all in the model's input
    coordinates (the test pipeline's normalised coordinates; 2D: y points down, as in the image)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise PlotError(f"--frames must be an integer >= 1, got {frames!r}")
    path, state = _pretrained(work_dir)
    data_config = dict(state["config"]["data"])
    source, split = data or data_config["source"], split or data_config["split"]
    data_config["source"] = source
    annotations = inputs.read(source, [split])
    layout = inputs.resolve_layout(state["layout"], annotations, source,
                                   fix=f"{path} was pre-trained on layout {state['layout']['name']!r}: pass its data")
    dataset = inputs.dataset(annotations, data_config, split, layout, data_config["num_person"], mode="test")
    index = _sample_index(dataset, sample, source)
    clip = dataset[index][0]  # [1 clip, M, T, V, C]
    model = checkpoints.rebuild(state, path).eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)  # random masking strategies draw the same mask every time
        output = model(clip)
    x, mask, rebuilt = clip[0].numpy(), output.mask[0].numpy(), output.reconstruction[0].float().numpy()
    image_2d = x.shape[-1] - data_config["with_score"] == 2
    annotation = next(a for a in annotations["annotations"] if a["frame_dir"] == dataset.frame_dirs[index])
    height, width = annotation.get("img_shape", PreNormalize2D().img_shape)

    present = np.abs(x).sum(axis=(2, 3)) > 0  # [M, T]: the persons and frames that are not padding
    frame_ids = np.flatnonzero(present.any(0))
    chosen = frame_ids[np.unique(np.linspace(0, len(frame_ids) - 1, frames).round().astype(int))]
    # the point the cosine error measures directions from: the origin, or with target "centred"
    # the mean of each skeleton's visible joints (SkeletonMAE.forward)
    centred = model.target == "centred"
    figure = _figure("reconstruction")
    axes = figure.subplots(3, len(chosen), squeeze=False)
    extents = []  # (low, high) of each column's original skeleton: its window
    for column, t in enumerate(chosen):
        drawn, rebuilt_points, origins = [], [], []
        cosines = []
        for person in np.flatnonzero(present[:, t]):
            points, masked = x[person, t, :, :2], mask[person, t]
            detected = np.abs(x[person, t]).sum(-1) > 0  # undetected joints are zeros: not drawn
            predicted = np.where(masked[:, None], rebuilt[person, t, :, :2], points)
            edges = [(i, j) for i, j in layout.edges if detected[i] and detected[j]]
            kept = [(i, j) for i, j in edges if not (masked[i] or masked[j])]
            hidden = [(i, j) for i, j in edges if masked[i] or masked[j]]
            _draw(axes[0, column], points, edges, detected, "C0")
            _draw(axes[1, column], points, kept, detected & ~masked, "C0")
            axes[1, column].plot(*points[masked & detected].T, "x", color="C3", ms=8, mew=2, ls="none")
            _draw(axes[2, column], points, hidden, masked & detected, "0.65", "--", size=3, zorder=1)
            _draw(axes[2, column], predicted, kept, detected & ~masked, "C0")
            _draw(axes[2, column], predicted, hidden, masked & detected, "C1", size=6, zorder=4)
            visible = detected & ~masked
            origin = points[visible].mean(0) if centred and visible.any() else np.zeros(2)
            origins.append(origin)
            guess = predicted[masked & detected]
            target, direction = points[masked & detected] - origin, guess - origin
            cosines.extend((target * direction).sum(1) / np.maximum(
                np.linalg.norm(target, axis=1) * np.linalg.norm(direction, axis=1), 1e-12))
            drawn.append(points[detected])
            rebuilt_points.append(guess)
        drawn = np.concatenate(drawn)
        extents.append((drawn.min(0), drawn.max(0), np.concatenate(rebuilt_points)))
        axes[0, column].set_title(f"frame {t + 1} of {x.shape[1]}")
        axes[2, column].plot(*np.array(origins).T, "+", color="k", ms=10, mew=1.5, ls="none")
        axes[2, column].set_title(f"mean cosine of the masked joints: {np.mean(cosines):.2f}" if cosines else "",
                                  fontsize="small")
    for ax, row in zip(axes[:, 0], ("original", "masked input", "reconstruction")):
        ax.set_ylabel(f"{row}\n\ny" + (" (down)" if image_2d else ""), fontsize="medium")
    for ax in axes[-1]:
        ax.set_xlabel("x")
    # one scale in every panel, each column's window centred on its frame's original skeleton
    half = 0.6 * np.max([high - low for low, high, _ in extents], axis=0) + 1e-3
    aspect = height / width if image_2d else 1.0  # 2D: a pixel as high as it is wide
    half[0] = max(half[0], 0.8 * half[1] * aspect)  # panels about square: a thin skeleton is not squeezed
    for column, (low, high, guesses) in enumerate(extents):
        centre = (low + high) / 2
        outside = int((np.abs(guesses - centre) > half).any(1).sum())
        if outside:
            cosine = axes[2, column].get_title()
            axes[2, column].set_title(f"{cosine}\n{outside} of {len(guesses)} reconstructed out of view",
                                      fontsize="small")
        for ax in axes[:, column]:
            ax.set_xlim(centre[0] - half[0], centre[0] + half[0])
            ax.set_ylim(*(centre[1] + half[1], centre[1] - half[1]) if image_2d else
                        (centre[1] - half[1], centre[1] + half[1]))  # 2D: y down, as in the image
            ax.set_aspect(aspect)
            ax.grid(alpha=0.2)
    named = len(layout.parts) == len(PART_NAMES)  # the convention of six parts, in PART_NAMES' order
    parts = ", ".join(PART_NAMES[p] if named else f"part {p}" for p in model.mask_parts) \
        if model.mask_strategy == "parts" else model.mask_strategy.replace("_", " ")
    label = dataset.labels[index]
    name = dataset.class_names[label] if dataset.class_names else f"class {label}"
    figure.suptitle(title or f"SkeletonMAE reconstruction ({_run_name(work_dir)}, epoch {state['epoch']}): {name}, "
                    f"sequence {dataset.frame_dirs[index]!r} of {split}\nmasked: {parts}; loss of this clip "
                    f"{float(output.loss):.3f}", fontsize="large")
    coordinates = "normalised image coordinates (pixels / half the image size - 1)" if image_2d else \
        "the pipeline's normalised coordinates"
    origin, marker = ("the centre of the visible joints", "centre of the visible joints") if centred else \
        ("the origin", "origin (0, 0)")
    scored = (f"The cosine loss scores only each masked joint's direction from {origin} (+), not its distance from "
              "it: that distance is not trained." if model.loss == "cosine" else
              "The squared error scores each masked joint's position.")
    _reconstruction_legend(figure, f"Each column one frame, its three panels in the same coordinates: the model's "
                           f"input, {coordinates}.\n{scored}", marker)
    return _finish(figure, out)


def _reconstruction_legend(figure, note, origin):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="C0", marker="o", ms=4, label="joints the model sees"),
               Line2D([], [], color="C3", marker="x", ls="none", ms=8, mew=2, label="masked joints (hidden from it)"),
               Line2D([], [], color="C1", marker="o", ms=6, lw=2, label="reconstructed joints"),
               Line2D([], [], color="0.7", marker="o", ms=3, ls="--", label="original masked joints, for comparison"),
               Line2D([], [], color="k", marker="+", ls="none", ms=10, label=origin)]
    figure.legend(handles=handles, loc="outside lower center", ncols=5, fontsize="small", title=note,
                  title_fontsize="small")


# --- t-SNE of features ---------------------------------------------------------------------------


def read_features(path):
    """(features [N, D], labels [N], class names, kind, split) of an ``extract`` .npz."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return (archive["features"], archive["label"], [str(n) for n in archive["class_names"]],
                    str(archive["kind"]), str(archive["split"]))
    except (OSError, ValueError, KeyError) as error:
        raise PlotError(f"{path}: not a features file of skelmae extract ({error})") from None


def tsne(features, out=None, title=None):
    """A 2-D t-SNE (scikit-learn; PCA start, seed 0) of an ``extract`` features file, one colour
    per class, with a legend of the class names."""
    values, labels, names, kind, split = read_features(features)
    figure = _figure("tsne")
    from sklearn.manifold import TSNE

    if len(values) < 5:
        raise PlotError(f"{features}: {len(values)} sequences; a t-SNE needs at least 5")
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    # torch's thread count (the runs' --threads): OpenMP threads beyond free cores spin (60 points
    # took 8 s with 2 threads on 2 busy cores, 0.2 s with 1)
    with threadpool_limits(torch.get_num_threads()):
        embedded = TSNE(2, perplexity=min(30.0, (len(values) - 1) / 3), init="pca", random_state=0).fit_transform(
            values.astype(np.float64))
    classes = int(labels.max()) + 1
    names = names if len(names) >= classes else [f"class {i}" for i in range(classes)]
    ax = figure.subplots()
    colours = "tab10" if classes <= 10 else "tab20"
    if classes <= MAX_LEGEND_CLASSES:
        import matplotlib

        palette = matplotlib.colormaps[colours]
        for label in np.unique(labels):
            chosen = labels == label
            ax.scatter(*embedded[chosen].T, s=14, color=palette(int(label)), label=names[label], alpha=0.8)
        ax.legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=1.5)
    else:
        points = ax.scatter(*embedded.T, s=10, c=labels, cmap="turbo")
        figure.colorbar(points, ax=ax, label="class index")
    ax.set(xlabel="t-SNE dimension 1", ylabel="t-SNE dimension 2", xticks=[], yticks=[])
    what = {"pretrain": "pre-trained encoder features (no labels seen)",
            "finetune": "fine-tuned classifier features"}.get(kind, f"{kind} features")
    figure.suptitle(title or f"t-SNE of {what}: {split}, {len(values)} sequences", fontsize="x-large")
    ax.set_title(f"{os.path.basename(features)}; each point a sequence, coloured by its true class",
                 fontsize="medium")
    return _finish(figure, out)


def features_files(work_dir):
    """The ``extract`` outputs (.npz with features) in the work directory."""
    found = sorted(glob.glob(os.path.join(work_dir, "*.npz")))
    if not found:
        raise MissingInput(f"{work_dir}: no features file (.npz): write one with skelmae extract --out "
                           f"{os.path.join(work_dir, 'features.npz')}")
    return found


# --- a work directory ------------------------------------------------------------------------------


def plot(work_dir, kind="all", out=None, data=None, split=None, sample=0, frames=4):
    """Draws ``kind`` (one of KINDS, or "all": each kind the work directory has the inputs of)
    into ``out`` (default: the work directory): curves.png, confusion.png, reconstruction.png,
    tsne_NAME.png per features file. Returns {"figures": paths, "skipped": {kind: why}}."""
    if kind != "all" and kind not in KINDS:
        raise PlotError(f"--kind must be one of {list(KINDS) + ['all']}, got {kind!r}")
    if not os.path.isdir(work_dir):
        raise PlotError(f"{work_dir}: no such directory: pass the work directory of a skelmae run")
    require(tsne=kind in ("all", "tsne"))
    out = out or work_dir
    drawers = {
        "curves": lambda: [curves(work_dir, os.path.join(out, "curves.png"))],
        "confusion": lambda: [confusion(work_dir, os.path.join(out, "confusion.png"))],
        "reconstruction": lambda: [reconstruction(work_dir, os.path.join(out, "reconstruction.png"), data, split,
                                                  sample, frames)],
        "tsne": lambda: [tsne(path, os.path.join(out, f"tsne_{os.path.splitext(os.path.basename(path))[0]}.png"))
                         for path in features_files(work_dir)],
    }
    figures, skipped = [], {}
    for name in KINDS if kind == "all" else (kind,):
        try:
            figures += drawers[name]()
        except MissingInput as missing:
            if kind != "all":
                raise
            skipped[name] = str(missing)
    if not figures:
        raise PlotError(f"{work_dir}: nothing to draw ({'; '.join(skipped.values())})")
    return {"figures": figures, "skipped": skipped}
