"""FCN architectures: backbones, the FCN head, geometry and convolutionalization."""

from fcnseg.models.convolutionalize import convolutionalize
from fcnseg.models.dense import dilated_fcn, rarefy, shift_and_stitch
from fcnseg.models.fcn import FCN
from fcnseg.models.registry import ARCHITECTURES, build_model

__all__ = [
    "ARCHITECTURES",
    "FCN",
    "build_model",
    "convolutionalize",
    "dilated_fcn",
    "rarefy",
    "shift_and_stitch",
]
