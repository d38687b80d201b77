"""DIC-C2DH-HeLa of the Cell Tracking Challenge: HeLa cells on glass, DIC microscopy.

Reads the challenge's training layout ``DIC-C2DH-HeLa/01/tNNN.tif`` with the manual
segmentations ``01_GT/SEG/man_segNNN.tif`` (and the same for ``02``). Only the
annotated frames are used: 9 in each sequence. Protocol (paper, section 4.3): 9 train /
9 test images; benchbio trains on sequence 01 and tests on 02, so no test frame is a
near-duplicate neighbour of a training frame. SBD is reported without the foreground
mask (default) and with it (``use_fg=true``: the ground-truth foreground is given at
test time, as the paper's "with foreground mask" number).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from benchbio.data import InstanceDataset, LazySamples, Sample
from benchbio.download import Archive, Download
from benchbio.errors import DataError
from benchbio.instances import foreground
from benchbio.io import percentile_normalize, read_image, read_labels
from benchbio.registry import register_dataset

from ._common import carve_val, find_dataset_dir

NAME = "hela"
FOLDER = "DIC-C2DH-HeLa"
PARENTS = (FOLDER, f"train/{FOLDER}", f"training-datasets/{FOLDER}", f"{FOLDER}.zip.unzip/{FOLDER}")
TRAIN_SEQUENCE, TEST_SEQUENCE = "01", "02"
N_VAL = 2
MIN_AREA = 20
_SEG_RE = re.compile(r"^man_seg(\d+)\.tif$")

# sha256 of the training archive from torch-em's Cell Tracking Challenge module
# (constantinpape/torch-em, torch_em/data/datasets/light_microscopy/ctc.py, CTC_CHECKSUMS
# ["train"]["DIC-C2DH-HeLa"], commit 041b5402); micro-sam's sample_data.py pins the same.
DOWNLOAD = Download(
    archives=(
        Archive(
            "http://data.celltrackingchallenge.net/training-datasets/DIC-C2DH-HeLa.zip",
            sha256="832fed2d05bb7488cf9c51a2994b75f8f3f53b3c3098856211f2d39023c34e1a",
        ),
    ),
    licence="Cell Tracking Challenge data are free for research use under the challenge's "
    "terms of use; cite Ulman et al. 2017 and Maska et al. 2023. Data courtesy of Dr. Gert "
    "van Cappellen, Erasmus Medical Center, Rotterdam.",
)


@dataclass
class HelaOptions:
    """Options of the hela dataset.

    Attributes:
        use_fg: give the ground-truth foreground at test time (the paper's "with
            foreground mask" figure); methods then take the background from it.
    """

    use_fg: bool = False


def _is_ctc(folder: Path) -> bool:
    return (folder / f"{TRAIN_SEQUENCE}_GT" / "SEG").is_dir() or (
        folder / f"{TEST_SEQUENCE}_GT" / "SEG").is_dir()


def find_hela_dir(data_dir: str | os.PathLike | None) -> Path:
    """The ``DIC-C2DH-HeLa`` folder (holding ``01/``, ``01_GT/SEG/``, ``02/``, ``02_GT/``)."""
    return find_dataset_dir(data_dir, PARENTS, _is_ctc, NAME,
                            f"the Cell Tracking Challenge layout {FOLDER}/01/tNNN.tif + "
                            "01_GT/SEG/man_segNNN.tif (and 02)")


def get_hela_paths(root: str | os.PathLike | None, sequence: str) -> dict[str, tuple[Path, Path]]:
    """``"<seq>_tNNN"`` -> (frame, manual segmentation) for the annotated frames."""
    folder = find_hela_dir(root)
    seg_dir = folder / f"{sequence}_GT" / "SEG"
    if not seg_dir.is_dir():
        raise DataError(f"{NAME}: {seg_dir} is missing; expected man_segNNN.tif files there")
    if not (folder / sequence).is_dir():
        raise DataError(f"{NAME}: {folder / sequence} is missing; expected tNNN.tif frames there")
    out = {}
    for seg in sorted(seg_dir.glob("man_seg*.tif")):
        match = _SEG_RE.match(seg.name)
        if match is None:
            continue
        frame = folder / sequence / f"t{match.group(1)}.tif"
        if not frame.is_file():
            raise DataError(f"{NAME}: {seg} has no image {frame}; restore the frame or "
                            "remove the segmentation")
        out[f"{sequence}_t{match.group(1)}"] = (frame, seg)
    if not out:
        raise DataError(f"{NAME}: the sequence {sequence} has no man_segNNN.tif in {seg_dir}")
    return out


def _loader(paths: dict[str, tuple[Path, Path]], use_fg: bool):
    def load(name: str) -> Sample:
        frame, seg = paths[name]
        raw = read_image(frame)
        if raw.ndim != 2:
            raise DataError(f"{frame}: expected a single-channel frame, got {raw.shape}")
        labels = read_labels(seg)
        if labels.ndim != 2:
            raise DataError(f"{seg}: expected a 2-D label image, got {labels.shape}")
        return Sample(name=name, image=percentile_normalize(raw)[None], instances=labels,
                      fg=foreground(labels) if use_fg else None)

    return load


@register_dataset(NAME, options=HelaOptions)
def hela(options: HelaOptions, data_dir: str | None = None) -> InstanceDataset:
    """CTC DIC-C2DH-HeLa annotated frames, 9 train (01) / 9 test (02); use_fg gives the mask."""
    train_paths = get_hela_paths(data_dir, TRAIN_SEQUENCE)
    test_paths = get_hela_paths(data_dir, TEST_SEQUENCE)
    train, val = carve_val(list(train_paths), N_VAL)
    load = _loader({**train_paths, **test_paths}, options.use_fg)
    return InstanceDataset(
        name=NAME,
        splits={"train": LazySamples(train, load), "val": LazySamples(val, load),
                "test": LazySamples(sorted(test_paths), load)},
        in_channels=1,
        metrics=("sbd", "dic", "fg_bg_dice"),
        val_metric="sbd",
        fg_at_test=options.use_fg,
        min_area=MIN_AREA,
        options=options,
        description=f"CTC DIC-C2DH-HeLa annotated frames: {len(train_paths)} train (seq 01), "
        f"{len(test_paths)} test (seq 02)",
    )
