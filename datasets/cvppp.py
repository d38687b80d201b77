"""CVPPP 2017 Leaf Segmentation Challenge (LSC): Arabidopsis and tobacco leaves.

Reads the organisers' layout ``training/<sequence>/plantNNN_rgb.png`` (RGBA) with
``plantNNN_label.png`` (palette PNG, index = leaf id, 0 = background). The challenge's
test images are hidden, so benchbio holds out a fixed quarter of the training images
(32 of A1's 128) as its test split; see docs/datasets.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchbio.data import InstanceDataset, LazySamples, Sample
from benchbio.download import Download
from benchbio.errors import DataError
from benchbio.io import read_image, read_labels, scale_8bit, to_chw
from benchbio.registry import register_dataset

from ._common import carve_val, find_dataset_dir, fixed_split, pair_by_stem, require_nonempty

NAME = "cvppp"
#: Folder names the data may sit under: benchbio's/shared copy and the organisers' archive.
PARENTS = ("cvppp2017_lsc", "CVPPP2017_LSC_training", "CVPPP2017_LSC", "cvppp")
#: Smallest leaf kept by methods (pixels, native resolution); A1's smallest leaf has 76.
MIN_AREA = 50
URL = "https://www.plant-phenotyping.org/datasets-home"
DOWNLOAD = Download(
    manual=f"CVPPP cannot be downloaded automatically: register and download "
    f"CVPPP2017_LSC_training from {URL}, then unpack it so that "
    "{root}/cvppp2017_lsc/training/A1/plant001_rgb.png exists",
    licence="the CVPPP data is released for research use under the organisers' terms, "
    "accepted on registration; do not redistribute it.",
)


@dataclass
class CvpppOptions:
    """Options of the cvppp dataset.

    Attributes:
        sequence: the challenge's training sequence (A1-A3 Arabidopsis, A4 tobacco).
    """

    sequence: Literal["A1", "A2", "A3", "A4"] = "A1"


def _has_plants(folder: Path) -> bool:
    return any(folder.glob("plant*_rgb.png"))


def find_cvppp_dir(data_dir: str | os.PathLike | None, sequence: str = "A1") -> Path:
    """The folder holding ``plant*_rgb.png`` of ``sequence``: data_dir itself or below it."""
    names = [sequence, f"training/{sequence}"]
    names += [f"{p}/training/{sequence}" for p in PARENTS] + [f"{p}/{sequence}" for p in PARENTS]
    return find_dataset_dir(
        data_dir, names, _has_plants, NAME,
        f"CVPPP2017 LSC layout training/{sequence}/plantNNN_rgb.png + plantNNN_label.png",
    )


def get_cvppp_paths(
    root: str | os.PathLike | None, sequence: str = "A1"
) -> dict[str, tuple[Path, Path]]:
    """Plant name -> (rgb, label) paths, sorted by name; every image must have a label."""
    folder = find_cvppp_dir(root, sequence)
    images = {p.name[: -len("_rgb.png")]: p for p in folder.glob("plant*_rgb.png")}
    labels = {p.name[: -len("_label.png")]: p for p in folder.glob("plant*_label.png")}
    names = pair_by_stem(images, labels, NAME)
    return {n: (images[n], labels[n]) for n in names}


def split_names(names: list[str]) -> dict[str, list[str]]:
    """Fixed split: a seeded quarter to test, an eighth to validation, the rest train."""
    n = len(names)
    test, rest = fixed_split(names, round(n / 4))
    train, val = carve_val(rest, round(n / 8))
    return {"train": train, "val": val, "test": test}


def _loader(paths: dict[str, tuple[Path, Path]]):
    def load(name: str) -> Sample:
        rgb_path, label_path = paths[name]
        image = read_image(rgb_path)
        if image.dtype.kind != "u" or image.dtype.itemsize != 1 or image.ndim != 3:
            raise DataError(f"{rgb_path}: expected an 8-bit RGB(A) image, got {image.dtype} "
                            f"{image.shape}")
        labels = read_labels(label_path)
        if labels.ndim != 2:
            raise DataError(f"{label_path}: expected a 2-D label image, got {labels.shape}")
        return Sample(name=name, image=to_chw(scale_8bit(image), name), instances=labels)

    return load


@register_dataset(NAME, options=CvpppOptions)
def cvppp(options: CvpppOptions, data_dir: str | None = None) -> InstanceDataset:
    """CVPPP 2017 leaf segmentation (A1 default; A2-A4 by sequence=), held-out 1/4 test split."""
    paths = get_cvppp_paths(data_dir, options.sequence)
    names = list(paths)
    require_nonempty(names, NAME, "all", find_cvppp_dir(data_dir, options.sequence))
    load = _loader(paths)
    return InstanceDataset(
        name=NAME,
        splits={k: LazySamples(v, load) for k, v in split_names(names).items()},
        in_channels=3,
        metrics=("sbd", "dic", "fg_bg_dice"),
        val_metric="sbd",
        fg_at_test=False,
        min_area=MIN_AREA,
        options=options,
        description=f"CVPPP 2017 LSC {options.sequence}: {len(names)} plant images, leaves "
        "as labels",
    )
