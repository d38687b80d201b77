"""Symmetric Best Dice (SBD), the CVPPP leaf segmentation challenge's main figure."""

from __future__ import annotations

import numpy as np

from benchbio.evaluation import ImagePair, Metric
from benchbio.registry import register_metric

__all__ = ["best_dice", "SymmetricBestDice"]


def best_dice(dice: np.ndarray) -> float:
    """BestDice of the row instances against the column instances of a Dice table.

    The mean over rows of the best Dice against any column; 0 when there are no rows
    (CVPPP: the first argument has no foreground), and 0 per row when there are no
    columns. Rows are the consecutive labels 1..n, so this equals the official code's
    sum divided by ``max - min`` on sequentially relabelled images.

    >>> dice = np.array([[0.9, 0.1], [0.0, 0.5], [0.2, 0.0]])  # 3 rows, 2 columns
    >>> round(best_dice(dice), 4), round(best_dice(dice.T), 4)  # (0.9+0.5+0.2)/3, (0.9+0.5)/2
    (0.5333, 0.7)
    >>> best_dice(np.zeros((0, 2)))
    0.0
    """
    if dice.shape[0] == 0 or dice.shape[1] == 0:
        return 0.0
    return float(dice.max(axis=1).mean())


class SymmetricBestDice(Metric):
    """``min(BestDice(pred, gt), BestDice(gt, pred))`` from the shared overlap table."""

    name = "sbd"
    keys = ("sbd",)

    def score(self, pair: ImagePair) -> dict[str, float]:
        dice = pair.overlap.dice()
        return {"sbd": min(best_dice(dice), best_dice(dice.T))}


@register_metric("sbd")
def sbd() -> Metric:
    """Symmetric Best Dice (CVPPP): min of BestDice both ways, per image, averaged."""
    return SymmetricBestDice()
