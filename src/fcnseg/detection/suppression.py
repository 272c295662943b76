"""Greedy non-maximum suppression, batched over classes, and SSD's DetectionOutput."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fcnseg.detection.boxes import box_iou, decode
from fcnseg.detection.priors import VARIANCES

__all__ = ["batched_nms", "detect", "nms"]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, threshold: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy NMS of several independent sets at once: (S, K, 4) corner boxes and (S, K) scores ->
    (S, K) bool, the boxes kept.

    In each set, by descending score, a box is kept unless it overlaps a box kept before it by
    IoU > ``threshold`` (Caffe's ApplyNMSFast with eta 1). ``valid`` (S, K) leaves boxes out
    (padding); left-out boxes are never kept and suppress nothing. One step per rank, all sets
    together: K steps on (S, K) tensors.
    """
    sets, count = scores.shape
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid
    order = scores.masked_fill(~valid, -torch.inf).argsort(1, descending=True)
    ranked = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    overlaps = box_iou(ranked, ranked) > threshold  # (S, K, K)
    keep = valid.gather(1, order).clone()
    for i in range(count):
        suppress = overlaps[:, i] & keep[:, i : i + 1]
        suppress[:, : i + 1] = False
        keep &= ~suppress
    kept = torch.zeros_like(keep)
    return kept.scatter(1, order, keep)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the boxes (K, 4) kept by greedy NMS, by descending score."""
    keep = batched_nms(boxes[None], scores[None], threshold)[0]
    index = keep.nonzero()[:, 0]
    return index[scores[index].argsort(descending=True)]


def detect(
    loc: torch.Tensor,
    conf: torch.Tensor,
    priors: torch.Tensor,
    variances: Sequence[float] = VARIANCES,
    *,
    conf_threshold: float = 0.01,
    nms_threshold: float = 0.45,
    top_k: int = 400,
    keep_top_k: int = 200,
    background: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """SSD's DetectionOutput: (N, P, 4) box codes and (N, P, C) class scores (logits) -> per image
    ``boxes`` (k, 4) corners in [0, 1] (not clipped), ``scores`` (k,) and ``labels`` (k,),
    best first.

    Per class other than ``background``: the softmax scores above ``conf_threshold``, at most
    ``top_k`` of them, greedy NMS at IoU ``nms_threshold``; then the ``keep_top_k`` best over all
    classes. The defaults are ssd_pascal.py's.
    """
    boxes = decode(loc.float(), priors.to(loc.device), variances)  # (N, P, 4)
    probs = conf.float().softmax(-1)
    classes = [c for c in range(probs.shape[-1]) if c != background]
    results = []
    for image_boxes, image_probs in zip(boxes, probs, strict=True):
        scores = image_probs[:, classes].T  # (C', P)
        k = min(top_k, scores.shape[1])
        top, index = scores.topk(k, dim=1)
        valid = top > conf_threshold
        keep = batched_nms(image_boxes[index], top, nms_threshold, valid)
        cls, rank = keep.nonzero(as_tuple=True)
        kept_scores = top[cls, rank]
        best = kept_scores.argsort(descending=True)[:keep_top_k]
        label_of = torch.tensor(classes, device=loc.device)
        results.append(
            {
                "boxes": image_boxes[index[cls, rank]][best],
                "scores": kept_scores[best],
                "labels": label_of[cls[best]],
            }
        )
    return results
