"""celegans (BBBC010): the real copy (1,407 worms in 100 wells) and a tiny fake layout."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from benchbio.datasets.celegans import get_celegans_paths
from benchbio.errors import BenchbioError, DataError
from benchbio.registry import DATASETS

WELLS = [f"{r}{c:02d}" for r in "ABCD" for c in range(1, 25)] + ["E01", "E02", "E03", "E04"]
SHAPE = (12, 16)


def write_well(root, well, n_worms=2, channels=("w1", "w2"), fg=True, shape=SHAPE):
    images = root / "BBBC010_v1_images"
    fgdir = root / "BBBC010_v1_foreground"
    worms = root / "BBBC010_v1_foreground_eachworm"
    for d in (images, fgdir, worms):
        d.mkdir(parents=True, exist_ok=True)
    union = np.zeros(shape, bool)
    for i in range(n_worms):
        mask = np.zeros(shape, np.uint8)
        mask[1 + 3 * i: 3 + 3 * i, 2:12] = 255
        mask[1:4, 5] = 255  # worms cross: overlapping masks
        union |= mask > 0
        Image.fromarray(mask, "L").save(worms / f"{well}_{i + 1:02d}_ground_truth.png")
    if fg:
        rgba = np.zeros((*shape, 4), np.uint8)
        rgba[union] = 255
        Image.fromarray(rgba, "RGBA").save(fgdir / f"{well}_binary.png")
    for ch in channels:
        raw = (np.arange(shape[0] * shape[1]).reshape(shape) * 7 + 100).astype(np.uint16)
        tifffile.imwrite(images / f"1649_1109_0003_Amp5-1_B_20070424_{well}_{ch}_UUID.tif", raw)


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "bbbc010"
    for well in WELLS:
        if well in ("C13", "C14"):
            write_well(root, well, channels=())
        elif well == "D24":
            write_well(root, well, channels=("w1",))
        else:
            write_well(root, well, n_worms=1 + WELLS.index(well) % 3)
    return tmp_path


def test_real_bbbc010_counts(shared_data):
    ds = DATASETS.create("celegans", data_dir=str(shared_data), all_wells=True)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 43, "val": 10, "test": 47}
    worms, overlapping = 0, 0
    for split in ds.splits.values():
        for s in split:
            assert s.instances.ndim == 3 and s.instances.dtype == bool
            assert s.image.shape == (1, 520, 696) and s.fg is not None
            assert np.array_equal(s.image[0] > 0, s.fg)
            worms += len(s.instances)
            overlapping += bool((s.instances.sum(0) > 1).any())
    assert worms == 1407 and overlapping == 92
    assert ds.fg_at_test and ds.val_metric == "ap" and "coco" in ds.metrics


def test_real_brightfield_97_wells(shared_data):
    ds = DATASETS.create("celegans", data_dir=str(shared_data / "bbbc010"), input="brightfield")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 40, "val": 10, "test": 47}
    fg_ds = DATASETS.create("celegans", data_dir=str(shared_data))
    assert fg_ds.splits["test"].names == ds.splits["test"].names  # same split for both inputs
    s = ds.splits["test"][0]
    assert s.fg is None and not ds.fg_at_test and s.image.dtype == np.float32


def test_tiny_split_and_options(tiny):
    ds = DATASETS.create("celegans", data_dir=str(tiny))
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 40, "val": 10, "test": 47}
    names = set().union(*(set(v.names) for v in ds.splits.values()))
    assert not names & {"C13", "C14", "D24"}
    s = ds.splits["test"][0]
    assert s.image.shape == (1, *SHAPE) and set(np.unique(s.image)) <= {0.0, 1.0}
    assert ds.options == {"input": "foreground", "all_wells": False}
    everything = DATASETS.create("celegans", data_dir=str(tiny / "bbbc010"), all_wells="true")
    assert {"C13", "C14", "D24"} <= set(everything.splits["train"].names)
    assert everything.splits["test"].names == ds.splits["test"].names
    bright = DATASETS.create("celegans", data_dir=str(tiny), input="brightfield")
    img = bright.splits["train"][0].image
    assert img.min() < 0.05 and 0.95 < img.max() < 1.1  # robust percentile scaling


def test_bad_options(tiny):
    with pytest.raises(BenchbioError, match="input='gfp'"):
        DATASETS.create("celegans", data_dir=str(tiny), input="gfp")
    with pytest.raises(DataError, match="all_wells=true needs input=foreground"):
        DATASETS.create("celegans", data_dir=str(tiny), input="brightfield", all_wells=True)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="BBBC010 layout"):
        DATASETS.create("celegans", data_dir=str(tmp_path))


def test_missing_foreground(tiny):
    (tiny / "bbbc010/BBBC010_v1_foreground/A02_binary.png").unlink()
    with pytest.raises(DataError, match="A02_binary.png is missing"):
        DATASETS.create("celegans", data_dir=str(tiny))


def test_image_without_masks(tiny):
    images = tiny / "bbbc010" / "BBBC010_v1_images"
    tifffile.imwrite(images / "x_F01_w1_UUID.tif", np.zeros(SHAPE, np.uint16))
    with pytest.raises(DataError, match="F01_NN_ground_truth.png"):
        get_celegans_paths(tiny)


def _load(ds, well):
    split = next(k for k, v in ds.splits.items() if well in v.names)
    return ds.splits[split][ds.splits[split].names.index(well)]


def test_shape_mismatch(tiny):
    worms = tiny / "bbbc010" / "BBBC010_v1_foreground_eachworm"
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(worms / "A02_01_ground_truth.png")
    ds = DATASETS.create("celegans", data_dir=str(tiny))
    with pytest.raises(DataError, match="masks of a well must have one size"):
        _load(ds, "A02")
    fg = tiny / "bbbc010" / "BBBC010_v1_foreground" / "A03_binary.png"
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(fg)
    with pytest.raises(DataError, match="do not belong together"):
        _load(ds, "A03")


def test_unreadable_mask(tiny):
    (tiny / "bbbc010/BBBC010_v1_foreground_eachworm/A03_01_ground_truth.png").write_bytes(b"xx")
    ds = DATASETS.create("celegans", data_dir=str(tiny))
    with pytest.raises(DataError, match="cannot read image"):
        _load(ds, "A03")
