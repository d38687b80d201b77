"""Helpers shared by the dataset modules: finding a dataset under a data root, pairing
image and label files, and fixed splits. (Scaling images to about [0, 1] is the core's,
:mod:`benchbio.io`, because prediction reads images the same way.)"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from benchbio.data import data_root
from benchbio.errors import DataError

__all__ = [
    "find_dataset_dir",
    "pair_by_stem",
    "fixed_split",
    "carve_val",
    "require_nonempty",
]

#: Seed of every fixed permutation; numpy's PCG64 stream is stable across machines.
SPLIT_SEED = 0


def find_dataset_dir(
    data_dir: str | os.PathLike | None,
    folder_names: Sequence[str],
    is_dataset: Callable[[Path], bool],
    dataset: str,
    layout: str,
) -> Path:
    """The dataset folder: ``data_dir`` itself or one of ``folder_names`` under the root.

    ``data_dir`` is resolved with :func:`benchbio.data.data_root`; ``folder_names`` are
    relative paths (the publisher's folder or archive names) tried in order.
    """
    root = data_root(data_dir)
    candidates = [root] + [root / name for name in folder_names]
    for candidate in candidates:
        if candidate.is_dir() and is_dataset(candidate):
            return candidate
    tried = ", ".join(str(c) for c in candidates[:4]) + (", ..." if len(candidates) > 4 else "")
    raise DataError(
        f"{dataset}: expected {layout} in {root} or a subfolder ({tried}) but found none; "
        f"pass --data-dir pointing at it (or set BENCHBIO_DATA), or run "
        f"`benchbio data download {dataset}`"
    )


def pair_by_stem(
    images: dict[str, Path], labels: dict[str, Path], dataset: str, what: str = "label"
) -> list[str]:
    """Sorted keys present in both mappings; a DataError for the first unpaired file."""
    only_images = sorted(set(images) - set(labels))
    only_labels = sorted(set(labels) - set(images))
    if only_images:
        raise DataError(
            f"{dataset}: image {images[only_images[0]]} has no {what} file "
            f"({len(only_images)} unpaired); add it or remove the image"
        )
    if only_labels:
        raise DataError(
            f"{dataset}: {what} {labels[only_labels[0]]} has no image "
            f"({len(only_labels)} unpaired); add the image or remove the {what}"
        )
    return sorted(images)


def fixed_split(names: Iterable[str], n_first: int, seed: int = SPLIT_SEED) -> tuple[list, list]:
    """Split sorted ``names`` by a fixed-seed permutation: (n_first names, the rest), sorted.

    The order the names come in does not matter, and the same names always split alike:

    >>> fixed_split(["d", "a", "c", "b", "e"], 2) == fixed_split("abcde", 2)
    True
    >>> first, rest = fixed_split("abcde", 2)
    >>> len(first), len(rest), sorted(first + rest) == list("abcde")
    (2, 3, True)
    """
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    first = sorted(names[i] for i in order[:n_first])
    rest = sorted(names[i] for i in order[n_first:])
    return first, rest


def carve_val(train: Sequence[str], n_val: int, seed: int = SPLIT_SEED) -> tuple[list, list]:
    """(train, val): ``n_val`` names moved from train to validation by a fixed permutation."""
    n_val = max(0, min(int(n_val), len(train) - 1))
    val, rest = fixed_split(train, n_val, seed + 1)
    return rest, val


def require_nonempty(names: Sequence[str], dataset: str, split: str, where: Path) -> None:
    """DataError when a split found no images."""
    if not names:
        raise DataError(f"{dataset}: the {split!r} split is empty: no images found in {where}")
