"""ecoli: small files in the Deep Coloring layout (the real set is not public)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchbio.errors import BenchbioError, DataError
from benchbio.registry import DATASETS


def write_pair(folder, name, image=True, label=True, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(folder / f"{name}_rgb.png")
    if label:
        lab = np.zeros((size, size), np.uint8)
        lab[2:6, 2:6], lab[10:14, 10:20] = 1, 2
        Image.fromarray(lab, "L").save(folder / f"{name}_label.png")


@pytest.fixture
def tiny(tmp_path):
    for i in range(37):
        write_pair(tmp_path / "ecoli", f"img{i:02d}")
    return tmp_path


def test_split_and_protocol(tiny):
    ds = DATASETS.create("ecoli", data_dir=str(tiny))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 25, "val": 5, "test": 7}
    assert ds.eval_tile == 256 and ds.val_metric == "sbd" and ds.in_channels == 3
    again = DATASETS.create("ecoli", data_dir=str(tiny / "ecoli"))
    assert again.splits["test"].names == ds.splits["test"].names
    s = ds.splits["test"][0]
    assert s.image.shape == (3, 32, 32) and np.allclose(s.image, 128 / 255)
    assert s.instances.max() == 2


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="Deep Coloring layout"):
        DATASETS.create("ecoli", data_dir=str(tmp_path))


def test_unpaired_files(tiny):
    write_pair(tiny / "ecoli", "extra", label=False)
    with pytest.raises(DataError, match="extra_rgb.png has no label"):
        DATASETS.create("ecoli", data_dir=str(tiny))
    (tiny / "ecoli" / "extra_rgb.png").unlink()
    write_pair(tiny / "ecoli", "orphan", image=False)
    with pytest.raises(DataError, match="orphan_label.png has no image"):
        DATASETS.create("ecoli", data_dir=str(tiny))


def test_colour_label_and_size_mismatch(tiny):
    ds = DATASETS.create("ecoli", data_dir=str(tiny))
    a, b = ds.splits["test"].names[:2]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tiny / "ecoli" / f"{a}_label.png")
    with pytest.raises(DataError, match="colour channels"):
        ds.splits["test"][0]
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tiny / "ecoli" / f"{b}_label.png")
    with pytest.raises(DataError, match="same size"):
        ds.splits["test"][1]


def test_no_download(tmp_path):
    with pytest.raises(BenchbioError, match="no public"):
        DATASETS.download("ecoli").run(tmp_path)
