"""DSB 2018 / StarDist "accuracy" TP/(TP+FP+FN), what EmbedSeg and PatchPerPix call AP.

Named ``dsb_accuracy`` so it is never confused with COCO AP (:mod:`.coco`).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from benchbio.evaluation import ImagePair, Metric
from benchbio.registry import register_metric

__all__ = ["THRESHOLDS", "true_positives", "accuracy", "DsbAccuracy"]

THRESHOLDS: tuple[float, ...] = tuple(t / 100 for t in range(50, 100, 5))


def true_positives(iou: np.ndarray, threshold: float) -> int:
    """Matched pairs with IoU >= threshold under StarDist's one-to-one matching.

    StarDist minimises ``-(iou >= t) - iou / (2 n)`` with the Hungarian algorithm
    (scipy ``linear_sum_assignment``), i.e. it maximises the number of pairs at or above
    the threshold, breaking ties by total IoU. Only the count is reported, and it does not
    depend on rows or columns without any pair at or above the threshold, so the
    assignment is solved on the others only (same count, smaller problem).
    """
    hit = iou >= threshold
    rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
    if len(rows) == 0:
        return 0
    sub, sub_hit = iou[np.ix_(rows, cols)], hit[np.ix_(rows, cols)]
    n = min(iou.shape)
    r, c = linear_sum_assignment(-sub_hit.astype(float) - sub / (2 * n))
    return int(np.count_nonzero(sub_hit[r, c]))


def accuracy(tp: int, n_pred: int, n_gt: int) -> float:
    """TP / (TP + FP + FN); 1.0 when there is nothing to find and nothing was predicted.

    (StarDist returns 0 for that empty case; an empty prediction of an empty image is
    perfect here, as for ``fg_bg_dice``.)
    """
    denom = n_pred + n_gt - tp  # = TP + FP + FN
    return 1.0 if denom == 0 else tp / denom


class DsbAccuracy(Metric):
    """Per-threshold accuracy ``dsb_accuracy_50`` .. ``_95`` and their mean ``dsb_accuracy``.

    The set-level figure is the mean over images (the DSB 2018 / EmbedSeg convention);
    StarDist's ``matching_dataset`` instead pools TP/FP/FN over the set by default.
    """

    name = "dsb_accuracy"
    keys = ("dsb_accuracy", *(f"dsb_accuracy_{round(t * 100)}" for t in THRESHOLDS))

    def score(self, pair: ImagePair) -> dict[str, float]:
        ov = pair.overlap
        iou = ov.iou()
        out = {
            f"dsb_accuracy_{round(t * 100)}": accuracy(
                true_positives(iou, t), ov.n_pred, ov.n_gt
            )
            for t in THRESHOLDS
        }
        return {"dsb_accuracy": float(np.mean(list(out.values()))), **out}


@register_metric("dsb_accuracy")
def dsb_accuracy() -> Metric:
    """DSB/StarDist accuracy TP/(TP+FP+FN) at IoU 0.50:0.05:0.95 (EmbedSeg's "AP")."""
    return DsbAccuracy()
