"""Object detection as SSD does it: prior boxes, box coding, matching, the MultiBox loss, per-class
non-maximum suppression and PASCAL VOC average precision.

Boxes are (xmin, ymin, xmax, ymax) in [0, 1] of the image unless a name says otherwise; priors
are (cx, cy, w, h). The names are imported on first use, like :mod:`fcnseg`'s.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "SSD300_PRIORS": "fcnseg.detection.priors",
    "PriorLayer": "fcnseg.detection.priors",
    "PriorSpec": "fcnseg.detection.priors",
    "prior_boxes": "fcnseg.detection.priors",
    "box_iou": "fcnseg.detection.boxes",
    "decode": "fcnseg.detection.boxes",
    "encode": "fcnseg.detection.boxes",
    "match_priors": "fcnseg.detection.matching",
    "MultiBoxLoss": "fcnseg.detection.loss",
    "batched_nms": "fcnseg.detection.suppression",
    "detect": "fcnseg.detection.suppression",
    "nms": "fcnseg.detection.suppression",
    "evaluate_detections": "fcnseg.detection.evaluation",
    "voc_ap": "fcnseg.detection.evaluation",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'fcnseg.detection' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
