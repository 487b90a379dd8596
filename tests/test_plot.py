"""`skelmae plot`: each kind of figure from a small work directory built here with tiny runs (a
user's 13-joint skeleton, two persons in one sequence), as a valid, non-blank PNG of its stated
size; what the figures draw against the data they are drawn from (the confusion matrix's
counts, the reconstruction's coordinates, the curves' records); and the errors for a work
directory without what a figure needs."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from runs import STICK, write_stick
from skelmae_ext import cli, plot
from skelmae_ext.data import read_pickle
from skelmae_ext.train import evaluate, extract, finetune, pretrain
from skelmae_ext.train import checkpoint as checkpoints
from skelmae_ext.train import inputs

# (height, width) in pixels of each kind's PNG: the sizes the module documents (SIZES at DPI)
PIXELS = {"curves": (450, 1500), "confusion": (800, 900), "reconstruction": (900, 1200), "tsne": (700, 1000)}
TINY = {"clip_len": 8, "repeat": 1}
TINY_TRAIN = {"epochs": 3, "batch_size": 4, "threads": 1, "save_every": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pre-training (with its features of the validation split) and a fine-tuning from it,
    tested: {"data", "mae", "ssl", "layout"} paths."""
    folder = tmp_path_factory.mktemp("plot")
    data, layout = write_stick(folder)
    mae, ssl = str(folder / "mae"), str(folder / "ssl")
    threads = torch.get_num_threads()
    try:
        pretrain({"data": dict(TINY, source=data, split="train", layout=layout),
                  "model": {"embed_dim": 8}, "train": dict(TINY_TRAIN, work_dir=mae)})
        finetune({"data": dict(TINY, source=data, train_split="train", val_split="val", layout=layout),
                  "optim": {"warmup_epochs": 1}, "train": dict(TINY_TRAIN, work_dir=ssl, pretrained=mae)})
        evaluate(data, "val", ssl, num_clips=2, batch_size=4)
        extract(data, "val", mae, os.path.join(mae, "features_val.npz"), batch_size=4)
        yield {"data": data, "mae": mae, "ssl": ssl, "layout": layout}  # the figures too with one thread
    finally:
        torch.set_num_threads(threads)  # the runs set it for the process


def check_png(path, kind):
    """A PNG of ``kind``'s size with a drawing on it."""
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n", path
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[:2] == PIXELS[kind], (path, image.shape)
    ink = (image[..., :3] < 0.9).any(-1)  # pixels that are not white
    assert 0.01 < ink.mean() < 0.8, (path, ink.mean())
    rgb = (image[..., :3] * 255).astype(np.uint32)
    assert len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])) > 50  # text, lines, colours


@pytest.mark.parametrize("kind, run", [("curves", "mae"), ("curves", "ssl"), ("confusion", "ssl"),
                                       ("reconstruction", "mae"), ("tsne", "mae")])
def test_each_kind_writes_a_png(runs, kind, run, tmp_path):
    result = plot.plot(runs[run], kind, str(tmp_path))
    assert result["skipped"] == {} and len(result["figures"]) == 1
    path = result["figures"][0]
    assert os.path.dirname(path) == str(tmp_path)
    check_png(path, kind)


def test_all_through_the_command_line(runs, tmp_path, capsys):
    assert cli.main(["plot", runs["mae"], "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    written = out.split()
    assert sorted(map(os.path.basename, written)) == ["curves.png", "reconstruction.png", "tsne_features_val.png"]
    for path, kind in zip(sorted(written), ["curves", "reconstruction", "tsne"]):
        check_png(path, kind)
    assert "no confusion figure" in err and "test.jsonl" in err  # a pre-training has no test: said, not fatal
    assert cli.main(["plot", runs["ssl"]]) == 0  # default: into the work directory
    assert sorted(n for n in os.listdir(runs["ssl"]) if n.endswith(".png")) == ["confusion.png", "curves.png"]


def test_curves_draw_the_log(runs):
    figure = plot.curves([runs["mae"], runs["ssl"]], labels=["mae", "ssl"])
    loss, lr, top1 = figure.axes
    with open(os.path.join(runs["ssl"], "log.jsonl")) as handle:
        epochs = [r for r in map(json.loads, handle) if r["event"] == "epoch"]
    assert [line.get_label() for line in loss.lines] == ["mae", "ssl"]
    np.testing.assert_allclose(loss.lines[1].get_ydata(), [r["loss"] for r in epochs])
    np.testing.assert_allclose(lr.lines[1].get_ydata(), [r["lr"] for r in epochs])
    ssl_lines = {line.get_label(): line.get_ydata() for line in top1.lines}
    np.testing.assert_allclose(ssl_lines["ssl: validation"], [100 * r["val_top1"] for r in epochs])
    np.testing.assert_allclose(ssl_lines["ssl: training"], [100 * r["train_top1"] for r in epochs])
    assert "mae: training" not in ssl_lines  # pre-training has no accuracy
    assert len(plot.curves(runs["mae"]).axes) == 2  # alone: no accuracy panel


def test_log_of_a_restarted_and_a_resumed_run(tmp_path):
    records = [{"event": "start", "resumed_from": None}, {"event": "epoch", "epoch": 1, "loss": 9.0},
               {"event": "start", "resumed_from": None},  # started over (--no-resume): the old epochs go
               {"event": "epoch", "epoch": 1, "loss": 3.0}, {"event": "epoch", "epoch": 2, "loss": 2.5},
               {"event": "start", "resumed_from": "epoch_1.pth"},  # resumed from epoch 1: epoch 2 again
               {"event": "step", "loss": 7.0}, {"event": "epoch", "epoch": 2, "loss": 2.0}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [(r["epoch"], r["loss"]) for r in plot.read_epochs(str(tmp_path))] == [(1, 3.0), (2, 2.0)]


def test_damaged_log_lines_are_skipped(tmp_path):
    epoch = json.dumps({"event": "epoch", "epoch": 1, "loss": 3.0})
    # a run killed while writing a line, then resumed: its next record joins the cut line
    (tmp_path / "log.jsonl").write_text(epoch + "\n" + epoch[:20] + json.dumps({"event": "epoch", "epoch": 2}) + "\n"
                                        + json.dumps({"event": "epoch", "epoch": 2, "loss": 2.0}) + "\n")
    with pytest.warns(UserWarning, match=r"log\.jsonl: skipped 1 damaged lines \(first: line 2\)"):
        assert [(r["epoch"], r["loss"]) for r in plot.read_epochs(str(tmp_path))] == [(1, 3.0), (2, 2.0)]


def test_confusion_matrix_counts():
    counts = plot.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 4)
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[2, 0] = 1
    expected[2, 2] = 2
    np.testing.assert_array_equal(counts, expected)


def test_confusion_figure_of_the_last_test(runs):
    dump = read_pickle(os.path.join(runs["ssl"], "scores_val.pkl"))
    figure = plot.confusion(runs["ssl"])
    ax = figure.axes[0]
    shares = np.asarray(ax.images[0].get_array())
    labels, predicted = np.asarray(dump["label"]), np.asarray(dump["scores"]).argmax(1)
    for true in range(3):  # each row: the share of that class's sequences predicted as each class
        row = [np.mean(predicted[labels == true] == p) for p in range(3)]
        np.testing.assert_allclose(shares[true], row)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["wave", "walk", "sit"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["wave", "walk", "sit"]
    assert sum(int(t.get_text()) for t in ax.texts) == len(labels)  # the counts, on the non-empty cells
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"


def test_reconstruction_in_the_input_coordinates(runs):
    """The three rows draw the test pipeline's clip, the kept joints and the model's output."""
    figure = plot.reconstruction(runs["mae"], split="train", sample="train_0", frames=3)  # two persons
    state = checkpoints.load(os.path.join(runs["mae"], "latest.pth"))
    config = state["config"]["data"]
    data = inputs.read(runs["data"], ["train"])
    dataset = inputs.dataset(data, config, "train", inputs.resolve_layout(state["layout"], data, runs["data"]),
                             config["num_person"], mode="test")
    clip = dataset[0][0]
    model = checkpoints.rebuild(state).eval()
    with torch.no_grad():
        output = model(clip)
    x, rebuilt = clip[0].numpy(), output.reconstruction[0].numpy()
    masked = np.array([v in (6, 7, 11, 12) for v in range(13)])  # STICK's parts 3 and 5: right arm and leg
    np.testing.assert_array_equal(output.mask[0, 0, 0].numpy(), masked)
    axes = np.array(figure.axes).reshape(3, 3)
    frames = [int(ax.get_title().split()[1]) - 1 for ax in axes[0]]
    assert frames == [0, 4, 7]  # 3 frames spread over the clip of 8
    for column, t in enumerate(frames):
        original, kept, cross = _dots(axes[0, column]), _dots(axes[1, column]), _crosses(axes[1, column])
        for person in (0, 1):
            assert _drawn(original, x[person, t])
            assert _drawn(kept, x[person, t, ~masked])
            assert _drawn(cross, x[person, t, masked])
            assert _drawn(_dots(axes[2, column]), rebuilt[person, t, masked])
        # the default target is "centred": the + marks each person's mean of its visible joints
        plus = [np.column_stack(line.get_data()) for line in axes[2, column].lines if line.get_marker() == "+"]
        assert _drawn(plus, np.stack([x[person, t, ~masked].mean(0) for person in (0, 1)]))
        edges = {tuple(map(tuple, np.column_stack(line.get_data()))) for line in axes[0, column].lines}
        for i, j in STICK["edges"]:  # every edge of the layout, between the original joints
            assert ((tuple(x[0, t, i]), tuple(x[0, t, j])) in edges)
    ax = axes[0, 0]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # 2D: y points down
    assert "masked: right arm, right leg" in figure._suptitle.get_text()
    assert "direction from the centre of the visible joints (+)" in figure.legends[0].get_title().get_text()


def _drawn(point_sets, expected):
    """Whether one of the drawn point sets is ``expected`` ([joints, 2])."""
    return any(points.shape == expected.shape and np.allclose(points, expected) for points in point_sets)


def _dots(ax):
    return [np.column_stack(line.get_data()) for line in ax.lines if line.get_marker() == "o"
            and line.get_linestyle() == "None"]


def _crosses(ax):
    return [np.column_stack(line.get_data()) for line in ax.lines if line.get_marker() == "x"]


def test_tsne_legend_names_the_classes(runs):
    figure = plot.tsne(os.path.join(runs["mae"], "features_val.npz"))
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["wave", "walk", "sit"]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 6  # every validation sequence
    assert "pre-trained encoder" in figure._suptitle.get_text()


@pytest.mark.parametrize("kind, run, message", [
    ("curves", "empty", "no log.jsonl"),
    ("confusion", "mae", "no test.jsonl: a pre-training classifies nothing; the confusion matrix is of a skelmae "
                         "finetune work directory"),
    ("confusion", "ssl-untested", "no test.jsonl: run skelmae test --checkpoint"),
    ("reconstruction", "ssl", "is a finetune checkpoint: the reconstruction view needs"),
    ("tsne", "ssl", "no features file (.npz): write one with skelmae extract"),
    ("all", "empty", "nothing to draw"),
    ("all", "missing", "no such directory"),
])
def test_errors_name_what_is_missing(runs, tmp_path, capsys, kind, run, message):
    work_dir = {"empty": str(tmp_path), "missing": str(tmp_path / "nowhere")}.get(run) or runs.get(run)
    if run == "ssl-untested":  # a fine-tuning without skelmae test
        work_dir = str(shutil.copytree(runs["ssl"], tmp_path / run, ignore=shutil.ignore_patterns("test.jsonl")))
    assert cli.main(["plot", work_dir, "--kind", kind, "--out", str(tmp_path / "figures")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("skelmae plot: error: ") and message in err, err


def test_reconstruction_errors(runs, tmp_path, capsys):
    assert cli.main(["plot", runs["mae"], "--kind", "reconstruction", "--split", "val", "--sample", "99"]) == 2
    assert "--sample 99: split 'val'" in capsys.readouterr().err
    assert cli.main(["plot", runs["mae"], "--kind", "reconstruction", "--sample", "no_such_sequence"]) == 2
    assert "no such sequence in split 'train'" in capsys.readouterr().err
    assert cli.main(["plot", runs["mae"], "--kind", "reconstruction", "--frames", "0"]) == 2
    assert "--frames must be an integer >= 1, got 0" in capsys.readouterr().err


def test_missing_matplotlib_names_the_install(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert cli.main(["plot", runs["mae"], "--out", str(tmp_path)]) == 2
    assert 'matplotlib, which is not installed: pip install "skelmae_ext[plot]"' in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert cli.main(["plot", runs["mae"], "--kind", "tsne", "--out", str(tmp_path)]) == 2
    assert 'scikit-learn, which is not installed: pip install "skelmae_ext[plot]"' in capsys.readouterr().err
    plot.require(tsne=False)  # the other figures need only matplotlib
    assert os.listdir(tmp_path) == []
