"""``benchbio eval`` on small files written to tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from benchbio.cli import main
from benchbio.io import write_labels


def squares() -> np.ndarray:
    img = np.zeros((16, 16), int)
    img[1:6, 1:6] = 1
    img[9:15, 9:15] = 2
    return img


@pytest.fixture
def dirs(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    write_labels(gt / "a.png", squares())
    write_labels(pred / "a.tif", squares() * 4)  # perfect, other ids
    stack = np.stack([squares() == 1, squares() >= 1]).astype(np.uint8)  # overlapping masks
    tifffile.imwrite(gt / "b.tif", stack)
    write_labels(pred / "b.png", np.where(squares() == 1, 1, 0))  # misses the big mask
    return pred, gt


def run(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)])


def test_eval_prints_table_and_writes_json(dirs, tmp_path):
    pred, gt = dirs
    out = tmp_path / "res" / "scores.json"
    res = run(pred, gt, "--json", out)
    assert res.exit_code == 0, res.output
    assert "sbd" in res.output and "dsb_accuracy" in res.output and "a" in res.output
    data = json.loads(out.read_text())
    assert set(data) == {"per_image", "mean"}
    assert set(data["per_image"]) == {"a", "b"}
    keys = {"sbd", "dic", "abs_dic", "fg_bg_dice", "ap", "ap50", "ap75", "ap_small"}
    keys |= {"ap_medium", "ap_large", "dsb_accuracy", "dsb_accuracy_50", "dsb_accuracy_95"}
    assert keys <= set(data["mean"])
    assert data["per_image"]["a"]["sbd"] == 1.0
    # b: Dice(pred, small mask of 25 px) = 1, Dice(pred, big mask of 61 px) = 50 / 86
    assert data["per_image"]["b"]["sbd"] == pytest.approx((1 + 50 / 86) / 2)
    assert data["per_image"]["b"]["dic"] == -1
    assert data["mean"]["sbd"] == pytest.approx((1 + (1 + 50 / 86) / 2) / 2)


def test_metrics_option_selects(dirs, tmp_path):
    pred, gt = dirs
    out = tmp_path / "s.json"
    res = run(pred, gt, "--metrics", "sbd,dic", "-m", "fg_bg_dice", "--json", out)
    assert res.exit_code == 0, res.output
    assert set(json.loads(out.read_text())["mean"]) == {"sbd", "dic", "abs_dic", "fg_bg_dice"}


def test_json_not_overwritten_without_flag(dirs, tmp_path):
    pred, gt = dirs
    out = tmp_path / "s.json"
    out.write_text("mine")
    res = run(pred, gt, "--json", out)
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert out.read_text() == "mine"
    assert run(pred, gt, "--json", out, "--overwrite", "-m", "sbd").exit_code == 0
    assert "sbd" in json.loads(out.read_text())["mean"]


def test_missing_partner_names_the_file(dirs):
    pred, gt = dirs
    write_labels(gt / "c.png", squares())
    res = run(pred, gt)
    assert res.exit_code == 2
    assert "c.png" in res.output and "partner" in res.output


def test_shape_mismatch_exits_2(dirs):
    pred, gt = dirs
    write_labels(pred / "a.tif", np.zeros((16, 15), int))
    res = run(pred, gt)
    assert res.exit_code == 2
    assert "a.tif" in res.output and "same size" in res.output


def test_empty_prediction_scores_zero(dirs, tmp_path):
    pred, gt = dirs
    write_labels(pred / "a.tif", np.zeros((16, 16), int))
    out = tmp_path / "s.json"
    res = run(pred, gt, "--json", out)
    assert res.exit_code == 0, res.output
    a = json.loads(out.read_text())["per_image"]["a"]
    assert a["sbd"] == 0.0 and a["ap"] == 0.0 and a["dsb_accuracy"] == 0.0


def test_unknown_metric_exits_2(dirs):
    pred, gt = dirs
    res = run(pred, gt, "-m", "nope")
    assert res.exit_code == 2 and "nope" in res.output


def test_missing_folder_exits_2(tmp_path):
    res = run(tmp_path / "none", tmp_path)
    assert res.exit_code == 2 and "none" in res.output


def _tied_folders(root, names, scored: bool):
    """Six images of three equal squares each, predictions exact or shifted off their
    object, written under ``names`` (the i-th image as ``names[i]``)."""
    rng = np.random.default_rng(0)
    pred_dir, gt_dir = root / "pred", root / "gt"
    for name in names:
        gt = np.zeros((30, 30), int)
        pred = np.zeros((30, 30), int)
        for k, (y, x) in enumerate([(2, 2), (2, 16), (16, 9)], start=1):
            gt[y : y + 10, x : x + 10] = k
            dy = 0 if rng.random() < 0.5 else 6
            pred[y + dy : y + dy + 10, x : x + 10] = k
        write_labels(gt_dir / f"{name}.png", gt)
        write_labels(pred_dir / f"{name}.tif", pred)
        if scored:
            (pred_dir / f"{name}.scores.json").write_text('{"1": 0.5, "2": 0.5, "3": 0.5}')
    return pred_dir, gt_dir


@pytest.mark.parametrize("scored", [False, True])
def test_coco_keys_are_the_same_for_files_renamed_into_another_order(tmp_path, scored):
    keys = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    first = _tied_folders(tmp_path / "one", [f"img{i}" for i in range(6)], scored)
    second = _tied_folders(tmp_path / "two", ["f", "b", "e", "a", "d", "c"], scored)
    results = []
    for pred, gt in (first, second):
        out = pred.parent / "r.json"
        res = run(pred, gt, "-m", "coco", "--json", out)
        assert res.exit_code == 0, res.output
        results.append([json.loads(out.read_text())["mean"][k] for k in keys])
    assert results[0] == results[1]


def test_scores_files_are_used_and_checked(dirs):
    pred, gt = dirs
    base = run(pred, gt, "-m", "coco")
    assert base.exit_code == 0, base.output
    (pred / "a.scores.json").write_text('{"4": 0.9, "8": 0.2}')
    partial = run(pred, gt, "-m", "coco")
    assert partial.exit_code == 2 and "b.scores.json" in partial.output
    (pred / "b.scores.json").write_text('{"1": 0.3}')
    assert run(pred, gt, "-m", "coco").exit_code == 0
    (pred / "b.scores.json").write_text('{"7": 0.3}')  # label 1 has no score
    missing = run(pred, gt, "-m", "coco")
    assert missing.exit_code == 2 and "no score" in missing.output
    (pred / "b.scores.json").write_text("[1, 2]")
    broken = run(pred, gt, "-m", "coco")
    assert broken.exit_code == 2 and "b.scores.json" in broken.output
