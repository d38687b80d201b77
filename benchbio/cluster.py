"""Clustering pixel embeddings into instances.

The paper recovers instances with mean-shift (bandwidth = the guide margin eps). The
authors run scikit-learn's ``MeanShift(bin_seeding=True)``, which is exact but slow on
the tens of thousands of pixels of one image. :func:`mean_shift` is a vectorised torch
version of the same algorithm (bin seeding, flat kernel, merging of modes closer than
the bandwidth, every point assigned to its nearest mode) that runs on the model's device;
``clusterer="sklearn"`` selects the reference implementation on the same embeddings.
"""

from __future__ import annotations

import numpy as np
import torch

from .instances import relabel

__all__ = ["mean_shift", "mean_shift_sklearn", "embeddings_to_labels", "remove_small"]


def _bin_seeds(points: torch.Tensor, bandwidth: float, max_seeds: int) -> torch.Tensor:
    """Seeds at the centres of occupied bandwidth-sized bins, most populated first."""
    bins = torch.round(points / bandwidth).to(torch.int64)
    uniq, counts = torch.unique(bins, dim=0, return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)[:max_seeds]
    return uniq[order].to(points.dtype) * bandwidth


def mean_shift(
    points: torch.Tensor | np.ndarray,
    bandwidth: float,
    *,
    max_iter: int = 100,
    max_seeds: int = 1024,
    max_points: int = 20000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat-kernel mean-shift of ``points`` ``(P, D)``; returns (labels ``(P,)``, modes).

    Seeds come from bin seeding (as scikit-learn's ``bin_seeding=True``); each seed
    moves to the mean of the points within ``bandwidth`` until it moves less than
    1e-3 * bandwidth. Modes are visited by decreasing support and dropped when closer
    than ``bandwidth`` to a kept one; every point joins its nearest mode. When there
    are more than ``max_points`` points, the shifts use a seeded random subsample of
    that size (the assignment always uses every point).
    """
    pts = torch.as_tensor(points, dtype=torch.float32)
    n = pts.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, pts.shape[1] if pts.ndim == 2 else 0))
    if n > max_points:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=gen)[:max_points].to(pts.device)
        sample = pts[idx]
    else:
        sample = pts
    modes = _bin_seeds(sample, bandwidth, max_seeds)
    active = torch.ones(len(modes), dtype=torch.bool, device=pts.device)
    tol = 1e-3 * bandwidth
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        near = (torch.cdist(modes[idx], sample) < bandwidth).to(sample.dtype)
        support = near.sum(1, keepdim=True)
        new = torch.where(support > 0, near @ sample / support.clamp(min=1), modes[idx])
        shift = (new - modes[idx]).norm(dim=1)
        modes[idx] = new
        active[idx[shift < tol]] = False
    support = (torch.cdist(modes, sample) < bandwidth).sum(1)
    order = torch.argsort(support, descending=True, stable=True)
    modes, support = modes[order], support[order]
    keep: list[int] = []
    for i in range(len(modes)):
        if support[i] == 0:
            continue
        if keep and torch.cdist(modes[i : i + 1], modes[keep]).min() < bandwidth:
            continue
        keep.append(i)
    centres = modes[keep]
    labels = torch.empty(n, dtype=torch.int64, device=pts.device)
    for start in range(0, n, 65536):
        chunk = pts[start : start + 65536]
        labels[start : start + 65536] = torch.cdist(chunk, centres).argmin(1)
    return labels.cpu().numpy(), centres.cpu().numpy()


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
    """Set instances smaller than ``min_area`` pixels to background and relabel 1..n."""
    if min_area > 1 and labels.max(initial=0) > 0:
        areas = np.bincount(labels.ravel())
        small = areas < min_area
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    return relabel(labels)


def embeddings_to_labels(
    embedding: torch.Tensor | np.ndarray,
    bandwidth: float,
    *,
    fg: np.ndarray | None = None,
    min_area: int = 0,
    clusterer: str = "torch",
    seed: int = 0,
) -> np.ndarray:
    """Instances from a ``(D, H, W)`` embedding by mean-shift.

    With a foreground mask only its pixels are clustered. Without one, every pixel is
    clustered and the largest cluster is taken as background (the authors' rule).
    """
    emb = torch.as_tensor(embedding)
    d, h, w = emb.shape
    mask = np.ones((h, w), bool) if fg is None else np.asarray(fg, bool)
    flat = emb.reshape(d, -1).T
    sel = torch.as_tensor(mask.ravel(), device=flat.device)
    points = flat[sel]
    if clusterer == "torch":
        labels, _ = mean_shift(points, bandwidth, seed=seed)
    elif clusterer == "sklearn":
        labels, _ = mean_shift_sklearn(points.float().cpu().numpy(), bandwidth)
    else:
        raise ValueError(f"unknown clusterer {clusterer!r}; use 'torch' or 'sklearn'")
    out = np.zeros(h * w, dtype=np.int64)
    out[mask.ravel()] = labels + 1
    if fg is None and len(labels):
        background = np.bincount(labels).argmax() + 1
        out[out == background] = 0
    return remove_small(out.reshape(h, w), min_area)
