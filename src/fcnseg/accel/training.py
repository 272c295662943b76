"""Exact faster training forwards: a net computed on the images' reach, sharing its parameters.

A wrapper holds the plain net as its submodule ``model`` (the optimizer, DDP and checkpoints see
the same parameters) and computes ``model(x)`` without what the constant input padding makes of
the trunk (:mod:`fcnseg.accel.reach`), and, for an FCN, without what the crops throw away
(:mod:`fcnseg.accel.head`): the same scores and gradients, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fcnseg.accel.head import Blob, fcn_head
from fcnseg.accel.reach import run_trunk
from fcnseg.models.fcn import FCN
from fcnseg.models.layers import check_input
from fcnseg.models.sides import FSDS, HED
from fcnseg.models.trunk import SequentialTrunk, Trunk

__all__ = ["TrimmedFCN", "TrimmedSides", "trunk_on_reach"]


def trunk_on_reach(
    trunk: Trunk, x: torch.Tensor, taps: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``trunk.features(x, taps)``, on the images' reach where the trunk is a plain layer sequence."""
    if type(trunk) is SequentialTrunk:
        return run_trunk(trunk, x, taps)
    return trunk.features(x, taps)


class TrimmedFCN(nn.Module):
    """``model(x)`` for an FCN: the trunk on the images' reach, the head for what the crops keep."""

    def __init__(self, model: FCN) -> None:
        super().__init__()
        self.model = model
        self.tap_names = model.skips

    def trunk(self, x: torch.Tensor) -> tuple[dict[str, Blob], Blob]:
        """The trunk's taps and output, whole."""
        taps, h = trunk_on_reach(self.model.backbone, x, self.tap_names)
        return {name: Blob(blob) for name, blob in taps.items()}, Blob(h)

    def head(self, taps: dict[str, Blob], top: Blob, like: torch.Tensor) -> torch.Tensor:
        """Scores the size of ``like`` (the input), for what the crops keep."""
        return fcn_head(self.model, top, taps, *like.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(*self.trunk(check_input(x, self.model.in_channels)), x)


class TrimmedSides(nn.Module):
    """``model(x)`` for HED or FSDS: the trunk on the images' reach, then the net's own side layers
    and fusion."""

    def __init__(self, model: HED | FSDS) -> None:
        super().__init__()
        self.model = model
        self.tap_names = tuple(model.tap_names)

    def trunk(self, x: torch.Tensor) -> tuple[dict[str, Blob], Blob]:
        """The tapped blobs and the trunk's output, whole."""
        taps, h = trunk_on_reach(self.model.backbone, x, self.tap_names)
        return {name: Blob(blob) for name, blob in taps.items()}, Blob(h)

    def head(self, taps: dict[str, Blob], top: Blob, like: torch.Tensor) -> torch.Tensor:
        """The net's own side layers and fusion: the output the size of ``like`` (the input)."""
        return self.model.head({name: blob.x for name, blob in taps.items()}, top.x, like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(*self.trunk(check_input(x, self.model.in_channels)), x)
