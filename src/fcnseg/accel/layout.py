"""Channels-last blobs for narrow nets on the CPU: the same net, in the memory layout fastest for it.

oneDNN's channels-last kernels beat its blocked ones for convolutions of up to
:data:`~fcnseg.accel.kernels.CHANNELS_LAST_WIDTH` output channels; a convolution's output
follows its input's layout, so a channels-last input runs a whole net of narrow layers
channels-last (SSD300 at the synthetic set's widths: a training step 1.6x, inference 1.9x,
``benchmarks/bench_ssd.py``). The net itself runs, every layer a module: only the input's
memory layout changes, not a number.
"""

from __future__ import annotations

import torch
from torch import nn

from fcnseg.accel.kernels import CHANNELS_LAST_WIDTH

__all__ = ["ChannelsLastInput", "narrow"]


def narrow(model: nn.Module) -> bool:
    """Whether every convolution of ``model`` has at most :data:`CHANNELS_LAST_WIDTH` outputs."""
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(convolutions) and all(m.out_channels <= CHANNELS_LAST_WIDTH for m in convolutions)


class ChannelsLastInput(nn.Module):
    """``model(x)`` with ``x`` laid out channels-last: the net's own forward, its parameters shared."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x.contiguous(memory_format=torch.channels_last))
