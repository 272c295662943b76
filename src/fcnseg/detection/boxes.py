"""Box arithmetic: corner/centre forms, the IoU matrix, and SSD's centre-size coding with variances."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["box_iou", "centre_to_corners", "corners_to_centre", "decode", "encode"]


def centre_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) (cx, cy, w, h) -> (xmin, ymin, xmax, ymax)."""
    return torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1)


def corners_to_centre(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) (xmin, ymin, xmax, ymax) -> (cx, cy, w, h)."""
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., A, 4) and (..., B, 4) corner boxes -> (..., A, B) intersection over union.

    Areas are ``(xmax - xmin) * (ymax - ymin)``, as Caffe measures normalised boxes; a pair
    whose union is empty has IoU 0, not NaN.
    """
    low = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    high = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def encode(boxes: torch.Tensor, priors: torch.Tensor, variances: Sequence[float]) -> torch.Tensor:
    """Corner boxes (..., 4) matched to priors (..., 4) (cx, cy, w, h) -> the regression targets.

    Caffe's CENTER_SIZE code: ((x - px) / pw / v0, (y - py) / ph / v1, log(w / pw) / v2,
    log(h / ph) / v3). Boxes must have positive width and height.
    """
    centre = corners_to_centre(boxes)
    var = torch.as_tensor(variances, dtype=boxes.dtype, device=boxes.device)
    xy = (centre[..., :2] - priors[..., :2]) / priors[..., 2:] / var[:2]
    wh = torch.log(centre[..., 2:] / priors[..., 2:]) / var[2:]
    return torch.cat([xy, wh], -1)


def decode(loc: torch.Tensor, priors: torch.Tensor, variances: Sequence[float]) -> torch.Tensor:
    """The inverse of :func:`encode`: predictions (..., P, 4) -> corner boxes (..., P, 4)."""
    var = torch.as_tensor(variances, dtype=loc.dtype, device=loc.device)
    xy = priors[..., :2] + loc[..., :2] * var[:2] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * var[2:])
    return centre_to_corners(torch.cat([xy, wh], -1))
