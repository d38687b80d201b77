"""Foreground-background Dice (CVPPP FgBgDice): how well the foreground is found."""

from __future__ import annotations

import numpy as np

from benchbio.evaluation import ImagePair, Metric
from benchbio.registry import register_metric

__all__ = ["mask_dice", "FgBgDice"]


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (nothing to find, none found).

    The official CVPPP code returns 0 there; no CVPPP test image is empty, so the choice
    never changes a CVPPP figure, and here a perfect empty prediction scores as perfect.
    """
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(a & b) / total


class FgBgDice(Metric):
    """Dice of the predicted and true foreground masks (union of the instances)."""

    name = "fg_bg_dice"
    keys = ("fg_bg_dice",)

    def score(self, pair: ImagePair) -> dict[str, float]:
        return {"fg_bg_dice": mask_dice(pair.pred_fg, pair.gt_fg)}


@register_metric("fg_bg_dice")
def fg_bg_dice() -> Metric:
    """Foreground-background Dice (CVPPP), per image, averaged."""
    return FgBgDice()
