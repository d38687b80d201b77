"""The discriminative-loss baselines: loss by hand, targets, oracle, guide reuse, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import train_steps

from benchbio import create_method
from benchbio.data import Sample
from benchbio.datasets.synthetic import make_cells, make_worms
from benchbio.evaluation import evaluate
from benchbio.methods.discriminative import cluster_targets, discriminative_loss


def as_output(points: list[list[float]], shape: tuple[int, int]) -> torch.Tensor:
    """``(1, D, H, W)`` embeddings from one D-vector per pixel in row-major order."""
    return torch.tensor(points, dtype=torch.float32).T.reshape(1, -1, *shape)


def test_loss_by_hand():
    # Cluster 0: (0, 0), (2, 0) -> mean (1, 0), both 1 away: var (1 - 0.5)^2 = 0.25.
    # Cluster 1: (1, 1) twice -> var 0. L_var = 0.125. Means 1 apart: L_dist =
    # (3 - 1)^2 = 4. L_reg = (1 + sqrt 2) / 2.
    out = as_output([[0, 0], [2, 0], [1, 1], [1, 1]], (2, 2))
    clusters = torch.tensor([[[0, 0], [1, 1]]])
    expected = 0.125 + 4 + 0.001 * (1 + math.sqrt(2)) / 2
    assert discriminative_loss(out, clusters).item() == pytest.approx(expected, rel=1e-5)
    # Ignored pixels (-1) change nothing.
    out2 = as_output([[0, 0], [2, 0], [1, 1], [1, 1], [9, 9], [7, 7]], (3, 2))
    clusters2 = torch.tensor([[[0, 0], [1, 1], [-1, -1]]])
    assert discriminative_loss(out2, clusters2).item() == pytest.approx(expected, rel=1e-5)


def test_loss_of_a_perfect_embedding_is_the_regulariser_only():
    # Pixels within delta_v of means 3 = 2 delta_d apart: only gamma * mean ||mu|| is left.
    out = as_output([[0.4, 0], [-0.4, 0], [3, 0.3], [3, -0.3]], (2, 2))
    clusters = torch.tensor([[[0, 0], [1, 1]]])
    assert discriminative_loss(out, clusters).item() == pytest.approx(0.001 * 1.5, rel=1e-5)
    assert discriminative_loss(out, clusters, gamma=0.0).item() == pytest.approx(0.0, abs=1e-7)
    # Batch: the mean over images; an image with one cluster has no distance term.
    batch = torch.cat([out, torch.zeros_like(out)])
    lab = torch.cat([clusters, torch.zeros_like(clusters)])
    assert discriminative_loss(batch, lab).item() == pytest.approx(0.001 * 1.5 / 2, rel=1e-5)


def test_targets_background_and_overlaps():
    labels = np.array([[0, 1], [2, 2]])
    assert cluster_targets(labels, None).tolist() == [[0, 1], [2, 2]]
    assert cluster_targets(labels, labels > 0).tolist() == [[-1, 0], [1, 1]]
    stack = np.array([[[1, 1], [0, 0]], [[0, 1], [1, 0]]], bool)
    assert cluster_targets(stack, stack.any(0)).tolist() == [[0, -1], [1, -1]]


def test_targets_with_fg_keep_every_object_of_a_crop_without_background():
    from test_instances import background_free_crop

    crop = background_free_crop()
    clusters = cluster_targets(crop, crop > 0)
    assert (clusters[crop == 3] == 0).all() and (clusters[crop == 5] == 1).all()
    assert sorted(np.unique(cluster_targets(crop, None))) == [1, 2]  # 0 = background


def ideal_embedding(labels: np.ndarray, dim: int = 12, seed: int = 0) -> torch.Tensor:
    """Each instance (and background) at a random centre, pixels jittered by <= 0.02."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (labels.max() + 1, dim))
    emb = centres[labels] + rng.uniform(-0.02, 0.02, (*labels.shape, dim))
    return torch.from_numpy(emb.transpose(2, 0, 1).astype(np.float32))


@pytest.mark.parametrize("given_fg", [False, True])
def test_oracle_recovers_instances(given_fg):
    method = create_method("discriminative")
    assert method.options()["bandwidth"] == 1.5  # resolved from delta_d
    preds, gts = [], []
    for seed in range(2):
        _, labels = make_cells(seed, size=64)
        fg = labels > 0 if given_fg else None
        preds.append(method.postprocess(ideal_embedding(labels, seed=seed), fg, min_area=5))
        gts.append(labels)
    assert evaluate(preds, gts, ["sbd"]).mean["sbd"] >= 0.99


def _samples(n: int = 3, size: int = 48) -> list[Sample]:
    return [Sample(f"s{i}", *make_cells(i, size=size)) for i in range(n)]


def test_sinconv_reuses_the_harmonic_guide_search():
    train = _samples()
    harmonic = create_method("harmonic", search_steps=10)
    harmonic.fit(train, seed=0)
    method = create_method("discriminative-sinconv", search_steps=10)
    assert method.options()["position"] == "sinconv"
    method.fit(train, seed=0)
    assert method.state()["search"]["cached"] == 1.0
    assert method.state()["guides"] == harmonic.state()["guides"]
    fresh = create_method("discriminative-sinconv", search_steps=10)
    fresh.load_state(method.state())
    assert fresh.state()["guides"] == harmonic.state()["guides"]
    plain = create_method("discriminative")
    plain.fit(train, seed=0)
    assert plain.state() == {}


@pytest.mark.parametrize("name", ["discriminative", "discriminative-sinconv"])
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    method = create_method(name, width=8, search_steps=10)
    train = _samples(2)
    method.fit(train, seed=0)
    losses = train_steps(
        method, [s.image for s in train], [s.instances for s in train], steps=12
    )
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_worm_targets_train_with_foreground():
    method = create_method("discriminative", width=8)
    fg_image, stack = make_worms(0, size=48)
    t = method.targets(stack, stack.any(0))["clusters"]
    assert t.dtype == np.int64 and t.min() == -1 and t.max() == len(stack) - 1
