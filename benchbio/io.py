"""Reading and writing images, label images and mask stacks.

TIFF goes through tifffile (multi-page TIFFs are read as ``(K, H, W)`` stacks); PNG and
JPEG through Pillow, keeping palette indices as labels (CVPPP's ``_label.png`` files are
palette PNGs whose index is the leaf id). Every read failure becomes a one-line
:class:`~benchbio.errors.DataError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "read_image",
    "read_labels",
    "write_labels",
    "list_images",
    "scale_8bit",
    "percentile_normalize",
    "to_unit",
    "to_chw",
    "scores_path",
    "write_scores",
    "read_scores",
]

#: Percentiles used for microscopy images of more than 8 bits (robust to hot pixels).
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.8

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a numpy array, as stored (no conversion of values).

    PNG palette images come back as their index array, RGB(A) as ``(H, W, C)``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as img:
            if img.mode == "P":
                return np.asarray(img)  # palette index = label
            return np.asarray(img)
    except (OSError, ValueError, UnidentifiedImageError, tifffile.TiffFileError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; is the file complete?") from None


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label image ``(H, W)`` or a multi-page mask stack ``(K, H, W)``.

    A colour PNG is rejected: labels must be single-channel (or palette) images.
    """
    arr = read_image(path)
    if arr.ndim == 3 and Path(path).suffix.lower() not in (".tif", ".tiff"):
        raise DataError(
            f"{path} has {arr.shape[-1]} colour channels; labels must be a single-channel "
            "or palette image (pixel value = instance id)"
        )
    if arr.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2-D label image or a mask stack, got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{path}: label images must hold integer ids, found fractions")
        arr = arr.astype(np.int64)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label image as uint16 TIFF (uint32 if ids exceed 65535), or PNG."""
    path = Path(path)
    labels = np.asarray(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, labels.astype(dtype), compression="zlib")
    else:
        Image.fromarray(labels.astype(np.uint16 if dtype == np.uint16 else np.int32)).save(path)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by suffix) directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def scale_8bit(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 / 255."""
    return np.asarray(image, dtype=np.float32) / 255.0


def percentile_normalize(
    image: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> np.ndarray:
    """Map the ``low``..``high`` percentiles of the whole image (all channels together,
    so their relative levels are kept) to 0..1, not clipped.

    >>> percentile_normalize(np.arange(101.0), 0, 100)[[0, 50, 100]].tolist()
    [0.0, 0.5, 1.0]
    """
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, (low, high))
    return ((img - lo) / max(float(hi - lo), 1e-6)).astype(np.float32)


def to_unit(image: np.ndarray) -> np.ndarray:
    """Scale to about [0, 1]: /255 for 8-bit, robust percentiles otherwise, bool as 0/1."""
    image = np.asarray(image)
    if image.dtype == bool:
        return image.astype(np.float32)
    if image.dtype == np.uint8:
        return scale_8bit(image)
    return percentile_normalize(image)


def to_chw(image: np.ndarray, name: str, drop_alpha: bool = True) -> np.ndarray:
    """``(H, W)`` -> ``(1, H, W)``; ``(H, W, C)`` (C <= 4) -> ``(C, H, W)``, alpha dropped."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image[None]
    if image.ndim == 3 and image.shape[-1] <= 4 and image.shape[0] > 4:
        if drop_alpha and image.shape[-1] == 4:
            image = image[..., :3]
        return np.moveaxis(image, -1, 0)
    if image.ndim == 3 and image.shape[0] <= 4:
        return image
    raise DataError(f"{name}: cannot read an image of shape {image.shape} as (C, H, W)")


SCORES_SUFFIX = ".scores.json"


def scores_path(label_path: str | os.PathLike) -> Path:
    """The scores sidecar of a label file: ``<stem>.scores.json`` beside it."""
    label_path = Path(label_path)
    return label_path.with_name(label_path.stem + SCORES_SUFFIX)


def write_scores(path: str | os.PathLike, scores: dict[int, float]) -> None:
    """Write ``{label: score}`` as JSON ``{"<label>": score}``, labels ascending."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {str(k): float(scores[k]) for k in sorted(scores)}
    path.write_text(json.dumps(data, indent=1) + "\n")


def read_scores(path: str | os.PathLike) -> dict[int, float]:
    """``{label: score}`` from a sidecar written by :func:`write_scores` (or by hand:
    a JSON object of integer label (or stack index) strings to finite numbers)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        scores = {int(k): float(v) for k, v in data.items()}
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(
            f"{path}: not a scores file ({exc}); write a JSON object "
            '{"<label>": <score>, ...} or delete the file'
        ) from None
    bad = [k for k, v in scores.items() if not math.isfinite(v)]
    if bad:
        raise DataError(f"{path}: score of label {bad[0]} is not a finite number")
    return scores
