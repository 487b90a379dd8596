"""Evaluation against values computed independently: `evaluate`'s metrics and multi-clip
averaging against the reference model run clip by clip, the metrics, the KNN classifier and
the fusion of score dumps against hand-computed numbers, and the pooled features of a
pre-trained encoder."""

import math
import pickle

import numpy as np
import pytest
import torch

import skelmae_ext
import skelmae_reference
from skelmae_ext import train
from skelmae_ext.data import DataError, SkeletonDataset, load_annotations, save_annotations
from skelmae_ext.train import CheckpointError, ConfigError, metrics
from skelmae_ext.train.evaluate import pooled_features

from runs import STICK, load, write_stick


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A fine-tuning checkpoint of a tiny classifier (one epoch on the stick data)."""
    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("evaluate")
    data, layout = write_stick(folder)
    train.finetune({"data": {"source": data, "train_split": "train", "val_split": "val", "layout": layout,
                             "clip_len": 8, "repeat": 1},
                    "model": {"embed_dim": 8}, "train": {"work_dir": str(folder / "ssl"), "epochs": 1,
                                                         "batch_size": 4, "threads": 1}})
    torch.set_num_threads(threads)  # the run set this process's threads
    return data, folder / "ssl" / "best.pth"


def reference_scores(data, checkpoint_path, num_clips):
    """Softmax of the reference model on each test clip of each sample, averaged: [N, K]."""
    state = load(checkpoint_path)
    model = skelmae_reference.SSLClassifier(layout=state["layout"], **state["model_args"])
    model.load_state_dict(state["model"])
    model.eval()
    dataset = SkeletonDataset(data, "val", layout=STICK, mode="test", num_clips=num_clips, clip_len=8, num_person=2)
    with torch.no_grad():
        return np.stack([np.mean([model(clip[None]).softmax(1)[0].numpy() for clip in dataset[i][0]], axis=0)
                         for i in range(len(dataset))])


@pytest.mark.parametrize("num_clips", [1, 3])
def test_evaluate_averages_the_softmax_over_clips(finetuned, tmp_path, num_clips):
    data, checkpoint = finetuned
    out = tmp_path / "scores.pkl"
    result = train.evaluate(data, "val", str(checkpoint), num_clips=num_clips, out=str(out), batch_size=4)
    expected = reference_scores(data, checkpoint, num_clips)
    dump = pickle.load(open(out, "rb"))
    np.testing.assert_allclose(dump["scores"], expected, rtol=1e-4, atol=1e-5)
    labels = np.array([0, 1, 2, 2, 1, 0])
    predicted = expected.argmax(1)
    per_class = [np.mean(predicted[labels == c] == c) for c in range(3)]
    assert result["top1"] == pytest.approx(np.mean(predicted == labels))
    assert result["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    assert result["top5"] == 1.0 and result["num_samples"] == 6  # 3 classes: top-3 holds every label


def test_multi_clip_scores_differ_from_one_clip(finetuned, tmp_path):
    data, checkpoint = finetuned
    one, three = (pickle.load(open(train.evaluate(data, "val", str(checkpoint), num_clips=k,
                                                  out=str(tmp_path / f"{k}.pkl"))["scores"], "rb"))["scores"]
                  for k in (1, 3))
    assert not np.allclose(one, three)


def test_accuracy_by_hand():
    scores = [[0.1, 0.6, 0.1, 0.1, 0.05, 0.05, 0.0],   # label 1: first
              [0.3, 0.2, 0.25, 0.1, 0.05, 0.05, 0.05],  # label 2: second (in the top 5)
              [0.1, 0.12, 0.13, 0.14, 0.05, 0.11, 0.35],  # label 4: last
              [0.05, 0.05, 0.1, 0.5, 0.1, 0.1, 0.1]]     # label 3: first
    result = metrics.accuracy(torch.tensor(scores), torch.tensor([1, 2, 4, 3]))
    assert result["top1"] == 0.5  # samples 0 and 3
    assert result["top5"] == 0.75  # all but sample 2
    assert result["mean_class_accuracy"] == pytest.approx((1 + 0 + 0 + 1) / 4)  # classes 1, 2, 4, 3
    assert result["num_samples"] == 4


def test_knn_by_hand(tmp_path):
    train_features = np.array([[1.0, 0.0], [0.0, 2.0], [0.9, 0.1], [-1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    train_labels = np.array([0, 1, 0, 2, 1])
    test_features = np.array([[1.0, 0.2], [-0.9, 0.1], [0.2, 1.0]], dtype=np.float32)
    test_labels = np.array([0, 2, 0])
    k, temperature = 2, 0.1

    def votes(query):
        query = query.astype(np.float64)
        cosines = [float(np.dot(query, f) / np.linalg.norm(query) / np.linalg.norm(f))
                   for f in train_features.astype(np.float64)]
        nearest = sorted(range(len(cosines)), key=lambda i: -cosines[i])[:k]
        tally = [0.0, 0.0, 0.0]
        for i in nearest:  # exp(s / t), scaled by exp(-max s / t): the scores' scale
            tally[train_labels[i]] += math.exp((cosines[i] - cosines[nearest[0]]) / temperature)
        return tally

    expected = [int(np.argmax(votes(q))) for q in test_features]
    assert expected == [0, 2, 1]  # the third query is nearest to class 1's points
    for name, features, labels in (("train", train_features, train_labels), ("test", test_features, test_labels)):
        np.savez(tmp_path / f"{name}.npz", features=features, label=labels)
    result = train.knn(str(tmp_path / "train.npz"), str(tmp_path / "test.npz"), k=k, temperature=temperature)
    assert result["top1"] == pytest.approx(2 / 3) and result["num_samples"] == 3 and result["num_train"] == 5
    np.testing.assert_allclose(metrics.knn_scores(train_features, train_labels, test_features, k, temperature),
                               [votes(q) for q in test_features], rtol=1e-10)
    # a tiny temperature: exp(s / t) overflows, and the nearest neighbour alone decides
    # (the second query's neighbours, of classes 2 and 1, tied at inf before)
    result = train.knn(str(tmp_path / "train.npz"), str(tmp_path / "test.npz"), k=k, temperature=1e-4)
    assert result["top1"] == pytest.approx(2 / 3)
    scores = metrics.knn_scores(train_features, train_labels, test_features, k, 1e-4)
    assert scores.isfinite().all() and scores.argmax(1).tolist() == [0, 2, 1]


def test_non_finite_features_weights_and_scores_are_refused(finetuned, tmp_path):
    features = np.ones((3, 2), np.float32)
    features[1, 0] = np.nan
    np.savez(tmp_path / "nan.npz", features=features, label=np.array([0, 1, 0]))
    np.savez(tmp_path / "fine.npz", features=np.ones((3, 2), np.float32), label=np.array([0, 1, 0]))
    with pytest.raises(DataError, match=r"nan\.npz: the features of 1 of 3 samples hold NaN / inf \(first: sample #1\)"):
        train.knn(str(tmp_path / "fine.npz"), str(tmp_path / "nan.npz"))
    data, checkpoint = finetuned
    state = load(checkpoint)
    state["model"][next(iter(state["model"]))].fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan\.pth: 1 weight tensors hold NaN / inf \(first: .*\): a diverged"):
        train.evaluate(data, "val", str(tmp_path / "nan.pth"), num_clips=1)
    with open(tmp_path / "scores.pkl", "wb") as handle:
        pickle.dump({"frame_dir": ["a", "b"], "label": np.array([0, 1]), "scores": np.array([[np.nan, 1], [0, 1]])},
                    handle)
    with pytest.raises(DataError, match=r"scores\.pkl: the scores of 1 of 2 samples hold NaN / inf"):
        train.ensemble([str(tmp_path / "scores.pkl")] * 2)


def test_test_on_data_of_other_class_names(finetuned, tmp_path):
    data, checkpoint = finetuned
    annotations = load_annotations(data)
    renamed = tmp_path / "renamed.pkl"
    save_annotations(dict(annotations, classes=["walk", "wave", "sit"]), renamed)
    with pytest.raises(DataError, match=r"renamed\.pkl: its classes differ from those .*best\.pth was fine-tuned on "
                                        r"\(label 0: 'walk' in the data, 'wave' in the checkpoint\)"):
        train.evaluate(str(renamed), "val", str(checkpoint), num_clips=1)


def test_ensemble_by_hand(tmp_path):
    names = ["a", "b", "c"]
    labels = np.array([0, 1, 1])
    joint = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    bone = np.array([[0.4, 0.6], [0.45, 0.55], [0.5, 0.5]])
    motion = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])
    paths = []
    for stream, (scores, order) in enumerate([(joint, [0, 1, 2]), (bone, [2, 0, 1]), (motion, [1, 2, 0]),
                                              (bone, [0, 2, 1])]):
        path = tmp_path / f"{stream}.pkl"
        with open(path, "wb") as handle:  # each dump lists the samples in its own order
            pickle.dump({"frame_dir": [names[i] for i in order], "label": labels[order], "scores": scores[order]},
                        handle)
        paths.append(str(path))
    # 2:2:1:1 = 2 joint + 3 bone + motion: a [3.5, 2.5], b [2.65, 3.35], c [2.8, 3.2]: all right
    assert train.ensemble(paths)["top1"] == 1.0
    # equal weights, joint + 2 bone + motion: a [2.4, 1.6], b [1.6, 2.4], c [2.1, 1.9]: c wrong
    assert train.ensemble(paths, weights=[1, 1, 1, 1])["top1"] == pytest.approx(2 / 3)
    # joint + motion (two dumps: equal weights): a [1.6, 0.4], b [0.7, 1.3], c [1.1, 0.9]: c wrong
    fused = train.ensemble([paths[0], paths[2]])
    assert fused["top1"] == pytest.approx(2 / 3) and fused["weights"] == [1.0, 1.0]
    # joint + 3 motion: a [3.4, 0.6], b [0.9, 3.1], c [2.9, 1.1]: class 0 all right, class 1 half
    assert train.ensemble([paths[0], paths[2]], weights=[1, 3])["mean_class_accuracy"] == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(DataError, match=r"--weights: all 2 weights are 0"):
        train.ensemble([paths[0], paths[2]], weights=[0, 0])
    for weights in ([float("inf"), 1], [float("nan"), 1]):
        with pytest.raises(ConfigError, match=r"weights: must be a finite number, got (inf|nan)"):
            train.ensemble([paths[0], paths[2]], weights=weights)


def test_pretrained_features_average_the_graphs_that_are_not_padding():
    torch.manual_seed(0)
    model = skelmae_ext.SkeletonMAE(layout=STICK, embed_dim=8).eval()
    x = torch.randn(3, 2, 5, 13, 2)
    x[:, 1] = 0  # the second person is padding
    x[0, 0, 3:] = 0  # and the last frames of the first sample
    features = pooled_features(model)(x)
    with torch.no_grad():
        first = model.encoder(x[:1, :1, :3]).mean(dim=(1, 2, 3))
        others = model.encoder(x[1:, :1]).mean(dim=(1, 2, 3))
    torch.testing.assert_close(features, torch.cat([first, others]))
