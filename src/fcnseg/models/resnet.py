"""ResNet-18/34/50/101 as trunks, laid out as torchvision's: its ImageNet files load as they are.

The trunk is the classifier without its average pooling and ``fc``: ``conv1``, ``bn1``,
``relu``, ``maxpool``, then ``layer1`` ... ``layer4``, each an ``nn.Sequential`` of residual
blocks whose parameters carry torchvision's names (``layer1.0.conv1.weight``,
``layer2.0.downsample.0.weight``, ``.1.running_mean`` ...). Each of those eight children is
a tap. A block cannot be read off its layers (two branches summed), so it states its
``geometry`` and ``span`` (:mod:`fcnseg.models.geometry`): every convolution is padded by
``dilation * (kernel - 1) / 2``, which keeps window centres, so a block of stride s maps
``x_in = s * x_out`` and the whole trunk places position i of a tap of stride s at input
pixel ``s * i``. Bottleneck blocks stride in their 3x3 convolution (torchvision's
"ResNet v1.5").

``output_stride`` 16 or 8 replaces the stride of layer4 (and layer3) by dilation, as
torchvision's ``replace_stride_with_dilation`` does: the first block of a dilated layer keeps
the previous dilation, the others take the new one. BatchNorm is per position in eval mode,
so the geometry holds for inference; ``frozen_batchnorm`` keeps it in eval mode while the net
trains (statistics fixed: the usual choice when fine-tuning at batch size 1, as the paper's
recipes train).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from fcnseg.models.geometry import AffineMap
from fcnseg.models.trunk import SequentialTrunk

__all__ = [
    "RESNET_DEPTHS",
    "RESNET_WIDTHS",
    "BasicBlock",
    "Bottleneck",
    "ResNetTrunk",
    "resnet_trunk",
]

RESNET_WIDTHS = (64, 128, 256, 512)
"""Planes of layer1 .. layer4 (the stem has layer1's); a bottleneck block outputs 4 times its planes."""


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The shortcut's 1x1 projection and its BatchNorm, where the block changes shape."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), _norm(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34): (N, in, H, W) -> (N, planes, H/s, W/s).

    Both convolutions are padded by their dilation, so centres stay put: ``geometry`` is
    (stride, 0); one output sees ``1 + 2d + 2d * stride`` input positions.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        d = dilation
        self.in_channels, self.out_channels = in_channels, planes
        self.geometry = AffineMap(stride, 0)
        self.span = 1 + 2 * d + 2 * d * stride
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=d, dilation=d, bias=False)
        self.bn1 = _norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=d, dilation=d, bias=False)
        self.bn2 = _norm(planes)
        self.downsample = _downsample(in_channels, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, dilated), 1x1 expand, and a shortcut (ResNet-50/101):
    (N, in, H, W) -> (N, 4 * planes, H/s, W/s). Only the 3x3 convolution has a window:
    ``geometry`` is (stride, 0) and one output sees ``2d + 1`` input positions."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        d, out = dilation, planes * self.expansion
        self.in_channels, self.out_channels = in_channels, out
        self.geometry = AffineMap(stride, 0)
        self.span = 2 * d + 1
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = _norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=d, dilation=d, bias=False)
        self.bn2 = _norm(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


@dataclass(frozen=True)
class Depth:
    """A ResNet's block kind and the number of blocks of layer1 .. layer4."""

    block: type[BasicBlock] | type[Bottleneck]
    blocks: tuple[int, int, int, int]


RESNET_DEPTHS = {
    18: Depth(BasicBlock, (2, 2, 2, 2)),
    34: Depth(BasicBlock, (3, 4, 6, 3)),
    50: Depth(Bottleneck, (3, 4, 6, 3)),
    101: Depth(Bottleneck, (3, 4, 23, 3)),
}
"""torchvision's ResNets by depth."""

_DILATED = {32: (False, False), 16: (False, True), 8: (True, True)}
"""Whether layer3 and layer4 trade their stride for dilation, by output stride."""


class ResNetTrunk(SequentialTrunk):
    """A ResNet as a trunk: ``conv1`` ... ``layer4``, each a tap (see the module's docstring).

    Its state dict is torchvision's ResNet's without ``fc``. With ``frozen_batchnorm`` its
    BatchNorm layers stay in eval mode whatever mode the net is put in.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], depth: int, frozen_batchnorm: bool = False):
        super().__init__(layers)
        self.depth = depth
        self.frozen_batchnorm = frozen_batchnorm

    def train(self, mode: bool = True) -> ResNetTrunk:
        super().train(mode)
        if self.frozen_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def extra_repr(self) -> str:
        return f"depth={self.depth}, frozen_batchnorm={self.frozen_batchnorm}"


def resnet_trunk(
    depth: int,
    widths: tuple[int, ...] | None = None,
    in_channels: int = 3,
    output_stride: int = 32,
    frozen_batchnorm: bool = False,
) -> ResNetTrunk:
    """ResNet-``depth`` (18, 34, 50 or 101) as torchvision builds it, up to layer4.

    ``widths``: planes of layer1 .. layer4 (:data:`RESNET_WIDTHS`), narrower for small nets.
    ``output_stride``: 32, or 16 / 8 with layer4 / layer3 and layer4 dilated. Weights start as
    torchvision's do: He (fan out) for convolutions, BatchNorm at weight 1 and bias 0.
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
    if output_stride not in _DILATED:
        raise ValueError(f"output_stride must be 32, 16 or 8, got {output_stride}")
    widths = tuple(widths or RESNET_WIDTHS)
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"ResNet needs 4 widths (planes of layer1..layer4), got {widths}")
    kind = RESNET_DEPTHS[depth]
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(in_channels, widths[0], 7, 2, padding=3, bias=False),
        bn1=_norm(widths[0]),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(3, 2, padding=1),
    )
    channels, dilation = widths[0], 1
    dilate = (False, False, *_DILATED[output_stride])
    for i, (planes, count, dilated) in enumerate(zip(widths, kind.blocks, dilate, strict=True)):
        stride = 1 if i == 0 else 2
        first_dilation = dilation
        if dilated:
            dilation, stride = dilation * stride, 1
        blocks = [kind.block(channels, planes, stride, first_dilation)]
        channels = planes * kind.block.expansion
        blocks += [kind.block(channels, planes, 1, dilation) for _ in range(count - 1)]
        layers[f"layer{i + 1}"] = nn.Sequential(*blocks)
    trunk = ResNetTrunk(layers, depth, frozen_batchnorm)
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return trunk
