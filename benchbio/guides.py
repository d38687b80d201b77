"""Harmonic guide functions and their search (paper section 3.1).

A guide is ``f(x, y) = sin(fx * x / W + fy * y / H + phase)`` (eq. 3) with ``x`` the
column and ``y`` the row of a pixel (origin at the top-left pixel centre) and ``W, H`` a
fixed *reference extent*: the median training-image size, stored with the guides. The
frequencies are therefore radians per reference extent, as in the authors' code, and a
guide is a fixed function of pixel position, the same on training crops and on whole
test images.

The guided embedding of an object is the mean of the guides over its pixels (eq. 1-2).
:func:`search_guides` minimises eq. 4, the hinge ``max(0, eps - ||e(S) - e(S')||_1)``
averaged over pairs of objects of the same image, by SGD over minibatches of random
pairs from random training images. Unlike the authors' code it uses the L1 distance of
the paper, only object pairs (background is not an object), and every object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .instances import to_stack
from .method import LogFn
from .nets import PositionMaps

__all__ = ["Guides", "GuideMaps", "object_points", "search_guides", "sample_guides"]


@dataclass
class Guides:
    """N harmonic guide functions: ``params`` rows are (fx, fy, phase)."""

    params: np.ndarray  # (N, 3) float
    ref_height: float
    ref_width: float

    @property
    def n(self) -> int:
        return len(self.params)

    def evaluate(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Guide values ``(N, len(points))`` at pixel coordinates (rows ``ys``, cols ``xs``)."""
        p = np.asarray(self.params, dtype=np.float64)
        arg = (
            p[:, 0:1] * (np.asarray(xs, np.float64)[None] / self.ref_width)
            + p[:, 1:2] * (np.asarray(ys, np.float64)[None] / self.ref_height)
            + p[:, 2:3]
        )
        return np.sin(arg)

    def maps(self, height: int, width: int) -> np.ndarray:
        """``(N, height, width)`` guide maps over a full-resolution image."""
        ys, xs = np.mgrid[0:height, 0:width]
        return self.evaluate(ys.ravel(), xs.ravel()).reshape(self.n, height, width)

    def embed(self, instances: np.ndarray) -> np.ndarray:
        """Guided embedding ``(K, N)`` of each instance (eq. 1-2), in stack order."""
        stack = to_stack(instances)
        if len(stack) == 0:
            return np.zeros((0, self.n))
        maps = self.maps(*stack.shape[1:]).reshape(self.n, -1)
        flat = stack.reshape(len(stack), -1).astype(np.float64)
        return (flat @ maps.T) / flat.sum(1, keepdims=True)

    def to_json(self) -> dict:
        return {
            "params": np.asarray(self.params).tolist(),
            "ref_height": float(self.ref_height),
            "ref_width": float(self.ref_width),
            "columns": ["fx", "fy", "phase"],
            "formula": "sin(fx * x / ref_width + fy * y / ref_height + phase), x=col, y=row",
        }

    @classmethod
    def from_json(cls, data: dict) -> Guides:
        return cls(np.asarray(data["params"], dtype=np.float64), data["ref_height"],
                   data["ref_width"])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: Path) -> Guides:
        return cls.from_json(json.loads(path.read_text()))


class GuideMaps(PositionMaps):
    """SinConv's extra input: the guide maps sampled at a layer's cell centres."""

    def __init__(self, guides: Guides) -> None:
        super().__init__()
        self.channels = guides.n
        self.register_buffer("params", torch.as_tensor(guides.params, dtype=torch.float32))
        self.ref_height, self.ref_width = float(guides.ref_height), float(guides.ref_width)

    def set_guides(self, guides: Guides) -> None:
        """Replace the (frozen) guide parameters, e.g. after loading a checkpoint."""
        self.params.copy_(torch.as_tensor(guides.params, dtype=torch.float32))
        self.ref_height, self.ref_width = float(guides.ref_height), float(guides.ref_width)

    def forward(self, height: int, width: int, stride: int, like: torch.Tensor) -> torch.Tensor:
        ys, xs = self.centres(height, width, stride, like)
        ys, xs = ys / self.ref_height, xs / self.ref_width
        p = self.params.float()
        arg = (
            p[None, :, 0, None, None] * xs[:, None, None, :]
            + p[None, :, 1, None, None] * ys[:, None, :, None]
            + p[None, :, 2, None, None]
        )
        maps = torch.sin(arg).to(like.dtype)
        return maps if self.origins is not None else maps[0]


def object_points(
    instances_per_image: Sequence[np.ndarray], max_points: int, seed: int
) -> list[list[np.ndarray]]:
    """For each image, for each object, up to ``max_points`` of its pixels as (y, x) rows.

    Subsampling keeps the search cheap; means over a few hundred pixels are within a
    few hundredths of the full means.
    """
    rng = np.random.default_rng(seed)
    out = []
    for instances in instances_per_image:
        objects = []
        for mask in to_stack(instances):
            yx = np.argwhere(mask)
            if len(yx) > max_points:
                yx = yx[rng.choice(len(yx), max_points, replace=False)]
            objects.append(yx.astype(np.float32))
        if len(objects) >= 2:
            out.append(objects)
    return out


def _pad_objects(objects: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Objects of one image as a padded ``(K, P, 2)`` tensor and a ``(K, P)`` weight."""
    p = max(len(o) for o in objects)
    pts = np.zeros((len(objects), p, 2), np.float32)
    wts = np.zeros((len(objects), p), np.float32)
    for i, o in enumerate(objects):
        pts[i, : len(o)] = o
        wts[i, : len(o)] = 1.0 / len(o)
    return torch.from_numpy(pts), torch.from_numpy(wts)


def sample_guides(
    n: int, freq_range: tuple[float, float], ref_height: float, ref_width: float,
    rng: np.random.Generator,
) -> Guides:
    """Random guides: frequencies uniform in ``freq_range``, phases uniform in [0, 2pi)."""
    lo, hi = freq_range
    params = np.column_stack(
        [rng.uniform(lo, hi, n), rng.uniform(lo, hi, n), rng.uniform(0, 2 * np.pi, n)]
    )
    return Guides(params, ref_height, ref_width)


def guide_loss(
    params: torch.Tensor, pts: torch.Tensor, wts: torch.Tensor, ref: tuple[float, float],
    pairs: torch.Tensor, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 hinge over ``pairs`` of objects of one image, and the separated fraction."""
    ys, xs = pts[..., 0] / ref[0], pts[..., 1] / ref[1]
    arg = (params[:, 0, None, None] * xs[None] + params[:, 1, None, None] * ys[None]
           + params[:, 2, None, None])
    emb = (torch.sin(arg) * wts[None]).sum(-1).T  # (K, N)
    dist = (emb[pairs[:, 0]] - emb[pairs[:, 1]]).abs().sum(1)
    return torch.clamp(eps - dist, min=0), (dist > eps).float()


def search_guides(
    instances_per_image: Sequence[np.ndarray],
    *,
    n: int = 12,
    eps: float = 0.5,
    init_freq: tuple[float, float] = (0.0, 50.0),
    steps: int = 400,
    lr: float = 10.0,
    images_per_step: int = 8,
    pairs_per_image: int = 64,
    max_points: int = 256,
    seed: int = 0,
    log: LogFn | None = None,
) -> tuple[Guides, dict[str, float]]:
    """Search guides minimising eq. 4 on training annotations (paper section 3.1).

    Each step draws ``images_per_step`` random images and up to ``pairs_per_image``
    random object pairs from each, and takes an SGD step (momentum 0.9) on the mean
    hinge. Returns the guides and the final full-set figures ``loss`` and
    ``separated`` (fraction of all object pairs farther apart than ``eps`` in L1).
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    shapes = np.array([np.asarray(i).shape[-2:] for i in instances_per_image], dtype=float)
    ref_h, ref_w = np.median(shapes, axis=0) if len(shapes) else (1.0, 1.0)
    images = [_pad_objects(o) for o in object_points(instances_per_image, max_points, seed)]
    init = sample_guides(n, init_freq, ref_h, ref_w, rng)
    params = torch.tensor(init.params, dtype=torch.float32, requires_grad=True)
    if not images:  # fewer than two objects anywhere: nothing to separate
        return init, {"loss": 0.0, "separated": 1.0}
    all_pairs = [torch.combinations(torch.arange(len(w)), 2) for _, w in images]
    opt = torch.optim.SGD([params], lr=lr, momentum=0.9)
    for step in range(steps):
        opt.zero_grad()
        chosen = rng.choice(len(images), min(images_per_step, len(images)), replace=False)
        losses = []
        for i in chosen:
            pairs = all_pairs[i]
            if len(pairs) > pairs_per_image:
                pairs = pairs[torch.from_numpy(rng.choice(len(pairs), pairs_per_image, False))]
            hinge, _ = guide_loss(params, *images[i], (ref_h, ref_w), pairs, eps)
            losses.append(hinge.mean())
        loss = torch.stack(losses).mean()
        loss.backward()
        opt.step()
        if log is not None and (step % 20 == 0 or step == steps - 1):
            log("guide_search_loss", float(loss.detach()), step)
    with torch.no_grad():
        hinges, seps = [], []
        for (pts, wts), pairs in zip(images, all_pairs):
            h, s = guide_loss(params, pts, wts, (ref_h, ref_w), pairs, eps)
            hinges.append(h.mean())
            seps.append(s)
        final = {
            "loss": float(torch.stack(hinges).mean()),
            "separated": float(torch.cat(seps).mean()),
        }
    if log is not None:
        log("guide_search_final_loss", final["loss"], steps)
        log("guide_search_separated", final["separated"], steps)
    guides = Guides(params.detach().double().numpy(), float(ref_h), float(ref_w))
    return guides, final


def guides_figure(guides: Guides, path: Path, height: int, width: int) -> None:
    """PNG of every guide function over a ``height x width`` image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = guides.maps(height, width)
    cols = min(6, guides.n)
    rows = int(np.ceil(guides.n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < guides.n:
            ax.imshow(maps[i], cmap="RdBu", vmin=-1, vmax=1)
            fx, fy, ph = guides.params[i]
            ax.set_title(f"fx={fx:.1f} fy={fy:.1f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

