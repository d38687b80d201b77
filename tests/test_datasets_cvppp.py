"""cvppp: the real A1 copy (counts, split) and small files in the organisers' layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchbio.datasets.cvppp import get_cvppp_paths
from benchbio.errors import BenchbioError, DataError
from benchbio.instances import count_instances
from benchbio.registry import DATASETS


def write_plant(folder, name, n_leaves=3, size=(40, 36), label=True):
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((*size, 4), np.uint8)
    rgb[..., 1] = 200
    rgb[..., 3] = 255
    Image.fromarray(rgb, "RGBA").save(folder / f"{name}_rgb.png")
    if label:
        lab = np.zeros(size, np.uint8)
        for i in range(n_leaves):
            lab[2 + 6 * i: 6 + 6 * i, 3:20] = i + 1
        img = Image.fromarray(lab, "P")
        img.putpalette([c for i in range(256) for c in (i, 255 - i, 0)])
        img.save(folder / f"{name}_label.png")


@pytest.fixture
def tiny(tmp_path):
    folder = tmp_path / "cvppp2017_lsc" / "training" / "A1"
    for i in range(1, 17):
        write_plant(folder, f"plant{i:03d}", n_leaves=1 + i % 4)
    return tmp_path


def test_real_a1_counts_and_split(shared_data):
    ds = DATASETS.create("cvppp", data_dir=str(shared_data))
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 80, "val": 16, "test": 32}
    names = [set(ds.splits[k].names) for k in ("train", "val", "test")]
    assert len(set.union(*names)) == 128 and sum(map(len, names)) == 128
    leaves = 0
    for split in ds.splits.values():
        for s in split:
            assert s.image.shape == (3, 530, 500) and s.image.dtype == np.float32
            assert 0.0 <= s.image.min() and s.image.max() <= 1.0
            assert s.fg is None
            leaves += count_instances(s.instances)
    assert leaves == 2088
    assert ds.metrics == ("sbd", "dic", "fg_bg_dice") and ds.val_metric == "sbd"
    # the sequence folder itself works as data_dir, with the same split
    again = DATASETS.create("cvppp", data_dir=str(shared_data / "cvppp2017_lsc/training/A1"))
    assert again.splits["test"].names == ds.splits["test"].names


def test_tiny_layout_split_is_fixed(tiny):
    ds = DATASETS.create("cvppp", data_dir=str(tiny))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 10, "val": 2, "test": 4}
    again = DATASETS.create("cvppp", data_dir=str(tiny / "cvppp2017_lsc"))
    assert again.splits["test"].names == ds.splits["test"].names
    s = ds.splits["test"][0]
    assert s.image.shape == (3, 40, 36) and abs(s.image[1].max() - 200 / 255) < 1e-6
    assert count_instances(s.instances) == 1 + int(s.name[-3:]) % 4
    assert ds.options == {"sequence": "A1"}


def test_other_sequence_by_option(tiny):
    write_plant(tiny / "cvppp2017_lsc" / "training" / "A2", "plant001")
    write_plant(tiny / "cvppp2017_lsc" / "training" / "A2", "plant002")
    ds = DATASETS.create("cvppp", data_dir=str(tiny), sequence="A2")
    assert sum(len(v) for v in ds.splits.values()) == 2
    with pytest.raises(BenchbioError, match="sequence='A9'"):
        DATASETS.create("cvppp", data_dir=str(tiny), sequence="A9")


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="expected CVPPP2017 LSC layout") as err:
        DATASETS.create("cvppp", data_dir=str(tmp_path))
    assert "\n" not in str(err.value)


def test_image_without_label(tiny):
    write_plant(tiny / "cvppp2017_lsc" / "training" / "A1", "plant099", label=False)
    with pytest.raises(DataError, match="plant099_rgb.png has no label"):
        get_cvppp_paths(tiny)


def test_label_without_image(tiny):
    (tiny / "cvppp2017_lsc/training/A1/plant001_rgb.png").unlink()
    with pytest.raises(DataError, match="plant001_label.png has no image"):
        get_cvppp_paths(tiny)


def test_unreadable_and_mismatched_files(tiny):
    folder = tiny / "cvppp2017_lsc" / "training" / "A1"
    ds = DATASETS.create("cvppp", data_dir=str(tiny))
    name = ds.splits["test"].names[0]
    (folder / f"{name}_rgb.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="cannot read image"):
        ds.splits["test"][0]
    other = ds.splits["test"].names[1]
    Image.fromarray(np.zeros((10, 10), np.uint8), "P").save(folder / f"{other}_label.png")
    with pytest.raises(DataError, match="same size"):
        ds.splits["test"][1]


def test_download_says_where_to_register(tmp_path):
    with pytest.raises(BenchbioError, match="plant-phenotyping.org.*cvppp2017_lsc"):
        DATASETS.download("cvppp").run(tmp_path)
