"""Clustering pixel embeddings into instances.

The paper recovers instances with mean-shift (bandwidth = the guide margin eps). The
authors run scikit-learn's ``MeanShift(bin_seeding=True)``, which is exact but slow on
the tens of thousands of pixels of one image. :func:`mean_shift` is a vectorised torch
version of the same algorithm (bin seeding, flat kernel, merging of modes closer than
the bandwidth, every point assigned to its nearest mode) that runs on the model's device;
``clusterer="sklearn"`` selects the reference implementation on the same embeddings.

What makes it fast: the modes are shifted over a seeded random subsample of the points
(``max_points``), from at most ``max_seeds`` seeds a round for at most ``max_iter``
steps, all moving seeds at once as one preallocated kernel matrix per step; converged
seeds and seeds that meet another leave the batch. Every point is then assigned by
matrix products only (no ``argmin`` or ``norm`` over the short embedding dimension,
both many times slower on a CPU). Points that the modes of a round leave uncovered
(farther than the bandwidth from all of them) seed another round, so a small cluster
is found whatever the subsample. Each instance gets a score: how tightly its pixels
gather at its mode. ``benchmarks/bench_inference.py`` measures it against scikit-learn
on a trained model's embeddings (docs/inference.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from .instances import Prediction, sequential

__all__ = ["mean_shift", "mean_shift_sklearn", "embeddings_to_labels", "remove_small"]


SHIFT_TOL = 1e-2  # a mode has converged when it moves less than this times the bandwidth
TWIN_DISTANCE = 0.25  # a moving mode this close (times the bandwidth) to another is dropped
# Defaults chosen on harmonic synthetic-cells embeddings (docs/inference.md): 64 seeds a
# round, 10 steps at most, a 1,024-point sample gave the best SBD and a quarter of the
# time of 256 seeds, 100 steps and 2,048 points; points left uncovered seed more rounds.
MAX_ITER = 10  # steps of a seed at most
MAX_SEEDS = 64  # seeds of a round at most
MAX_POINTS = 1024  # sample the modes climb on


def _bin_seeds(
    points: torch.Tensor, bandwidth: float, max_seeds: int, min_bin_freq: int = 1,
) -> torch.Tensor:
    """One point of each bandwidth-sized bin holding at least ``min_bin_freq`` points,
    most populated bins first (ties: bins in lexicographic order), at most ``max_seeds``.

    Unlike scikit-learn's bin seeding, the seed is a data point, not the bin centre: a
    bin centre can lie within the bandwidth of two clusters and pull them into one mode.
    Bins are told apart by one exact integer key (their coordinates in mixed radix), which
    ``torch.unique`` sorts many times faster than rows.
    """
    bins = torch.round(points / bandwidth).to(torch.int64)
    low = bins.min(0).values
    span = (bins.max(0).values - low + 1).tolist()
    if math.prod(span) < 2**62:
        strides = [math.prod(span[i + 1 :]) for i in range(len(span))]
        key = ((bins - low) * torch.tensor(strides, device=points.device)).sum(1)
        _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    else:  # too many bins for one int64 key: compare rows
        _, inverse, counts = torch.unique(bins, dim=0, return_inverse=True, return_counts=True)
    first = torch.full((len(counts),), len(points), dtype=torch.int64, device=points.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(points), device=points.device), "amin")
    order = torch.argsort(counts, descending=True, stable=True)
    order = order[counts[order] >= min_bin_freq][:max_seeds]
    return points[first[order]].clone()


def _squares(points: torch.Tensor, metric: str) -> torch.Tensor | None:
    """``|p|^2`` of each point for L2 (what the distance products need), None for L1."""
    return (points * points).sum(1) if metric == "l2" else None


def _distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    return torch.cdist(a, b, p=1.0 if metric == "l1" else 2.0)


def _within(
    a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None, radius: float, metric: str,
) -> torch.Tensor:
    """``(len(a), len(b))`` booleans: pairs closer than ``radius``.

    For L2 one matrix product gives ``|b|^2 - 2 a.b``, compared with ``radius^2 - |a|^2``
    row by row: no square root and no second pass over the matrix."""
    if metric == "l2":
        partial = torch.addmm((b * b).sum(1)[None] if b_sq is None else b_sq[None], a, b.T,
                              alpha=-2)
        return partial < (radius * radius - (a * a).sum(1))[:, None]
    return _distance(a, b, metric) < radius


def _kernel_weights(
    modes: torch.Tensor, sample_t: torch.Tensor, sample_sq: torch.Tensor | None,
    bandwidth: float, metric: str, kernel: str, out: torch.Tensor,
) -> torch.Tensor:
    """Kernel weights ``(modes, sample)`` of the sample points around each mode, written
    into ``out``; ``sample_t`` is the sample transposed ``(D, S)``, contiguous.

    For L2 one matrix product gives ``|s|^2 - 2 m.s``, and the flat kernel is its
    comparison with ``bandwidth^2 - |m|^2``, written as 0 / 1 over the same buffer: no
    square root, no new matrix (fresh matrices of this size cost as much as the product)."""
    if metric == "l2":
        sq = torch.addmm(sample_sq[None], modes, sample_t, alpha=-2, out=out)
        modes_sq = (modes * modes).sum(1, keepdim=True)
        if kernel == "flat":
            return torch.lt(sq, bandwidth * bandwidth - modes_sq, out=sq)
        # Gaussian with standard deviation = bandwidth, cut at 3 bandwidths
        sq += modes_sq
        outside = sq >= 9 * bandwidth * bandwidth
        return sq.clamp_(min=0).mul_(-0.5 / bandwidth**2).exp_().masked_fill_(outside, 0.0)
    dist = _distance(modes, sample_t.T, metric)
    if kernel == "flat":
        return torch.lt(dist, bandwidth, out=out)
    weight = torch.exp(-0.5 * (dist / bandwidth) ** 2)
    return out.copy_(weight.masked_fill_(dist >= 3 * bandwidth, 0.0))


def _lengths(vectors: torch.Tensor, metric: str) -> torch.Tensor:
    """L1 length, or squared L2 length, of each row (no square root: compared with
    squared thresholds; ``Tensor.norm`` over a short dimension is many times slower)."""
    return vectors.abs().sum(1) if metric == "l1" else (vectors * vectors).sum(1)


def _shift(
    seeds: torch.Tensor, sample: torch.Tensor, bandwidth: float, metric: str, max_iter: int,
    kernel: str = "flat",
) -> torch.Tensor:
    """Move each seed to the kernel-weighted mean of the sample points until it moves
    less than ``SHIFT_TOL`` * bandwidth, or for ``max_iter`` steps; returns the modes
    reached.

    Only the moving modes shift, all at once, in one preallocated kernel matrix: one
    matrix product for the kernel, one for the weighted sums. A moving mode that comes
    within ``TWIN_DISTANCE`` * bandwidth of a mode that has stopped, or of another moving
    one that started earlier, is dropped: from there both climb to the same mode, which
    is followed once."""
    sample_t = sample.T.contiguous()
    sample_sq = _squares(sample, metric)
    buffer = sample.new_empty((len(seeds), len(sample)))
    tol = (SHIFT_TOL * bandwidth) ** (1 if metric == "l1" else 2)
    twin = TWIN_DISTANCE * bandwidth
    found = seeds[:0]  # modes that have stopped
    current = seeds
    for _ in range(max_iter):
        if len(current) == 0:
            break
        weights = _kernel_weights(current, sample_t, sample_sq, bandwidth, metric, kernel,
                                  buffer[: len(current)])
        support = weights.sum(1, keepdim=True)
        new = torch.mm(sample_t, weights.T).T / support  # no support: NaN, kept in place
        new = torch.where(support > 0, new, current)
        moving = _lengths(new - current, metric) >= tol
        found = torch.cat([found, new[~moving]])
        # twins: moving modes close to a stopped mode or to an earlier moving one
        close = _within(new, torch.cat([found, new]), None, twin, metric)
        twins = close[:, : len(found)].any(1) | torch.tril(close[:, len(found):], -1).any(1)
        current = new[moving & ~twins]
    return torch.cat([found, current])


def _merge(
    modes: torch.Tensor, sample: torch.Tensor, bandwidth: float, metric: str,
    min_support: int = 1,
) -> torch.Tensor:
    """Indices of the modes kept, by decreasing support (sample points within
    ``bandwidth``): a mode within ``bandwidth`` of a kept one, or supported by fewer than
    ``min_support`` points, is dropped."""
    support = _within(modes, sample, None, bandwidth, metric).sum(1)
    order = torch.argsort(support, descending=True, stable=True)
    support = support[order].tolist()
    ordered = modes[order]
    close = _within(ordered, ordered, None, bandwidth, metric).cpu().numpy()
    covered = np.zeros(len(modes), dtype=bool)  # within bandwidth of a kept mode
    keep: list[int] = []
    for i in range(len(modes)):
        if support[i] < max(min_support, 1):
            break  # sorted: every later mode is as poorly supported
        if not covered[i]:
            keep.append(i)
            covered |= close[i]
    return order[keep]


CHUNK = 32768  # points per distance matrix against the modes


def _assign(
    centres: torch.Tensor, first: int, points_t: torch.Tensor, points_sq: torch.Tensor | None,
    metric: str, labels: torch.Tensor, closest: torch.Tensor,
) -> None:
    """Move each point (``points_t`` is ``(D, P)``) to the nearest of ``centres``
    (numbered from ``first``) where that is nearer than its distance in ``closest``
    (squared for L2); ``labels`` and ``closest`` are updated in place.

    Per chunk of points, one ``(centres, chunk)`` distance matrix (for L2 one matrix
    product, no square roots): its minimum over the centres vectorises across the points,
    and the nearest centre's index comes from one more product, ``[0..K-1; 1] @ (d ==
    min)``, with the number of centres at the minimum beside it: far cheaper than
    ``argmin`` over a short dimension. Exact ties (rare) take the first centre."""
    index_and_one = torch.stack([torch.arange(len(centres), dtype=points_t.dtype,
                                              device=points_t.device),
                                 points_t.new_ones(len(centres))])
    centres_sq = (centres * centres).sum(1, keepdim=True)
    for start in range(0, points_t.shape[1], CHUNK):
        chunk = points_t[:, start : start + CHUNK]
        if metric == "l2":
            dist = torch.addmm(points_sq[None, start : start + CHUNK], centres, chunk,
                               alpha=-2).add_(centres_sq)
        else:
            dist = _distance(centres, chunk.T, metric)
        best = dist.amin(0)
        nearest, count = torch.mm(index_and_one, torch.eq(dist, best, out=dist))
        nearest = nearest.to(torch.int64)
        tied = (count > 1).nonzero().squeeze(1)
        if len(tied):  # two centres at the same distance: the first
            if metric == "l2":
                again = torch.cdist(centres, chunk[:, tied].T)
            else:
                again = _distance(centres, chunk[:, tied].T, metric)
            nearest[tied] = again.argmin(0)
        old = closest[start : start + CHUNK]
        nearer = best < old
        closest[start : start + CHUNK] = torch.where(nearer, best, old)
        labels[start : start + CHUNK] = torch.where(nearer, nearest + first,
                                                    labels[start : start + CHUNK])


def mean_shift(
    points: torch.Tensor | np.ndarray,
    bandwidth: float,
    *,
    metric: str = "l2",
    kernel: str = "flat",
    max_iter: int = MAX_ITER,
    max_seeds: int = MAX_SEEDS,
    min_bin_freq: int = 1,
    max_points: int = MAX_POINTS,
    min_support: int = 1,
    min_cluster: int = 20,
    rounds: int = 3,
    seed: int = 0,
    return_distances: bool = False,
):
    """Mean-shift of ``points`` ``(P, D)``; returns (labels ``(P,)``, modes ``(K, D)``)
    and, with ``return_distances``, each point's distance to its mode ``(P,)``.

    Seeds are one point of each bandwidth-sized bin holding at least ``min_bin_freq``
    points (most populated first, at most ``max_seeds``); each seed climbs to a mode
    (at most ``max_iter`` steps) with a ``"flat"`` kernel (mean of the points within
    ``bandwidth``, scikit-learn's) or a ``"gaussian"`` one (standard deviation
    ``bandwidth``); modes closer than ``bandwidth`` are merged by decreasing support and
    modes supported by fewer than ``min_support`` sampled points dropped; every point
    joins its nearest mode. ``metric`` is ``"l2"`` (scikit-learn's) or ``"l1"`` (the
    distance of the guide search, eq. 4).

    Above ``max_points`` points the modes climb on a random subsample of that size drawn
    from ``seed`` (deterministic for a seed); the assignment always uses every point.
    No cluster is lost to the subsample or to the seed limit: after each round, the
    points (of all ``P``) farther than ``bandwidth`` from every mode are clustered again
    on their own (at most ``max_points`` of them, drawn at random), and each of their
    modes that gathers at least ``min_cluster`` of them (scaled to the subsample) and
    lies farther than ``bandwidth`` from every kept mode is added. Rounds stop when
    fewer than ``min_cluster`` points are left uncovered, when a round adds no mode, or
    after ``rounds`` rounds. Runs on the device of ``points``.
    """
    if metric not in ("l1", "l2"):
        raise ValueError(f"metric must be 'l1' or 'l2', got {metric!r}")
    if kernel not in ("flat", "gaussian"):
        raise ValueError(f"kernel must be 'flat' or 'gaussian', got {kernel!r}")
    pts = torch.as_tensor(points, dtype=torch.float32)
    n = pts.shape[0]
    if n == 0:
        empty = (np.zeros(0, dtype=np.int64), np.zeros((0, pts.shape[1] if pts.ndim == 2 else 0)))
        return (*empty, np.zeros(0, dtype=np.float32)) if return_distances else empty
    rng = np.random.default_rng(seed)
    with _cpu_threads(1 if pts.device.type == "cpu" else None):
        points_t = pts.T.contiguous()  # (D, P): no copy for a transposed (D, P) embedding
        points_sq = (points_t * points_t).sum(0) if metric == "l2" else None
        radius = bandwidth if metric == "l1" else bandwidth * bandwidth
        closest = pts.new_full((n,), math.inf)  # to the closest mode (squared for L2)
        labels = torch.zeros(n, dtype=torch.int64, device=pts.device)  # its index
        centres = pts[:0]
        for round_ in range(max(rounds, 1)):
            pool = None if round_ == 0 else (closest >= radius).nonzero().squeeze(1)
            if pool is not None and len(pool) < max(min_cluster, 1):
                break  # too few points left uncovered to make an instance of their own
            drawn = _subsample(n if pool is None else len(pool), max_points, rng)
            if drawn is not None:
                drawn = drawn.to(pts.device)
            picked = drawn if pool is None else pool if drawn is None else pool[drawn]
            sample = pts.contiguous() if picked is None else points_t[:, picked].T.contiguous()
            needed = min_support
            if pool is not None:  # enough of the uncovered points to make an instance
                needed = max(min_support, math.ceil(max(min_cluster, 1) * len(sample)
                                                    / len(pool)))
            seeds = _bin_seeds(sample, bandwidth, max_seeds, min_bin_freq)
            modes = _shift(seeds, sample, bandwidth, metric, max_iter, kernel)
            modes = modes[_merge(modes, sample, bandwidth, metric, needed)]
            if len(centres) and len(modes):  # only modes away from every kept one
                modes = modes[~_within(modes, centres, None, bandwidth, metric).any(1)]
            if len(modes) == 0:
                if len(centres):
                    break  # the uncovered points form no new mode
                modes = sample.mean(0, keepdim=True)  # every mode below min_support
            _assign(modes, len(centres), points_t, points_sq, metric, labels, closest)
            centres = torch.cat([centres, modes])
        if return_distances:
            dist = _lengths(pts - centres[labels], metric)
            dist = dist if metric == "l1" else dist.sqrt()
    labels_np, centres_np = labels.cpu().numpy(), centres.cpu().numpy()
    if return_distances:
        return labels_np, centres_np, dist.cpu().numpy()
    return labels_np, centres_np


def _subsample(n: int, size: int, rng: np.random.Generator) -> torch.Tensor | None:
    """Sorted indices of ``size`` of ``n`` points drawn by ``rng``; None if ``n <= size``."""
    if n <= size:
        return None
    # numpy draws a small subset without permuting all the points
    return torch.as_tensor(np.sort(rng.choice(n, size, replace=False)))


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (None: unchanged).

    Mean-shift's matrices are small (hundreds of modes by a few thousand points), so
    threads mostly synchronise: on the project's loaded 2-core machine, clustering one
    CVPPP image's 265,000 embeddings took 0.6-0.7 s with one thread and 2.8-4.4 s with
    two, timed alternately in one process. On the same machine idle, two threads were
    faster but only by a quarter (0.046-0.061 s against 0.059-0.081 s on three CVPPP
    outputs): one thread is the safer default where runs share the cores (sweeps, CI).
    """
    if n is None or torch.get_num_threads() == n:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def mean_shift_sklearn(points: np.ndarray, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's MeanShift (bin seeding), the authors' clusterer, as the reference."""
    from sklearn.cluster import MeanShift

    pts = np.asarray(points, dtype=np.float64)
    if len(pts) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, pts.shape[1]))
    ms = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=True)
    try:
        labels = ms.fit_predict(pts)
    except ValueError:  # no bin had enough points to seed: everything is one cluster
        return np.zeros(len(pts), dtype=np.int64), pts.mean(0, keepdims=True)
    return labels.astype(np.int64), ms.cluster_centers_


def remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Set instances smaller than ``min_area`` pixels to background and relabel 1..n.

    ``labels`` has background 0; an image that instances cover completely keeps them all.
    """
    if min_area > 1 and labels.max(initial=0) > 0:
        areas = np.bincount(labels.ravel())
        small = areas < min_area
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    return sequential(labels)


def embeddings_to_labels(
    embedding: torch.Tensor | np.ndarray,
    bandwidth: float,
    *,
    fg: np.ndarray | None = None,
    min_area: int = 0,
    clusterer: str = "torch",
    metric: str = "l2",
    kernel: str = "flat",
    seed: int = 0,
) -> Prediction:
    """Instances from a ``(D, H, W)`` embedding by mean-shift, with a score each.

    With a foreground mask only its pixels are clustered. Without one, every pixel is
    clustered and the largest cluster is taken as background (the authors' rule).
    ``metric`` and ``kernel`` apply to the torch clusterer; scikit-learn's is always a
    flat L2 kernel. An instance's score is how tightly its pixels gather at its mode:
    the mean over its pixels of ``max(0, 1 - d / bandwidth)``, ``d`` the pixel's
    distance to the mode (1: every pixel on the mode; 0: none within the bandwidth).
    """
    emb = torch.as_tensor(embedding)
    d, h, w = emb.shape
    mask = np.ones((h, w), bool) if fg is None else np.asarray(fg, bool)
    flat = emb.reshape(d, -1)  # (D, pixels); points are its transposed view, not a copy
    if fg is None:
        points = flat.T
    else:
        points = flat[:, torch.as_tensor(mask.ravel(), device=flat.device)].T
    if clusterer == "torch":
        labels, _, dist = mean_shift(points, bandwidth, metric=metric, kernel=kernel, seed=seed,
                                     min_cluster=min_area if min_area > 1 else 20,
                                     return_distances=True)
    elif clusterer == "sklearn":
        pts = points.float().cpu().numpy()
        labels, centres = mean_shift_sklearn(pts, bandwidth)
        dist = np.linalg.norm(pts - centres[labels], axis=1) if len(pts) else np.zeros(0)
    else:
        raise ValueError(f"unknown clusterer {clusterer!r}; use 'torch' or 'sklearn'")
    return _instances(np.asarray(labels), np.asarray(dist, np.float64), mask, bandwidth,
                      min_area, background=fg is None)


def _instances(
    clusters: np.ndarray, dist: np.ndarray, mask: np.ndarray, bandwidth: float,
    min_area: int, background: bool,
) -> Prediction:
    """The label image and scores from the cluster of each masked pixel and its distance
    to the cluster's mode: with ``background`` the largest cluster is background;
    clusters below ``min_area`` pixels are dropped; the others become 1..n in the order
    of their cluster ids (what :func:`remove_small` gives), through one lookup table."""
    n_clusters = int(clusters.max(initial=-1)) + 1
    areas = np.bincount(clusters, minlength=n_clusters)
    kept = areas >= max(min_area, 1)
    if background and len(clusters):
        kept[areas.argmax()] = False
    ids = np.zeros(n_clusters, dtype=np.int64)
    ids[kept] = np.arange(1, int(kept.sum()) + 1)
    closeness = np.clip(1.0 - dist / bandwidth, 0.0, 1.0)  # 1: on the mode, 0: a bandwidth away
    scores = np.bincount(clusters, closeness, minlength=n_clusters)[kept] / areas[kept]
    out = np.zeros(mask.size, dtype=np.int64)
    out[mask.ravel()] = ids[clusters]
    return Prediction(out.reshape(mask.shape),
                      {i + 1: float(score) for i, score in enumerate(scores)})
