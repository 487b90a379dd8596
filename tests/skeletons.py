"""Skeleton graphs for the op tests: PYSKL's edge lists and bone pairs of the three standard layouts."""

import torch

EDGES = {
    # coco (17 joints), PYSKL's Graph(layout="coco")
    17: [(15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8),
         (8, 6), (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2)],
    # openpose (18 joints)
    18: [(4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5), (8, 2),
         (5, 1), (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14)],
    # nturgb+d (25 joints), PYSKL's 1-based list shifted to 0-based
    25: [(i - 1, j - 1) for i, j in [
        (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
        (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
        (20, 19), (22, 8), (23, 8), (24, 12), (25, 12)]],
}

# PYSKL's JointToBone pairs (joint, parent) per layout, quirks included (COCO's hips hang off the
# nose, NTU's hand tips chain through the thumbs, OpenPose's neck hangs off the nose).
BONE_PAIRS = {
    17: [(0, 0), (1, 0), (2, 0), (3, 1), (4, 2), (5, 0), (6, 0), (7, 5), (8, 6), (9, 7), (10, 8), (11, 0),
         (12, 0), (13, 11), (14, 12), (15, 13), (16, 14)],
    18: [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6), (8, 2), (9, 8), (10, 9), (11, 5),
         (12, 11), (13, 12), (14, 0), (15, 0), (16, 14), (17, 15)],
    # CTR-GCN's bone_pairs.py (1-based), shifted to 0-based
    25: [(i - 1, j - 1) for i, j in [
        (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
        (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (21, 21),
        (22, 23), (23, 8), (24, 25), (25, 12)]],
}

# Joints of "right arm + right leg" (the paper's best masking) in each layout.
RIGHT_ARM_AND_LEG = {17: [8, 10, 14, 16], 18: [2, 3, 4, 8, 9, 10], 25: [8, 9, 10, 11, 23, 24, 16, 17, 18, 19]}


def adjacency(num_joints, dtype=torch.float32):
    """Binary symmetric adjacency without self-loops."""
    matrix = torch.zeros(num_joints, num_joints, dtype=dtype)
    for i, j in EDGES[num_joints]:
        matrix[i, j] = matrix[j, i] = 1
    return matrix


def make_mask(kind, graphs, num_joints, generator):
    """[G, V] bool mask of a kind: none (None), empty, full, partial (random) or parts."""
    if kind == "none":
        return None
    if kind == "empty":
        return torch.zeros(graphs, num_joints, dtype=torch.bool)
    if kind == "full":
        return torch.ones(graphs, num_joints, dtype=torch.bool)
    if kind == "partial":
        return torch.rand(graphs, num_joints, generator=generator) < 0.4
    mask = torch.zeros(graphs, num_joints, dtype=torch.bool)
    mask[:, RIGHT_ARM_AND_LEG[num_joints]] = True
    return mask
