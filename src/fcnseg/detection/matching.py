"""Which ground-truth box each prior learns from: SSD's bipartite, then per-prediction matching."""

from __future__ import annotations

import torch

from fcnseg.detection.boxes import box_iou, centre_to_corners

__all__ = ["match_priors"]

_MIN_OVERLAP = 1e-6  # Caffe's MatchBBox keeps only overlaps above this


def match_priors(
    boxes: torch.Tensor, priors: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, 4) corner boxes and (P, 4) priors (cx, cy, w, h) -> (P,) box index or -1, and (P,) best IoU.

    As Caffe's MatchBBox (BIPARTITE, then PER_PREDICTION): first each box takes, greedily
    by the highest IoU left, one prior of its own, so that every box that overlaps any
    prior is learned; then every prior still free takes the box it overlaps most, when
    that IoU is at least ``threshold``. The IoUs are the priors' best overlaps with any
    box, which hard negative mining reads.
    """
    count = priors.shape[0]
    matched = torch.full((count,), -1, dtype=torch.long, device=priors.device)
    if boxes.shape[0] == 0:
        return matched, priors.new_zeros(count)
    iou = box_iou(boxes.to(priors.dtype), centre_to_corners(priors))  # (G, P)
    best_iou, best_box = iou.max(0)
    left = iou.clone()
    for _ in range(boxes.shape[0]):
        value, flat = left.flatten().max(0)
        if value <= _MIN_OVERLAP:
            break
        box, prior = divmod(int(flat), count)
        matched[prior] = box
        left[box, :] = -1
        left[:, prior] = -1
    free = (matched < 0) & (best_iou >= threshold)
    matched[free] = best_box[free]
    return matched, best_iou
