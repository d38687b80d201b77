"""The dataset interface every dataset plugin returns.

A dataset plugin is a factory registered with :func:`benchbio.registry.register_dataset`
that returns an :class:`InstanceDataset`: named splits of :class:`Sample` objects plus
the evaluation protocol of the benchmark (which metrics, which one selects the best
checkpoint, whether a foreground mask is given at test time). The training loop, the
evaluation path and every method read datasets only through this interface.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from .errors import DataError
from .instances import is_stack, spatial_shape

__all__ = ["Sample", "LazySamples", "InstanceDataset", "data_root", "cache_dir"]


@dataclass
class Sample:
    """One annotated image.

    Attributes:
        name: file stem, unique within its split.
        image: ``(C, H, W)`` float32, scaled to about [0, 1] by the dataset.
        instances: a label image ``(H, W)`` or a ``(K, H, W)`` stack of possibly
            overlapping binary masks. A label image is given with the CVPPP rule (its
            lowest value is background) and stored with background 0 (shifted when its
            lowest value is not 0), the harness's convention from then on.
        fg: optional ``(H, W)`` bool foreground mask that the protocol provides at test
            time (e.g. the binary worm image of BBBC010); None when it is not given.
        crowd: optional ``(K,)`` bool flags for a mask stack: True marks a COCO
            ``iscrowd`` region, which COCO AP ignores and training leaves out.
    """

    name: str
    image: np.ndarray
    instances: np.ndarray
    fg: np.ndarray | None = None
    crowd: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise DataError(f"{self.name}: image must be (C, H, W), got {self.image.shape}")
        if not is_stack(self.instances) and self.instances.size:  # also validates the rank
            lowest = self.instances.min()
            if lowest != 0:  # the CVPPP rule, applied once at loading
                self.instances = self.instances.astype(np.int64) - lowest
        if spatial_shape(self.instances) != self.image.shape[1:]:
            raise DataError(
                f"{self.name}: image is {self.image.shape[1:]} but its instances are "
                f"{spatial_shape(self.instances)}; image and mask must have the same size"
            )
        if self.fg is not None and self.fg.shape != self.image.shape[1:]:
            raise DataError(
                f"{self.name}: foreground mask is {self.fg.shape}, image {self.image.shape[1:]}"
            )

    def objects(self) -> np.ndarray:
        """The instances without COCO crowd regions (they are not objects): what training
        and a method's fitting see."""
        if self.crowd is not None and is_stack(self.instances):
            return np.asarray(self.instances)[~np.asarray(self.crowd, bool)]
        return self.instances


class LazySamples(Sequence[Sample]):
    """A split whose samples are loaded from disk on access (and not kept)."""

    def __init__(self, names: Sequence[str], load: Callable[[str], Sample]) -> None:
        self.names = list(names)
        self._load = load

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._load(n) for n in self.names[index]]
        return self._load(self.names[index])

    def __iter__(self) -> Iterator[Sample]:
        for n in self.names:
            yield self._load(n)


@dataclass
class InstanceDataset:
    """Splits of samples plus the benchmark's evaluation protocol.

    Attributes:
        name: the registered dataset name.
        splits: ``{"train": ..., "val": ..., "test": ...}`` sequences of samples.
        in_channels: channels of ``Sample.image``.
        metrics: metric plugin names scored on the test split.
        val_metric: the metric key (higher is better) that selects the best checkpoint.
        fg_at_test: True when the protocol gives the foreground mask at test time, so
            methods use it instead of predicting background themselves.
        min_area: smallest instance (pixels) a method should keep, the protocol's choice.
        eval_tile: if set, images are scored as non-overlapping tiles of this size
            (E. coli protocol) and the per-tile scores averaged.
        options: the resolved dataset options, logged with each run: the factory passes
            its options dataclass, kept as ``dataclasses.asdict`` of it.
        description: one line for ``benchbio data info``.
    """

    name: str
    splits: Mapping[str, Sequence[Sample]]
    in_channels: int
    metrics: tuple[str, ...]
    val_metric: str
    fg_at_test: bool = False
    min_area: int = 20
    eval_tile: int | None = None
    options: Any = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if dataclasses.is_dataclass(self.options) and not isinstance(self.options, type):
            self.options = dataclasses.asdict(self.options)

    def split(self, name: str) -> Sequence[Sample]:
        """A split by name, with a clear error when it is missing or empty."""
        if name not in self.splits:
            raise DataError(
                f"dataset {self.name!r} has no {name!r} split (has: {', '.join(self.splits)})"
            )
        samples = self.splits[name]
        if len(samples) == 0:
            raise DataError(f"dataset {self.name!r}: the {name!r} split is empty")
        return samples


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``data_dir``, else ``$BENCHBIO_DATA``, else a per-user cache."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("BENCHBIO_DATA")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("benchbio")) / "data"


def cache_dir() -> Path:
    """Per-user cache for fitted method state (e.g. searched guide functions)."""
    env = os.environ.get("BENCHBIO_CACHE")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("benchbio"))
    return path
