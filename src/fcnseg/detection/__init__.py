"""Object detection as SSD does it: prior boxes, box coding, matching, the MultiBox loss, per-class
non-maximum suppression and PASCAL VOC average precision.

Boxes are (xmin, ymin, xmax, ymax) in [0, 1] of the image unless a name says otherwise; priors
are (cx, cy, w, h). The names are imported on first use, like :mod:`fcnseg`'s.
"""

from __future__ import annotations

from fcnseg.lazy import lazy_exports

_HOMES = {
    "SSD300_PRIORS": "fcnseg.detection.priors",
    "SSD512_PRIORS": "fcnseg.detection.priors",
    "PriorLayer": "fcnseg.detection.priors",
    "PriorSpec": "fcnseg.detection.priors",
    "prior_boxes": "fcnseg.detection.priors",
    "prior_spec": "fcnseg.detection.priors",
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


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
