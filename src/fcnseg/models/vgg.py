"""VGG16 as FCN uses it: padded by 100 at the input, fc6/fc7 already convolutions."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from fcnseg.models.trunk import SequentialTrunk

VGG16_WIDTHS = (64, 128, 256, 512, 512, 4096)
"""Output channels of conv1_x .. conv5_x, then of fc6 and fc7."""

_CONVS_PER_STAGE = (2, 2, 3, 3, 3)
VGG16_CONVS = tuple(
    f"conv{stage}_{i}" for stage, n in enumerate(_CONVS_PER_STAGE, start=1) for i in range(1, n + 1)
)
"""The 13 convolutions in order; the first of each stage sets its width."""


def vgg16_backbone(
    widths: tuple[int, ...] = VGG16_WIDTHS, in_channels: int = 3, input_padding: int = 100
) -> SequentialTrunk:
    """conv1_1 ... pool5, fc6 (7x7), fc7 (1x1) with ReLU and dropout, named as in Caffe; each layer a tap.

    ``input_padding`` on conv1_1 (100 in the original nets) makes even a 1x1 image
    reach fc6 with a 7x7 window; the final crop removes what it adds.
    """
    if len(widths) != 6:
        raise ValueError(f"VGG16 needs 6 widths (conv1..conv5, fc), got {widths}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for stage, (width, repeats) in enumerate(zip(widths[:5], _CONVS_PER_STAGE, strict=True), start=1):
        for i in range(1, repeats + 1):
            pad = input_padding if (stage, i) == (1, 1) else 1
            layers[f"conv{stage}_{i}"] = nn.Conv2d(channels, width, 3, padding=pad)
            layers[f"relu{stage}_{i}"] = nn.ReLU(inplace=True)
            channels = width
        layers[f"pool{stage}"] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
    layers["fc6"] = nn.Conv2d(channels, widths[5], 7)
    layers["relu6"] = nn.ReLU(inplace=True)
    layers["drop6"] = nn.Dropout(0.5)
    layers["fc7"] = nn.Conv2d(widths[5], widths[5], 1)
    layers["relu7"] = nn.ReLU(inplace=True)
    layers["drop7"] = nn.Dropout(0.5)
    return SequentialTrunk(layers)
