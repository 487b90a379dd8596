"""The recipes shipped as YAML (skelmae_ext/configs): the command recipes hold every option at its
default, so a copy given to --config is the default run; the demo's budgets are checked."""

import re
import shutil

import pytest
import yaml

from runs import load, skelmae, write_stick
from skelmae_ext import configs
from skelmae_ext.demo import load_config
from skelmae_ext.train import ConfigError
from skelmae_ext.train.config import DEFAULTS, load_yaml


def keys(tree, prefix=""):
    """Every dotted key of a nested dict with its value (dict-valued options as leaves)."""
    for key, value in tree.items():
        if isinstance(value, dict) and prefix + key not in ("model", "optim.args", "data.augmentation"):
            yield from keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def commented_model(path):
    """{key: value} of the ``#   key: value`` lines that document the model's defaults."""
    with open(path) as handle:
        lines = handle.read().split("\nmodel:", 1)[1].split("\noptim:", 1)[0].splitlines()
    return {key: yaml.safe_load(value) for key, value in
            (re.match(r"#\s+(\w+): (.*?)(?:\s+#.*)?$", line).groups() for line in lines[1:])}


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_command_recipes_are_the_defaults(command):
    path = configs.path(command)
    shipped = dict(keys(load_yaml(path)))
    expected = dict(keys(DEFAULTS[command]))
    if command == "pretrain":
        # the model's defaults are comments (another model's arguments must not be forced on it)
        assert shipped.pop("model") == {} and commented_model(path) == expected.pop("model")
    assert shipped == expected


def test_a_copied_recipe_runs_as_the_defaults(tmp_path):
    data, layout = write_stick(tmp_path)
    copy = tmp_path / "mine.yaml"
    shutil.copy(configs.path("pretrain"), copy)
    common = ["--data", data, "--split", "train", "--layout", layout, "--work-dir", tmp_path / "w", "--print-config"]
    with_file = yaml.safe_load(skelmae("pretrain", "--config", copy, *common).stdout)
    without = yaml.safe_load(skelmae("pretrain", *common).stdout)
    assert with_file == without and with_file["train"]["epochs"] == DEFAULTS["pretrain"]["train"]["epochs"]


def test_demo_budgets():
    default, quick = load_config(), load_config(quick=True)
    assert default["per_class"] is None and quick["per_class"] == 6
    assert default["pretrain"]["train"]["epochs"] > quick["pretrain"]["train"]["epochs"]
    assert load_config(configs.path("demo")) == default


def test_demo_runs_a_copied_budget(tmp_path):
    budget = load_config(quick=True)
    budget["per_class"] = 3
    budget["pretrain"]["train"]["epochs"] = 1
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(budget))
    result = skelmae("demo", "--config", path, "--work-dir", tmp_path / "d", "--threads", "1")
    assert "[1/4] pre-training SkeletonMAE on xstyle_train (30 sequences, labels unused), 1 epochs" in result.stdout
    assert load(tmp_path / "d" / "pretrain" / "latest.pth")["epoch"] == 1


def test_demo_config_errors(tmp_path):
    bad = dict(load_config(quick=True), pretrian={})
    with pytest.raises(ConfigError, match="unknown key pretrian"):
        load_config(bad)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(dict(load_config(quick=True), test={"num_clip": 2})))
    result = skelmae("demo", "--config", path, "--work-dir", tmp_path / "d", check=False)
    assert result.returncode == 2 and "unknown key test.num_clip" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_unknown_shipped_name():
    with pytest.raises(ValueError, match="no shipped configuration 'demo_slow'"):
        configs.path("demo_slow")
