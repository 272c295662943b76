"""fcnseg: Fully Convolutional Networks for semantic segmentation, faithful to the original Caffe nets.

The public names are imported on first use: ``import fcnseg`` costs nothing, and a script
loads torch, the trainer or the Caffe reader only when it uses them.
"""

from __future__ import annotations

from fcnseg.lazy import lazy_exports

__version__ = "0.1.0"

_HOMES = {
    "ARCHITECTURES": "fcnseg.models.registry",
    "CRFSettings": "fcnseg.infer.crf",
    "FCN": "fcnseg.models.fcn",
    "FcnsegError": "fcnseg.errors",
    "SSD": "fcnseg.models.ssd",
    "TrainConfig": "fcnseg.train.config",
    "build_model": "fcnseg.models.registry",
    "confusion_matrix": "fcnseg.metrics.segmentation",
    "convolutionalize": "fcnseg.models.convolutionalize",
    "evaluate_edges": "fcnseg.metrics.edges",
    "evaluate_skeletons": "fcnseg.metrics.edges",
    "fcn_from_imagenet": "fcnseg.weights.imagenet",
    "load": "fcnseg.weights.load",
    "load_checkpoint": "fcnseg.weights.checkpoint",
    "log_to_stderr": "fcnseg.logs",
    "predict": "fcnseg.infer.predict",
    "preprocess": "fcnseg.data.preprocess",
    "rarefy": "fcnseg.models.dense",
    "register_model": "fcnseg.models.registry",
    "save_checkpoint": "fcnseg.weights.checkpoint",
    "scores": "fcnseg.metrics.segmentation",
    "shift_and_stitch": "fcnseg.models.dense",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_HOMES)


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
