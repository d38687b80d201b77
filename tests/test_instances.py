"""Label images and mask stacks."""

from __future__ import annotations

import numpy as np
import pytest

from benchbio.instances import (
    count_instances,
    crop_instances,
    foreground,
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
