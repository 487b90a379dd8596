"""The recipes' parts: the learning-rate schedule and its linear scaling with the batch, the
linear probe (a frozen pre-trained encoder), the class-balanced label fraction, and the
configuration's merge and checks, through the Python API."""

import math

import numpy as np
import pytest
import torch
import yaml

from skelmae_ext import plot, train
from skelmae_ext.train import ConfigError, config, engine, finetuning, inputs

from runs import load, write_stick


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()  # runs set this process's thread count
    yield
    torch.set_num_threads(threads)


def test_schedule_warms_up_then_follows_a_cosine():
    optim = {"warmup_epochs": 1, "schedule": "cosine"}
    factor = engine.schedule(optim, steps_per_epoch=4, epochs=3)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for step in range(4, 12):
        assert factor(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * (step - 4) / 8)))
    constant = engine.schedule({"warmup_epochs": 0.5, "schedule": "constant"}, 4, 3)
    assert [constant(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_learning_rate_scales_with_the_batch():
    assert config.resolve_lr(config.DEFAULTS["finetune"]["optim"], 16) == pytest.approx(0.0125)  # PYSKL 0.1 at 128
    assert config.resolve_lr(config.DEFAULTS["pretrain"]["optim"], 64) == pytest.approx(6e-4)
    assert config.resolve_lr(dict(config.DEFAULTS["pretrain"]["optim"], lr=0.01), 64) == 0.01


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipes")
    data, layout = write_stick(folder)
    train.pretrain({"data": {"source": data, "split": "train", "layout": layout, "clip_len": 8, "repeat": 1},
                    "model": {"embed_dim": 8}, "train": {"work_dir": folder / "mae", "epochs": 1, "batch_size": 4,
                                                         "threads": 1}})
    return folder, data


def finetune(folder, data, name, pretrained="mae", **options):
    model, optim = options.pop("model", {}), options.pop("optim", {})
    return train.finetune({"data": dict({"source": data, "train_split": "train", "val_split": "val", "clip_len": 8,
                                         "repeat": 1}, **options),
                           "model": model, "optim": optim,
                           "train": {"work_dir": folder / name, "epochs": 2, "batch_size": 2, "threads": 1,
                                     "pretrained": pretrained and folder / pretrained}})


def test_linear_probe_keeps_the_pretrained_encoder(pretrained):
    folder, data = pretrained
    finetune(folder, data, "probe", model={"freeze_encoder": True})
    encoder, state = load(folder / "mae" / "latest.pth")["model"], load(folder / "probe" / "latest.pth")
    probe = state["model"]
    assert state["model_args"]["freeze_encoder"] and state["model_args"]["embed_dim"] == 8
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for layer in range(3):
        for key, value in encoder.items():
            if key.startswith("encoder.gin."):
                # weights frozen; BatchNorm statistics re-estimated at the copy's depth
                same = torch.equal(probe[f"strl.layers.{layer}.encoder." + key[len("encoder.gin."):]], value)
                assert same != key.endswith(statistics), key
    assert torch.equal(probe["strl.embedding.weight"], encoder["encoder.embedding.weight"])


def test_label_fraction_trains_on_a_class_balanced_subset(pretrained):
    folder, data = pretrained
    result = finetune(folder, data, "tenth", label_fraction=0.5)
    assert result["step"] == 2 * 3  # 2 of each class's 4 samples: 6, 3 batches of 2 per epoch
    assert finetune(folder, data, "all")["step"] == 2 * 6


def test_repeat_auto_passes_over_a_small_split_until_an_epoch_is_long_enough(pretrained, monkeypatch):
    assert [inputs.resolve_repeat("auto", n) for n in (1, 12, 1999, 2000, 5000)] == [2000, 167, 2, 1, 1]
    assert inputs.resolve_repeat(3, 5000) == 3
    folder, data = pretrained
    monkeypatch.setattr(inputs, "REPEAT_TO", 12)  # the 6 labelled samples twice an epoch
    result = finetune(folder, data, "repeated", label_fraction=0.5, repeat="auto")
    assert result["step"] == 2 * 6  # 2 epochs of 12 samples in batches of 2
    assert yaml.safe_load((folder / "repeated" / "config.yaml").read_text())["data"]["repeat"] == 2


def test_api_takes_paths_and_partial_configurations(pretrained, tmp_path):
    folder, data = pretrained
    resolved = train.pretraining.plan({"data": {"source": data, "split": "val", "layout": folder / "stick13.json"},
                                       "train": {"work_dir": tmp_path / "w", "batch_size": 64}}).config
    assert resolved["data"]["num_person"] == 1 and resolved["optim"]["lr"] == pytest.approx(6e-4)
    assert resolved["data"]["layout"] == str(folder / "stick13.json") and resolved["train"]["epochs"] == 50
    pretraining = {"data": {"source": data, "split": "val"}, "train": {"work_dir": tmp_path}}
    with pytest.raises(ConfigError, match="data.clip_len: must be an integer >= 1, got 'long'"):
        config.build("pretrain", pretraining, {"data": {"clip_len": "long"}})
    with pytest.raises(ConfigError, match="data.source: is required"):
        config.build("pretrain", {"data": {"split": "val"}})
    with pytest.raises(ConfigError, match="optim.schedul: unknown option; did you mean optim.schedule?"):
        config.build("finetune", {"optim": {"schedul": "cosine"}})
    finetuning = {"data": {"source": data, "train_split": "train", "val_split": "val"}, "train": {"work_dir": tmp_path}}
    merged = config.build("finetune", finetuning, {"model": {"pooling": "mean"}, "optim": {"args": {"dampening": 0.1}}})
    assert merged["model"]["pooling"] == "mean" and merged["optim"]["args"]["momentum"] == 0.9  # handed on as given


def test_encoder_lr_scale_slows_the_pretrained_parts_alone(pretrained):
    """optim.encoder_lr_scale: the encoder (embedding and every layer's GIN copy) learns at
    lr * scale, the rest at lr, both groups kept in the checkpoint's optimizer; from scratch the
    option changes nothing."""
    folder, data = pretrained
    encoder = load(folder / "mae" / "latest.pth")["model"]

    def run(name, scale, **options):
        finetune(folder, data, name, optim={"encoder_lr_scale": scale}, **options)
        return load(folder / name / "latest.pth")

    def moved(state, key):
        return float((state["model"][key] - encoder["encoder." + key.split("strl.", 1)[1]]).abs().max())

    same, slow = run("scale1", 1.0), run("scale1e-6", 1e-6)
    assert len(same["optimizer"]["param_groups"]) == 1
    groups = slow["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.0125 / 8 * 1e-6, 0.0125 / 8])  # lr "auto" at batch 2
    key = "strl.embedding.weight"
    assert moved(same, key) > 1e-3 and moved(slow, key) < 1e-4 * moved(same, key)
    assert len(run("scratch", 1e-6, pretrained=None, layout=folder / "stick13.json")["optimizer"]["param_groups"]) == 1  # nothing pre-trained
    with pytest.raises(ConfigError, match=r"optim.encoder_lr_scale: must be > 0, got 0"):
        config.build("finetune", {"data": {"source": data, "train_split": "train", "val_split": "val"},
                                  "train": {"work_dir": folder / "x"}}, {"optim": {"encoder_lr_scale": 0}})


@pytest.fixture(scope="module")
def trunk(pretrained):
    """The stick data pre-trained with the trunk objective (work dir "trunk")."""
    folder, data = pretrained
    train.pretrain({"data": {"source": data, "split": "train", "layout": folder / "stick13.json", "clip_len": 8,
                             "repeat": 1},
                    "model": {"objective": "trunk", "embed_dim": 8},
                    "train": {"work_dir": folder / "trunk", "epochs": 1, "batch_size": 4, "threads": 1}})
    return pretrained


def test_trunk_objective_pretrains_the_trunk_and_every_trunk_weight_reaches_the_classifier(trunk):
    """--objective trunk: TrunkMAE with its own model defaults; fine-tuning from it starts every
    STRL weight from the pre-training, the head alone random, and the log says so."""
    folder, data = trunk
    state = load(folder / "trunk" / "latest.pth")
    assert state["model_class"] == "TrunkMAE"
    assert state["model_args"]["num_frames"] == 8 and state["model_args"]["target"] == "motion"
    plan = finetuning.plan({"data": {"source": data, "train_split": "train", "val_split": "val", "clip_len": 8},
                            "train": {"work_dir": folder / "from-trunk", "pretrained": folder / "trunk"}})
    trunk = {key[len("strl."):]: value for key, value in state["model"].items() if key.startswith("strl.")}
    assert set(trunk) == set(plan.model.strl.state_dict())
    for key, value in plan.model.strl.state_dict().items():
        assert torch.equal(value, trunk[key]), key
    assert len(plan.notes) == 1 and f"{len(trunk)} weights loaded" in plan.notes[0]
    assert plan.notes[0].endswith("start random (head (4))")


def test_a_trunk_fine_tuned_on_clips_of_another_length_says_which(trunk):
    folder, data = trunk
    with pytest.raises(train.CheckpointError, match=r"pre-trained the trunk on clips of 8 frames, and this run's are "
                                                    r"16: drop --clip-len \(it follows the checkpoint\) or pass 8"):
        finetuning.plan({"data": {"source": data, "train_split": "train", "val_split": "val", "clip_len": 16},
                         "train": {"work_dir": folder / "other", "pretrained": folder / "trunk"}})


def test_the_clip_length_follows_a_trunk_checkpoint_and_is_64_otherwise(trunk):
    folder, data = trunk
    required = {"data": {"source": data, "train_split": "train", "val_split": "val"}}
    from_trunk = finetuning.plan(dict(required, train={"work_dir": folder / "auto", "pretrained": folder / "trunk"}))
    assert from_trunk.config["data"]["clip_len"] == 8 and from_trunk.model.strl.num_frames == 8
    from_frame = finetuning.plan(dict(required, train={"work_dir": folder / "auto-frame", "pretrained": folder / "mae"}))
    assert from_frame.config["data"]["clip_len"] == config.CLIP_LEN == 64
    scratch = dict(required, data=dict(required["data"], layout=str(folder / "stick13.json")))
    assert finetuning.plan(dict(scratch, train={"work_dir": folder / "auto-none"})).config["data"]["clip_len"] == 64


def test_the_objective_picks_its_model_and_optimiser_defaults():
    required = {"data": {"source": "data.pkl", "split": "train"}, "train": {"work_dir": "run"}}
    trunk = config.build("pretrain", required, {"model": {"objective": "trunk"}})
    assert trunk["model"] == dict(objective="trunk", **config.PRETRAIN_MODELS["trunk"])
    assert (trunk["optim"]["base_lr"], trunk["optim"]["schedule"], trunk["optim"]["warmup_epochs"]) == (1e-3, "cosine", 1)
    assert config.resolve_lr(trunk["optim"], 16) == 1e-3
    frame = config.build("pretrain", required)
    assert frame["model"] == dict(objective="frame", **config.PRETRAIN_MODELS["frame"])
    assert (frame["optim"]["base_lr"], frame["optim"]["schedule"]) == (1.5e-4, "constant")
    # an option given wins over the objective's default
    assert config.build("pretrain", required, {"model": {"objective": "trunk"}, "optim": {"schedule": "constant"}})[
        "optim"]["schedule"] == "constant"
    with pytest.raises(ConfigError, match=r"model.objective: must be one of \['frame', 'trunk'\], got 'tube'"):
        config.build("pretrain", required, {"model": {"objective": "tube"}})


def test_a_trunk_pretraining_gives_pooled_features_and_no_skeleton_view(trunk, tmp_path):
    folder, data = trunk
    out = tmp_path / "features.npz"
    train.extract(data, "val", folder / "trunk", out, batch_size=4)
    with np.load(out) as saved:
        assert saved["features"].shape == (6, 8) and np.isfinite(saved["features"]).all()
    with pytest.raises(plot.MissingInput, match=r"pre-trained the trunk \(TrunkMAE\), whose targets are normalised"):
        plot.reconstruction(folder / "trunk")


@pytest.mark.parametrize("option,mode", [(True, None), ("reduce-overhead", "reduce-overhead")])
def test_compile_option_reaches_torch_compile(pretrained, monkeypatch, option, mode):
    """train.compile: true is torch.compile's default mode; a mode name is passed on (the
    compiled module itself is torch.compile's business: test_train_resume runs one)."""
    folder, data = pretrained
    modes = []

    def compile_spy(module, mode=None):
        modes.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", compile_spy)
    train.pretrain({"data": {"source": data, "split": "train", "layout": folder / "stick13.json", "clip_len": 8,
                             "repeat": 1},
                    "model": {"embed_dim": 8},
                    "train": {"work_dir": folder / f"compiled-{option}", "epochs": 1, "batch_size": 4, "threads": 1,
                              "compile": option}})
    assert modes == [mode]


def test_compile_option_names_the_modes():
    required = {"data": {"source": "data.pkl", "split": "train"}, "train": {"work_dir": "run"}}
    with pytest.raises(ConfigError, match=r"train.compile: must be true, false or one of \['default', "
                                          r"'reduce-overhead', 'max-autotune'\], got 'fast'"):
        config.build("pretrain", required, {"train": {"compile": "fast"}})


def test_encoder_lr_scale_slows_every_trunk_weight_a_trunk_pretraining_loaded(trunk):
    folder, data = trunk
    pretrained = load(folder / "trunk" / "latest.pth")["model"]
    state = finetune(folder, data, "trunk-slow", pretrained="trunk", optim={"encoder_lr_scale": 1e-6}) and load(
        folder / "trunk-slow" / "latest.pth")
    groups = state["optimizer"]["param_groups"]
    trunk_parameters = [k for k in state["model"] if k.startswith("strl.") and "running" not in k
                        and "num_batches" not in k]
    assert len(groups) == 2 and len(groups[0]["params"]) == len(trunk_parameters)
    for key in ("strl.layers.0.temporal.branches.0.0.weight", "strl.position"):
        assert float((state["model"][key] - pretrained[key]).abs().max()) < 1e-6
