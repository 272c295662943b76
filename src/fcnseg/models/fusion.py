"""Late fusion: one FCN per input modality, their scores averaged (NYUDv2 colour + HHA)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fcnseg.models.fcn import FCN


class LateFusionFCN(nn.Module):
    """FCNs that each read some channels of the input, their scores averaged.

    nyud-fcn32s-color-hha sums ``score_frcolor`` and ``score_frhha`` with coefficients 0.5 each and
    upsamples the sum once; the upsampling is linear and frozen, so averaging each stream's
    upsampled scores, as here, is the same net. Streams read consecutive channels, in the order of
    ``names`` (colour, then HHA), and keep their own layer names (``color.backbone.conv1_1``), so
    that each can be initialised from a single-modality net.

    (N, sum of the streams' channels, H, W) -> (N, num_classes, H, W).
    """

    task = "segmentation"  # what it predicts, as an FCN's

    def __init__(self, streams: Sequence[FCN], names: Sequence[str]) -> None:
        super().__init__()
        if len(streams) != len(names) or len(streams) < 2:
            raise ValueError(f"late fusion needs two or more named streams, got {len(streams)} for {names}")
        classes = {s.num_classes for s in streams}
        if len(classes) != 1:
            raise ValueError(f"streams must score the same classes, got {sorted(classes)}")
        self.names = tuple(names)
        self.streams = nn.ModuleDict(dict(zip(self.names, streams, strict=True)))
        self.num_classes = classes.pop()
        self.in_channels = sum(s.in_channels for s in streams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        parts = x.split([s.in_channels for s in self.streams.values()], dim=1)
        scores = [stream(part) for stream, part in zip(self.streams.values(), parts, strict=True)]
        return torch.stack(scores).mean(0)


def streams_of(model: nn.Module) -> list[FCN]:
    """The FCNs that ``model`` runs: a late fusion's streams, or the net itself."""
    return list(model.streams.values()) if isinstance(model, LateFusionFCN) else [model]  # type: ignore[list-item]
