"""Pairwise overlaps of predicted and true instances, from one contingency table.

Every instance metric (Best Dice, IoU matching, ...) needs the overlap of each predicted
instance with each true one. Computing ``(pred == i) & (gt == j)`` for every pair costs
one pass over the image per pair; here the whole table costs one pass in total:

* two **label images**: ``np.bincount`` of the combined index ``p * (n_gt + 1) + g``;
* a **mask stack** on either side (instances may overlap): the product of sparse
  ``(K, H*W)`` indicator matrices, ``A @ B.T``.

The table is dense ``(n_pred, n_gt)``, which suits the instance counts of the benchmarks
(up to a few thousand per image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .instances import is_stack

__all__ = ["Overlap", "overlap", "sequential_labels", "stack_nonempty"]


def sequential_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel a label image to 0 = background (its lowest value) and 1..n, order kept.

    Returns the relabelled ``int64`` image and n. A lookup table over the value range is
    used when that range is small (one pass), ``np.unique`` otherwise.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64), 0
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    low = labels.min()
    span = int(labels.max()) - int(low)
    if span <= max(4 * labels.size, 1 << 16):
        shifted = (labels.astype(np.int64) - int(low)).ravel()
        present = np.bincount(shifted, minlength=span + 1) > 0
        lut = np.cumsum(present) - 1  # value -> rank among present values; 0 -> 0
        out = lut[shifted].reshape(labels.shape)
        return out, int(lut[-1])
    values, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64), len(values) - 1


def stack_nonempty(stack: np.ndarray) -> np.ndarray:
    """Indices of the non-empty masks of a ``(K, H, W)`` stack."""
    stack = np.asarray(stack)
    if len(stack) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(stack.any(axis=(1, 2)))


@dataclass(frozen=True)
class Overlap:
    """Pixel counts shared by each predicted and each true instance.

    Attributes:
        intersection: ``(n_pred, n_gt)`` int64, pixels in both instance i and instance j.
        pred_area: ``(n_pred,)`` int64 pixels per predicted instance.
        gt_area: ``(n_gt,)`` int64 pixels per true instance.
    """

    intersection: np.ndarray
    pred_area: np.ndarray
    gt_area: np.ndarray

    @property
    def n_pred(self) -> int:
        return len(self.pred_area)

    @property
    def n_gt(self) -> int:
        return len(self.gt_area)

    def dice(self) -> np.ndarray:
        """``(n_pred, n_gt)`` Dice coefficients, 2|A&B| / (|A| + |B|)."""
        total = self.pred_area[:, None] + self.gt_area[None, :]
        return 2.0 * self.intersection / np.maximum(total, 1)

    def iou(self) -> np.ndarray:
        """``(n_pred, n_gt)`` intersection over union, |A&B| / |A or B|."""
        union = self.pred_area[:, None] + self.gt_area[None, :] - self.intersection
        return self.intersection / np.maximum(union, 1)


def _indicator(instances: np.ndarray) -> sparse.csr_matrix:
    """Sparse ``(K, H*W)`` 0/1 matrix, one row per instance (label image or stack).

    A label image gives its foreground labels 1..n in order (background = lowest value);
    a stack keeps all of its K masks, empty ones included, in order.
    """
    if is_stack(instances):
        k, n_pix = len(instances), int(np.prod(instances.shape[1:]))
        rows, cols = np.nonzero(np.asarray(instances).reshape(k, n_pix))
    else:
        labels, k = sequential_labels(instances)
        flat = labels.ravel()
        cols = np.flatnonzero(flat)
        rows = flat[cols] - 1
        n_pix = flat.size
    data = np.ones(len(rows), dtype=np.int64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(k, n_pix))


def overlap(pred: np.ndarray, gt: np.ndarray) -> Overlap:
    """The contingency table of ``pred`` against ``gt``, each a label image or a stack.

    Instances of a label image are its foreground labels in ascending order (after
    sequential relabelling); instances of a stack are its masks in order. Spatial shapes
    must match (ValueError otherwise; :class:`~benchbio.evaluation.ImagePair` checks this
    with a user-facing message first).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    if not is_stack(pred) and not is_stack(gt):
        p, n_p = sequential_labels(pred)
        g, n_g = sequential_labels(gt)
        table = np.bincount(
            (p * (n_g + 1) + g).ravel(), minlength=(n_p + 1) * (n_g + 1)
        ).reshape(n_p + 1, n_g + 1)
        return Overlap(table[1:, 1:], table[1:].sum(axis=1), table[:, 1:].sum(axis=0))
    a, b = _indicator(pred), _indicator(gt)
    inter = (a @ b.T).toarray().astype(np.int64)
    return Overlap(
        inter,
        np.asarray(a.sum(axis=1)).ravel().astype(np.int64),
        np.asarray(b.sum(axis=1)).ravel().astype(np.int64),
    )
