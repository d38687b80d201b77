"""A foreground head for embedding methods: where the protocol gives no foreground mask.

Methods that cluster every pixel must decide which cluster is background. The harmonic
authors' rule, "the largest cluster is background", fails when background is most of
the image and the objects are small and sparse (nuclei at 10-30 % foreground): the
network paints the background's embedding nearly everywhere, objects close to it join
its cluster, and nothing is found. The methods of this family that handle sparse data
predict the foreground separately instead: De Brabandere et al. take it from a
segmentation network, EmbedSeg from its seed map, PatchPerPix from a foreground head.
This module is that head for any method: one more output channel holding a foreground
logit, trained with binary cross-entropy, thresholded at test time; the embedding is
then trained and clustered on foreground pixels only (as when the protocol gives the
mask).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .instances import owner_map

__all__ = ["head_channels", "foreground_target", "head_targets", "foreground_loss",
           "predicted_foreground"]


def head_channels(background: str) -> int:
    """Output channels a method's ``background`` option adds: 1 for ``head`` (a
    foreground logit, the network's last channel), else 0."""
    return int(background == "head")


def foreground_target(instances: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32: 1 where any instance is (overlaps included), 0 elsewhere."""
    return (owner_map(instances) != 0).astype(np.float32)


def head_targets(instances: np.ndarray, fg: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The foreground head's 0/1 target and the mask the embedding is trained on beside
    it: the protocol's foreground mask when it gives one, else the true foreground."""
    foreground = foreground_target(instances)
    mask = foreground > 0 if fg is None else np.asarray(fg, bool)
    return foreground, mask


def foreground_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of ``(B, H, W)`` foreground logits against 0/1 targets."""
    return F.binary_cross_entropy_with_logits(logit.float(), target.float())


def predicted_foreground(logit: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """``(H, W)`` bool: pixels whose foreground probability exceeds ``threshold``."""
    return (torch.sigmoid(logit.float()) > threshold).cpu().numpy()
