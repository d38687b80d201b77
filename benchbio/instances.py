"""Instance annotations: label images and stacks of (possibly overlapping) masks.

benchbio accepts instances in two forms, everywhere:

* a **label image**: a 2-D integer array, one id per instance. Following the CVPPP
  challenge, the *lowest* value of a file is background (usually 0). That rule belongs
  to loading and to scoring a file: once a :class:`~benchbio.data.Sample` is made, its
  label image has background 0, and everything inside the harness (crops, training
  targets, predictions) keeps 0 = background, also where a crop has no background pixel.
* a **mask stack**: a 3-D array ``(K, H, W)`` of K binary masks, one per instance.
  Masks may overlap (BBBC010 worms do); pixels in no mask are background.

The helpers here convert between the two and derive what training and scoring need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.segmentation import relabel_sequential

__all__ = [
    "is_stack",
    "relabel",
    "sequential",
    "Prediction",
    "as_prediction",
    "default_scores",
    "label_means",
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
    return _ranks(labels.astype(np.int64) - int(labels.min()))


def _ranks(labels: np.ndarray) -> np.ndarray:
    """Non-negative ``labels`` with 0 kept and the other values replaced by their rank
    among the values present (1..n): ``relabel_sequential``'s result, by a table from
    each value to its rank instead of a sort (its ``np.unique`` dominated the cost of a
    training crop)."""
    values = labels.astype(np.int64)  # a copy: the result never aliases the input
    if values.size == 0:
        return values
    if int(values.max()) > 4 * values.size + 65536:  # sparse huge ids: sort them
        out, _, _ = relabel_sequential(values)
        return out.astype(np.int64)
    present = np.bincount(values.ravel()) > 0
    present[0] = False
    if present[1:].all():  # already 1..n
        return values
    ranks = np.cumsum(present, dtype=np.int64)
    ranks[~present] = 0
    return ranks[values]


def sequential(labels: np.ndarray) -> np.ndarray:
    """Map a label image with background 0 to ids 1..n in their order; 0 stays 0.

    Unlike :func:`relabel`, no value but 0 is background: an image (or crop) that
    objects cover completely keeps every object.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64)
    if labels.min() < 0:
        raise ValueError("label images inside the harness have background 0 and ids > 0")
    return _ranks(labels)


@dataclass(frozen=True)
class Prediction:
    """The predicted instances of one image with a confidence per instance.

    What :meth:`benchbio.method.Method.postprocess` returns (a bare label image is
    accepted too, see :func:`as_prediction`).

    Attributes:
        labels: ``(H, W)`` integer label image, 0 = background, instances 1..n; or a
            ``(K, H, W)`` mask stack (masks may overlap, as ``patchperpix``'s on
            overlapping data), instance i being mask i.
        scores: ``{label: confidence}`` for every label in ``labels`` (``{i: ...}`` for
            every non-empty mask i of a stack; extra keys are ignored). Only the ranking
            matters (COCO AP sorts by it); methods give values in [0, 1] where higher
            means more likely a true instance.
    """

    labels: np.ndarray
    scores: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim == 3:
            labels = labels.astype(bool)
            present = np.flatnonzero(labels.any(axis=(1, 2)))
        elif labels.ndim == 2:
            if labels.size and labels.min() < 0:
                raise ValueError("Prediction.labels must be >= 0 (0 = background)")
            present = np.flatnonzero(np.bincount(labels.ravel())) if labels.size else []
            present = [i for i in present if i != 0]
        else:
            raise ValueError(
                f"Prediction.labels must be (H, W) or (K, H, W), got shape {labels.shape}")
        missing = sorted(set(int(i) for i in present) - set(self.scores))
        if missing:
            raise ValueError(f"Prediction has no score for label(s) {missing[:5]}")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scores", {int(k): float(v) for k, v in self.scores.items()})


def default_scores(labels: np.ndarray) -> dict[int, float]:
    """The confidence of instances that come without one: ``area / (area + 1)``.

    It depends only on the instance (larger instances rank first, all scores in
    [0.5, 1)), never on the order or names of images. ``labels`` has background 0, or is
    a ``(K, H, W)`` mask stack (then keyed by mask index).
    """
    labels = np.asarray(labels)
    if labels.ndim == 3:  # a mask stack: keyed by mask index
        areas = labels.astype(bool).sum(axis=(1, 2))
        return {int(i): float(a / (a + 1.0)) for i, a in enumerate(areas) if a}
    if labels.size == 0 or labels.max(initial=0) <= 0:
        return {}
    areas = np.bincount(labels.ravel().clip(min=0))
    ids = np.flatnonzero(areas)
    return {int(i): float(areas[i] / (areas[i] + 1.0)) for i in ids if i != 0}


def as_prediction(result: Prediction | np.ndarray) -> Prediction:
    """A :class:`Prediction` from what a method's ``postprocess`` returned: itself, or a
    bare label image (background 0) whose instances get :func:`default_scores`."""
    if isinstance(result, Prediction):
        return result
    labels = np.asarray(result)
    return Prediction(labels, default_scores(labels))


def label_means(labels: np.ndarray, values: np.ndarray) -> dict[int, float]:
    """``{label: mean of values over its pixels}`` for every label > 0 of ``labels``."""
    labels = np.asarray(labels).ravel()
    if labels.size == 0 or labels.max(initial=0) <= 0:
        return {}
    keep = labels > 0
    counts = np.bincount(labels[keep])
    sums = np.bincount(labels[keep], np.asarray(values, dtype=np.float64).ravel()[keep])
    ids = np.flatnonzero(counts)
    return {int(i): float(sums[i] / counts[i]) for i in ids}


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

    A label image must have background 0 (as every loaded sample and crop has); its ids
    become 1..n and no object is taken for background, even in a crop that objects
    cover completely. Training losses ignore pixels of value -1, which have no single
    owner.
    """
    instances = np.asarray(instances)
    if not is_stack(instances):
        return sequential(instances)
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
