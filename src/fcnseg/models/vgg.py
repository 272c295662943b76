"""VGG16 as FCN uses it: padded by 100 at the input, fc6/fc7 already convolutions."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from fcnseg.models.trunk import SequentialTrunk

VGG16_WIDTHS = (64, 128, 256, 512, 512, 4096)
"""Output channels of conv1_x .. conv5_x, then of fc6 and fc7."""

_CONVS_PER_STAGE = (2, 2, 3, 3, 3)
VGG16_CONVS = tuple(
    f"conv{stage}_{i}" for stage, n in enumerate(_CONVS_PER_STAGE, start=1) for i in range(1, n + 1)
)
"""The 13 convolutions in order."""
VGG16_LAYERS = (*VGG16_CONVS, "fc6", "fc7")
"""The 15 layers whose widths ``widths`` may give one by one."""


def layer_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """The 15 widths of conv1_1 .. conv5_3, fc6, fc7 from ``widths``: 6 (one per stage, then fc6 and
    fc7 alike, as VGG16 has them) or 15 (one per layer, as a converted file may have them)."""
    widths = tuple(int(w) for w in widths)
    if len(widths) == len(VGG16_LAYERS):
        return widths
    if len(widths) != 6:
        raise ValueError(
            f"VGG16 needs 6 widths (conv1..conv5, fc) or 15 (conv1_1 .. conv5_3, fc6, fc7), got {widths}"
        )
    return (
        *(w for w, n in zip(widths, _CONVS_PER_STAGE, strict=False) for _ in range(n)),
        widths[5],
        widths[5],
    )


def compact_widths(per_layer: Sequence[int]) -> tuple[int, ...]:
    """The 15 widths of :func:`layer_widths` as 6 when each stage is one width and fc6 is fc7's, else as
    they are: a net of VGG16's shape keeps the short form in its config."""
    per_layer = tuple(int(w) for w in per_layer)
    short = (*(per_layer[VGG16_CONVS.index(f"conv{s}_1")] for s in range(1, 6)), per_layer[-1])
    return short if layer_widths(short) == per_layer else per_layer


def vgg16_backbone(
    widths: Sequence[int] = VGG16_WIDTHS, in_channels: int = 3, input_padding: int = 100
) -> SequentialTrunk:
    """conv1_1 ... pool5, fc6 (7x7), fc7 (1x1) with ReLU and dropout, named as in Caffe; each layer a tap.

    ``widths``: 6 (a stage each, then fc6/fc7) or 15 (a layer each, :func:`layer_widths`).
    ``input_padding`` on conv1_1 (100 in the original nets) makes even a 1x1 image
    reach fc6 with a 7x7 window; the final crop removes what it adds.
    """
    per_layer = dict(zip(VGG16_LAYERS, layer_widths(widths), strict=True))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for stage, repeats in enumerate(_CONVS_PER_STAGE, start=1):
        for i in range(1, repeats + 1):
            pad = input_padding if (stage, i) == (1, 1) else 1
            width = per_layer[f"conv{stage}_{i}"]
            layers[f"conv{stage}_{i}"] = nn.Conv2d(channels, width, 3, padding=pad)
            layers[f"relu{stage}_{i}"] = nn.ReLU(inplace=True)
            channels = width
        layers[f"pool{stage}"] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
    layers["fc6"] = nn.Conv2d(channels, per_layer["fc6"], 7)
    layers["relu6"] = nn.ReLU(inplace=True)
    layers["drop6"] = nn.Dropout(0.5)
    layers["fc7"] = nn.Conv2d(per_layer["fc6"], per_layer["fc7"], 1)
    layers["relu7"] = nn.ReLU(inplace=True)
    layers["drop7"] = nn.Dropout(0.5)
    return SequentialTrunk(layers)
