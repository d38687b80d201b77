"""Metric plugins against hand-computed cases, the official loop scorer and pycocotools."""

from __future__ import annotations

import contextlib
import importlib.util
import io

import numpy as np
import pytest
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchbio.errors import BenchbioError, UnknownPluginError
from benchbio.evaluation import EvalResult, ImagePair, evaluate
from benchbio.instances import relabel
from benchbio.metrics.dsb_accuracy import THRESHOLDS, accuracy, true_positives

ALL = ("sbd", "dic", "fg_bg_dice", "coco", "dsb_accuracy")


def _load_reference():
    path = REPO / "benchmarks" / "bench_metrics.py"
    spec = importlib.util.spec_from_file_location("bench_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


def scores(pred, gt, metrics=ALL, **kw) -> dict[str, float]:
    result = evaluate([pred], [gt], metrics=metrics, **kw)
    return result.per_image["0"]


def two_squares(bg: int = 0, a: int = 1, b: int = 2) -> np.ndarray:
    img = np.full((12, 12), bg)
    img[1:5, 1:5] = a  # 16 px
    img[7:11, 7:11] = b  # 16 px
    return img


# --- golden cases -------------------------------------------------------------------------


def test_perfect_prediction():
    gt = two_squares()
    s = scores(gt.copy(), gt)
    assert s["sbd"] == 1.0 and s["dic"] == 0 and s["abs_dic"] == 0 and s["fg_bg_dice"] == 1.0
    assert s["ap"] == pytest.approx(1.0) and s["dsb_accuracy"] == 1.0


def test_split_instance():
    gt = np.zeros((6, 10), int)
    gt[1:5, 1:9] = 1  # 32 px
    pred = gt.copy()
    pred[1:5, 5:9] = 2  # two halves of 16 px
    s = scores(pred, gt)
    assert s["sbd"] == pytest.approx(2 / 3)  # Dice(half, whole) = 32 / 48 both ways
    assert s["dic"] == 1 and s["abs_dic"] == 1 and s["fg_bg_dice"] == 1.0
    # IoU(half, whole) = 0.5: one match at 0.50 (TP 1, FP 1), none above
    assert s["dsb_accuracy_50"] == pytest.approx(0.5)
    assert s["dsb_accuracy_55"] == 0.0
    assert s["dsb_accuracy"] == pytest.approx(0.05)


def test_merged_pair():
    gt = np.zeros((6, 10), int)
    gt[1:5, 1:5], gt[1:5, 5:9] = 1, 2
    pred = (gt > 0).astype(int)
    s = scores(pred, gt)
    assert s["sbd"] == pytest.approx(2 / 3)
    assert s["dic"] == -1 and s["abs_dic"] == 1


def test_missed_instance():
    gt = two_squares()
    pred = np.where(gt == 1, 1, 0)
    s = scores(pred, gt)
    assert s["sbd"] == pytest.approx(0.5)  # BestDice(pred, gt) = 1, BestDice(gt, pred) = 1/2
    assert s["dic"] == -1
    assert s["fg_bg_dice"] == pytest.approx(2 * 16 / 48)
    assert s["dsb_accuracy"] == pytest.approx(0.5)  # TP 1, FN 1 at every threshold
    assert s["ap"] == pytest.approx(0.5, abs=0.01)  # recall 0.5 at precision 1


def test_empty_prediction_scores_zero():
    gt = two_squares()
    s = scores(np.zeros_like(gt), gt)
    assert s["sbd"] == 0.0 and s["fg_bg_dice"] == 0.0 and s["dic"] == -2
    assert s["ap"] == 0.0 and s["ap50"] == 0.0 and s["dsb_accuracy"] == 0.0


def test_empty_stack_prediction_scores_zero():
    gt = two_squares()
    s = scores(np.zeros((0, 12, 12), bool), gt)
    assert s["sbd"] == 0.0 and s["ap"] == 0.0 and s["dic"] == -2


def test_both_empty_edge_cases():
    empty = np.zeros((8, 8), int)
    s = scores(empty, empty)
    assert s["sbd"] == 0.0  # CVPPP: BestDice is 0 without foreground
    assert s["fg_bg_dice"] == 1.0 and s["dsb_accuracy"] == 1.0  # documented choice
    assert s["ap"] == -1.0  # COCOeval: undefined without true instances


def test_background_labelled_non_zero():
    gt = two_squares(bg=7, a=8, b=9)
    pred = two_squares(bg=3, a=20, b=10)
    s = scores(pred, gt)
    assert s["sbd"] == 1.0 and s["dic"] == 0 and s["fg_bg_dice"] == 1.0
    assert s["ap"] == pytest.approx(1.0) and s["dsb_accuracy"] == 1.0


def test_non_consecutive_ids_score_as_consecutive():
    gt = two_squares()
    pred = two_squares(a=5, b=17)
    pred[1:3, 1:5] = 40  # split the first square: ids 0, 5, 17, 40
    s = scores(pred, gt)
    assert s == scores(relabel(pred), gt)
    assert s["sbd"] == pytest.approx(ref.reference_sbd(relabel(pred), gt))
    assert s["dic"] == 1
    # the official code would divide by max - min = 40 here, not by 3 labels
    assert ref.reference_sbd(pred, gt) < s["sbd"]


def overlapping_worms() -> np.ndarray:
    gt = np.zeros((2, 6, 14), bool)
    gt[0, 1:5, 0:8] = True  # A, 32 px
    gt[1, 1:5, 4:12] = True  # B, 32 px, 16 shared with A
    return gt


def test_overlapping_ground_truth_perfect_stack():
    gt = overlapping_worms()
    s = scores(gt.copy(), gt)
    assert s["sbd"] == 1.0 and s["dic"] == 0 and s["fg_bg_dice"] == 1.0
    assert s["dsb_accuracy"] == 1.0 and s["ap"] == pytest.approx(1.0)


def test_overlapping_ground_truth_label_prediction():
    gt = overlapping_worms()
    pred = np.zeros((6, 14), int)
    pred[1:5, 0:8] = 1  # = A
    pred[1:5, 8:12] = 2  # the part of B outside A, 16 px
    s = scores(pred, gt)
    # Dice: (1, A) = 1, (1, B) = 0.5, (2, B) = 32/48; both BestDice = (1 + 2/3) / 2
    assert s["sbd"] == pytest.approx(5 / 6)
    assert s["fg_bg_dice"] == 1.0
    # IoU(2, B) = 0.5: two matches at 0.50, one (of 2 + 2) above
    assert s["dsb_accuracy_50"] == 1.0
    assert s["dsb_accuracy_55"] == pytest.approx(1 / 3)
    assert s["dsb_accuracy"] == pytest.approx((1 + 9 / 3) / 10)


def test_crowd_instances_dropped_outside_coco():
    gt = np.concatenate([overlapping_worms(), np.zeros((1, 6, 14), bool)])
    gt[2, 0, :] = True  # a crowd region
    crowd = np.array([False, False, True])
    s = scores(gt[:2].copy(), gt, gt_crowd=[crowd])
    assert s["sbd"] == 1.0 and s["dic"] == 0 and s["fg_bg_dice"] == 1.0
    assert s["ap"] == pytest.approx(1.0)
    assert scores(gt[:2].copy(), gt)["dic"] == -1  # without the flag it is an instance


# --- the fast SBD equals the official loops ------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int64, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(0, 5)),
    arrays(np.int64, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(0, 5)),
    st.integers(-3, 3),
)
def test_sbd_equals_official_loops(a, b, shift):
    b = np.resize(b, a.shape) + shift
    fast = scores(a, b, metrics=("sbd", "fg_bg_dice"))
    assert abs(fast["sbd"] - ref.reference_sbd(relabel(a), relabel(b))) <= 1e-12
    if (a != a.min()).any() or (b != b.min()).any():  # official FgBgDice is 0 when both empty
        assert abs(fast["fg_bg_dice"] - ref.reference_fg_bg_dice(a, b)) <= 1e-12


def test_benchmark_pair_matches_official():
    pred, gt = ref.synthetic_pair(64, 8)
    assert scores(pred, gt, metrics=("sbd",))["sbd"] == pytest.approx(
        ref.reference_sbd(pred, gt), abs=1e-12
    )


# --- COCO AP equals pycocotools called directly ----------------------------------------


def direct_coco(gts, preds, scores=None, crowds=None, gt_has_crowd=False) -> list[float]:
    """COCO() + loadRes + COCOeval on the given (K, H, W) mask stacks, written out plainly."""
    images, anns, res = [], [], []
    for i, (g, p) in enumerate(zip(gts, preds, strict=True)):
        images.append({"id": 100 + i, "height": g.shape[1], "width": g.shape[2]})
        for k, m in enumerate(g):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append(
                {
                    "id": 1000 + len(anns),
                    "image_id": 100 + i,
                    "category_id": 7,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": int(crowds[i][k]) if crowds else 0,
                }
            )
        for k, m in enumerate(p):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            sc = 1.0 if scores is None else scores[i][k]
            res.append({"image_id": 100 + i, "category_id": 7, "segmentation": rle, "score": sc})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 7}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats[:6])


def random_blobs(rng, k, shape=(40, 50)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = []
    for _ in range(k):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, 12)
        out.append((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)
    return np.array(out)


def coco_keys(result: EvalResult) -> list[float]:
    return [result.mean[k] for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")]


def test_coco_equals_pycocotools_on_mask_stacks_with_scores():
    rng = np.random.default_rng(0)
    gts = [random_blobs(rng, 6), random_blobs(rng, 4), random_blobs(rng, 5)]
    preds = [random_blobs(rng, 5), gts[1][:3] | random_blobs(rng, 3), random_blobs(rng, 7)]
    preds[0][:3] = gts[0][:3]
    sc = [dict(enumerate(rng.random(len(p)))) for p in preds]
    got = evaluate(preds, gts, metrics=["coco"], scores=sc)
    want = direct_coco(gts, preds, scores=[[s[k] for k in range(len(s))] for s in sc])
    assert coco_keys(got) == pytest.approx(want, abs=1e-12)
    assert 0 < got.mean["ap"] < 1
    unscored = evaluate(preds, gts, metrics=["coco"])
    assert coco_keys(unscored) == pytest.approx(
        direct_coco(gts, preds, scores=[area_scores(p) for p in preds]), abs=1e-12)
    assert unscored.mean["ap"] != pytest.approx(got.mean["ap"])  # the scores were used


def area_scores(stack: np.ndarray) -> list[float]:
    """The documented default score of unscored instances: area / (area + 1)."""
    area = stack.reshape(len(stack), -1).sum(1).astype(float)
    return list(area / (area + 1))


def test_coco_label_images_score_by_area():
    rng = np.random.default_rng(3)
    gt_stack = random_blobs(rng, 5)
    gt = np.zeros(gt_stack.shape[1:], int)
    for i, m in enumerate(gt_stack, 1):
        gt[m] = i
    pred = np.roll(gt, 2, axis=1) * 3  # ids 3, 6, ... ascending = same order
    got = evaluate([pred], [gt], metrics=["coco"])
    masks = lambda lab: np.array([lab == v for v in np.unique(lab)[1:]])  # noqa: E731
    want = direct_coco([masks(gt)], [masks(pred)], scores=[area_scores(masks(pred))])
    assert coco_keys(got) == pytest.approx(want, abs=1e-12)


def _tied_set(n_images: int = 6, seed: int = 0):
    """Images of equal squares: some predictions exact, some shifted off their object,
    so equal scores across images make COCOeval's ranking depend on the order."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(n_images):
        gt = np.zeros((3, 30, 30), bool)
        pred = np.zeros((3, 30, 30), bool)
        for k, (y, x) in enumerate([(2, 2), (2, 16), (16, 9)]):
            gt[k, y : y + 10, x : x + 10] = True
            dy = 0 if rng.random() < 0.5 else 6  # exact, or IoU 0.25
            pred[k, y + dy : y + dy + 10, x : x + 10] = True
        gts.append(gt)
        preds.append(pred)
    return preds, gts


@pytest.mark.parametrize("scored", [False, True])
def test_coco_keys_do_not_depend_on_image_order_or_names(scored):
    preds, gts = _tied_set()
    # equal scores everywhere (scored) or equal areas everywhere (unscored): all ties
    scores = [{k: 0.5 for k in range(len(p))} for p in preds] if scored else None
    names = [f"img{i}" for i in range(len(preds))]
    first = evaluate(preds, gts, metrics=["coco"], names=names, scores=scores)
    perm = [3, 0, 5, 1, 4, 2]
    other = evaluate([preds[i] for i in perm], [gts[i] for i in perm], metrics=["coco"],
                     names=[f"z{9 - i}" for i in perm],
                     scores=None if scores is None else [scores[i] for i in perm])
    keys = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    assert [first.mean[k] for k in keys] == [other.mean[k] for k in keys]
    # the same predictions in pycocotools' own order-sensitive form do differ
    naive = direct_coco(gts, preds, scores=[[0.5] * 3] * len(preds))
    naive_perm = direct_coco([gts[i] for i in perm], [preds[i] for i in perm],
                             scores=[[0.5] * 3] * len(preds))
    assert naive != pytest.approx(naive_perm)


def test_coco_ties_within_an_image_do_not_depend_on_label_values():
    preds, gts = _tied_set(n_images=6, seed=1)
    as_labels = [(p * np.arange(1, 4)[:, None, None]).max(0) for p in preds]
    relabelled = [np.where(lab > 0, 4 - lab, 0) for lab in as_labels]  # ids reversed
    keys = ("ap", "ap50", "ap75")
    a = evaluate(as_labels, gts, metrics=["coco"]).mean
    b = evaluate(relabelled, gts, metrics=["coco"]).mean
    assert [a[k] for k in keys] == [b[k] for k in keys]


def test_coco_is_whole_set_not_mean_of_images():
    rng = np.random.default_rng(1)
    gts = [random_blobs(rng, 3), random_blobs(rng, 8)]
    preds = [gts[0].copy(), np.zeros((0, 40, 50), bool)]
    got = evaluate(preds, gts, metrics=["coco"])
    assert coco_keys(got)[0] == pytest.approx(direct_coco(gts, [gts[0], gts[0][:0]])[0])
    per_image_mean = np.mean([got.per_image[n]["ap"] for n in got.per_image])
    assert got.mean["ap"] != pytest.approx(per_image_mean)


def test_coco_no_prediction_at_all_is_zero():
    gts = [two_squares(), two_squares()]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": 1, "height": 12, "width": 12}], "annotations": []}
        gt.dataset["categories"] = [{"id": 1}]
        gt.createIndex()
        with pytest.raises(IndexError):
            gt.loadRes([])  # the pycocotools failure the metric works around
    got = evaluate([np.zeros((12, 12), int)] * 2, gts, metrics=["coco"], names=["a", "b"])
    assert got.mean["ap"] == 0.0 and got.per_image["a"]["ap50"] == 0.0


def test_coco_crowd_is_ignore_region():
    rng = np.random.default_rng(2)
    gt = random_blobs(rng, 4)
    crowd = np.array([False, False, False, True])
    pred = gt.copy()  # also predicts the crowd region: ignored, not a false positive
    got = evaluate([pred], [gt], metrics=["coco"], gt_crowd=[crowd])
    assert coco_keys(got) == pytest.approx(direct_coco([gt], [pred], crowds=[crowd]), abs=1e-12)
    assert got.mean["ap"] == pytest.approx(1.0)


def test_scores_must_cover_every_instance():
    gt = two_squares()
    with pytest.raises(BenchbioError, match="no score"):
        evaluate([gt], [gt], metrics=["coco"], scores=[{1: 0.9}])


# --- dsb_accuracy --------------------------------------------------------------------------


def test_true_positives_is_one_to_one_and_maximal():
    iou = np.array([[0.6, 0.7], [0.0, 0.55]])  # rows: predictions; greedy would find 1
    assert true_positives(iou, 0.5) == 2
    assert true_positives(iou, 0.6) == 1
    assert true_positives(iou, 0.75) == 0
    assert true_positives(np.zeros((0, 3)), 0.5) == 0


def test_threshold_is_inclusive():
    assert THRESHOLDS[0] == 0.5 and THRESHOLDS[-1] == 0.95 and len(THRESHOLDS) == 10
    assert true_positives(np.array([[11 / 20]]), 0.55) == 1


def test_accuracy_counts():
    assert accuracy(tp=3, n_pred=4, n_gt=5) == pytest.approx(3 / 6)
    assert accuracy(tp=0, n_pred=0, n_gt=0) == 1.0
    assert accuracy(tp=0, n_pred=2, n_gt=0) == 0.0


def test_dsb_accuracy_false_positive():
    gt = np.where(two_squares() == 1, 1, 0)
    s = scores(two_squares(), gt, metrics=["dsb_accuracy"])
    assert s["dsb_accuracy"] == pytest.approx(0.5)  # TP 1, FP 1


# --- evaluate(): set level, errors -------------------------------------------------------


def test_means_over_images_and_names():
    gt = two_squares()
    got = evaluate(
        [gt, np.where(gt == 1, 1, 0)], [gt, gt], metrics=["sbd", "dic"], names=["x", "y"]
    )
    assert set(got.per_image) == {"x", "y"}
    assert got.mean["sbd"] == pytest.approx(0.75)
    assert got.mean["dic"] == pytest.approx(-0.5) and got.mean["abs_dic"] == pytest.approx(0.5)


def test_abs_dic_plugin_alone_and_with_dic():
    gt = two_squares()
    assert scores(gt[:, :6], gt[:, :6], metrics=["abs_dic"]) == {"abs_dic": 0.0}
    assert set(scores(gt, gt, metrics=["dic", "abs_dic"])) == {"dic", "abs_dic"}


def test_shape_mismatch_names_the_image():
    with pytest.raises(BenchbioError, match="plant7"):
        evaluate([np.zeros((4, 4))], [np.zeros((4, 5))], names=["plant7"])


def test_unknown_metric():
    with pytest.raises(UnknownPluginError, match="sbd"):
        evaluate([np.zeros((4, 4))], [np.zeros((4, 4))], metrics=["nope"])


def test_crowd_flags_need_a_stack():
    with pytest.raises(BenchbioError, match="crowd"):
        ImagePair(two_squares(), two_squares(), gt_crowd=np.array([False, True]))


def test_overlap_computed_once_and_shared():
    gt = two_squares()
    pair = ImagePair(gt, gt)
    assert pair.overlap is pair.overlap
