"""Late fusion: one FCN per input modality, their scores averaged (NYUDv2 colour + HHA)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fcnseg.models.fcn import FCN
from fcnseg.models.layers import check_input

torch.fx.wrap("check_input")


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
        parts = self.parts(x)  # indexed, not unpacked: torch.fx cannot iterate over a traced split
        return self.fuse([stream(parts[i]) for i, stream in enumerate(self.streams.values())])

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, in_channels, H, W) -> each stream's channels, in stream order."""
        return check_input(x, self.in_channels).split([s.in_channels for s in self.streams.values()], dim=1)

    @staticmethod
    def fuse(scores: list[torch.Tensor]) -> torch.Tensor:
        """The streams' scores -> their average."""
        return torch.stack(scores).mean(0)


def streams_of(model: nn.Module) -> list[FCN]:
    """The FCNs that ``model`` runs: a late fusion's streams, or the net itself."""
    return list(model.streams.values()) if isinstance(model, LateFusionFCN) else [model]  # type: ignore[list-item]
