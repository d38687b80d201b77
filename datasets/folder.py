"""The user's own data: ``{train,val,test}/{images,masks}/`` of TIFF or PNG files.

An image and its mask share a file stem (``images/a.tif`` <-> ``masks/a.tif`` or
``masks/a.png``); masks are label images (0 = background) or multi-page TIFF mask
stacks. 8-bit images are divided by 255, others scaled by robust percentiles. Without a
``val/`` folder, a fixed-seed tenth of train (at least one image) becomes validation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from benchbio.data import InstanceDataset, LazySamples, Sample, data_root
from benchbio.errors import DataError
from benchbio.instances import spatial_shape
from benchbio.io import list_images, read_image, read_labels, to_chw, to_unit
from benchbio.registry import register_dataset

from ._common import carve_val, pair_by_stem, require_nonempty

NAME = "folder"
SPLITS = ("train", "val", "test")
LAYOUT = "{train,val,test}/{images,masks}/ (val optional)"
VAL_FRACTION = 0.1


@dataclass
class FolderOptions:
    """Options of the folder dataset: the evaluation protocol of your data.

    Attributes:
        metrics: comma-separated metric plugins scored on the test split.
        val_metric: the metric key (higher is better) that selects the best checkpoint.
        min_area: smallest instance (pixels) a method keeps.
        eval_tile: score images as non-overlapping tiles of this size; None (or 0): whole.
    """

    metrics: str = "sbd,dic,fg_bg_dice"
    val_metric: str = "sbd"
    min_area: int = 20
    eval_tile: int | None = None

    def __post_init__(self) -> None:
        self.metrics = ",".join(m.strip() for m in self.metrics.split(",") if m.strip())
        if self.eval_tile == 0:
            self.eval_tile = None


def find_folder_dir(data_dir: str | os.PathLike | None) -> Path:
    """The user's dataset folder (``data_dir``), checked for train/ and test/."""
    if not data_dir:
        raise DataError(f"the folder dataset needs --data-dir pointing at a folder with {LAYOUT}")
    root = data_root(data_dir)
    if not root.is_dir():
        raise DataError(f"folder dataset: {root} does not exist; expected {LAYOUT} there")
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            if not (root / split / sub).is_dir():
                raise DataError(f"folder dataset: {root / split / sub} is missing; expected "
                                f"{LAYOUT} in {root}")
    return root


def get_folder_paths(root: str | os.PathLike | None, split: str) -> dict[str, tuple[Path, Path]]:
    """Stem -> (image, mask) paths of one split folder; {} when the split is absent."""
    base = find_folder_dir(root) / split
    if not base.is_dir():
        return {}
    images = {p.stem: p for p in list_images(base / "images")}
    if not (base / "masks").is_dir():
        raise DataError(f"folder dataset: {base / 'masks'} is missing; each split needs "
                        "images/ and masks/")
    masks = {p.stem: p for p in list_images(base / "masks")}
    for kind in ("images", "masks"):
        stems = [p.stem for p in list_images(base / kind)]
        dupes = sorted({s for s in stems if stems.count(s) > 1})
        if dupes:
            raise DataError(f"folder dataset: {base / kind} has two files named {dupes[0]}.*; "
                            "keep one per stem")
    names = pair_by_stem(images, masks, NAME, what="mask")
    require_nonempty(names, NAME, split, base / "images")
    return {n: (images[n], masks[n]) for n in names}


def _loader(paths: dict[str, tuple[Path, Path]]):
    def load(name: str) -> Sample:
        image_path, mask_path = paths[name]
        image = to_chw(to_unit(read_image(image_path)), str(image_path))
        labels = read_labels(mask_path)
        if spatial_shape(labels) != image.shape[1:]:
            raise DataError(
                f"folder dataset: image {image_path} is {image.shape[1:]} but its mask "
                f"{mask_path} is {spatial_shape(labels)}; image and mask must have the same size"
            )
        sample = Sample(name=name, image=image, instances=labels)
        if sample.instances.size == 0 or sample.instances.min() == sample.instances.max():
            raise DataError(f"folder dataset: mask {mask_path} has no instance (every pixel "
                            "is background); fix the mask or remove the image and its mask")
        return sample

    return load


@register_dataset(NAME, options=FolderOptions)
def folder(options: FolderOptions, data_dir: str | None = None) -> InstanceDataset:
    """Your own data: {train,val,test}/{images,masks}/ TIFF or PNG, masks as label images."""
    found = {s: get_folder_paths(data_dir, s) for s in SPLITS}
    names = {s: sorted(found[s]) for s in SPLITS}
    if not found["val"]:
        n_val = max(1, round(VAL_FRACTION * len(names["train"])))
        names["train"], names["val"] = carve_val(names["train"], n_val)
    splits = {}
    for split in SPLITS:
        source = found[split] or found["train"]  # a carved val reads train's files
        splits[split] = LazySamples(names[split], _loader(source))
    in_channels = splits["train"][0].image.shape[0]
    return InstanceDataset(
        name=NAME,
        splits=splits,
        in_channels=in_channels,
        metrics=tuple(options.metrics.split(",")),
        val_metric=options.val_metric,
        fg_at_test=False,
        min_area=options.min_area,
        eval_tile=options.eval_tile,
        options=options,
        description=f"user folder {data_root(data_dir)}",
    )
