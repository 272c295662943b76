"""fcnseg: Fully Convolutional Networks for semantic segmentation, faithful to the original Caffe nets."""

from fcnseg.data.preprocess import preprocess
from fcnseg.errors import FcnsegError
from fcnseg.infer.predict import predict
from fcnseg.models import ARCHITECTURES, FCN, build_model, convolutionalize, rarefy, shift_and_stitch
from fcnseg.train.metrics import confusion_matrix, scores
from fcnseg.train.trainer import TrainConfig
from fcnseg.weights.checkpoint import load_checkpoint, save_checkpoint
from fcnseg.weights.imagenet import fcn_from_imagenet
from fcnseg.weights.load import load

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "FCN",
    "FcnsegError",
    "TrainConfig",
    "build_model",
    "confusion_matrix",
    "convolutionalize",
    "fcn_from_imagenet",
    "load",
    "load_checkpoint",
    "predict",
    "preprocess",
    "rarefy",
    "save_checkpoint",
    "scores",
    "shift_and_stitch",
]
