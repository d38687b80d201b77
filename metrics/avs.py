"""PatchPerPix's score: S = TP/(TP+FP+FN) per image at IoU 0.5 ... 0.9, and avS, their mean.

Mais, Hirsch & Kainmueller (ECCV 2020) report, per image, S at IoU thresholds 0.5, 0.6,
0.7, 0.8 and 0.9 with one-to-one matching of predicted and true instances, average it
over the images of the test set, and call the mean over the five thresholds avS. Masks
may overlap on either side (BBBC010 worms): the IoU of two instances is computed from
their masks whatever else covers their pixels.

It is the ``dsb_accuracy`` ratio on another threshold grid (five thresholds 0.1 apart,
none above 0.9, instead of ten 0.05 apart up to 0.95), so the same matching and the same
edge cases apply (:mod:`.dsb_accuracy`): an image with nothing to find and nothing
predicted scores 1.0.
"""

from __future__ import annotations

import numpy as np

from benchbio.evaluation import ImagePair, Metric
from benchbio.metrics.dsb_accuracy import accuracy, true_positives
from benchbio.registry import register_metric

__all__ = ["THRESHOLDS", "AvS"]

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


class AvS(Metric):
    """``avs_50`` .. ``avs_90``: S at IoU 0.5 .. 0.9; ``avs``: their mean (PatchPerPix).

    The set-level figures are the mean over images of the per-image figures, as the
    reference averages S over images (not TP, FP, FN pooled over the set).
    """

    name = "avs"
    keys = ("avs", *(f"avs_{round(t * 100)}" for t in THRESHOLDS))

    def score(self, pair: ImagePair) -> dict[str, float]:
        ov = pair.overlap
        iou = ov.iou()
        per_threshold = {
            f"avs_{round(t * 100)}": accuracy(true_positives(iou, t), ov.n_pred, ov.n_gt)
            for t in THRESHOLDS
        }
        return {"avs": float(np.mean(list(per_threshold.values()))), **per_threshold}


@register_metric("avs")
def avs() -> Metric:
    """PatchPerPix's avS: mean over IoU 0.5:0.1:0.9 of TP/(TP+FP+FN), per image."""
    return AvS()
