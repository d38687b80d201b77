"""Harmonic embeddings (Kulikov & Lempitsky, CVPR 2020): the paper's method.

1. Guide search (section 3.1): N guides ``sin(fx x/W + fy y/H + phase)`` minimising the
   eq. 4 hinge on pairs of training objects (see :mod:`benchbio.guides`); cached per
   training set, so a second run does not search again.
2. Targets (eq. 1-2): each pixel gets the mean of the guides over its instance.
3. Network: the paper's U-Net whose decoder blocks begin with a SinConv layer (the guide
   maps concatenated to the input), section 3.2 / Figure 3.
4. Loss (eq. 5): L1 between prediction and target over foreground pixels; pixels in
   overlaps (no single owner) are ignored.
5. Inference (section 3.3): mean-shift with bandwidth = eps, background from the
   protocol's foreground mask when it gives one, small instances removed.

Where the protocol gives no foreground mask at test time (CVPPP, synthetic-cells), the
background is trained as one more object, and the largest cluster is taken as
background at test time, as in the authors' code. The options ``position``,
``search`` and ``guide_band`` are the knobs the paper's ablations turn (CoordConv / no
guide; random, low, high-frequency guides without search); ``guide_family``,
``guide_file``, ``search_metric``, ``search_background``, ``pixel_weight``,
``sinconv_norm`` and ``decoder`` put the paper's text and the authors' code side by side
(``harmonic-authors``; docs/methods.md lists every difference).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import sparse

from benchbio.cluster import embeddings_to_labels
from benchbio.data import Sample, cache_dir
from benchbio.datasets.synthetic import OVERFIT_CHECK
from benchbio.errors import BenchbioError
from benchbio.foreground import (
    foreground_loss,
    head_channels,
    head_targets,
    predicted_foreground,
)
from benchbio.guides import (
    GuideMaps,
    Guides,
    guides_figure,
    load_guide_set,
    sample_guides,
    search_guides,
)
from benchbio.instances import Prediction, is_stack, owner_map, to_stack
from benchbio.method import LogFn, Method, MethodOptions, saturated_logit
from benchbio.nets import CoordMaps, build_unet
from benchbio.registry import register_method

__all__ = [
    "HarmonicOptions", "Harmonic", "harmonic", "harmonic_targets", "harmonic_table",
    "expand_targets", "guide_maps", "guide_plane", "GuidePlane",
]

#: Frequency ranges of the random start (radians per reference extent), per family and
#: band. Oblique (the paper): fx and fy each uniform in the range. Axis-aligned (the
#: authors): |frequency| uniform in the range, random sign, the other frequency 0; "full"
#: is the authors' +-variance/2 with variance 50, "low" and "high" lie below and above it
#: ("low" is harmonic's default start: the search raises it where objects need it).
GUIDE_RANGES = {
    "oblique": {"full": (0.0, 50.0), "low": (0.0, 10.0), "high": (30.0, 50.0)},
    "axis": {"full": (0.0, 25.0), "low": (0.0, 5.0), "high": (25.0, 50.0)},
}


@dataclass
class HarmonicOptions(MethodOptions):
    """Options of the harmonic method.

    Defaults chosen by measurement (docs/methods.md): an axis-aligned start with
    |frequency| < 5 and the search in the clusterer's L2 metric with margin 1.0. The
    paper's literal reading is ``guide_family=oblique guide_band=full search_metric=l1
    search_margin=None``.

    Attributes:
        n_guides: number of guide functions = embedding size (paper: 12).
        eps: margin of the guide search and mean-shift bandwidth (paper: 0.5).
        position: what decoder convolutions see: "sinconv" (guides), "coordconv" (x, y)
            or "none" (plain convolutions).
        guide_family: the random start: "axis" (the authors' code: half the guides
            along x, half along y) or "oblique" (the paper's text: fx, fy both random).
        guide_band: the start's frequency range, ``GUIDE_RANGES[family][band]``: "low"
            (default: a start the search raises only as far as separation needs), "full"
            (the authors' / the paper's start) or "high".
        freq_range: (low, high) frequency range of the start, overriding ``guide_band``.
        guide_file: start from a fixed guide set instead: a JSON file (a run's
            ``method/guides.json``) or a released set ("authors-cvppp",
            "authors-celegans", "authors-coco").
        search: run the guide search from the start (paper), or keep the start.
        search_metric: distance of eq. 4's margin: "l2" (the clusterer's), "l1" (the
            paper's eq. 4) or "sql2" (the authors' code: squared L2).
        search_background: count the background as one more object in the search (the
            authors' code) or not (the paper).
        search_margin: eq. 4's margin (default 1.0, twice the bandwidth); None: ``eps``
            (the paper's reading: the same 0.5 as the mean-shift bandwidth).
        search_steps, search_lr: SGD steps and learning rate of the guide search.
        pixel_weight: loss weight of a pixel: "uniform" (paper eq. 5) or "log_area"
            (the authors' code: 1 / log(area of its instance)).
        kernel_size: kernel of the SinConv layers (authors: 7).
        sinconv_norm: BatchNorm + ReLU after each SinConv (benchbio) or a bare
            convolution (the authors' code).
        decoder: decoder widths: "mirror" (8w, 4w, 2w, w: 512-256-128-64) or "authors"
            (4w, 2w, w, w: 256-128-64-64).
        clusterer: "torch" (vectorised mean-shift) or "sklearn" (the authors').
        cluster_metric: distance of the torch mean-shift kernel: "l2" (default; the
            authors' and scikit-learn's, and the more tolerant of a trained network's
            noise: on a 600-step synthetic-cells model it scored SBD 0.44 against 0.26
            for "l1"), or "l1", the distance of the paper's eq. 4.
        cluster_kernel: torch mean-shift kernel, "gaussian" (default: weights
            exp(-d^2 / 2 bw^2), cut at 3 bw; measured better on the carpet, 0.940 -> 0.962,
            and on sparse nuclei, 0.608 -> 0.818, docs/methods.md) or "flat"
            (scikit-learn's and the authors': the mean of the points within the bandwidth).
        background: where the protocol gives no foreground mask, "cluster" (the authors':
            background is trained as one more object and the largest cluster is
            background) or "head" (one more output channel predicts the foreground,
            trained with binary cross-entropy; embeddings are trained and clustered on
            foreground only; see :mod:`benchbio.foreground`).
        fg_weight: weight of the foreground head's loss beside the L1 loss ("head" only).
    """

    n_guides: int = 12
    eps: float = 0.5
    position: Literal["sinconv", "coordconv", "none"] = "sinconv"
    guide_family: Literal["axis", "oblique"] = "axis"
    guide_band: Literal["low", "full", "high"] = "low"
    freq_range: tuple | None = None
    guide_file: str | None = None
    search: bool = True
    search_metric: Literal["l2", "l1", "sql2"] = "l2"
    search_background: bool = False
    search_margin: float | None = 1.0
    search_steps: int = 400
    search_lr: float = 10.0
    pixel_weight: Literal["uniform", "log_area"] = "uniform"
    kernel_size: int = 7
    sinconv_norm: bool = True
    decoder: Literal["mirror", "authors"] = "mirror"
    clusterer: Literal["torch", "sklearn"] = "torch"
    cluster_metric: Literal["l2", "l1"] = "l2"
    cluster_kernel: Literal["flat", "gaussian"] = "gaussian"
    background: Literal["cluster", "head"] = "cluster"
    fg_weight: float = 1.0


#: Largest guide plane kept (bytes, float32 and float64 copies together): 256 MiB holds
#: 12 guides over 1.86 megapixels, a 696 x 520 image rescaled by 2.
PLANE_MAX_BYTES = 256 * 2**20


@dataclass
class GuidePlane:
    """Guide values over the image pixels ``[top, top + height) x [left, left + width)``,
    pixel-major: row ``(y - top) * width + (x - left)`` of ``by_pixel`` (float32) and
    ``by_pixel64`` (the same values in float64) holds the N guides at pixel (y, x).

    A guide is a fixed function of a pixel's position in its image, so a crop at any
    origin inside the plane reads its values from the plane (:meth:`window_rows`) instead
    of evaluating N sines per pixel again; the values are those of
    ``guides.maps(height, width, origin)``, bit for bit.
    """

    top: int
    left: int
    height: int
    width: int
    by_pixel: np.ndarray
    by_pixel64: np.ndarray

    def covers(self, origin: tuple[int, int], height: int, width: int) -> bool:
        oy, ox = origin
        return (self.top <= oy and oy + height <= self.top + self.height
                and self.left <= ox and ox + width <= self.left + self.width)

    def window_rows(self, origin: tuple[int, int], height: int, width: int) -> np.ndarray:
        """Rows of the plane for the ``height x width`` window at ``origin``, in pixel
        order (the window's pixel ``i`` is plane row ``window_rows(...)[i]``)."""
        y, x = int(origin[0] - self.top), int(origin[1] - self.left)
        ys, xs = np.arange(y, y + height, dtype=np.intp), np.arange(x, x + width, dtype=np.intp)
        return (ys[:, None] * self.width + xs[None, :]).ravel()

    def window_maps(self, origin: tuple[int, int], height: int, width: int) -> np.ndarray:
        """The window's float32 ``(N, height, width)`` maps (a fresh C-contiguous array)."""
        y, x = int(origin[0] - self.top), int(origin[1] - self.left)
        grid = self.by_pixel.reshape(self.height, self.width, -1)
        return np.ascontiguousarray(grid[y:y + height, x:x + width].transpose(2, 0, 1))


def _window_values(guides: Guides, top: int, left: int, height: int, width: int) -> np.ndarray:
    """``(height, width, N)`` float32 guide values of a window of the image."""
    return guides.maps(height, width, (top, left)).astype(np.float32).transpose(1, 2, 0)


def _plane(guides: Guides, top: int, left: int, height: int, width: int,
           old: GuidePlane | None = None) -> GuidePlane:
    """The plane over a window; the part ``old`` covers (same top-left) is copied."""
    values = np.empty((height, width, guides.n), np.float32)
    h0, w0 = (old.height, old.width) if old is not None else (0, 0)
    if old is not None:
        values[:h0, :w0] = old.by_pixel.reshape(h0, w0, -1)
    if w0 < width and h0:
        values[:h0, w0:] = _window_values(guides, top, left + w0, h0, width - w0)
    if h0 < height:
        values[h0:] = _window_values(guides, top + h0, left, height - h0, width)
    by_pixel = values.reshape(height * width, guides.n)
    return GuidePlane(top, left, height, width, by_pixel, by_pixel.astype(np.float64))


def guide_plane(
    guides: Guides, origin: tuple[int, int], height: int, width: int
) -> GuidePlane:
    """A :class:`GuidePlane` covering the ``height x width`` window at ``origin``.

    Training crops lie at random origins of their (randomly rescaled) images, and
    evaluating N sines over a 448 x 448 crop cost 40 ms, seven times the rest of the
    targets. So one plane from pixel (0, 0) is kept on the guides object (for the values
    of its parameters: changed guides get a new one; copies and pickles leave it out)
    and grown, in steps of 64 pixels, to the largest image seen; crops then only read
    it. Windows at negative or fractional origins, or beyond :data:`PLANE_MAX_BYTES`,
    get a plane of their own, not kept.
    """
    oy, ox = origin
    if oy < 0 or ox < 0 or oy != int(oy) or ox != int(ox):
        return _plane(guides, oy, ox, height, width)
    oy, ox = int(oy), int(ox)
    key = (np.asarray(guides.params, np.float64).tobytes(), float(guides.ref_height),
           float(guides.ref_width))
    kept_key, plane = guides.__dict__.get("_plane", (None, None))
    if kept_key != key:
        plane = None
    elif plane.covers((oy, ox), height, width):
        return plane
    grow_to = [-(-max(need, have) // 64) * 64 for need, have in
               ((oy + height, plane.height if plane else 0),
                (ox + width, plane.width if plane else 0))]
    if grow_to[0] * grow_to[1] * guides.n * 12 > PLANE_MAX_BYTES:
        return _plane(guides, oy, ox, height, width)
    plane = _plane(guides, 0, 0, *grow_to, old=plane)
    for arr in (plane.by_pixel, plane.by_pixel64):
        arr.setflags(write=False)  # shared by every crop
    guides.__dict__["_plane"] = (key, plane)
    return plane


def guide_maps(
    guides: Guides, height: int, width: int, origin: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """``guides.maps(height, width, origin)`` as float32 ``(N, H, W)``, read from the
    kept :func:`guide_plane` (bit for bit the same values, without the sines)."""
    return guide_plane(guides, origin, height, width).window_maps(origin, height, width)


def _sums_by_label(labels: np.ndarray, counts: np.ndarray, values: np.ndarray,
                   rows: np.ndarray) -> np.ndarray:
    """``(L, N)`` float64 sums of the rows ``rows[i]`` of ``values`` over the pixels ``i``
    of each label 0..L-1.

    One sparse product of a one-hot matrix whose rows list each label's pixels in pixel
    order: scipy accumulates them one by one in float64, the same sums as one
    ``bincount(labels, values[rows, j])`` per column, bit for bit, four times faster.
    """
    small = labels.astype(np.uint16) if len(counts) <= 65536 else labels  # radix sort
    order = np.argsort(small, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(counts)])
    onehot = sparse.csr_matrix((np.ones(len(labels)), rows[order], indptr),
                               shape=(len(counts), len(values)))
    return np.asarray(onehot @ values)


def _background_mean(background: np.ndarray, values: np.ndarray,
                     rows: np.ndarray) -> np.ndarray:
    """Float32 mean of the rows ``rows[i]`` of ``values`` over the pixels ``i`` where
    ``background`` is set (summed one by one in pixel order), as one sparse product;
    zeros where there is no background."""
    count = int(background.sum())
    if count == 0:
        return np.zeros(values.shape[1])
    pick = sparse.csr_matrix((np.ones(count, np.float32), rows[background], [0, count]),
                             shape=(1, len(values)))
    total = np.asarray(pick @ values)[0]
    return np.true_divide(total, np.intp(count), out=total, casting="unsafe")


def harmonic_table(
    guides: Guides, instances: np.ndarray, fg: np.ndarray | None,
    origin: tuple[int, int] = (0, 0), pixel_weight: str = "uniform",
) -> dict[str, np.ndarray]:
    """Eq. 1-2 targets of one crop in compact form: ``owner`` ``(H, W)`` int32 (0
    background, 1..K objects, -1 overlap), ``table`` ``(K + 1, N)`` float32 (row 0 the
    background's target, row k object k's guided embedding) and ``weight`` ``(H, W)``
    bool (float32 with ``pixel_weight="log_area"``). The dense target is ``table[owner]``
    (background's row where ``owner`` is -1): :func:`expand_targets` builds it on the
    training device, so the loader ships a table and a label image (1 MB per 448 x 448
    crop with the weights) instead of N float maps (12 x 448 x 448 x 4 bytes = 9.6 MB).

    The guides are evaluated at the crop's position ``origin`` (row, col) in its image.
    With a foreground mask (given at test time by the protocol) only owned foreground
    pixels carry weight. Without one, background is one more object whose target is the
    guides' mean over it. Overlap pixels carry no weight. ``pixel_weight="log_area"``
    weighs a pixel by ``1 / log(max(area, 2))`` of its object in the crop (the authors'
    code), so small objects count more than their pixel share; ``weight`` is then float32.
    Vectorised over instances and guides: one sparse product gives every object's sum of
    every guide.
    """
    h, w = instances.shape[-2:]
    plane = guide_plane(guides, origin, h, w)
    rows = plane.window_rows(origin, h, w)
    owner = owner_map(instances)
    if is_stack(instances):
        stack = to_stack(instances).astype(np.float32)
        area = stack.sum(axis=(1, 2))
        maps = plane.window_maps(origin, h, w)
        means = np.einsum("khw,nhw->kn", stack, maps) / np.maximum(area, 1)[:, None]
        n_obj = len(stack)
    else:
        n_obj = int(owner.max(initial=0))
        counts = np.bincount(owner.ravel(), minlength=n_obj + 1)
        sums = _sums_by_label(owner.ravel(), counts, plane.by_pixel64, rows)
        means = (sums / np.maximum(counts.astype(np.float32), 1)[:, None])[1:]
    bg_mean = _background_mean(owner.ravel() == 0, plane.by_pixel, rows)
    table = np.vstack([bg_mean[None], means]).astype(np.float32)  # row 0 = background
    if fg is not None:
        weight = (owner > 0) & np.asarray(fg, bool)
    else:
        weight = owner >= 0
    if pixel_weight == "log_area":
        counts = np.bincount(np.clip(owner, 0, None).ravel(), minlength=n_obj + 1)
        per_owner = 1.0 / np.log(np.maximum(counts, 2)).astype(np.float32)
        weight = weight * per_owner[np.clip(owner, 0, None)]
    return {"owner": owner.astype(np.int32), "table": table, "weight": weight}


def harmonic_targets(
    guides: Guides, instances: np.ndarray, fg: np.ndarray | None,
    origin: tuple[int, int] = (0, 0), pixel_weight: str = "uniform",
) -> dict[str, np.ndarray]:
    """Eq. 1-2 targets for one crop: ``embedding`` ``(N, H, W)`` and ``weight`` ``(H, W)``
    float32, the dense form of :func:`harmonic_table`."""
    compact = harmonic_table(guides, instances, fg, origin, pixel_weight)
    # (N, H, W) straight from the (N, objects + 1) table: no (H, W, N) copy to transpose
    target = np.take(np.ascontiguousarray(compact["table"].T),
                     np.maximum(compact["owner"], 0), axis=1)
    return {"embedding": target, "weight": compact["weight"].astype(np.float32)}


def expand_targets(targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense ``embedding`` ``(B, N, H, W)`` and float ``weight`` ``(B, H, W)`` from a batch
    of compact targets (tables zero-padded to the batch's largest); dense targets pass
    through. The same values as :func:`harmonic_targets`, bit for bit."""
    if "embedding" in targets:
        return targets
    owner, table = targets["owner"].long(), targets["table"]
    rows = torch.arange(len(owner), device=owner.device)[:, None, None]
    embedding = table[rows, owner.clamp(min=0)].permute(0, 3, 1, 2).contiguous()
    return {"embedding": embedding, "weight": targets["weight"].to(torch.float32)}


class Harmonic(Method):
    """Harmonic embeddings with SinConv layers (the paper)."""

    name = "harmonic"
    Options = HarmonicOptions
    #: A constant lr: under a cosine schedule over 300 steps (lr 5e-3) the loss stopped at
    #: 0.020 and SBD at 0.56 (cell rims split off as clusters of their own); constant
    #: 3e-3 passes by step 600 (results/bench/overfit.md).
    overfit = replace(OVERFIT_CHECK, options={"width": 16, "kernel_size": 3}, steps=1000)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.opts
        if o.freq_range is not None and not (
                len(o.freq_range) == 2 and 0 <= o.freq_range[0] <= o.freq_range[1]):
            raise BenchbioError(f"freq_range={o.freq_range!r}: give (low, high) with "
                                "0 <= low <= high, in radians per image extent")
        if o.guide_file:  # a missing or malformed file fails before any training
            load_guide_set(o.guide_file, o.n_guides)
        self.guides: Guides | None = None
        self.search: dict[str, float] = {}
        self._maps: GuideMaps | None = None

    # --------------------------------------------------------------- guide search
    def start(self, instances: Sequence[np.ndarray], seed: int) -> Guides:
        """The search's start: the guide file, or a draw of the family and band from
        ``seed`` at the median training-image size (the same with and without search)."""
        o = self.opts
        if o.guide_file:
            return load_guide_set(o.guide_file, o.n_guides)
        shapes = np.array([i.shape[-2:] for i in instances], float)
        ref_h, ref_w = np.median(shapes, axis=0) if len(shapes) else (1.0, 1.0)
        lo, hi = o.freq_range or GUIDE_RANGES[o.guide_family][o.guide_band]
        return sample_guides(o.n_guides, (float(lo), float(hi)), float(ref_h), float(ref_w),
                             np.random.default_rng(seed), o.guide_family)

    def _cache_key(self, instances: Sequence[np.ndarray], start: Guides, seed: int) -> str:
        h = hashlib.sha256()
        for arr in instances:
            arr = np.ascontiguousarray(arr)
            h.update(str((arr.shape, arr.dtype.str)).encode())
            h.update(arr.tobytes())
        o = self.opts
        h.update(json.dumps([o.n_guides, o.eps, o.search_margin, o.search, o.search_metric,
                             o.search_background,
                             o.search_steps, o.search_lr, seed, start.to_json()]).encode())
        return h.hexdigest()[:16]

    def fit(self, train: Sequence[Sample], *, seed: int, log: LogFn | None = None) -> None:
        """Draw (or read) the start and search the guides from it; reuse a cached search.

        ``log`` receives eq. 4's hinge and the separated fraction of object pairs before
        and after the search (equal when ``search`` is off).
        """
        instances = [s.objects() for s in train]
        o = self.opts
        start = self.start(instances, seed)
        path = cache_dir() / "guides" / f"{self._cache_key(instances, start, seed)}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            self.guides = Guides.from_json(data["guides"])
            self.search = {**data["search"], "cached": 1.0}
            if log is not None:
                _log_search(self.search, log)
            return
        self.guides, self.search = search_guides(
            instances, n=o.n_guides, eps=o.eps if o.search_margin is None else o.search_margin,
            start=start, metric=o.search_metric,
            background=o.search_background, steps=o.search_steps if o.search else 0,
            lr=o.search_lr, seed=seed, log=log,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"guides": self.guides.to_json(), "search": self.search}))
        tmp.replace(path)
        self.search = {**self.search, "cached": 0.0}

    def state(self) -> dict:
        return {"guides": self.guides.to_json() if self.guides else None, "search": self.search}

    def load_state(self, state: dict) -> None:
        self.guides = Guides.from_json(state["guides"]) if state.get("guides") else None
        self.search = dict(state.get("search", {}))
        if self._maps is not None and self.guides is not None:
            self._maps.set_guides(self.guides)

    def write_artifacts(self, folder: Path) -> list[Path]:
        if self.guides is None:
            return []
        folder.mkdir(parents=True, exist_ok=True)
        js, png = folder / "guides.json", folder / "guides.png"
        js.write_text(json.dumps({**self.guides.to_json(), "search": self.search}, indent=2))
        guides_figure(self.guides, png, int(self.guides.ref_height), int(self.guides.ref_width))
        return [js, png]

    # --------------------------------------------------------------- training
    def _require_guides(self) -> Guides:
        if self.guides is None:
            raise RuntimeError("call fit() or load_state() before using the method")
        return self.guides

    def build_model(self, in_channels: int) -> torch.nn.Module:
        guides = self._require_guides()
        o = self.opts
        if o.position == "sinconv":
            self._maps = GuideMaps(guides)
            position = self._maps
        elif o.position == "coordconv":
            position = CoordMaps(int(guides.ref_height), int(guides.ref_width))
        else:
            position = None
        return build_unet(
            in_channels, o.n_guides + self._head, encoder=o.encoder, width=o.width,
            position=position, encoder_weights=o.encoder_weights, kernel_size=o.kernel_size,
            decoder=o.decoder, position_norm=o.sinconv_norm,
        )

    @property
    def _head(self) -> int:
        """1 when the network has a foreground channel (its last), else 0."""
        return head_channels(self.opts.background)

    def targets(
        self, instances: np.ndarray, fg: np.ndarray | None, origin: tuple[int, int] = (0, 0)
    ) -> dict[str, np.ndarray]:
        """Compact targets (:func:`harmonic_table`) at the crop's origin; the loss expands
        them. With the foreground head also ``foreground`` (0/1), and the embedding is
        then weighted on foreground pixels only."""
        guides, weighting = self._require_guides(), self.opts.pixel_weight
        if not self._head:
            return harmonic_table(guides, instances, fg, origin, weighting)
        foreground, mask = head_targets(instances, fg)
        return {**harmonic_table(guides, instances, mask, origin, weighting),
                "foreground": foreground}

    def loss(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean L1 over weighted pixels and embedding channels (eq. 5, normalised), plus
        the foreground head's cross-entropy times ``fg_weight`` when there is one."""
        dense = expand_targets(targets)
        output = output.float()
        embedding = output[:, : self.opts.n_guides]
        weight = dense["weight"].unsqueeze(1)
        l1 = (embedding - dense["embedding"]).abs() * weight
        loss = l1.sum() / (weight.sum() * embedding.shape[1]).clamp(min=1.0)
        if self._head:
            loss = loss + self.opts.fg_weight * foreground_loss(output[:, -1],
                                                                targets["foreground"])
        return loss

    def ideal_output(self, instances: np.ndarray, fg: np.ndarray | None) -> torch.Tensor:
        """The eq. 1-2 targets at the image's origin as the embedding channels, and with the
        foreground head a saturated logit of the true foreground."""
        compact = {k: torch.from_numpy(np.ascontiguousarray(v))[None]
                   for k, v in self.targets(instances, fg).items()}
        channels = [expand_targets(compact)["embedding"][0]]
        if self._head:
            channels.append(saturated_logit(compact["foreground"][0])[None])
        return torch.cat(channels)

    def postprocess(
        self, output: torch.Tensor, fg: np.ndarray | None, min_area: int
    ) -> Prediction:
        """Mean-shift with bandwidth eps over the protocol's foreground, else over the
        head's foreground, else over every pixel (largest cluster = background)."""
        if self._head and fg is None:
            fg = predicted_foreground(output[-1])
        return embeddings_to_labels(
            output[: self.opts.n_guides].float(), self.opts.eps, fg=fg, min_area=min_area,
            clusterer=self.opts.clusterer, metric=self.opts.cluster_metric,
            kernel=self.opts.cluster_kernel,
        )


def _log_search(figures: dict[str, float], log: LogFn) -> None:
    """A cached search's figures, logged as a fresh search logs them."""
    for key, name in (("loss_before", "guide_hinge_before"),
                      ("separated_before", "guide_separated_before"),
                      ("loss", "guide_hinge_after"), ("separated", "guide_separated_after"),
                      ("max_change", "guide_max_change")):
        if key in figures:
            log(name, float(figures[key]), 0)


@register_method("harmonic")
def harmonic(**options) -> Harmonic:
    """Harmonic embeddings with searched guides and SinConv decoder (the paper)."""
    return Harmonic(**options)
