"""hela: small files in the Cell Tracking Challenge layout (the real set is not in shared/)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from benchbio.errors import DataError
from benchbio.registry import DATASETS

FRAMES = {"01": [2, 5, 21, 31, 33, 34, 39, 54, 67], "02": [6, 17, 23, 26, 29, 36, 40, 52, 75]}


def write_ctc(root, frames=FRAMES, size=24):
    base = root / "DIC-C2DH-HeLa"
    for seq, annotated in frames.items():
        (base / seq).mkdir(parents=True, exist_ok=True)
        (base / f"{seq}_GT" / "SEG").mkdir(parents=True, exist_ok=True)
        for t in range(max(annotated) + 1):
            img = (np.arange(size * size).reshape(size, size) % 200 + t).astype(np.uint8)
            tifffile.imwrite(base / seq / f"t{t:03d}.tif", img)
        for t in annotated:
            lab = np.zeros((size, size), np.uint16)
            lab[2:10, 2:10], lab[12:20, 5:22] = 3, 7
            tifffile.imwrite(base / f"{seq}_GT" / "SEG" / f"man_seg{t:03d}.tif", lab)
    return base


def test_split_by_sequence(tmp_path):
    write_ctc(tmp_path)
    ds = DATASETS.create("hela", data_dir=str(tmp_path))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 7, "val": 2, "test": 9}
    assert all(n.startswith("02_") for n in ds.splits["test"].names)
    assert all(n.startswith("01_") for k in ("train", "val") for n in ds.splits[k].names)
    s = ds.splits["test"][0]
    assert s.image.shape == (1, 24, 24) and s.image.dtype == np.float32 and s.fg is None
    assert not ds.fg_at_test and ds.options == {"use_fg": False}
    again = DATASETS.create("hela", data_dir=str(tmp_path / "DIC-C2DH-HeLa"))
    assert again.splits["val"].names == ds.splits["val"].names


def test_use_fg(tmp_path):
    write_ctc(tmp_path)
    ds = DATASETS.create("hela", data_dir=str(tmp_path), use_fg="true")
    s = ds.splits["test"][0]
    assert ds.fg_at_test and s.fg is not None and s.fg.sum() == 64 + 8 * 17


def test_missing_folder_and_sequence(tmp_path):
    with pytest.raises(DataError, match="Cell Tracking Challenge layout"):
        DATASETS.create("hela", data_dir=str(tmp_path))
    write_ctc(tmp_path, frames={"01": [2, 5, 21]})
    with pytest.raises(DataError, match="02_GT.SEG is missing"):
        DATASETS.create("hela", data_dir=str(tmp_path))


def test_segmentation_without_frame(tmp_path):
    base = write_ctc(tmp_path)
    (base / "02" / "t017.tif").unlink()
    with pytest.raises(DataError, match="man_seg017.tif has no image"):
        DATASETS.create("hela", data_dir=str(tmp_path))


def test_empty_sequence_and_bad_file(tmp_path):
    base = write_ctc(tmp_path)
    for f in (base / "02_GT" / "SEG").glob("*.tif"):
        f.unlink()
    with pytest.raises(DataError, match="sequence 02 has no man_segNNN.tif"):
        DATASETS.create("hela", data_dir=str(tmp_path))
    base = write_ctc(tmp_path / "b")
    ds = DATASETS.create("hela", data_dir=str(tmp_path / "b"))
    (base / "02_GT" / "SEG" / "man_seg006.tif").write_bytes(b"II*\x00broken")
    with pytest.raises(DataError, match="man_seg006.tif"):
        ds.splits["test"][0]
    tifffile.imwrite(base / "02_GT" / "SEG" / "man_seg006.tif", np.zeros((5, 5), np.uint16))
    with pytest.raises(DataError, match="same size"):
        ds.splits["test"][0]
