"""The floor any classifier must beat: logistic regression on the flattened normalised
coordinates of 32 uniformly sampled frames (the test pipeline's deterministic sampling, PYSKL's
PreNormalize2D / PreNormalize3D, no centring), fitted on a label subset of the training split
and scored on the validation split. Needs scikit-learn."""

import numpy as np

from skelmae_ext.data import SkeletonDataset, default_pipeline, load_annotations

FRAMES = 32


def features(data, split, label_fraction=1.0, seed=0, layout=None):
    """(X [N, M * 32 * V * C], y [N]) of a split's label subset."""
    dims = data["annotations"][0]["keypoint"].shape[-1]
    pipeline = [t for t in default_pipeline("test", FRAMES, dims=dims, num_person=1) if t["type"] != "CenterSkeleton"]
    dataset = SkeletonDataset(data, split, pipeline, layout=layout, label_fraction=label_fraction, seed=seed,
                              mode="test", clip_len=FRAMES, num_person=1)
    x = np.stack([dataset[i][0].numpy().reshape(-1) for i in range(len(dataset))])
    return x, np.asarray(dataset.labels)


def logistic_regression_floor(source, train_split, val_split, label_fraction=1.0, seed=0, layout=None):
    """Top-1 (%) of logistic regression fitted on ``label_fraction`` of the training labels."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    data = load_annotations(source)
    x_train, y_train = features(data, train_split, label_fraction, seed, layout)
    x_val, y_val = features(data, val_split, 1.0, seed, layout)
    # one BLAS thread: with two, a few validation predictions change (the fit is thread-dependent)
    with threadpool_limits(limits=1, user_api="blas"):
        classifier = LogisticRegression(max_iter=3000).fit(x_train, y_train)
    return 100.0 * float((classifier.predict(x_val) == y_val).mean())
