"""Difference in Count (DiC): predicted minus true number of instances (CVPPP)."""

from __future__ import annotations

from benchbio.evaluation import ImagePair, Metric
from benchbio.registry import register_metric

__all__ = ["DifferenceInCount"]


class DifferenceInCount(Metric):
    """``dic`` = n_pred - n_gt (signed, best 0) and ``abs_dic`` = its absolute value.

    Counts are of foreground labels present (label images are relabelled sequentially,
    so this is the official ``max - min`` difference) or of non-empty, non-crowd masks.
    """

    name = "dic"
    keys = ("dic", "abs_dic")
    lower_is_better = frozenset({"abs_dic"})
    signed = frozenset({"dic"})

    def score(self, pair: ImagePair) -> dict[str, float]:
        d = float(pair.n_pred - pair.n_gt)
        return {"dic": d, "abs_dic": abs(d)}


@register_metric("dic")
def dic() -> Metric:
    """Difference in Count (CVPPP): signed dic and abs_dic, averaged over images."""
    return DifferenceInCount()
