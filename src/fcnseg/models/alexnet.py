"""AlexNet as FCN-AlexNet uses it: Caffe's grouped convolutions and LRN, fc6 a 6x6 convolution."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from fcnseg.models.trunk import SequentialTrunk

ALEXNET_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
ALEXNET_WIDTHS = (96, 256, 384, 384, 256, 4096)
"""Output channels of conv1 .. conv5, then of fc6 and fc7 (Caffe's bvlc_alexnet)."""


def alexnet_backbone(
    widths: tuple[int, ...] = ALEXNET_WIDTHS,
    in_channels: int = 3,
    input_padding: int = 100,
    groups: int = 2,
    lrn: bool = True,
) -> SequentialTrunk:
    """conv1 ... pool5, fc6 (6x6), fc7 (1x1), named as in Caffe; each layer a tap.

    ``widths``: conv1 .. conv5 and fc6 (fc7 as wide), or a seventh for fc7. ``groups=2`` and ``lrn=True`` are the original two-GPU AlexNet (Caffe's
    bvlc_alexnet); ``groups=1, lrn=False`` is the single-tower layout of
    torchvision's AlexNet. LRN follows Caffe: x / (k + alpha/n * sum x^2)^beta
    over 5 neighbouring channels, which is exactly ``nn.LocalResponseNorm``.
    """
    if len(widths) not in (6, 7):
        raise ValueError(
            f"AlexNet needs 6 widths (conv1..conv5, fc) or 7 (conv1..conv5, fc6, fc7), got {widths}"
        )
    c1, c2, c3, c4, c5, fc, *rest = widths
    fc7 = rest[0] if rest else fc

    def norm() -> nn.Module:
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if lrn else nn.Identity()

    layers = OrderedDict(
        conv1=nn.Conv2d(in_channels, c1, 11, stride=4, padding=input_padding),
        relu1=nn.ReLU(inplace=True),
        pool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        norm1=norm(),
        conv2=nn.Conv2d(c1, c2, 5, padding=2, groups=groups),
        relu2=nn.ReLU(inplace=True),
        pool2=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        norm2=norm(),
        conv3=nn.Conv2d(c2, c3, 3, padding=1),
        relu3=nn.ReLU(inplace=True),
        conv4=nn.Conv2d(c3, c4, 3, padding=1, groups=groups),
        relu4=nn.ReLU(inplace=True),
        conv5=nn.Conv2d(c4, c5, 3, padding=1, groups=groups),
        relu5=nn.ReLU(inplace=True),
        pool5=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        fc6=nn.Conv2d(c5, fc, 6),
        relu6=nn.ReLU(inplace=True),
        drop6=nn.Dropout(0.5),
        fc7=nn.Conv2d(fc, fc7, 1),
        relu7=nn.ReLU(inplace=True),
        drop7=nn.Dropout(0.5),
    )
    return SequentialTrunk(layers)
