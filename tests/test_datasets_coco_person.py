"""coco-person: the real 2-image sample and a tiny COCO file with polygons, RLE, crowds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from benchbio.errors import DataError
from benchbio.registry import DATASETS


def write_coco(root, split="val", h=60, w=100, with_image=True):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    if with_image:
        Image.fromarray(np.full((h, w, 3), 255, np.uint8)).save(root / f"{split}2017" / "a.jpg")
    crowd = np.zeros((h, w), np.uint8, order="F")
    crowd[40:50, 60:90] = 1
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode()
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 400,
         "bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
        {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 300,
         "bbox": [60, 40, 30, 10], "segmentation": rle},
        {"id": 3, "image_id": 7, "category_id": 2, "iscrowd": 0, "area": 100,
         "bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
    ]
    data = {"images": [{"id": 7, "file_name": "a.jpg", "height": h, "width": w},
                       {"id": 8, "file_name": "b.jpg", "height": h, "width": w}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]}
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


def test_real_sample(shared_data):
    ds = DATASETS.create("coco-person", data_dir=str(shared_data))
    assert len(ds.splits["test"]) == 2 and len(ds.splits["train"]) == 0
    people = crowds = 0
    for s in ds.splits["test"]:
        assert s.image.shape == (3, 448, 448) and s.instances.shape[1:] == (448, 448)
        assert s.image[:, 300:, :].max() == 0  # zero padding below the letterboxed image
        people += len(s.instances)
        crowds += int(s.crowd.sum())
    assert (people, crowds) == (28, 2)
    assert ds.metrics == ("coco",) and ds.val_metric == "ap"


def test_tiny_letterbox_and_crowd(tmp_path):
    write_coco(tmp_path / "coco")
    ds = DATASETS.create("coco-person", data_dir=str(tmp_path))
    assert ds.splits["test"].names == ["a"]  # b.jpg has no person
    s = ds.splits["test"][0]
    assert s.instances.shape == (2, 448, 448) and s.crowd.tolist() == [False, True]
    assert s.image[:, 269:, :].max() == 0 and s.image[:, :268, :].min() > 0.9
    assert abs(int(s.instances[0].sum()) - round(400 * 4.48**2)) < 400
    native = DATASETS.create("coco-person", data_dir=str(tmp_path), size=None,
                             only_with_person=False)
    assert native.splits["test"].names == ["a", "b"]
    s = native.splits["test"][0]
    assert s.image.shape == (3, 60, 100) and int(s.instances[1].sum()) == 300


def test_train_split_when_present(tmp_path):
    write_coco(tmp_path, "val")
    write_coco(tmp_path, "train")
    ds = DATASETS.create("coco-person", data_dir=str(tmp_path))
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 1


def test_errors(tmp_path):
    with pytest.raises(DataError, match="COCO layout"):
        DATASETS.create("coco-person", data_dir=str(tmp_path))
    write_coco(tmp_path, with_image=False)
    ds = DATASETS.create("coco-person", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="a.jpg"):
        ds.splits["test"][0]
    write_coco(tmp_path / "x", h=30)
    (tmp_path / "x" / "annotations" / "instances_val2017.json").write_text(
        (tmp_path / "annotations" / "instances_val2017.json").read_text())
    ds = DATASETS.create("coco-person", data_dir=str(tmp_path / "x"))
    with pytest.raises(DataError, match="annotations say"):
        ds.splits["test"][0]
    (tmp_path / "y" / "annotations").mkdir(parents=True)
    (tmp_path / "y" / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read COCO annotations"):
        DATASETS.create("coco-person", data_dir=str(tmp_path / "y"))
