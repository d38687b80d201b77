"""BBBC010 v1: C. elegans live/dead assay (Broad Bioimage Benchmark Collection).

Reads the Broad's layout: ``BBBC010_v1_images/*_<WELL>_w1_*.tif`` and ``*_w2_*.tif``
(696x520 uint16), ``BBBC010_v1_foreground/<WELL>_binary.png`` and
``BBBC010_v1_foreground_eachworm/<WELL>_<NN>_ground_truth.png`` (one binary mask per
worm). Worms overlap, so the ground truth stays a ``(K, H, W)`` mask stack.

Protocol (paper, section 4.4): the input is the binary foreground image, 50 train / 47
test wells. The 97 wells are those with both image channels (C13, C14 have no images,
D24 only w1); the split is the fixed list below, the same for every input.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from benchbio.data import InstanceDataset, LazySamples, Sample
from benchbio.download import Archive, Download
from benchbio.errors import DataError
from benchbio.io import percentile_normalize, read_image
from benchbio.registry import register_dataset

from ._common import carve_val, find_dataset_dir, fixed_split

NAME = "celegans"
PARENTS = ("bbbc010", "BBBC010")
IMAGE_DIRS = ("BBBC010_v1_images", "BBBC010_v2_images")
FG_DIR = "BBBC010_v1_foreground"
WORM_DIR = "BBBC010_v1_foreground_eachworm"
#: The brightfield channel: w2 shows the illuminated well disk (median ~10x w1's
#: background); w1 is the dark fluorescence channel.
BRIGHTFIELD_CHANNEL = "w2"
#: Wells of BBBC010 v1 without both channels; never in the paper's 97.
UNPAIRED_WELLS = ("C13", "C14", "D24")
N_TEST, N_VAL = 47, 10
#: Smallest worm kept (pixels): half the smallest annotated worm (491 px); the reference
#: code used 500, which would delete real worms.
MIN_AREA = 250

_IMAGE_RE = re.compile(r"_([A-P]\d{2})_(w[12])_")
_WORM_RE = re.compile(r"^([A-P]\d{2})_(\d+)_ground_truth\.png$")

# The Broad publishes no checksums, and none from a source we could identify and trust
# was found: `benchbio data download celegans` prints the computed sha256 and needs
# --no-verify (docs/datasets.md).
BASE_URL = "https://data.broadinstitute.org/bbbc/BBBC010"
DOWNLOAD = Download(
    archives=(
        Archive(f"{BASE_URL}/BBBC010_v1_images.zip", subdir="bbbc010"),
        Archive(f"{BASE_URL}/BBBC010_v1_foreground.zip", subdir="bbbc010"),
        Archive(f"{BASE_URL}/BBBC010_v1_foreground_eachworm.zip", subdir="bbbc010"),
    ),
    licence="BBBC images are released for free use; cite the BBBC010 set (Ljosa et al., "
    "Nature Methods 2012; Wahlby et al., Nature Methods 2012).",
)


@dataclass
class CelegansOptions:
    """Options of the celegans dataset.

    Attributes:
        input: what the network sees: the binary "foreground" image (the paper's
            protocol; the mask is also given at test time) or the "brightfield" (w2)
            channel.
        all_wells: also train on the wells outside the paper's 97 (C13, C14, D24 have
            no brightfield image, so this needs input=foreground).
    """

    input: Literal["foreground", "brightfield"] = "foreground"
    all_wells: bool = False

    def __post_init__(self) -> None:
        if self.all_wells and self.input != "foreground":
            raise DataError(f"{NAME}: all_wells=true needs input=foreground (C13, C14 have "
                            "no brightfield image)")


def _is_bbbc010(folder: Path) -> bool:
    return (folder / WORM_DIR).is_dir()


def find_celegans_dir(data_dir: str | os.PathLike | None) -> Path:
    """The folder holding ``BBBC010_v1_foreground_eachworm/`` and its siblings."""
    return find_dataset_dir(
        data_dir, PARENTS, _is_bbbc010, NAME,
        f"the BBBC010 layout ({IMAGE_DIRS[0]}/, {FG_DIR}/, {WORM_DIR}/)",
    )


def _image_dir(folder: Path) -> Path | None:
    for name in IMAGE_DIRS:
        if (folder / name).is_dir():
            return folder / name
    return None


def get_celegans_paths(root: str | os.PathLike | None) -> dict[str, dict]:
    """Well -> {"worms": [mask paths], "fg": path or None, "w1"/"w2": path or None}."""
    folder = find_celegans_dir(root)
    wells: dict[str, dict] = {}
    for path in sorted((folder / WORM_DIR).glob("*.png")):
        match = _WORM_RE.match(path.name)
        if match:
            wells.setdefault(match.group(1), {"worms": []})["worms"].append(path)
    if not wells:
        raise DataError(f"{NAME}: no WELL_NN_ground_truth.png masks in {folder / WORM_DIR}")
    for well, entry in wells.items():
        fg = folder / FG_DIR / f"{well}_binary.png"
        entry["fg"] = fg if fg.is_file() else None
        entry["w1"] = entry["w2"] = None
    image_dir = _image_dir(folder)
    for path in sorted(image_dir.glob("*.tif")) if image_dir else []:
        match = _IMAGE_RE.search(path.name)
        if match is None:
            continue
        well, channel = match.groups()
        if well not in wells:
            raise DataError(
                f"{NAME}: image {path} has no worm masks {well}_NN_ground_truth.png in "
                f"{folder / WORM_DIR}; restore them or remove the image"
            )
        wells[well][channel] = path
    return wells


def split_wells(paired: list[str]) -> dict[str, list[str]]:
    """47 test wells by a fixed-seed permutation of the sorted paired wells; 10 val."""
    test, train = fixed_split(paired, N_TEST)
    train, val = carve_val(train, N_VAL)
    return {"train": train, "val": val, "test": test}


def _read_mask(path: Path) -> np.ndarray:
    mask = read_image(path)
    if mask.ndim == 3:  # RGB(A) binary PNG: any colour channel
        mask = mask[..., :3].max(axis=-1)
    return mask > 0


def _loader(wells: dict[str, dict], source: str):
    def load(well: str) -> Sample:
        entry = wells[well]
        masks = [_read_mask(p) for p in entry["worms"]]
        for path, mask in zip(entry["worms"], masks):
            if mask.shape != masks[0].shape:
                raise DataError(f"{NAME}: {path} is {mask.shape} but {entry['worms'][0].name} "
                                f"is {masks[0].shape}; masks of a well must have one size")
        stack = np.stack(masks)
        fg = None
        if source == "foreground":
            fg = _read_mask(entry["fg"])
            image = fg[None].astype(np.float32)
        else:
            raw = read_image(entry[BRIGHTFIELD_CHANNEL])
            image = percentile_normalize(raw)[None]
        if image.shape[1:] != stack.shape[1:]:
            raise DataError(
                f"{NAME}: well {well}: image is {image.shape[1:]} but its worm masks are "
                f"{stack.shape[1:]}; the files do not belong together"
            )
        return Sample(name=well, image=image, instances=stack, fg=fg)

    return load


def _usable(wells: dict[str, dict], source: str) -> list[str]:
    """Wells that have the image the ``input`` option asks for (``source``)."""
    key = "fg" if source == "foreground" else BRIGHTFIELD_CHANNEL
    missing = [w for w, e in wells.items() if e[key] is None and w not in UNPAIRED_WELLS]
    if missing:
        what = f"{FG_DIR}/{missing[0]}_binary.png" if key == "fg" else (
            f"the {key} image of well {missing[0]}")
        raise DataError(
            f"{NAME}: {what} is missing ({len(missing)} wells have worm masks but no "
            f"{'foreground' if key == 'fg' else 'image'}); restore it or re-download"
        )
    return sorted(w for w, e in wells.items() if e[key] is not None)


@register_dataset(NAME, options=CelegansOptions)
def celegans(options: CelegansOptions, data_dir: str | None = None) -> InstanceDataset:
    """BBBC010 C. elegans worms (input=foreground|brightfield), paper's 50/47 well split."""
    wells = get_celegans_paths(data_dir)
    usable = _usable(wells, options.input)
    paired = [w for w in usable if w not in UNPAIRED_WELLS]
    splits = split_wells(paired)
    if options.all_wells:
        splits["train"] = sorted(splits["train"] + [w for w in usable if w in UNPAIRED_WELLS])
    load = _loader(wells, options.input)
    return InstanceDataset(
        name=NAME,
        splits={k: LazySamples(v, load) for k, v in splits.items()},
        in_channels=1,
        metrics=("coco", "sbd", "dsb_accuracy", "avs"),
        val_metric="ap",
        fg_at_test=options.input == "foreground",
        min_area=MIN_AREA,
        options=options,
        description=f"BBBC010 C. elegans, {options.input} input: "
        f"{sum(map(len, splits.values()))} wells, overlapping worms as mask stacks",
    )
