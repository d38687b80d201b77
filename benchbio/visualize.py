"""Pictures for people: instances drawn over images, and montages of them."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .instances import is_stack, to_stack

__all__ = ["to_rgb", "overlay_instances", "save_montage"]


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A displayable ``(H, W, 3)`` float image in [0, 1] from ``(C, H, W)`` or ``(H, W)``."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 2, 3, 4) and img.shape[0] < img.shape[-1]:
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img[..., :3]
    lo, hi = np.percentile(img, (1, 99.5)) if img.size else (0.0, 1.0)
    return np.clip((img - lo) / (hi - lo + 1e-8), 0, 1)


def _colours(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hsv = np.stack([rng.permutation(n) / max(n, 1), np.full(n, 0.8), np.full(n, 1.0)], 1)
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb(hsv.reshape(-1, 1, 3)).reshape(-1, 3) if n else np.zeros((0, 3))


def overlay_instances(
    image: np.ndarray, instances: np.ndarray, alpha: float = 0.45, outline: bool = True
) -> np.ndarray:
    """Instances (label image or mask stack) drawn in distinct colours over an image.

    Returns an ``(H, W, 3)`` float array in [0, 1]. Overlapping masks blend; outlines
    are drawn so touching instances stay distinguishable.
    """
    from skimage.segmentation import find_boundaries

    rgb = to_rgb(image)
    stack = to_stack(instances) if is_stack(instances) or instances.size else instances[None]
    colours = _colours(len(stack))
    out = rgb.copy()
    for mask, colour in zip(stack, colours):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        if outline:
            edge = find_boundaries(mask, mode="inner")
            out[edge] = colour
    return out


def save_montage(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    panel_size: float = 3.0,
) -> None:
    """Save a grid of RGB panels (rows x columns) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(panel_size * n_cols, panel_size * n_rows), squeeze=False
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
            if titles and i == 0 and j < len(titles):
                ax.set_title(titles[j], fontsize=9)
            if row_labels and j == 0 and i < len(row_labels):
                ax.text(-0.02, 0.5, row_labels[i], transform=ax.transAxes, rotation=90,
                        ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
