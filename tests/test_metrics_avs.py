"""The avs metric (PatchPerPix's S and avS) against a direct, hand-written computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchbio.evaluation import evaluate
from benchbio.instances import to_stack

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def direct_s(pred: np.ndarray, gt: np.ndarray, threshold: float) -> float:
    """S by brute force: IoU from the masks, the best of every one-to-one matching."""
    p, g = list(to_stack(pred)), list(to_stack(gt))
    if not p and not g:
        return 1.0

    def iou(a, b):
        return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()

    best = 0
    small, large = (p, g) if len(p) <= len(g) else (g, p)
    for chosen in itertools.permutations(range(len(large)), len(small)):
        tp = sum(iou(small[i], large[j]) >= threshold for i, j in enumerate(chosen))
        best = max(best, tp)
    return best / (len(p) + len(g) - best)


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


CASES = {
    # two overlapping true worms; predictions: one exact, one shifted, one spurious
    "overlaps": (
        np.stack([box(12, 12, 2, 4, 0, 10), box(12, 12, 0, 10, 3, 5), box(12, 12, 10, 12, 0, 2)]),
        np.stack([box(12, 12, 2, 4, 0, 10), box(12, 12, 0, 9, 3, 5)]),
    ),
    "label_vs_stack": (
        np.pad(np.arange(1, 5).repeat(3).reshape(4, 3), ((0, 0), (0, 9))).repeat(3, 0),
        np.stack([box(12, 12, 0, 3, 0, 3), box(12, 12, 3, 6, 0, 2), box(12, 12, 3, 12, 2, 3)]),
    ),
    "empty_prediction": (np.zeros((12, 12), int), np.stack([box(12, 12, 0, 3, 0, 3)])),
    "empty_gt": (np.stack([box(12, 12, 0, 3, 0, 3)]), np.zeros((12, 12), int)),
    "both_empty": (np.zeros((12, 12), int), np.zeros((0, 12, 12), bool)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_avs_matches_direct_computation(case):
    pred, gt = CASES[case]
    result = evaluate([pred], [gt], ["avs"]).mean
    expected = [direct_s(pred, gt, t) for t in THRESHOLDS]
    for t, value in zip(THRESHOLDS, expected, strict=True):
        assert result[f"avs_{round(t * 100)}"] == pytest.approx(value)
    assert result["avs"] == pytest.approx(np.mean(expected))


def test_overlap_case_by_hand():
    # Exact match (IoU 1) and a 9-of-10-pixel match (IoU 18/20 = 0.9) among 3
    # predictions and 2 true instances: S = 2/3 at every threshold up to 0.9.
    pred, gt = CASES["overlaps"]
    result = evaluate([pred], [gt], ["avs"]).mean
    assert result["avs_90"] == pytest.approx(2 / 3)
    assert result["avs_50"] == pytest.approx(2 / 3)
    assert result["avs"] == pytest.approx(2 / 3)


def test_set_figure_is_the_mean_over_images():
    # One perfect image and one with an empty prediction: (1 + 0) / 2 at each threshold.
    gt = np.stack([box(8, 8, 0, 4, 0, 4)])
    result = evaluate([gt, np.zeros((8, 8), int)], [gt, gt], ["avs"])
    assert result.mean["avs"] == pytest.approx(0.5)
    assert result.per_image["0"]["avs"] == 1.0 and result.per_image["1"]["avs"] == 0.0
