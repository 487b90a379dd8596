"""The encoder shipped with the package (skelmae_ext.pretrained): a pre-training checkpoint
that --pretrained and SSLClassifier.from_pretrained take by name."""

import hashlib
import json
import os

import pytest
import torch

import skelmae_ext
from skelmae_ext import pretrained
from skelmae_ext.train.checkpoint import load
from runs import skelmae

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "bandai2_coco2d_sample.pkl")


def test_coco17_is_a_small_coco_pretraining_checkpoint_without_training_state():
    state = load(pretrained.path("coco17"))
    assert state["kind"] == "pretrain" and state["model_class"] == "SkeletonMAE"
    assert state["layout"] == skelmae_ext.get_layout("coco").to_dict()
    assert state["model_args"]["in_channels"] == 2
    assert not {"optimizer", "scheduler", "rng", "loader"} & state.keys()
    assert os.path.getsize(pretrained.path("coco17")) < 2 ** 20


def test_from_pretrained_by_name_copies_the_shipped_encoder_into_every_strl_layer():
    weights = load(pretrained.path("coco17"))["model"]
    model = skelmae_ext.SSLClassifier(num_classes=4, layout="coco", backend="reference").from_pretrained("coco17")
    torch.testing.assert_close(model.strl.embedding.weight, weights["encoder.embedding.weight"], rtol=0, atol=0)
    gin = {key[len("encoder.gin."):]: value for key, value in weights.items() if key.startswith("encoder.gin.")}
    for layer in model.strl.layers:
        state = layer.encoder.state_dict()
        assert state.keys() == gin.keys()
        for key, value in gin.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_a_file_of_the_same_name_wins_over_the_shipped_encoder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco17").mkdir()
    assert pretrained.resolve("coco17") == "coco17"
    assert pretrained.resolve(pretrained.path("coco17")) == pretrained.path("coco17")


def test_unknown_names_are_refused_with_the_shipped_ones():
    with pytest.raises(ValueError, match=r"no shipped encoder 'coco18': the package has \['coco17'\]"):
        pretrained.path("coco18")


def test_export_keeps_the_weights_and_drops_the_training_state(tmp_path):
    source = tmp_path / "full.pth"
    full = dict(load(pretrained.path("coco17")), optimizer={"state": {}}, rng=[torch.zeros(3)])
    torch.save(full, source)
    pretrained.export(source, tmp_path / "small.pth")
    small = load(tmp_path / "small.pth")
    assert "optimizer" not in small and "rng" not in small
    for key, value in full["model"].items():
        torch.testing.assert_close(small["model"][key], value, rtol=0, atol=0)


def test_export_refuses_a_fine_tuning_checkpoint(tmp_path):
    torch.save(dict(load(pretrained.path("coco17")), kind="finetune"), tmp_path / "ssl.pth")
    with pytest.raises(ValueError, match="a 'finetune' checkpoint; a pre-training one is needed"):
        pretrained.export(tmp_path / "ssl.pth", tmp_path / "out.pth")


def test_finetune_takes_the_shipped_encoder_by_name(tmp_path):
    work = tmp_path / "ssl"
    skelmae("finetune", "--data", DATA, "--train-split", "xstyle_train", "--val-split", "xstyle_val",
            "--work-dir", work, "--pretrained", "coco17", "--epochs", "1", "--clip-len", "8", "--batch-size", "4",
            "--threads", "1", "--repeat", "1")
    config = (work / "config.yaml").read_text()
    assert "pretrained: coco17" in config
    run, shipped = load(work / "latest.pth"), load(pretrained.path("coco17"))
    assert run["model_args"]["embed_dim"] == shipped["model_args"]["embed_dim"]
    assert run["layout"] == shipped["layout"]
    # run.jsonl names the file the name stood for, and its hash: the run can be traced to its weights
    record = json.loads((work / "run.jsonl").read_text().splitlines()[0])
    assert record["weights"] == {"source": pretrained.path("coco17"),
                                 "sha256": hashlib.sha256(open(pretrained.path("coco17"), "rb").read()).hexdigest()}


def test_finetune_names_the_shipped_encoders_when_pretrained_is_neither_file_nor_name(tmp_path):
    result = skelmae("finetune", "--data", DATA, "--train-split", "xstyle_train", "--val-split", "xstyle_val",
                     "--work-dir", tmp_path / "ssl", "--pretrained", "coco18", "--epochs", "1", check=False)
    assert result.returncode != 0
    assert "--pretrained coco18: no such file or directory" in result.stderr
    assert "coco17" in result.stderr
