"""The embedseg method: Lovasz hinge, loss values by hand, oracle clustering, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import train_steps

from benchbio import create_method
from benchbio.datasets.synthetic import make_cells
from benchbio.evaluation import evaluate
from benchbio.methods.embedseg import coordinate_grid, lovasz_hinge, spatial_embedding_loss

SCALE = 1023.0


def ideal_output(labels: np.ndarray, sigma: float = 1.5) -> torch.Tensor:
    """Offsets to each instance's centroid, constant sigma, seeds +-10 (as logits)."""
    h, w = labels.shape
    xym = coordinate_grid(h, w, SCALE).numpy()
    out = np.zeros((5, h, w), np.float32)
    for k in range(1, labels.max() + 1):
        m = labels == k
        centre = xym[:, m].mean(1)
        out[:2, m] = np.arctanh(centre[:, None] - xym[:, m])
    out[2:4] = sigma
    out[4] = np.where(labels > 0, 10.0, -10.0)
    return torch.from_numpy(out)


def test_lovasz_hinge_by_hand():
    # Sorted errors [2, 1, 0] with labels [0, 1, 1]: Jaccard grads [1/3, 1/3, 1/3].
    logits = torch.tensor([[1.0, 0.0, 1.0]])
    labels = torch.tensor([[0, 1, 1]])
    assert lovasz_hinge(logits, labels).item() == pytest.approx(1.0)
    # Perfect logits give zero; an ignored wrong pixel changes nothing.
    perfect = torch.tensor([[-1.0, 1.0, 1.0]])
    assert lovasz_hinge(perfect, labels).item() == pytest.approx(0.0)
    valid = torch.tensor([[False, True, True]])
    assert lovasz_hinge(logits, labels, valid).item() == pytest.approx(
        lovasz_hinge(perfect, labels).item() + 0.5 * 1.0  # error 1 at a positive: 1/2
    )


def test_loss_zero_for_ideal_output():
    _, labels = make_cells(0, size=64)
    out = ideal_output(labels, sigma=2.0)
    out[4] = torch.where(torch.from_numpy(labels > 0), 30.0, -30.0)
    loss = spatial_embedding_loss(out[None], torch.from_numpy(labels)[None].long())
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_loss_by_hand():
    # Two pixels: an instance at x=0 and background at x=1, both embedded at x=0 with a
    # sigma giving phi = 0.5 at one pixel: hinge errors [0, 1] -> Lovasz 1/2; the
    # background seed 0.5 gives seed term 0.25 / 2 pixels.
    sigma = math.log(math.log(2) * SCALE**2) / 10
    out = torch.zeros(1, 5, 1, 2)
    out[0, 2:4] = sigma
    out[0, 4, 0, 0] = 30.0
    owner = torch.tensor([[[1, 0]]])
    assert spatial_embedding_loss(out, owner).item() == pytest.approx(0.5 + 0.125, abs=1e-5)
    # Sigma variance inside an instance: values 0 and 0.2 -> variance 0.01, weight 10.
    out = torch.zeros(1, 5, 1, 2)
    out[0, 2:4] = torch.tensor([0.0, 0.2])
    out[0, 4] = 30.0
    base = spatial_embedding_loss(out, torch.tensor([[[1, 1]]]))
    out[0, 2:4] = 0.1
    flat = spatial_embedding_loss(out, torch.tensor([[[1, 1]]]))
    assert (base - flat).item() == pytest.approx(10 * 0.01, abs=1e-5)


@pytest.mark.parametrize("given_fg", [False, True])
def test_oracle_recovers_instances(given_fg):
    method = create_method("embedseg")
    preds, gts = [], []
    for seed in range(2):
        _, labels = make_cells(seed, size=96)
        fg = labels > 0 if given_fg else None
        preds.append(method.postprocess(ideal_output(labels), fg, min_area=5))
        gts.append(labels)
    assert evaluate(preds, gts, ["sbd"]).mean["sbd"] >= 0.99


def test_targets_keep_every_object_of_a_crop_without_background():
    from test_instances import background_free_crop

    crop = background_free_crop()
    owner = create_method("embedseg").targets(crop, None)["owner"]
    assert (owner[crop == 3] == 1).all() and (owner[crop == 5] == 2).all()


def test_seed_scores_are_the_instance_scores():
    _, labels = make_cells(0, size=64)
    pred = create_method("embedseg").postprocess(ideal_output(labels), labels > 0, min_area=5)
    assert set(pred.scores) == set(np.unique(pred.labels)) - {0}
    assert all(0.9 <= v <= 1.0 for v in pred.scores.values())  # seeds above seed_thresh


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    method = create_method("embedseg", width=8)
    method.fit([], seed=0)
    crops = [make_cells(s, size=48) for s in range(2)]
    losses = train_steps(method, [c[0] for c in crops], [c[1] for c in crops], steps=12)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
