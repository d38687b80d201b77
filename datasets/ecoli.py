"""E. coli bright-field images of the Deep Coloring paper (Kulikov et al. 2018).

Reads the Deep Coloring layout: ``<name>_rgb.png`` images (1024x1024) and
``<name>_label.png`` label images (palette or grey, 0 = background) in one folder.
The ground truth was grown by watershed from line-segment annotations. Protocol
(paper, section 4.2): 30 train / 7 test images, validation carved from train, scored
on non-overlapping 256x256 tiles (SBD per tile, averaged).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from benchbio.data import InstanceDataset, LazySamples, Sample
from benchbio.download import Download
from benchbio.errors import DataError
from benchbio.io import read_image, read_labels, to_chw, to_unit
from benchbio.registry import register_dataset

from ._common import carve_val, find_dataset_dir, fixed_split, pair_by_stem, require_nonempty

NAME = "ecoli"
PARENTS = ("ecoli", "E.coli", "e_coli", "deep_coloring/ecoli")
N_TEST, N_VAL = 7, 5
EVAL_TILE = 256
MIN_AREA = 20
DOWNLOAD = Download(
    manual="the E. coli set of the Deep Coloring / harmonic-embeddings papers has no public "
    "direct download; ask its authors (Kulikov & Lempitsky) for it and put its "
    "NAME_rgb.png + NAME_label.png files in {root}/ecoli",
    licence="the Deep Coloring authors' to state; cite Kulikov, Yurchenko, Lempitsky, "
    "arXiv:1807.10007, 2018.",
)


@dataclass
class EcoliOptions:
    """The ecoli dataset has no options: the paper's protocol is fixed."""


def _has_pairs(folder: Path) -> bool:
    return any(folder.glob("*_rgb.png"))


def find_ecoli_dir(data_dir: str | os.PathLike | None) -> Path:
    """The folder holding ``*_rgb.png`` + ``*_label.png``."""
    return find_dataset_dir(data_dir, PARENTS, _has_pairs, NAME,
                            "the Deep Coloring layout NAME_rgb.png + NAME_label.png")


def get_ecoli_paths(root: str | os.PathLike | None) -> dict[str, tuple[Path, Path]]:
    """Image name -> (rgb, label) paths, sorted; every image must have a label."""
    folder = find_ecoli_dir(root)
    images = {p.name[: -len("_rgb.png")]: p for p in folder.glob("*_rgb.png")}
    labels = {p.name[: -len("_label.png")]: p for p in folder.glob("*_label.png")}
    names = pair_by_stem(images, labels, NAME)
    return {n: (images[n], labels[n]) for n in names}


def split_names(names: list[str]) -> dict[str, list[str]]:
    """7 test images by a fixed-seed permutation of the sorted names; 5 val from train."""
    test, train = fixed_split(names, N_TEST)
    train, val = carve_val(train, N_VAL)
    return {"train": train, "val": val, "test": test}


def _loader(paths: dict[str, tuple[Path, Path]]):
    def load(name: str) -> Sample:
        rgb_path, label_path = paths[name]
        image = to_chw(to_unit(read_image(rgb_path)), name)
        labels = read_labels(label_path)
        if labels.ndim != 2:
            raise DataError(f"{label_path}: expected a 2-D label image, got {labels.shape}")
        return Sample(name=name, image=image, instances=labels)

    return load


@register_dataset(NAME, options=EcoliOptions)
def ecoli(options: EcoliOptions, data_dir: str | None = None) -> InstanceDataset:
    """E. coli bright-field (Deep Coloring layout), 30/7 split, SBD on 256x256 tiles."""
    paths = get_ecoli_paths(data_dir)
    names = list(paths)
    require_nonempty(names, NAME, "all", find_ecoli_dir(data_dir))
    load = _loader(paths)
    in_channels = load(names[0]).image.shape[0]
    return InstanceDataset(
        name=NAME,
        splits={k: LazySamples(v, load) for k, v in split_names(names).items()},
        in_channels=in_channels,
        metrics=("sbd", "dic", "fg_bg_dice"),
        val_metric="sbd",
        fg_at_test=False,
        min_area=MIN_AREA,
        eval_tile=EVAL_TILE,
        options=options,
        description=f"E. coli bright-field (Deep Coloring): {len(names)} images, "
        f"scored on {EVAL_TILE}px tiles",
    )
