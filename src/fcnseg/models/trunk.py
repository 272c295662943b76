"""Trunks: backbones that declare the blobs a head may read (taps), with their channels and geometry.

Heads (the FCN's score layers and skips), the fast inference path and tiling read
a trunk's taps, never its layers. A tap says how many channels its blob has, where
each of its positions sits in the input (``geometry``, an :class:`AffineMap`:
``x_input = scale * x_blob + shift``) and how many input pixels one position sees
(``field``). Crops are derived from the geometry, strides too.

Two ways to make a trunk:

- :class:`SequentialTrunk`, an ``nn.Sequential`` of named layers (VGG16, AlexNet,
  GoogLeNet): every layer's output is a tap named after it, derived from the
  layers. Convolutions, poolings and element-wise layers are known; a composite
  module (an inception module, a residual block) states ``geometry``, ``span`` and
  ``out_channels`` itself (see :mod:`fcnseg.models.geometry`). A tap is its layer's
  output: Caffe's ReLUs run in place, so what a prototxt calls the ``conv5_3`` blob
  (after ``relu5_3``) is the tap ``relu5_3``.
- a :class:`Trunk` subclass that sets ``taps`` and ``in_channels`` and implements
  :meth:`Trunk.features`, for a flow that is not a line.

A trunk runs as written, every layer called as a module; the faster exact ways to run
one live in :mod:`fcnseg.accel`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from fcnseg.models.geometry import AffineMap, layer_map, layer_span, mapped_length, out_length

__all__ = ["SequentialTrunk", "Tap", "Trunk", "as_trunk", "run_layers"]


@dataclass(frozen=True)
class Tap:
    """A blob of a trunk that a head may read.

    ``geometry`` sends blob positions to input pixels; ``field`` is the side of the
    square of input pixels one position sees (its receptive field).
    """

    name: str
    channels: int
    geometry: AffineMap
    field: int

    @property
    def stride(self) -> int:
        """Input pixels between neighbouring positions (32 for VGG16's pool5)."""
        if self.geometry.scale.denominator != 1:
            raise ValueError(f"tap {self.name}: stride {self.geometry.scale} is not an integer")
        return int(self.geometry.scale)

    def length(self, input_length: int) -> int:
        """Positions along an axis for an input of ``input_length``, as floor-mode windows give them."""
        return mapped_length(self.geometry, input_length)


class Trunk(nn.Module):
    """A backbone that declares its taps: ``taps`` in order from input to output (the last one
    is the trunk's output) and ``in_channels``; :meth:`features` computes the taps a head asks for."""

    taps: dict[str, Tap]
    in_channels: int

    @property
    def output(self) -> Tap:
        """The trunk's output: its last tap."""
        return next(reversed(self.taps.values()))

    def tap(self, name: str) -> Tap:
        """The tap called ``name``; an unknown name is an error that lists the trunk's taps."""
        if name not in self.taps:
            raise ValueError(f"{name!r} is not a tap of the trunk; taps: {', '.join(self.taps)}")
        return self.taps[name]

    def features(
        self, x: torch.Tensor, taps: Sequence[str] = ()
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(N, in_channels, H, W) -> ({tap: blob} for ``taps``, the output blob)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]

    def blob_sizes(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        """(height, width) of every tap's blob for an input of ``height`` x ``width``."""
        return {name: (tap.length(height), tap.length(width)) for name, tap in self.taps.items()}


def _channels(layer: nn.Module, channels: int) -> int:
    """Channels of a layer's output given its input's."""
    if isinstance(layer, nn.Sequential) and not hasattr(layer, "out_channels"):
        for inner in layer:
            channels = _channels(inner, channels)
        return channels
    return int(getattr(layer, "out_channels", channels))


def _in_channels(layers: Sequence[nn.Module]) -> int | None:
    """Input channels of the first layer that states them, looking inside nested sequences."""
    for layer in layers:
        if hasattr(layer, "in_channels"):
            return int(layer.in_channels)
        if isinstance(layer, nn.Sequential):
            found = _in_channels(list(layer))
            if found is not None:
                return found
    return None


class SequentialTrunk(nn.Sequential, Trunk):
    """An ``nn.Sequential`` trunk: every named layer's output is a tap.

    Its state dict is that of the sequence (``conv1_1.weight``, ...). Taps are
    derived from the layers when read, so that they follow in-place surgery (such as
    rarefaction); this is the one place that walks a trunk's layers for geometry.
    """

    @property
    def in_channels(self) -> int:  # type: ignore[override]
        found = _in_channels(list(self))
        if found is None:
            raise TypeError("no layer of the trunk states its input channels (in_channels)")
        return found

    @property
    def taps(self) -> dict[str, Tap]:  # type: ignore[override]
        taps: dict[str, Tap] = {}
        channels, geometry, field = self.in_channels, AffineMap(), Fraction(1)
        for name, layer in self.named_children():
            step = layer_map(layer)
            field += (layer_span(layer) - 1) * geometry.scale
            geometry = geometry.then(step)
            channels = _channels(layer, channels)
            taps[name] = Tap(name, channels, geometry, int(field))
        if not taps:
            raise ValueError("an empty trunk has no output")
        return taps

    def blob_sizes(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        """Exact sizes, layer by layer (ceil-mode pooling included)."""
        sizes = {}
        for name, layer in self.named_children():
            height = out_length(layer, height, 0) if height else 0
            width = out_length(layer, width, 1) if width else 0
            sizes[name] = (height, width)
        return sizes

    def features(
        self, x: torch.Tensor, taps: Sequence[str] = ()
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every layer in turn, called as a module (see :func:`run_layers`)."""
        return run_layers(list(self.named_children()), x, taps)


def run_layers(
    layers: Sequence[tuple[str, nn.Module]], x: torch.Tensor, taps: Sequence[str] = ()
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Named layers applied in turn: ({tap: blob} for the layers named in ``taps``, the last blob).

    A tap is its layer's output: it is kept apart before an in-place layer
    (``ReLU(inplace=True)``) can overwrite it.
    """
    found = {}
    for i, (name, layer) in enumerate(layers):
        x = layer(x)
        if name in taps:
            found[name] = x
            if i + 1 < len(layers) and getattr(layers[i + 1][1], "inplace", False):
                x = x.clone()
    return found, x


def as_trunk(backbone: nn.Module) -> Trunk:
    """``backbone`` as a trunk: a trunk as it is, an ``nn.Sequential`` as a :class:`SequentialTrunk`
    sharing its layers (same state dict keys)."""
    if isinstance(backbone, Trunk):
        return backbone
    if isinstance(backbone, nn.Sequential):
        return SequentialTrunk(OrderedDict(backbone.named_children()))
    raise TypeError(
        f"a backbone must be a Trunk (taps declared) or an nn.Sequential, got {type(backbone).__name__}"
    )
