"""fcnseg: Fully Convolutional Networks for semantic segmentation, faithful to the original Caffe nets."""

from fcnseg.data.preprocess import preprocess
from fcnseg.models import ARCHITECTURES, FCN, build_model, convolutionalize
from fcnseg.train.metrics import confusion_matrix, scores
from fcnseg.weights.checkpoint import load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "FCN",
    "build_model",
    "confusion_matrix",
    "convolutionalize",
    "load_checkpoint",
    "preprocess",
    "save_checkpoint",
    "scores",
]
