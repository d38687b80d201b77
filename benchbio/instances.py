"""Instance annotations: label images and stacks of (possibly overlapping) masks.

benchbio accepts instances in two forms, everywhere:

* a **label image**: a 2-D integer array, one id per instance. Following the CVPPP
  challenge, the *lowest* value in the image is background (usually 0).
* a **mask stack**: a 3-D array ``(K, H, W)`` of K binary masks, one per instance.
  Masks may overlap (BBBC010 worms do); pixels in no mask are background.

The helpers here convert between the two and derive what training and scoring need.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import relabel_sequential

__all__ = [
    "is_stack",
    "relabel",
    "to_stack",
    "to_label_image",
    "foreground",
    "owner_map",
    "count_instances",
    "crop_instances",
]


def is_stack(instances: np.ndarray) -> bool:
    """True for a ``(K, H, W)`` mask stack, False for a 2-D label image."""
    if instances.ndim == 3:
        return True
    if instances.ndim == 2:
        return False
    raise ValueError(
        f"instances must be a 2-D label image or a (K, H, W) mask stack, got shape "
        f"{instances.shape}"
    )


def spatial_shape(instances: np.ndarray) -> tuple[int, int]:
    """(H, W) of a label image or a mask stack."""
    return tuple(instances.shape[-2:])  # type: ignore[return-value]


def relabel(labels: np.ndarray) -> np.ndarray:
    """Map a label image to 0 = background (its lowest value) and 1..n consecutive ids.

    Ids keep their order, so the result scores as the official CVPPP code would score
    an image whose labels were consecutive to begin with.

    >>> relabel(np.array([[5, 5, 9], [7, 7, 20]])).tolist()
    [[0, 0, 2], [1, 1, 3]]
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64)
    shifted = labels.astype(np.int64) - labels.min()
    out, _, _ = relabel_sequential(shifted)
    return out.astype(np.int64)


def to_stack(instances: np.ndarray) -> np.ndarray:
    """A ``(K, H, W)`` bool stack with one non-empty mask per instance."""
    instances = np.asarray(instances)
    if is_stack(instances):
        stack = instances.astype(bool)
        return stack[stack.any(axis=(1, 2))]
    labels = relabel(instances)
    n = int(labels.max()) if labels.size else 0
    return labels[None] == np.arange(1, n + 1)[:, None, None]


def to_label_image(instances: np.ndarray) -> np.ndarray:
    """A label image (0 = background, 1..n); in overlaps the later mask wins."""
    instances = np.asarray(instances)
    if not is_stack(instances):
        return relabel(instances)
    stack = to_stack(instances)
    out = np.zeros(stack.shape[1:], dtype=np.int64)
    for i, mask in enumerate(stack, start=1):
        out[mask] = i
    return out


def foreground(instances: np.ndarray) -> np.ndarray:
    """Boolean foreground: pixels not at the lowest label, or inside any mask."""
    instances = np.asarray(instances)
    if is_stack(instances):
        return instances.astype(bool).any(axis=0)
    if instances.size == 0:
        return instances.astype(bool)
    return instances != instances.min()


def owner_map(instances: np.ndarray) -> np.ndarray:
    """Label image of pixels owned by exactly one instance: 0 background, -1 overlap.

    Training losses ignore pixels of value -1, which have no single owner.
    """
    instances = np.asarray(instances)
    if not is_stack(instances):
        return relabel(instances)
    stack = to_stack(instances)
    out = np.zeros(stack.shape[1:], dtype=np.int64)
    if len(stack) == 0:
        return out
    counts = stack.sum(axis=0)
    first = np.argmax(stack, axis=0) + 1
    out[counts == 1] = first[counts == 1]
    out[counts > 1] = -1
    return out


def count_instances(instances: np.ndarray) -> int:
    """Number of non-empty instances."""
    return int(len(to_stack(instances)))


def crop_instances(instances: np.ndarray, sl: tuple[slice, slice]) -> np.ndarray:
    """Crop a label image or stack spatially; empty masks of a stack are dropped."""
    instances = np.asarray(instances)
    if is_stack(instances):
        stack = instances[(slice(None), *sl)]
        return stack[stack.any(axis=(1, 2))]
    return instances[sl]
