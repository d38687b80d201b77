"""Clustering pixel embeddings into instances.

The paper recovers instances with mean-shift (bandwidth = the guide margin eps). The
authors run scikit-learn's ``MeanShift(bin_seeding=True)``, which is exact but slow on
the tens of thousands of pixels of one image. :func:`mean_shift` is a vectorised torch
version of the same algorithm (bin seeding, flat kernel, merging of modes closer than
the bandwidth, every point assigned to its nearest mode) that runs on the model's device;
``clusterer="sklearn"`` selects the reference implementation on the same embeddings.

What makes it fast: the modes are shifted over a seeded random subsample of the points
(``max_points``), all seeds at once as one distance matrix per iteration, and only the
final nearest-mode assignment touches every point. Points that the modes of a round
leave uncovered (farther than the bandwidth from all of them) seed another round, so a
small cluster is found whatever the subsample. Each instance gets a score: how tightly
its pixels gather at its mode. ``benchmarks/bench_inference.py``
measures it against scikit-learn on a trained model's embeddings (docs/inference.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from .instances import Prediction, label_means, sequential

__all__ = ["mean_shift", "mean_shift_sklearn", "embeddings_to_labels", "remove_small"]


SHIFT_TOL = 1e-2  # a mode has converged when it moves less than this times the bandwidth
TWIN_DISTANCE = 0.25  # moving modes closer than this times the bandwidth are followed once


def _bin_seeds(points: torch.Tensor, bandwidth: float, max_seeds: int) -> torch.Tensor:
    """One point of each occupied bandwidth-sized bin, most populated bins first.

    Unlike scikit-learn's bin seeding, the seed is a data point, not the bin centre: a
    bin centre can lie within the bandwidth of two clusters and pull them into one mode.
    """
    bins = torch.round(points / bandwidth).to(torch.int64)
    _, inverse, counts = torch.unique(bins, dim=0, return_inverse=True, return_counts=True)
    first = torch.full((len(counts),), len(points), dtype=torch.int64, device=points.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(points), device=points.device), "amin")
    order = torch.argsort(counts, descending=True, stable=True)[:max_seeds]
    return points[first[order]].clone()


def _distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    return torch.cdist(a, b, p=1.0 if metric == "l1" else 2.0)


def _kernel_weights(
    modes: torch.Tensor, sample: torch.Tensor, sample_sq: torch.Tensor | None,
    bandwidth: float, metric: str, kernel: str,
) -> torch.Tensor:
    """Kernel weights ``(modes, sample)`` of the sample points around each mode.

    For L2 the squared distances come from one matrix product (``|m|^2 + |s|^2 - 2 m.s``,
    ``sample_sq`` = ``|s|^2``) compared with the squared bandwidth: no square roots."""
    if metric == "l2":
        sq = torch.addmm(sample_sq[None], modes, sample.T, alpha=-2)
        sq += (modes * modes).sum(1, keepdim=True)
        if kernel == "flat":
            return (sq < bandwidth * bandwidth).to(sample.dtype)
        weight = torch.exp(sq.clamp(min=0) * (-0.5 / bandwidth**2))
        return weight.masked_fill_(sq >= 9 * bandwidth * bandwidth, 0.0)
    dist = _distance(modes, sample, metric)
    if kernel == "flat":
        return (dist < bandwidth).to(sample.dtype)
    # Gaussian with standard deviation = bandwidth, cut at 3 bandwidths
    weight = torch.exp(-0.5 * (dist / bandwidth) ** 2)
    return weight.masked_fill_(dist >= 3 * bandwidth, 0.0)


def _shift(
    modes: torch.Tensor, sample: torch.Tensor, bandwidth: float, metric: str, max_iter: int,
    kernel: str = "flat",
) -> torch.Tensor:
    """Move each mode to the kernel-weighted mean of the sample points until it moves
    less than ``SHIFT_TOL`` * bandwidth; returns the modes reached.

    All moving modes shift at once (one matrix product per iteration); a converged mode
    leaves the batch, and so does a mode that comes within ``TWIN_DISTANCE`` * bandwidth
    of another moving one (from there both climb to the same mode: one is followed)."""
    active = torch.ones(len(modes), dtype=torch.bool, device=modes.device)
    duplicate = torch.zeros_like(active)
    tol, twin = SHIFT_TOL * bandwidth, TWIN_DISTANCE * bandwidth
    sample_sq = (sample * sample).sum(1) if metric == "l2" else None
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        near = _kernel_weights(modes[idx], sample, sample_sq, bandwidth, metric, kernel)
        support = near.sum(1, keepdim=True)
        new = torch.where(support > 0, near @ sample / support.clamp(min=1e-12), modes[idx])
        diff = new - modes[idx]
        shift = diff.abs().sum(1) if metric == "l1" else diff.norm(dim=1)
        modes[idx] = new
        active[idx[shift < tol]] = False
        if len(idx) > 1:  # a mode that has caught up with an earlier one is not followed
            close = torch.triu(_distance(new, new, metric) < twin, diagonal=1).any(0)
            duplicate[idx[close]] = True
            active[idx[close]] = False
    return modes[~duplicate]


def _merge(
    modes: torch.Tensor, sample: torch.Tensor, bandwidth: float, metric: str,
    min_support: int = 1,
) -> torch.Tensor:
    """Indices of the modes kept, by decreasing support (sample points within
    ``bandwidth``): a mode within ``bandwidth`` of a kept one, or supported by fewer than
    ``min_support`` points, is dropped."""
    support = (_distance(modes, sample, metric) < bandwidth).sum(1)
    order = torch.argsort(support, descending=True, stable=True)
    support = support[order].tolist()
    close = (_distance(modes[order], modes[order], metric) < bandwidth).cpu().numpy()
    covered = np.zeros(len(modes), dtype=bool)  # within bandwidth of a kept mode
    keep: list[int] = []
    for i in range(len(modes)):
        if support[i] < max(min_support, 1):
            break  # sorted: every later mode is as poorly supported
        if not covered[i]:
            keep.append(i)
            covered |= close[i]
    return order[keep]


def _nearest(points: torch.Tensor, centres: torch.Tensor, metric: str, distances: bool = True):
    """Index of (and, if ``distances``, distance to) the nearest centre, in chunks.

    For L2 the nearest centre minimises ``|c|^2 - 2 p.c`` (one matrix product, no
    square roots, ``points`` may be a transposed view); the distance is then exact."""
    labels = torch.empty(len(points), dtype=torch.int64, device=points.device)
    dist = torch.empty(len(points) if distances else 0, dtype=points.dtype,
                       device=points.device)
    norms = (centres * centres).sum(1)
    for start in range(0, len(points), 65536):
        chunk = points[start : start + 65536]
        if metric == "l2":
            nearest = torch.addmm(norms[None], chunk, centres.T, alpha=-2).argmin(1)
            if distances:
                dist[start : start + 65536] = (chunk - centres[nearest]).norm(dim=1)
        else:
            d, nearest = _distance(chunk, centres, metric).min(1)
            if distances:
                dist[start : start + 65536] = d
        labels[start : start + 65536] = nearest
    return labels, dist


def mean_shift(
    points: torch.Tensor | np.ndarray,
    bandwidth: float,
    *,
    metric: str = "l2",
    kernel: str = "flat",
    max_iter: int = 100,
    max_seeds: int = 256,
    max_points: int = 2048,
    min_support: int = 1,
    min_cluster: int = 20,
    rounds: int = 3,
    seed: int = 0,
    return_distances: bool = False,
):
    """Mean-shift of ``points`` ``(P, D)``; returns (labels ``(P,)``, modes ``(K, D)``)
    and, with ``return_distances``, each point's distance to its mode ``(P,)``.

    Seeds are one point of each occupied bandwidth-sized bin (most populated first, at
    most ``max_seeds``); each seed climbs to a mode with a ``"flat"`` kernel (mean of the
    points within ``bandwidth``, scikit-learn's) or a ``"gaussian"`` one (standard
    deviation ``bandwidth``); modes closer than ``bandwidth`` are merged by decreasing
    support and modes supported by fewer than ``min_support`` sampled points dropped;
    every point joins its nearest mode. ``metric`` is ``"l2"`` (scikit-learn's) or
    ``"l1"`` (the distance of the guide search, eq. 4).

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
    picked = _subsample(n, max_points, rng)  # indices of the sample, None: every point
    sample = pts if picked is None else pts[picked.to(pts.device)]
    with _cpu_threads(1 if pts.device.type == "cpu" else None):
        seeds = _bin_seeds(sample, bandwidth, max_seeds)
        modes = _shift(seeds, sample, bandwidth, metric, max_iter, kernel)
        centres = modes[_merge(modes, sample, bandwidth, metric, min_support)]
        if len(centres) == 0:  # every mode below min_support: one cluster
            centres = sample.mean(0, keepdim=True)
        labels, dist = _nearest(pts, centres, metric)
        for _ in range(max(rounds, 1) - 1):
            far = (dist >= bandwidth).nonzero().squeeze(1)
            if len(far) < max(min_cluster, 1):
                break  # too few points left uncovered to make an instance of their own
            # the modes of the uncovered points, climbed on (a subsample of) them alone;
            # kept if they gather enough uncovered points to make an instance
            drawn = _subsample(len(far), max_points, rng)
            rest = pts[far if drawn is None else far[drawn.to(pts.device)]]
            needed = max(min_support, math.ceil(max(min_cluster, 1) * len(rest) / len(far)))
            modes = _shift(_bin_seeds(rest, bandwidth, max_seeds), rest, bandwidth, metric,
                           max_iter, kernel)
            modes = modes[_merge(modes, rest, bandwidth, metric, needed)]
            if len(modes):
                modes = modes[(_distance(modes, centres, metric) >= bandwidth).all(1)]
            if len(modes) == 0:
                break  # the uncovered points form no new mode
            centres = torch.cat([centres, modes])
            labels, dist = _nearest(pts, centres, metric)
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
    out = np.zeros(h * w, dtype=np.int64)
    out[mask.ravel()] = labels + 1
    if fg is None and len(labels):
        background = np.bincount(labels).argmax() + 1
        out[out == background] = 0
    closeness = np.zeros(h * w, dtype=np.float64)
    closeness[mask.ravel()] = np.clip(1.0 - np.asarray(dist, np.float64) / bandwidth, 0.0, 1.0)
    final = remove_small(out.reshape(h, w), min_area)
    return Prediction(final, label_means(final, closeness))
