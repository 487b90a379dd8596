"""`skelmae demo --quick` end to end, as CI runs it: a process of its own on the bundled data
(the smoke-test budget), its runs, what it prints and its figures."""

import json
import os
import re
import types

import numpy as np
import pytest

from runs import load, records, skelmae
from skelmae_ext import cli
from skelmae_ext.data import load_annotations, read_pickle
from skelmae_ext.demo import MARK, claim_work_dir, load_config
from test_plot import check_png

FIGURES = {"curves_pretrain.png": "curves", "curves_finetune.png": "curves", "confusion_pretrained.png": "confusion",
           "confusion_scratch.png": "confusion", "reconstruction.png": "reconstruction",
           "tsne_pretrained_encoder.png": "tsne"}


def quick_budget():
    """The --quick budget, from the shipped demo_quick.yaml, as attributes."""
    config = load_config(quick=True)
    return types.SimpleNamespace(per_class=config["per_class"], clip_len=config["pretrain"]["data"]["clip_len"],
                                 pretrain_epochs=config["pretrain"]["train"]["epochs"],
                                 finetune_epochs=config["finetune"]["train"]["epochs"],
                                 label_fraction=config["finetune"]["data"]["label_fraction"],
                                 batch_size=config["finetune"]["train"]["batch_size"],
                                 test_clips=config["test"]["num_clips"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("demo") / "run"
    result = skelmae("demo", "--quick", "--work-dir", work_dir, "--threads", "1")
    return work_dir, result.stdout


def test_runs_of_the_demo(demo):
    work_dir, _ = demo
    budget = quick_budget()
    data = load_annotations(str(work_dir / "data.pkl"))  # the quick budget's subset of the bundled data
    labels = {a["frame_dir"]: a["label"] for a in data["annotations"]}
    for split in ("xstyle_train", "xstyle_val"):
        counts = np.bincount([labels[name] for name in data["split"][split]], minlength=10)
        assert list(counts) == [budget.per_class] * 10
    pretrained = load(work_dir / "pretrain" / "latest.pth")
    assert pretrained["kind"] == "pretrain" and pretrained["epoch"] == budget.pretrain_epochs
    assert pretrained["config"]["data"]["clip_len"] == budget.clip_len
    trained = {}
    for name in ("finetune_pretrained", "finetune_scratch"):
        state = load(work_dir / name / "latest.pth")
        assert state["kind"] == "finetune" and state["epoch"] == budget.finetune_epochs
        assert state["config"]["data"]["label_fraction"] == budget.label_fraction
        trained[name] = state
        assert len(records(work_dir / name, "epoch")) == budget.finetune_epochs
    assert trained["finetune_pretrained"]["config"]["train"]["pretrained"] == str(work_dir / "pretrain")
    assert trained["finetune_scratch"]["config"]["train"]["pretrained"] is None
    # the same budget on both sides: the class-balanced share of each class's sequences, whole batches
    labelled = 10 * max(1, round(budget.label_fraction * budget.per_class))
    steps = budget.finetune_epochs * (labelled // budget.batch_size)
    assert trained["finetune_pretrained"]["step"] == trained["finetune_scratch"]["step"] == steps
    features = np.load(work_dir / "pretrain" / "features_xstyle_val.npz")
    assert features["features"].shape == (10 * budget.per_class, 64) and str(features["kind"]) == "pretrain"


def test_printed_accuracies_are_the_tests(demo):
    work_dir, out = demo
    printed = dict(re.findall(r"(from SkeletonMAE pre-training|from scratch)\s+top-1\s+([\d.]+)%", out))
    assert len(printed) == 2, out
    top1 = {}
    for name, run in (("from SkeletonMAE pre-training", "finetune_pretrained"), ("from scratch", "finetune_scratch")):
        with open(work_dir / run / "test.jsonl") as handle:
            test = json.loads(handle.read().splitlines()[-1])
        dump = read_pickle(test["scores"])
        budget = quick_budget()
        assert dump["num_clips"] == budget.test_clips and len(dump["label"]) == 10 * budget.per_class
        assert os.path.basename(dump["checkpoint"]) == "latest.pth"  # the last epoch, not one chosen on this split
        top1[name] = 100 * np.mean(np.asarray(dump["scores"]).argmax(1) == np.asarray(dump["label"]))
        assert float(printed[name]) == pytest.approx(top1[name], abs=0.05)
    difference = float(re.search(r"difference\s+([-+][\d.]+) points of top-1", out).group(1))
    assert difference == pytest.approx(top1["from SkeletonMAE pre-training"] - top1["from scratch"], abs=0.05)
    assert "quick smoke test" in out and "Wall time" in out


def test_figures_of_the_demo(demo):
    work_dir, out = demo
    figures = work_dir / "figures"
    assert sorted(os.listdir(figures)) == sorted(FIGURES)
    for name, kind in FIGURES.items():
        check_png(figures / name, kind)
        assert f"  {name}" in out
    assert f"Figures in {figures}" in out


def test_demo_keeps_other_files(tmp_path, capsys):
    own = tmp_path / "own"
    own.mkdir()
    (own / "data.pkl").write_bytes(b"a run's data")
    assert cli.main(["demo", "--quick", "--work-dir", str(own)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"skelmae demo: error: --work-dir: {own} holds files of something other than the demo, which would overwrite "
        "them: choose a new or empty directory, or pass --force")
    assert (own / "data.pkl").read_bytes() == b"a run's data"
    (tmp_path / "file").write_text("")
    assert cli.main(["demo", "--quick", "--work-dir", str(tmp_path / "file")]) == 2
    assert "is a file; expected a directory" in capsys.readouterr().err
    claim_work_dir(own, force=True)  # --force takes the directory; from then on it is the demo's
    claim_work_dir(own, force=False)
    assert (own / MARK).is_file()
