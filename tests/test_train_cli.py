"""The command line end to end on a user's own data: a PYSKL pickle of a skeleton the library
does not ship (a custom layout JSON) goes pretrain -> finetune (from the pre-training) -> test
-> extract -> knn -> ensemble, each a `python -m skelmae_ext` process; and the work
directory's contents, configuration files and `--print-config`."""

import hashlib
import json
import os
import pickle
import stat

import numpy as np
import pytest
import yaml

from runs import STICK, TINY, json_line, load, records, skelmae, write_stick


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The five-command chain, run once for the module's tests: {name: CompletedProcess}, dirs."""
    folder = tmp_path_factory.mktemp("chain")
    data, layout = write_stick(folder)
    mae, ssl = folder / "mae", folder / "ssl"
    runs = {
        "pretrain": skelmae("pretrain", "--data", data, "--split", "train", "--layout", layout, "--work-dir", mae,
                            "--epochs", 2, "--save-every", 1, "--mask-parts", 3, 5, *TINY),
        "finetune": skelmae("finetune", "--data", data, "--train-split", "train", "--val-split", "val", "--layout",
                            layout, "--work-dir", ssl, "--pretrained", mae, "--epochs", 2, "--warmup-epochs", 1,
                            *TINY),
        "test": skelmae("test", "--data", data, "--split", "val", "--checkpoint", ssl, "--num-clips", 2,
                        "--batch-size", 4),
        "extract_train": skelmae("extract", "--data", data, "--split", "train", "--checkpoint", mae / "latest.pth",
                                 "--out", folder / "train.npz"),
        "extract_val": skelmae("extract", "--data", data, "--split", "val", "--checkpoint", mae,
                               "--out", folder / "val.npz"),
        "knn": skelmae("knn", "--train", folder / "train.npz", "--test", folder / "val.npz", "--k", 3),
    }
    return runs, {"folder": folder, "data": data, "mae": mae, "ssl": ssl}


def test_pretraining_work_dir(chain):
    runs, paths = chain
    mae = paths["mae"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(mae / "latest.pth").st_mode) == 0o666 & ~umask  # as any file the user writes
    assert {"config.yaml", "run.jsonl", "log.txt", "log.jsonl", "latest.pth", "epoch_1.pth", "epoch_2.pth"} <= set(
        os.listdir(mae))
    result = json_line(runs["pretrain"])
    assert result["kind"] == "pretrain" and result["epoch"] == 2 and result["step"] == 6  # 12 samples / batch 4
    checkpoint = load(mae / "latest.pth")
    assert checkpoint["kind"] == "pretrain" and checkpoint["layout"]["name"] == "stick13"
    assert checkpoint["layout"]["edges"] == STICK["edges"] and checkpoint["model_class"] == "SkeletonMAE"
    assert checkpoint["model_args"]["embed_dim"] == 8 and checkpoint["model_args"]["in_channels"] == 2
    assert checkpoint["class_names"] == ["wave", "walk", "sit"] and checkpoint["config"]["data"]["num_person"] == 2
    config = yaml.safe_load((mae / "config.yaml").read_text())
    assert config["data"]["clip_len"] == 8 and config["model"]["mask_parts"] == [3, 5] and config["optim"]["lr"] == 1.5e-4 / 16 * 4
    run = json.loads((mae / "run.jsonl").read_text().splitlines()[0])
    assert run["data"]["sha256"] == hashlib.sha256(open(paths["data"], "rb").read()).hexdigest()
    assert run["kernels"]["backend"] == "cpu" and run["seed"] == 0 and "pretrain" in run["command"]
    assert "weights" not in run  # started from random weights
    epochs = records(mae, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2] and all(r["loss"] > 0 and r["samples_per_s"] > 0 for r in epochs)
    assert "epoch 2/2" in (mae / "log.txt").read_text()


def test_finetuning_from_the_pretraining(chain):
    runs, paths = chain
    ssl = paths["ssl"]
    result = json_line(runs["finetune"])
    assert result["kind"] == "finetune" and 0 <= result["val_top1"] <= 1 and result["best_checkpoint"]
    best, pretrained = load(ssl / "best.pth"), load(paths["mae"] / "latest.pth")
    assert best["kind"] == "finetune" and best["model_args"]["embed_dim"] == 8  # the encoder's width, followed
    assert best["model_args"]["num_persons"] == 2 and best["model_args"]["num_frames"] == 8
    run = json.loads((ssl / "run.jsonl").read_text().splitlines()[0])
    assert run["weights"]["source"] == str(paths["mae"] / "latest.pth")  # the file the work dir stood for
    epochs = records(ssl, "epoch")
    assert {"val_top1", "val_top5", "val_mean_class_accuracy", "train_top1", "best_top1", "lr"} <= set(epochs[-1])
    assert best["best"]["top1"] == max(r["val_top1"] for r in epochs)
    # the first epoch's encoder started from the pre-trained one: its embedding moved away, from there
    assert best["model"]["strl.embedding.weight"].shape == pretrained["model"]["encoder.embedding.weight"].shape


def test_test_scores_and_record(chain):
    runs, paths = chain
    result = json_line(runs["test"])
    assert result["num_samples"] == 6 and {"top1", "top5", "mean_class_accuracy"} <= set(result)
    dump = pickle.load(open(result["scores"], "rb"))
    assert os.path.dirname(result["scores"]) == str(paths["ssl"]) and result["scores"].endswith("scores_val.pkl")
    assert dump["frame_dir"] == [f"val_{i}" for i in range(6)] and list(dump["label"]) == [0, 1, 2, 2, 1, 0]
    assert dump["scores"].shape == (6, 3) and np.allclose(dump["scores"].sum(1), 1, atol=1e-5)
    assert dump["class_names"] == ["wave", "walk", "sit"] and dump["num_clips"] == 2
    assert dump["checkpoint"].endswith("best.pth")
    line = json.loads((paths["ssl"] / "test.jsonl").read_text().splitlines()[-1])
    assert line["top1"] == result["top1"] and line["split"] == "val" and line["num_clips"] == 2


def test_extract_and_knn(chain):
    runs, paths = chain
    assert json_line(runs["extract_val"]) == {"out": str(paths["folder"] / "val.npz"), "num_samples": 6, "dim": 8,
                                              "kind": "pretrain"}
    with np.load(paths["folder"] / "val.npz", allow_pickle=False) as features:
        assert features["features"].shape == (6, 8) and list(features["label"]) == [0, 1, 2, 2, 1, 0]
        assert list(features["frame_dir"]) == [f"val_{i}" for i in range(6)]
        assert list(features["class_names"]) == ["wave", "walk", "sit"] and str(features["kind"]) == "pretrain"
    result = json_line(runs["knn"])
    assert result["num_samples"] == 6 and result["num_train"] == 12 and result["k"] == 3 and 0 <= result["top1"] <= 1


def test_ensemble_of_the_test_dump(chain):
    runs, _ = chain
    scores = json_line(runs["test"])["scores"]
    fused = json_line(skelmae("ensemble", "--scores", scores, scores, "--weights", 1, 3))
    assert fused["top1"] == json_line(runs["test"])["top1"] and fused["weights"] == [1.0, 3.0]


def test_config_file_and_command_line(tmp_path):
    data, layout = write_stick(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": str(data), "split": "train", "layout": layout, "clip_len": 12},
                                      "train": {"epochs": 7, "work_dir": str(tmp_path / "w")},
                                      "model": {"embed_dim": 16, "beta": 3.0}}))
    printed = yaml.safe_load(skelmae("pretrain", "--config", config, "--epochs", 3, "--set", "optim.args.weight_decay=0.01",
                                     "--set", "optim.args.eps=1e-6", "--mask-strategy", "random_joints",
                                     "--mask-ratio", 0.3, "--print-config").stdout)
    assert printed["train"]["epochs"] == 3  # the command line wins
    assert printed["data"]["clip_len"] == 12 and printed["model"]["embed_dim"] == 16 and printed["model"]["beta"] == 3.0
    assert printed["optim"]["args"]["weight_decay"] == 0.01 and printed["data"]["num_person"] == 2
    assert printed["optim"]["args"]["eps"] == 1e-6  # YAML 1.1 would have read the string "1e-6"
    assert printed["optim"]["lr"] == 1.5e-4 and printed["train"]["device"] == "cpu"
    assert printed["model"]["mask_strategy"] == "random_joints" and printed["model"]["mask_ratio"] == 0.3
    assert not (tmp_path / "w").exists()  # --print-config writes nothing


def test_describe_and_info(tmp_path):
    data, _ = write_stick(tmp_path)
    assert "split train: 12 samples" in skelmae("describe", data).stdout
    assert json.loads(skelmae("describe", data, "--json").stdout)["joints"] == 13
    info = json.loads(skelmae("info").stdout)
    assert {"python", "torch", "cuda", "triton", "kernels", "cpu", "gpus"} <= set(info)
    assert info["kernels"]["cpu"]["backend"] in ("cpu", "reference") and info["cpu"]["torch_capability"]
