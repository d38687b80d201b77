"""Mean-shift clustering of embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from benchbio.cluster import embeddings_to_labels, mean_shift, mean_shift_sklearn, remove_small


def _blobs(n_clusters=8, n=3000, dim=12, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-2, 2, (n_clusters, dim))
    truth = rng.integers(0, n_clusters, n)
    return centres[truth] + rng.normal(0, spread, (n, dim)), truth


@pytest.mark.parametrize("metric", ["l2", "l1"])
def test_mean_shift_recovers_well_separated_clusters(metric):
    points, truth = _blobs(spread=0.05 if metric == "l2" else 0.01)
    labels, modes = mean_shift(points, 0.5, metric=metric)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert len(modes) == 8


def test_mean_shift_agrees_with_sklearn():
    points, _ = _blobs(n=1500)
    ours, _ = mean_shift(points, 0.5)
    ref, _ = mean_shift_sklearn(points, 0.5)
    assert adjusted_rand_score(ref, ours) == 1.0


def test_clusters_sharing_a_bin_are_not_merged():
    # Two tight clusters 0.6 apart (> bandwidth) whose points fall in one bin: a bin
    # centre seed would sit within the bandwidth of both and merge them.
    rng = np.random.default_rng(1)
    a = np.array([0.2, 0.0]) + rng.normal(0, 0.01, (200, 2))
    b = np.array([-0.4, 0.0]) + rng.normal(0, 0.01, (200, 2))
    labels, _ = mean_shift(np.vstack([a, b]), 0.5)
    assert len(set(labels[:200])) == 1 and len(set(labels[200:])) == 1
    assert labels[0] != labels[-1]


def test_mean_shift_is_deterministic_and_handles_empty():
    points, _ = _blobs(n=30000)
    first, _ = mean_shift(points, 0.5, seed=3)
    second, _ = mean_shift(points, 0.5, seed=3)
    assert np.array_equal(first, second)
    labels, modes = mean_shift(np.zeros((0, 4)), 0.5)
    assert labels.shape == (0,)


def test_embeddings_to_labels_background_and_min_area():
    emb = np.zeros((2, 10, 10), np.float32)
    emb[:, :2, :2] = 5.0  # small object: 4 pixels
    emb[:, 5:, 5:] = -5.0  # 25 pixels
    labels = embeddings_to_labels(emb, 0.5, min_area=5).labels
    assert labels.max() == 1 and (labels > 0).sum() == 25  # background = largest cluster
    fg = np.zeros((10, 10), bool)
    fg[:2, :2] = True
    assert embeddings_to_labels(emb, 0.5, fg=fg).labels.max() == 1


def test_remove_small_relabels():
    labels = np.array([[1, 1, 2], [3, 3, 3]])
    assert remove_small(labels, 3).tolist() == [[0, 0, 0], [1, 1, 1]]


def test_gaussian_kernel_recovers_clusters_and_agrees_with_sklearn():
    points, truth = _blobs(n=2000, spread=0.05)
    labels, modes = mean_shift(points, 0.5, kernel="gaussian")
    assert adjusted_rand_score(truth, labels) == 1.0 and len(modes) == 8
    ref, _ = mean_shift_sklearn(points, 0.5)
    assert adjusted_rand_score(ref, labels) == 1.0


def test_subsampled_mean_shift_recovers_clusters_whatever_the_seed():
    # 20,000 points, shifted on a 1,024-point subsample: the partition is that of the truth
    points, truth = _blobs(n_clusters=12, n=20000, spread=0.08, seed=4)
    for seed in (0, 1):
        labels, _ = mean_shift(points, 0.5, max_points=1024, seed=seed)
        assert adjusted_rand_score(truth, labels) == 1.0


def test_min_support_drops_modes_of_few_points():
    rng = np.random.default_rng(5)
    big = rng.normal(0, 0.02, (500, 3))
    few = np.array([3.0, 0, 0]) + rng.normal(0, 0.02, (5, 3))
    labels, modes = mean_shift(np.vstack([big, few]), 0.5)
    assert len(modes) == 2
    labels, modes = mean_shift(np.vstack([big, few]), 0.5, min_support=10)
    assert len(modes) == 1 and (labels == 0).all()  # the few points join the big mode


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel"):
        mean_shift(np.zeros((3, 2)), 0.5, kernel="epanechnikov")


def test_a_small_cluster_among_many_points_is_found_for_every_seed():
    # 60 points among ~256k: the 1,024-point subsample misses all of them about 4 times
    # in 5, so they must be found as points left uncovered by the first round's modes.
    rng = np.random.default_rng(7)
    centres = rng.uniform(-3, 3, (20, 8))
    big = centres[rng.integers(0, 20, 256_000)] + rng.normal(0, 0.05, (256_000, 8))
    small = np.full(8, 6.0) + rng.normal(0, 0.05, (60, 8))
    points = np.vstack([big, small]).astype(np.float32)
    found = 0
    for seed in range(12):
        labels, _ = mean_shift(points, 0.5, seed=seed)
        tail = labels[-60:]
        found += len(set(tail)) == 1 and not np.isin(tail[0], labels[:-60])
    assert found == 12


def test_every_point_is_within_the_bandwidth_of_its_mode_on_separated_clusters():
    points, _ = _blobs(n_clusters=30, n=50_000, dim=6, spread=0.03, seed=2)
    # 4 seeds a round: the clusters are found round after round, from uncovered points
    labels, modes, dist = mean_shift(points, 0.5, max_points=512, max_seeds=4, rounds=12,
                                     return_distances=True)
    assert len(modes) == 30 and (dist < 0.5).all()
    assert np.allclose(dist, np.linalg.norm(points - modes[labels], axis=1), atol=1e-4)


def test_instance_scores_measure_how_tightly_pixels_gather_at_the_mode():
    emb = np.zeros((2, 12, 12), np.float32)
    emb[:, :6] = 3.0  # a perfectly tight instance
    emb[0, 6:, :6] = -3.0 + np.linspace(-0.2, 0.2, 36).reshape(6, 6)  # a looser one
    fg = np.zeros((12, 12), bool)
    fg[:, :6] = True
    pred = embeddings_to_labels(emb, 0.5, fg=fg)
    tight, loose = pred.labels[0, 0], pred.labels[-1, 0]
    assert pred.scores[tight] == pytest.approx(1.0)
    assert 0.5 < pred.scores[loose] < 0.95
    assert set(pred.scores) == {1, 2}


def test_objects_covering_the_whole_image_are_all_kept():
    emb = np.zeros((2, 8, 8), np.float32)
    emb[:, :, 4:] = 3.0  # two instances, no background; fg covers everything
    pred = embeddings_to_labels(emb, 0.5, fg=np.ones((8, 8), bool))
    assert pred.labels.min() == 1 and pred.labels.max() == 2
    assert remove_small(np.array([[1, 1], [2, 2]]), 0).tolist() == [[1, 1], [2, 2]]


def test_min_bin_freq_keeps_lone_points_from_seeding():
    rng = np.random.default_rng(8)
    a = rng.normal(0, 0.02, (300, 3))
    b = np.array([2.0, 0, 0]) + rng.normal(0, 0.02, (300, 3))
    lone = np.array([[0, 4.0, 0], [0, -4.0, 0], [0, 0, 4.0]])  # one point per bin
    points = np.vstack([a, b, lone])
    _, modes = mean_shift(points, 0.5, min_cluster=1)
    assert len(modes) == 5  # every occupied bin seeds: each lone point is a mode
    labels, modes = mean_shift(points, 0.5, min_bin_freq=2, rounds=1)
    assert len(modes) == 2 and set(labels[-3:]) <= set(labels[:600])


def test_a_point_equidistant_from_two_modes_joins_the_first():
    # exact tie: (0, 0) is at distance 1 from both modes; the better supported is first
    points = np.vstack([np.tile([-1.0, 0.0], (300, 1)), np.tile([1.0, 0.0], (200, 1)),
                        [[0.0, 0.0]]])
    labels, modes = mean_shift(points, 0.5, min_support=2)  # the lone point is no mode
    assert np.allclose(modes, [[-1, 0], [1, 0]])
    assert labels[-1] == labels[0] == 0 and labels[300] == 1
