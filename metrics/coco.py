"""COCO mask AP through pycocotools' COCOeval (iouType ``segm``), over the whole set.

Keys: ``ap`` (IoU 0.50:0.05:0.95), ``ap50``, ``ap75``, ``ap_small``, ``ap_medium``,
``ap_large`` -- COCOeval's ``stats[0:6]``, maxDets 100 (COCO keeps the 100 best-scored
predictions per image). COCOeval's -1 is kept where it is undefined: an area range (or an
image) without any true, non-crowd instance. The set-level figures are one COCOeval run
over all images at once, not a mean of the per-image figures (which come from a COCOeval
run on that image alone).

Every prediction needs a score: a method's confidence passed through
``evaluate(..., scores=...)``, else ``area / (area + 1)`` per instance. COCOeval ranks
detections by score with a stable sort, so on equal scores the order of the input
decides; that order is made from the content alone, never from image order or names:
within an image, detections are listed by decreasing score, then by the raster position
(row-major index) of their first pixel; images are listed by a SHA-1 digest of their
shape, ground-truth masks and scored predictions. Crowd ground truth (``gt_crowd``) is
COCO ``iscrowd``: an ignore region.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchbio.evaluation import ImagePair, Metric
from benchbio.instances import is_stack
from benchbio.overlap import sequential_labels
from benchbio.registry import register_metric

__all__ = ["KEYS", "encode", "coco_ap", "CocoAP"]

KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def encode(masks: np.ndarray) -> list[dict]:
    """COCO RLEs of a ``(K, H, W)`` stack of binary masks."""
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(np.moveaxis(np.asarray(masks, dtype=np.uint8), 0, -1))
    return mask_utils.encode(fortran)


def _label_masks(labels: np.ndarray) -> np.ndarray:
    """``(n, H, W)`` masks of the foreground labels, ascending (lowest = background)."""
    seq, n = sequential_labels(labels)
    return seq[None] == np.arange(1, n + 1)[:, None, None]


def _pair_rles(pair: ImagePair) -> tuple[list[dict], np.ndarray, list[dict], np.ndarray, str]:
    """(gt RLEs, crowd flags, predicted RLEs, scores, digest) of one image, cached on the
    pair. Predictions are in canonical order (score descending, then first pixel); the
    digest of the image's content orders images for COCOeval."""
    if "coco" not in pair.cache:
        if is_stack(pair.gt):
            keep = np.flatnonzero(pair.gt.any(axis=(1, 2)))
            gt_masks = pair.gt[keep]
        else:
            gt_masks = _label_masks(pair.gt)
        pred_masks = pair.pred_instances if is_stack(pair.pred) else _label_masks(pair.pred)
        scores = np.asarray(pair.instance_scores(), dtype=np.float64)
        first_pixel = (pred_masks.reshape(len(pred_masks), -1).argmax(1) if len(pred_masks)
                       else np.zeros(0, dtype=np.int64))
        order = np.lexsort((first_pixel, -scores))
        gt_rles, dt_rles = encode(gt_masks), encode(pred_masks[order])
        digest = hashlib.sha1(repr(tuple(pair.gt.shape[-2:])).encode())
        for rle, crowd in zip(gt_rles, pair.gt_crowd_flags, strict=True):
            digest.update(rle["counts"] + (b"c" if crowd else b"g"))
        for rle, score in zip(dt_rles, scores[order], strict=True):
            digest.update(rle["counts"] + np.float64(score).tobytes())
        pair.cache["coco"] = (gt_rles, pair.gt_crowd_flags, dt_rles, scores[order],
                              digest.hexdigest())
    return pair.cache["coco"]


def _empty_results(gt: COCO) -> COCO:
    """A results COCO object with no detections (``loadRes`` fails on an empty list)."""
    res = COCO()
    res.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset["categories"]),
        "annotations": [],
    }
    res.createIndex()
    return res


def coco_ap(pairs: list[ImagePair]) -> dict[str, float]:
    """COCOeval (segm) figures over all ``pairs`` at once, as ``{key: value}``."""
    images, gt_anns, dt_anns = [], [], []
    canonical = sorted(pairs, key=lambda pair: _pair_rles(pair)[4])  # content, not names
    for image_id, pair in enumerate(canonical, start=1):
        h, w = pair.gt.shape[-2:]
        images.append({"id": image_id, "height": int(h), "width": int(w)})
        gt_rles, crowd, dt_rles, scores, _ = _pair_rles(pair)
        for rle, is_crowd in zip(gt_rles, crowd, strict=True):
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,  # COCOeval reserves id 0 for "unmatched"
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(x) for x in mask_utils.toBbox(rle)],
                    "iscrowd": int(is_crowd),
                }
            )
        for rle, score in zip(dt_rles, scores, strict=True):
            dt_anns.append(
                {"image_id": image_id, "category_id": 1, "segmentation": rle,
                 "score": float(score)}
            )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {
            "images": images,
            "categories": [{"id": 1, "name": "object"}],
            "annotations": gt_anns,
        }
        gt.createIndex()
        dt = gt.loadRes(dt_anns) if dt_anns else _empty_results(gt)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(KEYS, ev.stats[:6], strict=True)}


class CocoAP(Metric):
    """COCO mask AP; per image from COCOeval on that image, per set on all at once."""

    name = "coco"
    keys = KEYS

    def score(self, pair: ImagePair) -> dict[str, float]:
        return coco_ap([pair])

    def summarize(
        self, pairs: list[ImagePair], per_image: list[dict[str, float]]
    ) -> dict[str, float]:
        return coco_ap(pairs)


@register_metric("coco")
def coco() -> Metric:
    """COCO mask AP via pycocotools COCOeval: ap, ap50, ap75, ap_small/medium/large."""
    return CocoAP()
