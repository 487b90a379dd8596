"""Accuracy metrics of class scores, the KNN classifier of frozen features, and the weighted
fusion of score streams: plain torch on [N, K] tensors, in float64."""

import torch


def accuracy(scores, labels):
    """``top1``, ``top5`` (top-k with k = min(5, classes)) and ``mean_class_accuracy`` (PYSKL's:
    the mean over the classes present in ``labels`` of their share ranked first) of ``scores``
    [N, K] for ``labels`` [N]. A sample counts as right in top-k when its label's score is
    among the k largest (ties broken by torch.topk)."""
    scores, labels = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.int64)
    k = min(5, scores.shape[1])
    ranked = scores.topk(k, dim=1).indices
    first = ranked[:, 0] == labels
    per_class = [first[labels == c].double().mean() for c in labels.unique()]
    return {"top1": float(first.double().mean()), "top5": float((ranked == labels[:, None]).any(1).double().mean()),
            "mean_class_accuracy": float(torch.stack(per_class).mean()), "num_samples": int(labels.numel())}


def knn_scores(train_features, train_labels, test_features, k=20, temperature=0.07, num_classes=None, chunk=1024):
    """Weighted KNN class scores [N_test, K] (Wu et al. 2018, as the SSL literature reports it):
    cosine similarity s to every training feature, the k most similar vote for their labels
    with weight exp(s / temperature), computed as exp((s - s_max) / temperature) with each
    test sample's largest s_max: the same votes up to a factor per sample, and no overflow at
    small temperatures."""
    train = torch.nn.functional.normalize(torch.as_tensor(train_features, dtype=torch.float64), dim=1)
    test = torch.nn.functional.normalize(torch.as_tensor(test_features, dtype=torch.float64), dim=1)
    train_labels = torch.as_tensor(train_labels, dtype=torch.int64)
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train.shape[0])
    votes = []
    for rows in test.split(chunk):  # bounds the [rows, N_train] similarity matrix
        similarity, nearest = (rows @ train.T).topk(k, dim=1)
        weights = ((similarity - similarity[:, :1]) / temperature).exp()  # topk: the first is the largest
        votes.append(torch.zeros(rows.shape[0], num_classes, dtype=torch.float64).scatter_add_(
            1, train_labels[nearest], weights))
    return torch.cat(votes)


def fuse(scores, weights):
    """The weighted sum of score streams (each [N, K], in the same sample order)."""
    return sum(weight * torch.as_tensor(stream, dtype=torch.float64) for weight, stream in zip(weights, scores))
