"""Harmonic guide functions and their search (paper section 3.1).

A guide is ``f(x, y) = sin(fx * x / W + fy * y / H + phase)`` (eq. 3) with ``x`` the
column and ``y`` the row of a pixel (origin at the top-left pixel centre) and ``W, H`` a
fixed *reference extent*: the median training-image size, stored with the guides. The
frequencies are therefore radians per reference extent, as in the authors' code, and a
guide is a fixed function of pixel position, the same on training crops and on whole
test images.

The guided embedding of an object is the mean of the guides over its pixels (eq. 1-2).
:func:`search_guides` minimises eq. 4, the hinge ``max(0, eps - d(e(S), e(S')))``
averaged over pairs of objects of the same image, by SGD over minibatches of random
pairs from random training images, from a start drawn by :func:`sample_guides` (the
paper's oblique family or the authors' axis-aligned one) or read from a JSON file
(:func:`load_guide_set`: a saved set or one of the authors' released sets). ``d`` is the
paper's L1 distance (``metric="l1"``), the L2 distance the clusterer uses (``"l2"``), or
the authors' code's squared L2 (``"sql2"``); the authors also count the background as
one more object (``background=True``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .errors import BenchbioError
from .instances import owner_map, to_stack
from .method import LogFn
from .nets import PositionMaps

__all__ = ["Guides", "GuideMaps", "object_points", "search_guides", "sample_guides",
           "load_guide_set", "guide_separation", "GuideFamily", "SearchMetric",
           "RELEASED_SETS"]

GuideFamily = Literal["oblique", "axis"]
SearchMetric = Literal["l1", "l2", "sql2"]

#: The authors' released guide sets (authors-guides.md), shipped as package data:
#: a ``guide_file`` of this name loads ``benchbio/guide_sets/<name>.json``.
RELEASED_SETS = ("authors-cvppp", "authors-celegans", "authors-coco")


@dataclass
class Guides:
    """N harmonic guide functions: ``params`` rows are (fx, fy, phase)."""

    params: np.ndarray  # (N, 3) float
    ref_height: float
    ref_width: float

    @property
    def n(self) -> int:
        return len(self.params)

    def __getstate__(self) -> dict:
        """Pickles and copies leave out what was derived and kept on the object (the
        harmonic method's guide plane, ``_plane``): they would ship megabytes of it."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def evaluate(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Guide values ``(N, len(points))`` at pixel coordinates (rows ``ys``, cols ``xs``)."""
        p = np.asarray(self.params, dtype=np.float64)
        arg = (
            p[:, 0:1] * (np.asarray(xs, np.float64)[None] / self.ref_width)
            + p[:, 1:2] * (np.asarray(ys, np.float64)[None] / self.ref_height)
            + p[:, 2:3]
        )
        return np.sin(arg)

    def maps(self, height: int, width: int, origin: Sequence[float] = (0, 0)) -> np.ndarray:
        """``(N, height, width)`` guide maps over a full-resolution window whose top-left
        pixel is pixel ``origin`` (row, col) of its image (a training crop's position)."""
        ys, xs = np.mgrid[0:height, 0:width]
        ys, xs = ys.ravel() + float(origin[0]), xs.ravel() + float(origin[1])
        return self.evaluate(ys, xs).reshape(self.n, height, width)

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


def load_guide_set(name_or_path: str, n: int | None = None) -> Guides:
    """A fixed guide set: one of :data:`RELEASED_SETS` or a JSON file as written by
    :meth:`Guides.save` (``params`` rows (fx, fy, phase), ``ref_height``, ``ref_width``).

    The authors' sets are radians per 448-px crop (``ref_height = ref_width = 448``);
    as any set, they are used at the reference extent stored in the file. ``n``: the
    number of guides the method expects (an error if the file has another number).
    """
    if name_or_path in RELEASED_SETS:
        text = (resources.files("benchbio") / "guide_sets" / f"{name_or_path}.json"
                ).read_text()
        where = f"released set {name_or_path}"
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise BenchbioError(
                f"guide_file={name_or_path!r}: no such file; give a JSON guide set (as "
                f"written to a run's method/guides.json) or one of {', '.join(RELEASED_SETS)}")
        text, where = path.read_text(), str(path)
    try:
        data = json.loads(text)
        guides = Guides.from_json(data)
        params = np.asarray(guides.params, dtype=np.float64)
        ok = params.ndim == 2 and params.shape[1] == 3 and np.isfinite(params).all()
        ok = ok and float(guides.ref_height) > 0 and float(guides.ref_width) > 0
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise BenchbioError(
            f"{where} is not a guide set: it needs 'params' (rows of fx, fy, phase) and "
            "positive 'ref_height' and 'ref_width'")
    if n is not None and len(params) != n:
        raise BenchbioError(
            f"{where} has {len(params)} guides but n_guides={n}; set n_guides={len(params)}")
    return Guides(params, float(guides.ref_height), float(guides.ref_width))


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
    instances_per_image: Sequence[np.ndarray], max_points: int, seed: int,
    background: bool = False,
) -> list[list[np.ndarray]]:
    """For each image, for each object, up to ``max_points`` of its pixels as (y, x) rows;
    with ``background`` the background (pixels of no object) is one more object, last.

    Subsampling keeps the search cheap; means over a few hundred pixels are within a
    few hundredths of the full means.
    """
    rng = np.random.default_rng(seed)
    out = []
    for instances in instances_per_image:
        masks = list(to_stack(instances))
        if background:
            bg = owner_map(instances) == 0
            if bg.any():
                masks.append(bg)
        objects = []
        for mask in masks:
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
    rng: np.random.Generator, family: GuideFamily = "oblique",
) -> Guides:
    """Random guides, frequencies in radians per reference extent.

    ``"oblique"`` (the paper, section 3.1): fx and fy each uniform in ``freq_range``,
    phases uniform in [0, 2pi). ``"axis"`` (the authors' ``flat_pattern_rdm``): the
    first ``n - n // 2`` guides vary along x only (fy = 0), the others along y only;
    |frequency| uniform in ``freq_range`` with a random sign (so ``(0, r)`` is uniform in
    (-r, r), the authors' +-variance/2 with variance 2r); phases uniform in [0, 1) as
    in the authors' code.
    """
    lo, hi = freq_range
    if family == "oblique":
        params = np.column_stack(
            [rng.uniform(lo, hi, n), rng.uniform(lo, hi, n), rng.uniform(0, 2 * np.pi, n)]
        )
    elif family == "axis":
        freq = rng.uniform(lo, hi, n) * rng.choice([-1.0, 1.0], n)
        along_x = np.arange(n) < n - n // 2
        params = np.column_stack([np.where(along_x, freq, 0.0), np.where(along_x, 0.0, freq),
                                  rng.uniform(0, 1, n)])
    else:
        raise BenchbioError(f"guide family {family!r}: use oblique or axis")
    return Guides(params, ref_height, ref_width)


def _distance(a: torch.Tensor, b: torch.Tensor, metric: SearchMetric) -> torch.Tensor:
    diff = a - b
    if metric == "l1":
        return diff.abs().sum(-1)
    squared = (diff * diff).sum(-1)
    if metric == "sql2":
        return squared
    return torch.sqrt(squared + 1e-12)  # differentiable at 0


def guide_loss(
    params: torch.Tensor, pts: torch.Tensor, wts: torch.Tensor, ref: tuple[float, float],
    pairs: torch.Tensor, eps: float, metric: SearchMetric = "l1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 hinge over ``pairs`` of objects of one image, and the separated fraction
    (pairs farther apart than ``eps`` in ``metric``)."""
    ys, xs = pts[..., 0] / ref[0], pts[..., 1] / ref[1]
    arg = (params[:, 0, None, None] * xs[None] + params[:, 1, None, None] * ys[None]
           + params[:, 2, None, None])
    emb = (torch.sin(arg) * wts[None]).sum(-1).T  # (K, N)
    dist = _distance(emb[pairs[:, 0]], emb[pairs[:, 1]], metric)
    return torch.clamp(eps - dist, min=0), (dist > eps).float()


def _full_set_figures(
    params: torch.Tensor, images: list[tuple[torch.Tensor, torch.Tensor]],
    all_pairs: list[torch.Tensor], ref: tuple[float, float], eps: float,
    metric: SearchMetric,
) -> dict[str, float]:
    """Mean hinge and separated fraction over every object pair of every image."""
    with torch.no_grad():
        hinges, seps = [], []
        for (pts, wts), pairs in zip(images, all_pairs):
            h, sep = guide_loss(params, pts, wts, ref, pairs, eps, metric)
            hinges.append(h.mean())
            seps.append(sep)
        return {"loss": float(torch.stack(hinges).mean()),
                "separated": float(torch.cat(seps).mean())}


def guide_separation(
    guides: Guides, instances_per_image: Sequence[np.ndarray], *, eps: float = 0.5,
    metric: SearchMetric = "l1", background: bool = False, max_points: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Eq. 4's mean hinge (``loss``) and the separated fraction of object pairs of the
    same image (``separated``) for fixed ``guides``, as :func:`search_guides` reports."""
    images = [_pad_objects(o) for o in
              object_points(instances_per_image, max_points, seed, background)]
    if not images:
        return {"loss": 0.0, "separated": 1.0}
    all_pairs = [torch.combinations(torch.arange(len(w)), 2) for _, w in images]
    params = torch.as_tensor(guides.params, dtype=torch.float32)
    return _full_set_figures(params, images, all_pairs, (guides.ref_height, guides.ref_width),
                             eps, metric)


def search_guides(
    instances_per_image: Sequence[np.ndarray],
    *,
    n: int = 12,
    eps: float = 0.5,
    init_freq: tuple[float, float] = (0.0, 50.0),
    family: GuideFamily = "oblique",
    start: Guides | None = None,
    metric: SearchMetric = "l1",
    background: bool = False,
    steps: int = 400,
    lr: float = 10.0,
    images_per_step: int = 8,
    pairs_per_image: int = 64,
    max_points: int = 256,
    seed: int = 0,
    log: LogFn | None = None,
) -> tuple[Guides, dict[str, float]]:
    """Search guides minimising eq. 4 on training annotations (paper section 3.1).

    The start is ``start`` when given, else :func:`sample_guides` of ``family`` and
    ``init_freq`` at the median training-image size. Each step draws
    ``images_per_step`` random images and up to ``pairs_per_image`` random object pairs
    from each, and takes an SGD step (momentum 0.9) on the mean hinge in ``metric``
    (``steps=0``: no search, only the figures). Returns the guides and the full-set
    figures before and after: ``loss_before``, ``separated_before``, ``loss`` and
    ``separated`` (mean hinge; fraction of all object pairs farther apart than ``eps``),
    and ``max_change`` (largest change of a parameter). ``log`` receives them as
    ``guide_hinge_before``, ``guide_separated_before``, ``guide_hinge_after``,
    ``guide_separated_after``, ``guide_max_change`` and the minibatch hinge every 20
    steps as ``guide_search_loss``.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if start is None:
        shapes = np.array([np.asarray(i).shape[-2:] for i in instances_per_image], dtype=float)
        ref_h, ref_w = np.median(shapes, axis=0) if len(shapes) else (1.0, 1.0)
        start = sample_guides(n, init_freq, float(ref_h), float(ref_w), rng, family)
    ref = (float(start.ref_height), float(start.ref_width))
    images = [_pad_objects(o) for o in
              object_points(instances_per_image, max_points, seed, background)]
    params = torch.tensor(start.params, dtype=torch.float32, requires_grad=True)
    if images:
        all_pairs = [torch.combinations(torch.arange(len(w)), 2) for _, w in images]
        before = _full_set_figures(params, images, all_pairs, ref, eps, metric)
    else:  # fewer than two objects anywhere: nothing to separate
        steps, before = 0, {"loss": 0.0, "separated": 1.0}
    opt = torch.optim.SGD([params], lr=lr, momentum=0.9)
    for step in range(steps):
        opt.zero_grad()
        chosen = rng.choice(len(images), min(images_per_step, len(images)), replace=False)
        losses = []
        for i in chosen:
            pairs = all_pairs[i]
            if len(pairs) > pairs_per_image:
                pairs = pairs[torch.from_numpy(rng.choice(len(pairs), pairs_per_image, False))]
            hinge, _ = guide_loss(params, *images[i], ref, pairs, eps, metric)
            losses.append(hinge.mean())
        loss = torch.stack(losses).mean()
        loss.backward()
        opt.step()
        if log is not None and (step % 20 == 0 or step == steps - 1):
            log("guide_search_loss", float(loss.detach()), step)
    after = (_full_set_figures(params, images, all_pairs, ref, eps, metric) if steps
             else before)
    found = (params.detach().double().numpy() if steps
             else np.array(start.params, dtype=np.float64))  # no search: the start exactly
    figures = {
        "loss_before": before["loss"], "separated_before": before["separated"],
        "loss": after["loss"], "separated": after["separated"],
        "max_change": float(np.abs(found - np.asarray(start.params)).max(initial=0.0)),
    }
    if log is not None:
        for key, name in (("loss_before", "guide_hinge_before"),
                          ("separated_before", "guide_separated_before"),
                          ("loss", "guide_hinge_after"), ("separated", "guide_separated_after"),
                          ("max_change", "guide_max_change")):
            log(name, figures[key], 0)
    return Guides(found, *ref), figures


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

