"""``abs_dic`` alone, for protocols that list it as a metric (see :mod:`.dic`)."""

from __future__ import annotations

from benchbio.evaluation import ImagePair, Metric
from benchbio.registry import register_metric

__all__ = ["AbsoluteDifferenceInCount"]


class AbsoluteDifferenceInCount(Metric):
    """``abs_dic`` = |n_pred - n_gt|; the ``dic`` plugin gives it too, with signed dic."""

    name = "abs_dic"
    keys = ("abs_dic",)
    lower_is_better = frozenset({"abs_dic"})

    def score(self, pair: ImagePair) -> dict[str, float]:
        return {"abs_dic": float(abs(pair.n_pred - pair.n_gt))}


@register_metric("abs_dic")
def abs_dic() -> Metric:
    """Absolute Difference in Count |DiC| (CVPPP), averaged over images."""
    return AbsoluteDifferenceInCount()
