"""folder: the user's {train,val,test}/{images,masks}/ layout."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from benchbio.errors import DataError
from benchbio.registry import DATASETS


def write(root, split, name, image=True, mask=True, dtype=np.uint16, shape=(20, 24)):
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    if image:
        img = (np.arange(shape[0] * shape[1]).reshape(shape) * 3).astype(dtype)
        tifffile.imwrite(root / split / "images" / f"{name}.tif", img)
    if mask:
        lab = np.zeros(shape, np.uint8)
        lab[1:5, 1:5], lab[8:12, 8:20] = 1, 2
        Image.fromarray(lab).save(root / split / "masks" / f"{name}.png")


@pytest.fixture
def user(tmp_path):
    for i in range(10):
        write(tmp_path, "train", f"t{i}")
    for i in range(3):
        write(tmp_path, "test", f"s{i}")
    return tmp_path


def test_val_carved_from_train(user):
    ds = DATASETS.create("folder", data_dir=str(user))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 9, "val": 1, "test": 3}
    assert not set(ds.splits["val"].names) & set(ds.splits["train"].names)
    s = ds.splits["val"][0]
    assert s.image.shape == (1, 20, 24) and s.image.dtype == np.float32
    assert -0.1 < s.image.min() < 0.05 and 0.95 < s.image.max() < 1.1
    assert ds.in_channels == 1 and ds.metrics == ("sbd", "dic", "fg_bg_dice")


def test_val_given_and_options(user):
    write(user, "val", "v0", dtype=np.uint8)
    ds = DATASETS.create("folder", data_dir=str(user), metrics="coco", val_metric="ap",
                         min_area=5, eval_tile=256)
    assert len(ds.splits["train"]) == 10 and ds.splits["val"].names == ["v0"]
    assert ds.metrics == ("coco",) and ds.eval_tile == 256 and ds.min_area == 5
    img = ds.splits["val"][0].image
    assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0  # 8-bit: /255


def test_missing_layout(tmp_path):
    with pytest.raises(DataError, match="needs --data-dir"):
        DATASETS.create("folder")
    with pytest.raises(DataError, match="does not exist"):
        DATASETS.create("folder", data_dir=str(tmp_path / "nope"))
    write(tmp_path, "train", "a")
    with pytest.raises(DataError, match="test.images is missing"):
        DATASETS.create("folder", data_dir=str(tmp_path))


def test_unpaired_and_empty(user):
    write(user, "test", "lonely", mask=False)
    with pytest.raises(DataError, match="lonely.tif has no mask"):
        DATASETS.create("folder", data_dir=str(user))
    (user / "test" / "images" / "lonely.tif").unlink()
    write(user, "test", "ghost", image=False)
    with pytest.raises(DataError, match="ghost.png has no image"):
        DATASETS.create("folder", data_dir=str(user))
    for f in (user / "test" / "masks").iterdir():
        f.unlink()
    for f in (user / "test" / "images").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="'test' split is empty"):
        DATASETS.create("folder", data_dir=str(user))


def test_shape_mismatch_and_unreadable(user):
    ds = DATASETS.create("folder", data_dir=str(user))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(user / "test" / "masks" / "s0.png")
    with pytest.raises(DataError, match="same size"):
        ds.splits["test"][0]
    (user / "test" / "images" / "s1.tif").write_bytes(b"garbage")
    with pytest.raises(DataError, match="s1.tif"):
        ds.splits["test"][1]
