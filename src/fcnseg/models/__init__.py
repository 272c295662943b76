"""FCN architectures: trunks (backbones), the FCN head, geometry and convolutionalization."""

from fcnseg.models.convolutionalize import convolutionalize
from fcnseg.models.dense import dilated_fcn, rarefy, shift_and_stitch
from fcnseg.models.fcn import FCN
from fcnseg.models.registry import ARCHITECTURES, build_model
from fcnseg.models.trunk import SequentialTrunk, Tap, Trunk

__all__ = [
    "ARCHITECTURES",
    "FCN",
    "SequentialTrunk",
    "Tap",
    "Trunk",
    "build_model",
    "convolutionalize",
    "dilated_fcn",
    "rarefy",
    "shift_and_stitch",
]
