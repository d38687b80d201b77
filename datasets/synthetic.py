"""Synthetic datasets that need no download, generated deterministically from a seed.

``synthetic-cells``: densely packed, textured, cell-like instances of limited size
variation (the regime the harmonic-embeddings paper targets): clumps of touching
elliptic cells with membranes, textured interiors and background gaps, under blur and
noise. Scored like CVPPP (SBD, |DiC|, fg/bg Dice), no foreground mask at test time.
With ``sparse=true``: sparse nuclei instead, separate and touching, about 15 %
foreground (the regime of fluorescence nuclei sets), same scoring, still no mask.

``synthetic-worms``: elongated, overlapping worm-like instances kept as a mask stack;
the input is the binary foreground, as in the BBBC010 protocol, scored with COCO AP.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from benchbio.data import InstanceDataset, LazySamples, Sample
from benchbio.errors import BenchbioError
from benchbio.method import OverfitCheck
from benchbio.registry import register_dataset

__all__ = [
    "GeneratedOptions",
    "CellsOptions",
    "make_cells",
    "make_nuclei",
    "make_worms",
    "synthetic_cells",
    "synthetic_worms",
    "OVERFIT_CHECK",
    "OVERLAPS_CHECK",
]

_SPLIT_OFFSETS = {"train": 0, "val": 100_000, "test": 200_000}

#: The standard overfit check (:mod:`benchbio.overfit`): one clumps image of about 21
#: touching cells, SBD >= 0.95; what a method that declares no check of its own gets.
OVERFIT_CHECK = OverfitCheck(dataset="synthetic-cells", dataset_options={"tissue": 0.3},
                             metric="sbd", threshold=0.95)
#: For methods whose output may overlap: one synthetic-worms image, COCO AP >= 0.9.
OVERLAPS_CHECK = OverfitCheck(dataset="synthetic-worms", metric="ap", threshold=0.9)


def _paint_ellipse(
    labels: np.ndarray, best: np.ndarray, dy: np.ndarray, dx: np.ndarray, a: float, b: float,
    angle: float, label: int,
) -> None:
    """Paint an ellipse (half-axes ``a``, ``b``, turned by ``angle``; ``dy``, ``dx`` each
    pixel's offset from its centre) as ``label`` where it is nearer, in its own scaled
    distance, than what ``best`` holds: touching ellipses split along that line."""
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
    d = u * u + v * v
    inside = (d < 1.0) & (d < best)
    labels[inside] = label
    best[inside] = d[inside]


def make_cells(
    seed: int, size: int = 128, spacing: float = 15.0, keep: float = 0.8,
    radius: tuple[float, float] = (7.5, 10.5), tissue: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image ``(1, size, size)`` float32 and its label image (0 = background).

    Cell centres sit on a jittered grid (``spacing`` pixels), each kept with probability
    ``keep``; a cell is an ellipse with semi-axes drawn from ``radius``, and touching
    ellipses split their overlap by the nearer centre (in ellipse-normalised distance).
    With ``tissue < 1`` only centres inside the top ``tissue`` fraction of a smooth random
    field (Gaussian, sigma 10 px) are kept: clumps of touching cells with gaps between
    them. ``tissue=1`` is a carpet of cells over the whole image.
    """
    _check_tissue(tissue)
    rng = np.random.default_rng(seed)
    n = int(np.ceil(size / spacing)) + 1
    gy, gx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    centres = np.stack([gy.ravel(), gx.ravel()], 1) * spacing + rng.uniform(-4, 4, (n * n, 2))
    kept = rng.random(len(centres)) < keep
    if tissue < 1.0:  # drawn after the grid, so tissue=1 images stay what they were
        field = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 10.0, mode="wrap")
        at = np.clip(np.round(centres).astype(int), 0, size - 1)
        kept &= field[at[:, 0], at[:, 1]] > np.quantile(field, 1.0 - tissue)
    centres = centres[kept]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    best = np.full((size, size), np.inf, np.float32)
    labels = np.zeros((size, size), np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        a, b = rng.uniform(*radius, 2)
        _paint_ellipse(labels, best, yy - cy, xx - cx, a, b, rng.uniform(0, np.pi), i)
    labels = _relabel_min_area(labels, 20)
    image = np.full((size, size), 0.1, np.float32)
    texture = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 1.5).astype(np.float32)
    brightness = rng.uniform(0.45, 0.85, labels.max() + 1).astype(np.float32)
    fg = labels > 0
    image[fg] = brightness[labels[fg]] + 0.15 * texture[fg]
    image[find_boundaries(labels, mode="inner") & fg] *= 0.45
    image = ndi.gaussian_filter(image, 0.8) + rng.normal(0, 0.04, (size, size))
    return np.clip(image, 0, 1).astype(np.float32)[None], labels


def make_nuclei(
    seed: int, size: int = 128, foreground: float = 0.15, radius: tuple[float, float] = (5.0, 8.0),
    touching: float = 0.35,
) -> tuple[np.ndarray, np.ndarray]:
    """One sparse nuclei-like image ``(1, size, size)`` float32 and its label image.

    Elliptic nuclei (semi-axes drawn from ``radius``) are added until they cover the
    ``foreground`` fraction of the image: each new nucleus is, with probability
    ``touching``, placed against one already there (centres 0.75-0.9 of the summed radii
    apart, the overlap split by the nearer centre in ellipse-normalised distance), else
    anywhere at least 4 px clear of the others. Nuclei are bright, brightest in the
    middle, with a darker rim where they touch, on a dark background, under blur and
    noise: the regime of fluorescence nuclei sets (10-30 % foreground, no mask at test).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    best = np.full((size, size), np.inf, np.float32)
    labels = np.zeros((size, size), np.int32)
    placed: list[tuple[float, float, float]] = []  # centre row, column, larger semi-axis
    for _ in range(2000):
        if (labels > 0).sum() >= foreground * size * size:
            break
        a, b = rng.uniform(*radius, 2)
        r = max(a, b)
        against = placed and rng.random() < touching
        if against:
            py, px, pr = placed[rng.integers(len(placed))]
            angle, dist = rng.uniform(0, 2 * np.pi), (pr + r) * rng.uniform(0.75, 0.9)
            cy, cx = py + dist * np.sin(angle), px + dist * np.cos(angle)
        else:
            cy, cx = rng.uniform(r, size - r, 2)
        if not (r <= cy < size - r and r <= cx < size - r):
            continue
        if not all(np.hypot(cy - qy, cx - qx) > (0.7 * (r + qr) if against else r + qr + 4)
                   for qy, qx, qr in placed):
            continue
        _paint_ellipse(labels, best, yy - cy, xx - cx, a, b, rng.uniform(0, np.pi),
                       len(placed) + 1)
        placed.append((cy, cx, r))
    labels = _relabel_min_area(labels, 20)
    image = np.full((size, size), 0.08, np.float32)
    texture = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 1.5).astype(np.float32)
    brightness = rng.uniform(0.45, 0.9, labels.max() + 1).astype(np.float32)
    fg = labels > 0
    shade = np.clip(1.0 - 0.35 * best, 0.6, 1.0)  # brighter towards the centre
    image[fg] = brightness[labels[fg]] * shade[fg] + 0.08 * texture[fg]
    image[find_boundaries(labels, mode="inner") & fg] *= 0.6
    image = ndi.gaussian_filter(image, 1.0) + rng.normal(0, 0.03, (size, size))
    return np.clip(image, 0, 1).astype(np.float32)[None], labels


def _check_tissue(tissue: float) -> None:
    if not 0.0 < tissue <= 1.0:
        raise BenchbioError(f"synthetic-cells: tissue={tissue} must be in (0, 1] (the "
                            "fraction of the image cells may cover)")


def _relabel_min_area(labels: np.ndarray, min_area: int) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    lut = np.zeros(len(areas), np.int32)
    lut[keep] = np.arange(1, keep.sum() + 1)
    return lut[labels]


def make_worms(
    seed: int, size: int = 128, n_worms: tuple[int, int] = (6, 10), width: float = 3.0,
    length: tuple[float, float] = (35.0, 60.0),
) -> tuple[np.ndarray, np.ndarray]:
    """One binary foreground image ``(1, size, size)`` and a ``(K, size, size)`` stack of
    worm masks (smooth random curves ``width`` pixels thick, free to overlap)."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(rng.integers(n_worms[0], n_worms[1] + 1)):
        total = rng.uniform(*length)
        steps = int(total)
        angle = rng.uniform(0, 2 * np.pi)
        turn = np.cumsum(rng.normal(0, 0.08, steps))
        pos = rng.uniform(10, size - 10, 2)
        pts = [pos.copy()]
        for k in range(steps):
            a = angle + turn[k]
            pos = np.clip(pos + [np.sin(a), np.cos(a)], 2, size - 3)
            pts.append(pos.copy())
        skeleton = np.zeros((size, size), bool)
        p = np.round(np.array(pts)).astype(int)
        skeleton[p[:, 0], p[:, 1]] = True
        mask = ndi.distance_transform_edt(~skeleton) <= width / 2 + 0.5
        masks.append(mask)
    stack = np.array(masks, dtype=bool)
    fg = stack.any(0)
    return fg.astype(np.float32)[None], stack


def _split_samples(make, prefix: str, seed: int, split: str, count: int, fg_input: bool):
    def load(name: str) -> Sample:
        index = int(name.rsplit("_", 1)[1])
        image, instances = make(seed * 1_000_003 + _SPLIT_OFFSETS[split] + index)
        fg = image[0] > 0.5 if fg_input else None
        return Sample(name, image, instances, fg=fg)

    return LazySamples([f"{prefix}_{split}_{i:03d}" for i in range(count)], load)


@dataclass
class GeneratedOptions:
    """Options of every generated dataset (synthetic-worms has these only).

    Attributes:
        seed: seed of the generator; each split draws its own images from it.
        n_train, n_val, n_test: images per split.
        size: side of the square images (pixels).
    """

    seed: int = 0
    n_train: int = 48
    n_val: int = 8
    n_test: int = 16
    size: int = 128


@dataclass
class CellsOptions(GeneratedOptions):
    """Options of synthetic-cells.

    Attributes:
        tissue: the fraction of the image the cells may cover (1: a carpet of about 67
            cells per 128x128 image; 0.3: clumps, about 21 cells, near CVPPP A1's 16
            leaves).
        sparse: instead of cells, sparse nuclei (:func:`make_nuclei`): about 20 per
            128x128 image, separate and touching, 15 % foreground, as in fluorescence
            nuclei sets, where background is most of every image.
    """

    tissue: float = 1.0
    sparse: bool = False

    def __post_init__(self) -> None:
        _check_tissue(self.tissue)  # now, not when the first image is generated
        if self.sparse and self.tissue != 1.0:
            raise BenchbioError(
                f"synthetic-cells: tissue={self.tissue} shapes the cell carpet, but "
                "sparse=true places nuclei itself (about 15 % foreground); drop one of them")


def _generated(
    name: str, make, fg_input: bool, metrics: tuple[str, ...], description: str,
    options: GeneratedOptions,
) -> InstanceDataset:
    """An InstanceDataset whose splits are generated lazily from
    ``make(seed, size=..., <the options beyond GeneratedOptions>)``."""
    prefix = name.removeprefix("synthetic-")
    base = {f.name for f in dataclasses.fields(GeneratedOptions)} - {"size"}
    make_options = {k: v for k, v in dataclasses.asdict(options).items() if k not in base}
    counts = {"train": options.n_train, "val": options.n_val, "test": options.n_test}
    splits = {
        k: _split_samples(lambda s: make(s, **make_options), prefix, options.seed, k, n,
                          fg_input)
        for k, n in counts.items()
    }
    return InstanceDataset(
        name=name,
        splits=splits,
        in_channels=1,
        metrics=metrics,
        val_metric="sbd",
        fg_at_test=fg_input,
        min_area=20,
        options=options,
        description=description,
    )


def _make_cells_or_nuclei(
    seed: int, size: int, tissue: float, sparse: bool
) -> tuple[np.ndarray, np.ndarray]:
    return make_nuclei(seed, size=size) if sparse else make_cells(seed, size=size, tissue=tissue)


@register_dataset("synthetic-cells", options=CellsOptions)
def synthetic_cells(options: CellsOptions, data_dir: str | None = None) -> InstanceDataset:
    """Densely packed textured cells, generated (no download); CVPPP-style scoring."""
    del data_dir  # generated, nothing on disk
    return _generated(
        "synthetic-cells", _make_cells_or_nuclei, False,
        ("sbd", "dic", "fg_bg_dice", "dsb_accuracy"),
        "densely packed textured cell-like instances, generated from a seed", options,
    )


@register_dataset("synthetic-worms", options=GeneratedOptions)
def synthetic_worms(options: GeneratedOptions, data_dir: str | None = None) -> InstanceDataset:
    """Overlapping worm-like instances from a binary image, generated; COCO AP scoring."""
    del data_dir  # generated, nothing on disk
    return _generated(
        "synthetic-worms", make_worms, True, ("coco", "sbd", "dsb_accuracy", "avs"),
        "overlapping worm-like instances (mask stacks) from a binary image", options,
    )
