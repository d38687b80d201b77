"""Reading and writing images, label images and mask stacks.

TIFF goes through tifffile (multi-page TIFFs are read as ``(K, H, W)`` stacks); PNG and
JPEG through Pillow, keeping palette indices as labels (CVPPP's ``_label.png`` files are
palette PNGs whose index is the leaf id). Every read failure becomes a one-line
:class:`~benchbio.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_labels", "write_labels", "list_images"]

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
