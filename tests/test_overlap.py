"""The contingency table against brute-force per-pair counting."""

from __future__ import annotations

import numpy as np
import pytest

from benchbio.overlap import overlap, sequential_labels


def brute(pred_masks: list[np.ndarray], gt_masks: list[np.ndarray]) -> np.ndarray:
    return np.array([[np.count_nonzero(p & g) for g in gt_masks] for p in pred_masks]).reshape(
        len(pred_masks), len(gt_masks)
    )


def label_masks(labels: np.ndarray) -> list[np.ndarray]:
    values = np.unique(labels)[1:]  # lowest value = background
    return [labels == v for v in values]


def test_sequential_labels_keeps_order_and_lowest_is_background():
    labels = np.array([[7, 7, 12], [30, 12, 7]])
    out, n = sequential_labels(labels)
    np.testing.assert_array_equal(out, [[0, 0, 1], [2, 1, 0]])
    assert n == 2


def test_sequential_labels_wide_range_uses_unique():
    labels = np.array([[-(2**40), 5], [2**40, 5]])
    out, n = sequential_labels(labels)
    np.testing.assert_array_equal(out, [[0, 1], [2, 1]])
    assert n == 2


def test_label_images_match_brute_force():
    rng = np.random.default_rng(0)
    pred = rng.integers(3, 9, size=(13, 11)) * 3  # lowest value 9 is background
    gt = rng.integers(0, 6, size=(13, 11))
    ov = overlap(pred, gt)
    pm, gm = label_masks(pred), label_masks(gt)
    np.testing.assert_array_equal(ov.intersection, brute(pm, gm))
    np.testing.assert_array_equal(ov.pred_area, [m.sum() for m in pm])
    np.testing.assert_array_equal(ov.gt_area, [m.sum() for m in gm])


@pytest.mark.parametrize("pred_stack", [True, False])
def test_stacks_match_brute_force(pred_stack):
    rng = np.random.default_rng(1)
    gt = rng.random((4, 10, 12)) < 0.4  # overlapping masks
    pred_labels = rng.integers(0, 5, size=(10, 12))
    pm = label_masks(pred_labels)
    pred = np.stack(pm) if pred_stack else pred_labels
    ov = overlap(pred, gt)
    np.testing.assert_array_equal(ov.intersection, brute(pm, list(gt)))
    np.testing.assert_array_equal(ov.gt_area, gt.reshape(4, -1).sum(axis=1))


def test_dice_and_iou():
    gt = np.zeros((4, 8), int)
    gt[:, :4] = 1
    pred = np.zeros((4, 8), int)
    pred[:, 2:6] = 1  # 8 of its 16 pixels in the 16-pixel gt instance
    ov = overlap(pred, gt)
    assert ov.dice()[0, 0] == pytest.approx(0.5)
    assert ov.iou()[0, 0] == pytest.approx(8 / 24)


def test_empty_sides_give_empty_tables():
    ov = overlap(np.zeros((5, 5), int), np.zeros((0, 5, 5), bool))
    assert ov.intersection.shape == (0, 0)
    assert ov.dice().shape == (0, 0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        overlap(np.zeros((4, 4), int), np.zeros((4, 5), int))
