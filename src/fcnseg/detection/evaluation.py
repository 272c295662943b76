"""PASCAL VOC average precision of detections: VOC2007's 11-point AP and the area under the curve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["evaluate_detections", "voc_ap"]


def voc_ap(recall: Sequence[float], precision: Sequence[float], eleven_point: bool = True) -> float:
    """Average precision of a precision/recall curve, points in order of descending score.

    ``eleven_point``: VOC2007's, the mean over recall thresholds k / 10 (k = 0..10) of the best
    precision at a recall at least that high (0 if none). Otherwise VOC2010's: the area under the
    curve after making precision non-increasing in recall.
    """
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape:
        raise ValueError(f"recall {recall.shape} and precision {precision.shape} differ in length")
    if eleven_point:
        return float(
            np.mean(
                [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.arange(11) / 10]
            )
        )
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _iou(box: np.ndarray, boxes: np.ndarray, inclusive: bool) -> np.ndarray:
    """IoU of one box with each of ``boxes``; ``inclusive``: the devkit's pixel areas, a box spanning
    ``xmax - xmin + 1`` pixels (VOCevaldet.m), else continuous areas."""
    pixel = 1.0 if inclusive else 0.0
    low, high = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(high - low + pixel, 0, None).prod(1)
    union = np.prod(box[2:] - box[:2] + pixel) + np.prod(boxes[:, 2:] - boxes[:, :2] + pixel, 1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def evaluate_detections(
    detections: Sequence[dict[str, Any]],
    ground_truths: Sequence[dict[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
    background: int = 0,
    *,
    inclusive: bool = True,
) -> dict[str, Any]:
    """VOC detection metrics over images: ``detections[i]`` has ``boxes`` (k, 4), ``scores`` and
    ``labels``; ``ground_truths[i]`` has ``boxes``, ``labels`` and ``difficult`` (all arrays or tensors).

    As the VOC devkit (VOCevaldet.m): detections of a class, best first over all images, each take
    the box of that class in their image they overlap most, when the IoU is at least
    ``iou_threshold``; a second detection of a box is a false positive; one on a difficult box
    counts as neither, and difficult boxes are not counted as positives. Boxes are in pixels with
    inclusive corners, as VOC's annotations: a box spans ``xmax - xmin + 1`` pixels
    (``inclusive=False``: continuous coordinates, such as normalised boxes, with areas
    ``(xmax - xmin) * (ymax - ymin)``). Returns ``ap07`` and ``ap`` (per class,
    NaN for a class without non-difficult boxes) and their means over the other classes,
    ``map07`` (11-point) and ``map`` (area under the curve).
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truths)} of ground truth")
    ap07, ap = np.full(num_classes, np.nan), np.full(num_classes, np.nan)
    gts = [{k: np.asarray(v) for k, v in gt.items()} for gt in ground_truths]
    dets = [{k: np.asarray(v) for k, v in det.items()} for det in detections]
    for cls in range(num_classes):
        if cls == background:
            continue
        boxes = [gt["boxes"][gt["labels"] == cls].reshape(-1, 4) for gt in gts]
        difficult = [
            gt.get("difficult", np.zeros(len(gt["labels"]), bool))[gt["labels"] == cls].astype(bool)
            for gt in gts
        ]
        positives = sum(int((~d).sum()) for d in difficult)
        if positives == 0:
            continue
        found = [
            (float(s), i, b)
            for i, d in enumerate(dets)
            for s, b in zip(
                d["scores"][d["labels"] == cls], d["boxes"][d["labels"] == cls].reshape(-1, 4), strict=True
            )
        ]
        found.sort(key=lambda item: -item[0])
        taken = [np.zeros(len(b), bool) for b in boxes]
        tp, fp = np.zeros(len(found)), np.zeros(len(found))
        for n, (_, image, box) in enumerate(found):
            overlaps = _iou(box, boxes[image], inclusive) if len(boxes[image]) else np.zeros(0)
            best = int(overlaps.argmax()) if len(overlaps) else -1
            if best < 0 or overlaps[best] < iou_threshold:
                fp[n] = 1
            elif difficult[image][best]:
                continue
            elif taken[image][best]:
                fp[n] = 1
            else:
                tp[n] = taken[image][best] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / positives
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap07[cls] = voc_ap(recall, precision, eleven_point=True)
        ap[cls] = voc_ap(recall, precision, eleven_point=False)
    counted = ~np.isnan(ap)
    return {
        "map07": float(ap07[counted].mean()) if counted.any() else 0.0,
        "map": float(ap[counted].mean()) if counted.any() else 0.0,
        "ap07": ap07.tolist(),
        "ap": ap.tolist(),
    }
