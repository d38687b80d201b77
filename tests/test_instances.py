"""Label images and mask stacks."""

from __future__ import annotations

import numpy as np
import pytest

from benchbio.instances import (
    Prediction,
    as_prediction,
    count_instances,
    crop_instances,
    default_scores,
    foreground,
    label_means,
    owner_map,
    relabel,
    to_label_image,
    to_stack,
)


def test_relabel_makes_lowest_background_and_ids_consecutive():
    labels = np.array([[5, 5, 9], [12, 9, 5]])
    out = relabel(labels)
    assert out.tolist() == [[0, 0, 1], [2, 1, 0]]


def test_stack_round_trip_drops_empty_masks():
    labels = np.array([[0, 1, 1], [0, 3, 3]])
    stack = to_stack(labels)
    assert stack.shape == (2, 2, 3)
    assert to_label_image(stack).tolist() == [[0, 1, 1], [0, 2, 2]]
    with_empty = np.concatenate([stack, np.zeros((1, 2, 3), bool)])
    assert count_instances(with_empty) == 2


def test_owner_map_marks_overlaps():
    stack = np.zeros((2, 1, 4), bool)
    stack[0, 0, :3] = True
    stack[1, 0, 2:] = True
    assert owner_map(stack).tolist() == [[1, 1, -1, 2]]
    assert foreground(stack).tolist() == [[True, True, True, True]]


def test_foreground_of_label_image_uses_lowest_label():
    assert foreground(np.array([[2, 2, 7]])).tolist() == [[False, False, True]]


def test_crop_drops_masks_outside_window():
    stack = np.zeros((2, 4, 4), bool)
    stack[0, :2, :2] = True
    stack[1, 3, 3] = True
    assert crop_instances(stack, (slice(0, 2), slice(0, 2))).shape == (1, 2, 2)


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match="label image"):
        to_stack(np.zeros(4))


def test_empty_stacks_are_handled():
    empty = np.zeros((0, 4, 5), bool)
    assert to_stack(empty).shape == (0, 4, 5)
    assert crop_instances(empty, (slice(0, 2), slice(0, 2))).shape == (0, 2, 2)
    assert owner_map(empty).tolist() == np.zeros((4, 5), int).tolist()
    one = np.zeros((1, 4, 4), bool)
    one[0, 3, 3] = True
    assert crop_instances(one, (slice(0, 2), slice(0, 2))).shape == (0, 2, 2)


def background_free_crop() -> np.ndarray:
    """A crop of a label image (background 0) that objects 3 and 5 cover completely."""
    labels = np.zeros((12, 12), int)
    labels[:6, :6] = 3
    labels[6:, :6] = 5
    labels[2:4, 8:10] = 7
    return crop_instances(labels, (slice(0, 12), slice(0, 6)))


def test_owner_map_keeps_every_object_of_a_crop_without_background():
    crop = background_free_crop()
    assert crop.min() == 3  # no background pixel in the crop
    owner = owner_map(crop)
    assert sorted(np.unique(owner)) == [1, 2]  # objects 3, 5 -> 1, 2; neither is background


def test_a_sample_stores_background_as_zero():
    from benchbio.data import Sample

    image = np.zeros((1, 2, 3), np.float32)
    sample = Sample("s", image, np.array([[4, 4, 9], [6, 4, 9]]))  # lowest value 4 = background
    assert sample.instances.tolist() == [[0, 0, 5], [2, 0, 5]]
    zero_based = np.array([[0, 2, 2], [0, 0, 5]])
    assert Sample("t", image, zero_based).instances is zero_based  # already 0: untouched


def test_prediction_scores_and_defaults():
    labels = np.array([[0, 1, 1], [2, 2, 2]])
    assert default_scores(labels) == {1: 2 / 3, 2: 3 / 4}  # area / (area + 1)
    assert as_prediction(labels).scores == default_scores(labels)
    pred = Prediction(labels, {1: 0.9, 2: 0.1})
    assert as_prediction(pred) is pred
    with pytest.raises(ValueError, match="no score for label"):
        Prediction(labels, {1: 0.9})
    values = np.array([[5.0, 1.0, 3.0], [0.0, 3.0, 6.0]])
    assert label_means(labels, values) == {1: 2.0, 2: 3.0}


def test_prediction_of_a_mask_stack_scores_each_mask_by_index():
    stack = np.zeros((3, 4, 4), bool)
    stack[0, :2], stack[2, 1:] = True, True  # overlapping masks; mask 1 is empty
    pred = Prediction(stack, {0: 0.9, 2: 0.4})
    assert pred.labels.shape == (3, 4, 4) and pred.scores == {0: 0.9, 2: 0.4}
    with pytest.raises(ValueError, match=r"no score for label\(s\) \[2\]"):
        Prediction(stack, {0: 0.9})
    assert default_scores(stack) == {0: 8 / 9, 2: 12 / 13}
    assert as_prediction(stack).scores == default_scores(stack)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(K, H, W\)"):
        Prediction(np.zeros((1, 2, 2, 2)), {})
