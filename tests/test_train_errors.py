"""Errors a user can act on: each exits with status 2 and one line naming the problem and the
fix, without a traceback (``--debug`` shows it). Run in this process through ``cli.main``; one
case also as a subprocess."""

import json

import pytest
import torch
import yaml

from skelmae_ext import cli, train

from annotations import write_pickle
from runs import STICK, TINY, skelmae, write_stick
from skelmae_ext.data import read_pickle


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()  # runs set this process's thread count
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pre-training and a fine-tuning work directory of tiny models on the stick data."""
    folder = tmp_path_factory.mktemp("errors")
    data, layout = write_stick(folder)
    threads = torch.get_num_threads()
    common = {"layout": layout, "clip_len": 8}
    small = {"epochs": 1, "batch_size": 4, "threads": 1}
    train.pretrain({"data": dict(common, source=data, split="train"), "model": {"embed_dim": 8},
                    "train": dict(small, work_dir=str(folder / "mae"))})
    train.finetune({"data": dict(common, source=data, train_split="train", val_split="val"),
                    "train": dict(small, work_dir=str(folder / "ssl"), pretrained=str(folder / "mae"))})
    torch.set_num_threads(threads)
    return {"folder": folder, "data": data, "layout": layout, "mae": folder / "mae", "ssl": folder / "ssl"}


def fails(capsys, *argv):
    """Runs the command line, expects exit status 2 and one line: returns it."""
    assert cli.main([str(a) for a in argv]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    return error


def pretrain_args(runs, *extra):
    return ["pretrain", "--data", runs["data"], "--split", "train", "--layout", runs["layout"], "--work-dir",
            runs["folder"] / "new", *TINY, *extra]


def finetune_args(runs, *extra):
    return ["finetune", "--data", runs["data"], "--train-split", "train", "--val-split", "val", "--work-dir",
            runs["folder"] / "new", "--pretrained", runs["mae"], *TINY, *extra]


def test_missing_data_file(capsys, runs):
    error = fails(capsys, "pretrain", "--data", runs["folder"] / "nope.pkl", "--split", "train", "--work-dir",
                  runs["folder"] / "new")
    assert "nope.pkl: no such file or directory" in error


def test_unknown_split(capsys, runs):
    error = fails(capsys, *pretrain_args(runs)[:3], "--split", "xsub_train", *pretrain_args(runs)[5:])
    assert "unknown split 'xsub_train'; the file has ['train', 'val']" in error


def test_layout_that_does_not_fit_the_data(capsys, runs):
    args = pretrain_args(runs)
    args[args.index("--layout") + 1] = "coco"
    assert "the keypoints have 13 joints but layout 'coco' has 17: pass the layout the data was made with" in fails(
        capsys, *args)
    args.remove("--layout"), args.remove("coco")
    assert "no layout is implied by 13 joints" in fails(capsys, *args)
    assert "--layout (data.layout): unknown layout 'missing.json'" in fails(capsys, *args, "--layout", "missing.json")


def test_fine_tuning_checkpoint_as_pretrained(capsys, runs):
    args = finetune_args(runs)
    args[args.index("--pretrained") + 1] = runs["ssl"]
    error = fails(capsys, *args)
    assert "best.pth is a finetune checkpoint, but a pretrain checkpoint is needed: --pretrained takes" in error


def test_pretraining_checkpoint_to_test(capsys, runs):
    error = fails(capsys, "test", "--data", runs["data"], "--split", "val", "--checkpoint", runs["mae"])
    assert "latest.pth is a pretrain checkpoint, but a finetune checkpoint is needed" in error
    assert "skelmae extract and skelmae knn" in error


def test_checkpoint_of_another_width_channels_or_layout(capsys, runs):
    assert "model.embed_dim is 16 but" in fails(capsys, *finetune_args(runs, "--embed-dim", 16))
    assert "was pre-trained on 2 input channels, and this run's features give 4" in fails(
        capsys, *finetune_args(runs, "--feats", "j", "b"))
    other = dict(STICK, edges=[[0, 1], [2, 1], [3, 2], [4, 3], [5, 1], [6, 5], [7, 6], [8, 1], [9, 8], [10, 9],
                                [11, 8], [12, 8]])
    path = runs["folder"] / "other.json"
    path.write_text(json.dumps(other))
    assert "is not the layout 'stick13' that" in fails(capsys, *finetune_args(runs, "--layout", path))
    # resuming a work directory with a model of another width
    args = pretrain_args(runs, "--embed-dim", 16)
    args[args.index("--work-dir") + 1] = runs["mae"]
    assert "was written by a run of another model or optimiser" in fails(capsys, *args)


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1])
def test_label_fraction_outside_zero_one(capsys, runs, fraction):
    error = fails(capsys, *finetune_args(runs, "--label-fraction", fraction))
    assert f"--label-fraction (data.label_fraction): must be in (0, 1], got {float(fraction)}" in error


def test_missing_or_foreign_checkpoint(capsys, runs):
    test = ["test", "--data", runs["data"], "--split", "val", "--checkpoint"]
    assert "nope.pth: no such file or directory" in fails(capsys, *test, runs["folder"] / "nope.pth")
    assert "holds no best.pth or latest.pth" in fails(capsys, *test, runs["folder"])
    assert "not a readable checkpoint" in fails(capsys, *test, runs["data"])


def test_bad_options(capsys, runs):
    assert "--amp (train.amp): --amp (bfloat16 / float16 autocast) needs a CUDA GPU" in fails(
        capsys, *pretrain_args(runs, "--amp", "--device", "cpu"))
    assert "--split (data.split): is required" in fails(capsys, *pretrain_args(runs)[:3], *pretrain_args(runs)[5:])
    assert "--epochs (train.epochs): must be an integer >= 1, got 0" in fails(capsys, *pretrain_args(runs, "--epochs", 0))
    config = runs["folder"] / "typo.yaml"
    config.write_text(yaml.safe_dump({"train": {"epoch": 3}}))
    assert "train.epoch: unknown option; did you mean train.epochs?" in fails(capsys, *pretrain_args(runs, "--config",
                                                                                                     config))
    assert "missing.yaml: no such file" in fails(capsys, *pretrain_args(runs, "--config", "missing.yaml"))
    assert "--set: expected KEY=VALUE" in fails(capsys, *pretrain_args(runs, "--set", "model.beta"))
    assert "model: SkeletonMAE(" in fails(capsys, *pretrain_args(runs, "--set", "model.bogus=1"))


@pytest.mark.parametrize("option, value, message", [
    ("--weight-decay", -1, "--weight-decay (optim.args.weight_decay): must be >= 0, got -1.0"),
    ("--weight-decay", "nan", "--weight-decay (optim.args.weight_decay): must be a finite number, got nan"),
    ("--lr", "inf", "--lr (optim.lr): must be a finite number, got inf"),
    ("--warmup-epochs", "inf", "--warmup-epochs (optim.warmup_epochs): must be a finite number, got inf"),
    ("--num-layers", 100000, "--num-layers (model.num_layers): must be an integer in 1..64, got 100000"),
    ("--set", "optim.args.momentum=-0.5", "optim.args.momentum: must be >= 0, got -0.5"),
])
def test_numbers_out_of_range(capsys, runs, option, value, message):
    assert message in fails(capsys, *pretrain_args(runs, option, value, "--print-config"))


def test_configuration_text_that_is_not_plain_yaml(capsys, runs):
    error = fails(capsys, *pretrain_args(runs, "--set", "model.beta=!!python/name:os.system"))
    assert "--set: 'model.beta=!!python/name:os.system': the value is not plain YAML (could not determine a " in error
    binary = runs["folder"] / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert f"--config: {binary} is not a text file (invalid start byte at byte 0): pass a YAML file" in fails(
        capsys, *pretrain_args(runs, "--config", binary))
    # nine values, nine times over, eight levels deep: 43 million strings once expanded
    bomb = runs["folder"] / "bomb.yaml"
    levels = ["model:", '  l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)]
    bomb.write_text("\n".join(levels) + "\n")
    assert f"--config: {bomb} is not valid YAML (an alias (*name): write the value out instead" in fails(
        capsys, *pretrain_args(runs, "--config", bomb))


def test_paths_that_cannot_be_used(capsys, runs):
    new = runs["folder"] / "new"
    error = fails(capsys, *pretrain_args(runs)[:-len(TINY)], "--work-dir", runs["data"], *TINY)
    assert error == (f"skelmae pretrain: error: {runs['data']}: expected a directory (or no file), found a file "
                     "(FileExistsError, errno 17)")
    test = ["test", "--data", runs["data"], "--split", "val", "--checkpoint", runs["ssl"]]
    assert f"--out (out): {runs['folder']} is a directory; expected the path of a file to write" in fails(
        capsys, *test, "--out", runs["folder"])
    assert f"--out (out): {new}/x/scores.pkl: the folder {new}/x does not exist" in fails(
        capsys, *test, "--out", new / "x" / "scores.pkl")
    read_only = OSError(30, "Read-only file system", str(runs["folder"] / "latest.pth"))
    assert cli._os_message(read_only) == f"{runs['folder'] / 'latest.pth'}: Read-only file system (OSError, errno 30)"
    denied = PermissionError(13, "Permission denied", "/data/ntu.pkl")
    assert cli._os_message(denied) == ("/data/ntu.pkl: permission denied: choose a path this user may read and write "
                                       "(PermissionError, errno 13)")


def test_data_problems_through_the_command_line(capsys, runs, tmp_path):
    data = read_pickle(runs["data"])
    data["split"]["empty"] = []
    del data["annotations"][0]["keypoint"]
    path = write_pickle(tmp_path / "odd.pkl", data)
    argv = pretrain_args(runs)
    argv[argv.index("--data") + 1] = path
    assert f"{path}: split 'empty' is empty: choose another split" in fails(capsys, *argv, "--split", "empty")
    assert cli.main([str(a) for a in argv]) == 2  # the first sample, without keypoint, is named; the layout is the others'
    assert capsys.readouterr().err.splitlines() == [
        f"skelmae pretrain: error: {path} (split 'train'): 1 of 12 samples cannot be used:",
        "  sample 'train_0': has no 'keypoint': add its array [M, T, V, C] or drop the sample"]


def test_extract_writes_the_path_it_prints(runs, tmp_path):
    out = tmp_path / "features"  # no .npz: written as named
    result = train.extract(runs["data"], "val", str(runs["mae"]), str(out))
    assert result["out"] == str(out) and out.is_file() and not (tmp_path / "features.npz").exists()
    assert train.knn(str(out), str(out), k=1)["num_samples"] == 6


def test_finished_run_resumed(runs, tmp_path):
    argv = pretrain_args(runs, "--epochs", 1)
    argv[argv.index("--work-dir") + 1] = tmp_path / "run"
    assert cli.main([str(a) for a in argv]) == 0
    assert cli.main([str(a) for a in argv]) == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "resumed from" in log and "1 epochs done of 1: nothing to train (raise --epochs to go on)" in log
    assert "epoch 2/1" not in log


def test_diverged_training_stops_at_the_first_non_finite_loss(capsys, runs):
    work_dir = runs["folder"] / "diverged"
    argv = ["finetune", "--data", runs["data"], "--train-split", "train", "--val-split", "val", "--layout",
            runs["layout"], "--work-dir", work_dir, *TINY, "--lr", "1e30", "--log-every-steps", 1, "--epochs", 2]
    assert cli.main([str(a) for a in argv]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's start line
    assert error.startswith("skelmae finetune: error: the training loss is ") and "at epoch 1, step " in error, error
    assert error.endswith("the run diverged (try a lower --lr, or --set optim.clip_grad_norm=1); nothing was saved")
    assert not (work_dir / "latest.pth").exists()


def test_step_saves_never_write_a_diverged_state(capsys, runs):
    work_dir = runs["folder"] / "diverged_steps"
    argv = ["finetune", "--data", runs["data"], "--train-split", "train", "--val-split", "val", "--layout",
            runs["layout"], "--work-dir", work_dir, *TINY, "--lr", "1e30", "--save-every-steps", 1, "--epochs", 2]
    assert cli.main([str(a) for a in argv]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    latest = work_dir / "latest.pth"
    assert error.startswith("skelmae finetune: error: the weights hold NaN / inf values at epoch 1, step 2: the run "
                            "diverged") and error.endswith(f"{latest} keeps the finite state of step 1"), error
    state = torch.load(latest, weights_only=False)
    assert state["step"] == 1 and all(torch.isfinite(value).all() for value in state["model"].values())


def test_exit_status_and_debug_traceback(runs):
    args = ["test", "--data", runs["data"], "--split", "val", "--checkpoint", runs["folder"] / "nope.pth"]
    result = skelmae(*args, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"skelmae test: error: --checkpoint {runs['folder'] / 'nope.pth'}: no such file or directory: pass a "
        "checkpoint (.pth) or a work directory"]
    assert "Traceback" in skelmae(*args, "--debug", check=False).stderr
