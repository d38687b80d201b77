"""Discriminative loss (De Brabandere, Neven & Van Gool 2017): the paper's main baseline.

The network maps each pixel to a free ``embedding_dim``-dimensional embedding trained
with ``alpha * L_var + beta * L_dist + gamma * L_reg`` (hinged pull of pixels to within
``delta_v`` of their instance mean, hinged push of instance means to at least
``2 * delta_d`` apart, a small pull of the means to the origin). At test time the
embeddings are clustered by mean-shift, as for harmonic embeddings.

Two registered variants, as in the harmonic paper's Tables 1 and 3 ("our
implementation"): ``discriminative`` on the plain U-Net, and ``discriminative-sinconv``
(the same method with ``position="sinconv"``) whose decoder convolutions see the
dataset's searched guide functions (the guide search and its cache are harmonic's,
called through :class:`methods.harmonic.Harmonic`).

Background follows the harmonic convention: when the protocol gives a foreground mask at
test time only owned foreground pixels are trained and clustered; otherwise background is
one more cluster in the loss and the largest cluster is taken as background at test time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from benchbio.cluster import embeddings_to_labels
from benchbio.data import Sample
from benchbio.datasets.synthetic import OVERFIT_CHECK
from benchbio.foreground import (
    foreground_loss,
    head_channels,
    head_targets,
    predicted_foreground,
)
from benchbio.guides import GuideMaps
from benchbio.instances import Prediction, owner_map
from benchbio.method import LogFn, Method, MethodOptions, register_variant
from benchbio.methods.harmonic import Harmonic, HarmonicOptions
from benchbio.nets import build_unet
from benchbio.registry import register_method

__all__ = [
    "DiscriminativeOptions",
    "Discriminative",
    "cluster_targets",
    "discriminative_loss",
]


@dataclass
class DiscriminativeOptions(MethodOptions):
    """Options of the discriminative-loss baseline (defaults: De Brabandere et al. 2017).

    Attributes:
        embedding_dim: embedding size (12, harmonic's, so only the loss differs).
        delta_v, delta_d: pull and push margins (0.5, 1.5).
        alpha, beta, gamma: weights of L_var, L_dist, L_reg (1, 1, 0.001).
        bandwidth: mean-shift bandwidth at test time; None resolves to ``delta_d``, the
            middle of [delta_v, 2 delta_d - delta_v), the radii around a mean that hold
            its whole cluster and no pixel of another once the hinges are satisfied.
        position: "none" (plain U-Net) or "sinconv" (decoder sees the searched guides).
        n_guides, eps, guide_family, guide_band, freq_range, guide_file, search,
            search_metric, search_background, search_margin, search_steps, search_lr:
            harmonic's guides
            and their search (SinConv only), with harmonic's defaults.
        kernel_size: kernel of the decoder's first convolutions (authors' U-Net: 7).
        clusterer: "torch" (vectorised mean-shift) or "sklearn".
        cluster_kernel: torch mean-shift kernel, "flat" or "gaussian".
        background: where the protocol gives no foreground mask, "cluster" (background
            is one more cluster, the largest at test time) or "head" (a foreground
            channel, binary cross-entropy; see :mod:`benchbio.foreground`).
        fg_weight: weight of the foreground head's loss ("head" only).
    """

    embedding_dim: int = 12
    delta_v: float = 0.5
    delta_d: float = 1.5
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.001
    bandwidth: float | None = None
    position: Literal["none", "sinconv"] = "none"
    n_guides: int = 12
    eps: float = 0.5
    guide_family: Literal["axis", "oblique"] = HarmonicOptions.guide_family
    guide_band: Literal["low", "full", "high"] = HarmonicOptions.guide_band
    freq_range: tuple | None = None
    guide_file: str | None = None
    search: bool = HarmonicOptions.search
    search_metric: Literal["l2", "l1", "sql2"] = HarmonicOptions.search_metric
    search_background: bool = HarmonicOptions.search_background
    search_margin: float | None = HarmonicOptions.search_margin
    search_steps: int = HarmonicOptions.search_steps
    search_lr: float = HarmonicOptions.search_lr
    kernel_size: int = 7
    clusterer: Literal["torch", "sklearn"] = "torch"
    cluster_kernel: Literal["flat", "gaussian"] = "flat"
    background: Literal["cluster", "head"] = "cluster"
    fg_weight: float = 1.0

#: The options that are harmonic's guides and search, passed on to it as they are.
GUIDE_OPTIONS = ("n_guides", "eps", "guide_family", "guide_band", "freq_range", "guide_file",
                 "search", "search_metric", "search_background", "search_margin", "search_steps",
                 "search_lr", "kernel_size")


def cluster_targets(instances: np.ndarray, fg: np.ndarray | None) -> np.ndarray:
    """Per-pixel cluster index ``(H, W)`` int64: -1 ignored, else 0..C-1.

    Overlap pixels (no single owner) are ignored. With a foreground mask, background is
    ignored and instance k is cluster k-1; without one, background is cluster 0 and
    instance k is cluster k.
    """
    owner = owner_map(instances)
    if fg is None:
        return owner.astype(np.int64)
    keep = (owner > 0) & np.asarray(fg, bool)
    return np.where(keep, owner - 1, -1).astype(np.int64)


def discriminative_loss(
    embedding: torch.Tensor,
    clusters: torch.Tensor,
    *,
    delta_v: float = 0.5,
    delta_d: float = 1.5,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.001,
) -> torch.Tensor:
    """De Brabandere et al.'s loss of ``(B, D, H, W)`` embeddings, averaged over images.

    ``clusters`` ``(B, H, W)`` holds each pixel's cluster index (-1: ignored). Cluster
    means come from one ``index_add`` over the batch; the terms are computed per image
    over the clusters present and averaged over images that have any.
    """
    b, d = embedding.shape[:2]
    emb = embedding.float().permute(0, 2, 3, 1).reshape(b, -1, d)  # (B, P, D)
    lab = clusters.reshape(b, -1).long()
    n_c = int(lab.max().clamp(min=-1)) + 1
    if n_c == 0:
        return embedding.sum() * 0.0
    valid = lab >= 0
    gid = (torch.arange(b, device=lab.device)[:, None] * n_c + lab)[valid]  # global cluster
    pts = emb[valid]
    counts = torch.zeros(b * n_c, device=emb.device).index_add_(0, gid, torch.ones_like(gid,
                                                                dtype=emb.dtype))
    sums = torch.zeros(b * n_c, d, device=emb.device, dtype=emb.dtype).index_add_(0, gid, pts)
    means = sums / counts.clamp(min=1)[:, None]
    present = (counts > 0).view(b, n_c)
    n_present = present.sum(1).to(emb.dtype)  # clusters per image

    def norm(x: torch.Tensor) -> torch.Tensor:  # differentiable at 0
        return (x.pow(2).sum(-1) + 1e-12).sqrt()

    # L_var: mean over clusters of the mean over their pixels of the hinged pull.
    pull = torch.clamp(norm(pts - means[gid]) - delta_v, min=0).pow(2)
    per_cluster = torch.zeros(b * n_c, device=emb.device).index_add_(0, gid, pull)
    per_cluster = (per_cluster / counts.clamp(min=1)).view(b, n_c)
    l_var = per_cluster.sum(1) / n_present.clamp(min=1)

    # L_dist: hinged push over ordered pairs of distinct present clusters.
    m = means.view(b, n_c, d)
    pair_dist = norm(m[:, :, None] - m[:, None, :])
    pairs = present[:, :, None] & present[:, None, :] & ~torch.eye(n_c, dtype=torch.bool,
                                                                  device=emb.device)
    push = torch.clamp(2 * delta_d - pair_dist, min=0).pow(2) * pairs
    l_dist = push.sum((1, 2)) / (n_present * (n_present - 1)).clamp(min=1)

    # L_reg: mean norm of the cluster means.
    l_reg = (norm(m) * present).sum(1) / n_present.clamp(min=1)

    per_image = alpha * l_var + beta * l_dist + gamma * l_reg
    has = n_present > 0
    return per_image[has].mean()


class Discriminative(Method):
    """De Brabandere et al.'s discriminative loss on the paper's U-Net, mean-shift."""

    name = "discriminative"
    Options = DiscriminativeOptions
    overfit = replace(OVERFIT_CHECK, options={"width": 16, "kernel_size": 3})

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.opts
        if o.bandwidth is None:
            o.bandwidth = o.delta_d
        # The guide search, its cache and its state are harmonic's, reused as they are.
        self._harmonic = Harmonic(**{k: getattr(o, k) for k in GUIDE_OPTIONS})
        self._maps: GuideMaps | None = None

    # --------------------------------------------------------------- fitted state
    def fit(self, train: Sequence[Sample], *, seed: int, log: LogFn | None = None) -> None:
        """SinConv only: search the guides (or reuse harmonic's cached search)."""
        if self.opts.position == "sinconv":
            self._harmonic.fit(train, seed=seed, log=log)

    def state(self) -> dict:
        return self._harmonic.state() if self.opts.position == "sinconv" else {}

    def load_state(self, state: dict) -> None:
        if self.opts.position == "sinconv" and state:
            self._harmonic.load_state(state)
            if self._maps is not None and self._harmonic.guides is not None:
                self._maps.set_guides(self._harmonic.guides)

    def write_artifacts(self, folder: Path) -> list[Path]:
        if self.opts.position != "sinconv":
            return []
        return self._harmonic.write_artifacts(folder)

    # --------------------------------------------------------------- training
    def build_model(self, in_channels: int) -> torch.nn.Module:
        o = self.opts
        position = None
        if o.position == "sinconv":
            if self._harmonic.guides is None:
                raise RuntimeError("call fit() or load_state() before build_model()")
            self._maps = position = GuideMaps(self._harmonic.guides)
        return build_unet(
            in_channels, o.embedding_dim + self._head, encoder=o.encoder, width=o.width,
            position=position, encoder_weights=o.encoder_weights, kernel_size=o.kernel_size,
        )

    @property
    def _head(self) -> int:
        """1 when the network has a foreground channel (its last), else 0."""
        return head_channels(self.opts.background)

    def targets(
        self, instances: np.ndarray, fg: np.ndarray | None, origin: tuple[int, int] = (0, 0)
    ) -> dict[str, np.ndarray]:
        """``clusters``: each pixel's cluster index, -1 where ignored; with the
        foreground head also ``foreground`` (0/1), and background is then ignored."""
        if not self._head:
            return {"clusters": cluster_targets(instances, fg)}
        foreground, mask = head_targets(instances, fg)
        return {"clusters": cluster_targets(instances, mask), "foreground": foreground}

    def loss(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        o = self.opts
        loss = discriminative_loss(
            output[:, : o.embedding_dim], targets["clusters"], delta_v=o.delta_v,
            delta_d=o.delta_d, alpha=o.alpha, beta=o.beta, gamma=o.gamma,
        )
        if self._head:
            loss = loss + o.fg_weight * foreground_loss(output[:, -1], targets["foreground"])
        return loss

    # --------------------------------------------------------------- inference
    def unflip(self, output: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
        """Flip back when the network sees no position (the embedding of an object does
        not depend on where it is); None with SinConv, whose embeddings do."""
        return output.flip(dims) if self.opts.position == "none" else None

    def postprocess(
        self, output: torch.Tensor, fg: np.ndarray | None, min_area: int
    ) -> Prediction:
        """Mean-shift with bandwidth ``delta_d`` over the protocol's foreground, else the
        head's, else every pixel (largest cluster = background)."""
        if self._head and fg is None:
            fg = predicted_foreground(output[-1])
        return embeddings_to_labels(
            output[: self.opts.embedding_dim].float(), float(self.opts.bandwidth), fg=fg,
            min_area=min_area,
            clusterer=self.opts.clusterer, kernel=self.opts.cluster_kernel,
        )


@register_method("discriminative")
def discriminative(**options) -> Discriminative:
    """Discriminative loss (De Brabandere et al. 2017) on the plain U-Net, mean-shift."""
    return Discriminative(**options)


register_variant("discriminative-sinconv", Discriminative, "Discriminative loss with SinConv "
                 "decoder layers fed the searched guides.", position="sinconv")
