"""Scoring predicted instances against ground truth with the registered metric plugins.

:func:`evaluate` pairs each prediction with its ground truth as an :class:`ImagePair`,
whose contingency table (:mod:`benchbio.overlap`) is computed once, lazily, and shared
by every metric. Each metric plugin is a :class:`Metric`: ``score`` gives the figures of
one image, ``summarize`` the set-level figures (the mean over images, except COCO AP,
which COCOeval computes over the whole set at once).

Predictions and ground truth may each be a 2-D label image (lowest value = background,
as in the CVPPP challenge) or a ``(K, H, W)`` stack of binary masks that may overlap.
Empty masks of a stack are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .errors import BenchbioError
from .instances import Prediction, is_stack, to_stack
from .overlap import Overlap, overlap, sequential_labels, stack_nonempty
from .registry import METRICS

__all__ = ["Metric", "ImagePair", "EvalResult", "evaluate", "default_metrics",
           "metric_producing", "metric_keys", "background_zero"]


class Metric:
    """Base class of metric plugins.

    Attributes:
        name: the plugin name.
        keys: the result keys ``score`` and ``summarize`` produce.
        lower_is_better: keys where smaller is better (e.g. ``abs_dic``); all other keys
            are higher-is-better unless listed in ``signed``.
        signed: keys with no better direction, only a best value of 0 (e.g. ``dic``).
    """

    name: str = ""
    keys: tuple[str, ...] = ()
    lower_is_better: frozenset[str] = frozenset()
    signed: frozenset[str] = frozenset()

    def score(self, pair: ImagePair) -> dict[str, float]:
        """The figures of one image, ``{key: value}`` for every key in ``keys``."""
        raise NotImplementedError

    def summarize(
        self, pairs: list[ImagePair], per_image: list[dict[str, float]]
    ) -> dict[str, float]:
        """Set-level figures; by default the mean of the per-image values."""
        return {k: float(np.mean([row[k] for row in per_image])) for k in self.keys}


class ImagePair:
    """The prediction and ground truth of one image, with their overlaps computed once.

    Attributes:
        pred: the prediction as given, a label image or a ``(K, H, W)`` mask stack.
        gt: the ground truth as given, a label image or a mask stack.
        name: the image name, used in error messages and results.
        scores: optional confidence per predicted instance, keyed by its label value
            (label image) or its index in the stack; used by COCO AP only. Every
            predicted instance must have one; None means ``area / (area + 1)`` for each.
        gt_crowd: optional ``(K,)`` bool COCO ``iscrowd`` flags of a mask-stack ``gt``.
            COCO AP treats crowd regions as ignore regions; the other metrics drop them.
    """

    def __init__(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        name: str = "image",
        scores: dict[int, float] | None = None,
        gt_crowd: np.ndarray | None = None,
    ) -> None:
        self.pred = np.asarray(pred)
        self.gt = np.asarray(gt)
        self.name = name
        self.scores = scores
        self.gt_crowd = None if gt_crowd is None else np.asarray(gt_crowd, dtype=bool)
        for what, arr in (("prediction", self.pred), ("ground truth", self.gt)):
            if arr.ndim not in (2, 3):
                raise BenchbioError(
                    f"{name}: {what} must be a 2-D label image or a (K, H, W) mask stack, "
                    f"got shape {arr.shape}"
                )
        if self.pred.shape[-2:] != self.gt.shape[-2:]:
            raise BenchbioError(
                f"{name}: prediction is {self.pred.shape[-2:]} but ground truth is "
                f"{self.gt.shape[-2:]}; they must have the same height and width"
            )
        if self.gt_crowd is not None:
            if not is_stack(self.gt):
                raise BenchbioError(
                    f"{name}: crowd flags need a (K, H, W) mask-stack ground truth, "
                    "not a label image"
                )
            if self.gt_crowd.shape != (len(self.gt),):
                raise BenchbioError(
                    f"{name}: {len(self.gt_crowd)} crowd flags for {len(self.gt)} "
                    "ground-truth masks; give one flag per mask"
                )
        self.cache: dict[str, Any] = {}  # per-metric derived data (e.g. COCO RLEs)

    # --- instances, normalised -------------------------------------------------------

    @cached_property
    def pred_ids(self) -> np.ndarray:
        """Identity of each predicted instance: its label value, or its stack index.

        Instances are ordered as in :attr:`overlap` (ascending label / stack order).
        """
        if is_stack(self.pred):
            return stack_nonempty(self.pred)
        values = np.unique(self.pred)
        return values[1:]  # the lowest value is background

    @cached_property
    def pred_instances(self) -> np.ndarray:
        """The prediction, a label image as given or a stack without empty masks."""
        if is_stack(self.pred):
            return self.pred[stack_nonempty(self.pred)].astype(bool)
        return self.pred

    @cached_property
    def gt_crowd_flags(self) -> np.ndarray:
        """Crowd flag of each non-empty ground-truth mask (all False without flags)."""
        if not is_stack(self.gt):
            return np.zeros(sequential_labels(self.gt)[1], dtype=bool)
        keep = stack_nonempty(self.gt)
        if self.gt_crowd is None:
            return np.zeros(len(keep), dtype=bool)
        return self.gt_crowd[keep]

    @cached_property
    def gt_instances(self) -> np.ndarray:
        """Ground truth scored by all metrics but COCO: crowd and empty masks dropped."""
        if not is_stack(self.gt):
            return self.gt
        keep = stack_nonempty(self.gt)
        if self.gt_crowd is not None:
            keep = keep[~self.gt_crowd[keep]]
        return self.gt[keep].astype(bool)

    # --- shared derived data ---------------------------------------------------------

    @cached_property
    def overlap(self) -> Overlap:
        """Contingency table of predicted against (non-crowd) true instances."""
        return overlap(self.pred_instances, self.gt_instances)

    @property
    def n_pred(self) -> int:
        """Number of predicted instances."""
        return self.overlap.n_pred

    @property
    def n_gt(self) -> int:
        """Number of (non-crowd) true instances."""
        return self.overlap.n_gt

    @cached_property
    def pred_fg(self) -> np.ndarray:
        """Boolean predicted foreground."""
        return _foreground(self.pred_instances)

    @cached_property
    def gt_fg(self) -> np.ndarray:
        """Boolean true foreground (crowd regions excluded)."""
        return _foreground(self.gt_instances)

    def instance_scores(self) -> np.ndarray:
        """Confidence of each predicted instance in :attr:`pred_ids` order.

        Without scores every instance gets ``area / (area + 1)``
        (:func:`benchbio.instances.default_scores`): a function of the instance alone,
        so the ranking never depends on the order or names of the images.
        """
        if self.scores is None:
            area = self.overlap.pred_area.astype(np.float64)
            return area / (area + 1.0)
        missing = [int(i) for i in self.pred_ids if int(i) not in self.scores]
        if missing:
            raise BenchbioError(
                f"{self.name}: no score for predicted instance(s) {missing[:5]}; give a "
                "score for every instance or none at all"
            )
        return np.array([float(self.scores[int(i)]) for i in self.pred_ids])


def _foreground(instances: np.ndarray) -> np.ndarray:
    """Pixels in any mask of a stack, or not at the lowest value of a label image."""
    if is_stack(instances):
        if len(instances) == 0:
            return np.zeros(instances.shape[1:], dtype=bool)
        return instances.any(axis=0)
    if instances.size == 0:
        return instances.astype(bool)
    return instances != instances.min()


@dataclass
class EvalResult:
    """Figures of an evaluation.

    Attributes:
        per_image: image name -> {metric key: value}.
        mean: metric key -> set-level value (mean over images, or COCOeval's whole-set
            figure for the COCO keys).
    """

    per_image: dict[str, dict[str, float]]
    mean: dict[str, float]

    def to_dict(self) -> dict[str, dict]:
        """``{"per_image": ..., "mean": ...}``, ready for JSON."""
        return {"per_image": self.per_image, "mean": self.mean}


def background_zero(
    instances: np.ndarray, scores: dict[int, float] | None = None
) -> tuple[np.ndarray, dict[int, float] | None]:
    """Instances whose background is 0 (a :class:`~benchbio.instances.Prediction`, a
    loaded sample, a crop or tile of one) in a form the scorers cannot misread.

    Scoring takes a label image's lowest value for background (the CVPPP rule for
    files), so a label image without a 0 pixel (objects cover it completely) goes as a
    mask stack instead, its scores re-keyed by stack index. Anything else is unchanged.
    """
    instances = np.asarray(instances)
    if is_stack(instances) or instances.size == 0 or instances.min() == 0:
        return instances, scores
    ids = np.unique(instances)
    stack = to_stack(np.pad(instances, ((0, 0), (0, 1))))[..., :-1]  # the pad is background
    if scores is None:
        return stack, None
    return stack, {k: scores[int(i)] for k, i in enumerate(ids)}


def _optional(seq: Sequence | None, n: int, what: str) -> list:
    if seq is None:
        return [None] * n
    if len(seq) != n:
        raise BenchbioError(f"{len(seq)} {what} for {n} images; give one per image")
    return list(seq)


def metric_producing(key: str) -> tuple[str, Metric] | None:
    """The metric plugin (name and instance) whose results include ``key``, or None."""
    for name in METRICS.names():
        metric = METRICS.create(name)
        if key in metric.keys:
            return name, metric
    return None


def default_metrics() -> list[str]:
    """What is scored when no metrics are named (``evaluate``, ``benchbio eval``): every
    registered metric but those whose keys another one produces as well (``abs_dic``'s
    are part of ``dic``'s)."""
    keys = {name: set(METRICS.create(name).keys) for name in METRICS.names()}
    return [name for name, own in keys.items()
            if not any(other != name and own <= theirs and own != theirs
                       for other, theirs in keys.items())]


def metric_keys() -> set[str]:
    """Every result key some metric plugin produces (``sbd``, ``ap50``, ...)."""
    return {key for name in METRICS.names() for key in METRICS.create(name).keys}


def create_metrics(names: Sequence[str]) -> list[Metric]:
    """Metric plugins by name; a metric whose keys an earlier one already gives is skipped.

    (``abs_dic`` is both a key of ``dic`` and a plugin of its own.)
    """
    metrics: list[Metric] = []
    seen: set[str] = set()
    for name in names:
        metric = METRICS.create(name)
        keys = set(metric.keys)
        if keys <= seen:
            continue
        if keys & seen:
            raise BenchbioError(
                f"metric {name!r} repeats keys {sorted(keys & seen)} of another metric; "
                "list each metric once"
            )
        seen |= keys
        metrics.append(metric)
    return metrics


def evaluate(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    metrics: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    scores: Sequence[dict[int, float] | None] | None = None,
    gt_crowd: Sequence[np.ndarray | None] | None = None,
) -> EvalResult:
    """Score predictions against ground truth with the named metric plugins.

    Args:
        preds: per image, a label image or a ``(K, H, W)`` mask stack, or a
            :class:`~benchbio.instances.Prediction` (background 0; its scores are used
            where ``scores`` gives none for that image).
        gts: per image, a label image or a mask stack, same height and width.
        metrics: metric plugin names (``benchbio list metrics``); default
            :func:`default_metrics`.
        names: image names (default ``"0"``, ``"1"``, ...); must be unique.
        scores: per image, None or the confidence of each predicted instance (COCO AP).
        gt_crowd: per image, None or the ``(K,)`` iscrowd flags of a mask-stack gt.

    Returns:
        An :class:`EvalResult` with per-image and set-level figures.
    """
    metrics = default_metrics() if metrics is None else metrics
    n = len(preds)
    if len(gts) != n:
        raise BenchbioError(f"{n} predictions but {len(gts)} ground truths; pair them 1:1")
    if n == 0:
        raise BenchbioError("no images to evaluate; give at least one prediction")
    names = [str(i) for i in range(n)] if names is None else [str(x) for x in names]
    if len(names) != n:
        raise BenchbioError(f"{len(names)} names for {n} images; give one per image")
    if len(set(names)) != n:
        dupes = sorted({x for x in names if names.count(x) > 1})
        raise BenchbioError(f"duplicate image names {dupes[:5]}; names must be unique")
    plugins = create_metrics(metrics)
    scores = _optional(scores, n, "score dicts")
    preds = list(preds)
    for i, pred in enumerate(preds):
        if isinstance(pred, Prediction):
            preds[i], own = background_zero(pred.labels, pred.scores)
            if scores[i] is None:
                scores[i] = own
            elif preds[i] is not pred.labels:  # given scores re-keyed like the labels
                scores[i] = background_zero(pred.labels, scores[i])[1]
    pairs = [
        ImagePair(p, g, name=nm, scores=s, gt_crowd=c)
        for p, g, nm, s, c in zip(
            preds,
            gts,
            names,
            scores,
            _optional(gt_crowd, n, "crowd flag arrays"),
            strict=True,
        )
    ]
    per_image: dict[str, dict[str, float]] = {nm: {} for nm in names}
    mean: dict[str, float] = {}
    for metric in plugins:
        rows = [metric.score(pair) for pair in pairs]
        for nm, row in zip(names, rows, strict=True):
            per_image[nm].update({k: float(v) for k, v in row.items()})
        mean.update({k: float(v) for k, v in metric.summarize(pairs, rows).items()})
    return EvalResult(per_image=per_image, mean=mean)
