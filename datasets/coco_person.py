"""COCO 2017, person category only, as the harmonic-embeddings paper evaluates it.

Reads COCO's layout: ``val2017/*.jpg``, ``train2017/*.jpg`` and
``annotations/instances_{val,train}2017.json`` (polygons and RLE, decoded with
pycocotools). Protocol (paper, section 4.6): each image is resized so its long side is
448 px and zero-padded (bottom/right) to 448x448; COCO AP on the person class, with
``iscrowd`` regions kept as crowd-flagged masks that COCO AP ignores.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from benchbio.data import InstanceDataset, LazySamples, Sample
from benchbio.download import Archive, Download
from benchbio.errors import DataError
from benchbio.registry import register_dataset

from ._common import carve_val, find_dataset_dir

NAME = "coco-person"
PARENTS = ("coco", "coco2017", "COCO", "coco_person_sample")
SIZE = 448
N_VAL = 500
MIN_AREA = 100

# md5s: the values quoted by many independent COCO loaders (e.g. PaddleDetection,
# torchvision-style scripts, MLPerf download scripts); sha256s and sizes (815,585,330 and
# 252,907,541 bytes) as recorded for the same files in a third-party reproduction log.
# Both digests are checked.
DOWNLOAD = Download(
    archives=(
        Archive("http://images.cocodataset.org/zips/val2017.zip", subdir="coco",
                sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
                md5="442b8da7639aecaf257c1dceb8ba8c80"),
        Archive("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                subdir="coco",
                sha256="113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
                md5="f4bbac642086de4f52a3fdda2de5fa2c"),
    ),
    licence="COCO annotations are CC BY 4.0; the images keep their Flickr licences "
    "(listed per image in the annotation JSON). Cite Lin et al., ECCV 2014.",
)


@dataclass
class CocoPersonOptions:
    """Options of the coco-person dataset.

    Attributes:
        size: letterbox side in pixels (the paper's 448); None (or 0) keeps native size.
        only_with_person: only images with at least one person annotation (crowd
            included); false also scores false positives on person-free images.
    """

    size: int | None = SIZE
    only_with_person: bool = True

    def __post_init__(self) -> None:
        if self.size == 0:
            self.size = None


def _annotation(folder: Path, split: str) -> Path:
    return folder / "annotations" / f"instances_{split}2017.json"


def _is_coco(folder: Path) -> bool:
    return _annotation(folder, "val").is_file() or _annotation(folder, "train").is_file()


def find_coco_dir(data_dir: str | os.PathLike | None) -> Path:
    """The folder holding ``annotations/instances_*2017.json`` and the image folders."""
    return find_dataset_dir(data_dir, PARENTS, _is_coco, NAME,
                            "the COCO layout annotations/instances_val2017.json + val2017/")


@lru_cache(maxsize=4)
def _load_coco(path: str):
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            return COCO(path)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise DataError(f"cannot read COCO annotations {path}: {exc}") from None


def _person_id(coco, path: Path) -> int:
    ids = coco.getCatIds(catNms=["person"])
    if not ids:
        raise DataError(f"{path} has no 'person' category; is it a COCO instances file?")
    return ids[0]


def get_coco_person_paths(
    root: str | os.PathLike | None, split: str = "val", only_with_person: bool = True
) -> dict[str, tuple[Path, int]]:
    """Image stem -> (image path, COCO image id) of ``{split}2017``; {} if not present."""
    folder = find_coco_dir(root)
    ann = _annotation(folder, split)
    if not ann.is_file():
        return {}
    coco = _load_coco(str(ann))
    person = _person_id(coco, ann)
    ids = coco.getImgIds(catIds=[person]) if only_with_person else coco.getImgIds()
    out = {}
    for info in coco.loadImgs(sorted(ids)):
        out[Path(info["file_name"]).stem] = (folder / f"{split}2017" / info["file_name"],
                                             int(info["id"]))
    return out


def letterbox(array: np.ndarray, size: int, resample: int) -> np.ndarray:
    """Resize so the long side is ``size``, then zero-pad bottom/right to size x size."""
    h, w = array.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(array).resize((nw, nh), resample))
    out = np.zeros((size, size) + resized.shape[2:], dtype=resized.dtype)
    out[:nh, :nw] = resized
    return out


def _loader(paths: dict[str, tuple[Path, int]], ann: dict[str, Path], size: int | None):
    def load(name: str) -> Sample:
        image_path, image_id = paths[name]
        split = image_path.parent.name[: -len("2017")]
        coco = _load_coco(str(ann[split]))
        try:
            with Image.open(image_path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except OSError as exc:
            raise DataError(f"cannot read image {image_path}: {exc}; is it downloaded "
                            "completely?") from None
        info = coco.imgs[image_id]
        if rgb.shape[:2] != (info["height"], info["width"]):
            raise DataError(f"{image_path} is {rgb.shape[:2]} but the annotations say "
                            f"{(info['height'], info['width'])}")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id],
                                            catIds=[_person_id(coco, ann[split])]))
        masks = [coco.annToMask(a).astype(np.uint8) for a in anns]
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        if size:
            rgb = letterbox(rgb, size, Image.BILINEAR)
            masks = [letterbox(m, size, Image.NEAREST) for m in masks]
        stack = (np.stack(masks) if masks else np.zeros((0, *rgb.shape[:2]), np.uint8)) > 0
        keep = stack.any(axis=(1, 2))  # drop masks lost in resizing
        image = np.moveaxis(rgb.astype(np.float32) / 255.0, -1, 0)
        return Sample(name=name, image=image, instances=stack[keep], crowd=crowd[keep])

    return load


@register_dataset(NAME, options=CocoPersonOptions)
def coco_person(options: CocoPersonOptions, data_dir: str | None = None) -> InstanceDataset:
    """COCO 2017 person class, letterboxed to 448x448; test = val2017, COCO AP with crowds."""
    folder = find_coco_dir(data_dir)
    test = get_coco_person_paths(data_dir, "val", options.only_with_person)
    train_all = get_coco_person_paths(data_dir, "train", options.only_with_person)
    train, val = carve_val(sorted(train_all), N_VAL) if train_all else ([], [])
    ann = {s: _annotation(folder, s) for s in ("val", "train")}
    load = _loader({**train_all, **test}, ann, options.size)
    return InstanceDataset(
        name=NAME,
        splits={"train": LazySamples(train, load), "val": LazySamples(val, load),
                "test": LazySamples(sorted(test), load)},
        in_channels=3,
        metrics=("coco",),
        val_metric="ap",
        fg_at_test=False,
        min_area=MIN_AREA,
        options=options,
        description=f"COCO 2017 person: {len(test)} val2017 images (test), "
        f"{len(train_all)} train2017",
    )
