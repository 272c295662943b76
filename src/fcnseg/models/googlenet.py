"""GoogLeNet as FCN-GoogLeNet uses it: Caffe's bvlc_googlenet up to inception_5b, padded at the input.

The paper's third trunk (table 1): the final average pooling, dropout and
classifier are dropped and ``score_fr`` reads the last inception output (1024
channels, stride 32).

Names: Caffe's layer names have a ``/`` (``conv1/7x7_s2``, ``inception_3a/3x3_reduce``);
here the part before the slash is a child of the trunk and the part after it a
child of that, so the module path is the Caffe name with ``.`` for ``/``
(``backbone.inception_3a.3x3_reduce.weight``), and each stage (``conv1``,
``pool1``, ``conv2``, ``pool2``, ``inception_3a`` ... ``inception_5b``) is a tap.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fcnseg.models.geometry import AffineMap
from fcnseg.models.trunk import SequentialTrunk

INCEPTIONS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
BRANCHES = ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool_proj")
"""The convolutions of an inception module, in the order of their widths."""

GOOGLENET_CONVS = (
    "conv1/7x7_s2",
    "conv2/3x3_reduce",
    "conv2/3x3",
    *(f"inception_{stage}/{branch}" for stage in INCEPTIONS for branch in BRANCHES),
)
"""Caffe names of the 57 convolutions, in the order of their widths."""

GOOGLENET_WIDTHS = (
    64,
    64,
    192,
    *(64, 96, 128, 16, 32, 32),  # 3a: 256 out
    *(128, 128, 192, 32, 96, 64),  # 3b: 480
    *(192, 96, 208, 16, 48, 64),  # 4a: 512
    *(160, 112, 224, 24, 64, 64),  # 4b: 512
    *(128, 128, 256, 24, 64, 64),  # 4c: 512
    *(112, 144, 288, 32, 64, 64),  # 4d: 528
    *(256, 160, 320, 32, 128, 128),  # 4e: 832
    *(256, 160, 320, 32, 128, 128),  # 5a: 832
    *(384, 192, 384, 48, 128, 128),  # 5b: 1024
)
"""Output channels of the convolutions of :data:`GOOGLENET_CONVS` (Caffe's bvlc_googlenet)."""

GOOGLENET_PADDING = 26
"""conv1/7x7_s2's padding in FCN-GoogLeNet (3 in the classifier): the least that lets a 1x1 image
reach the output.

A 1x1 image padded by P gives conv1 (7x7, stride 2) (2P - 6) // 2 + 1 = P - 2
positions. Each 3x3/2 ceil-mode pooling needs 3 inputs for 1 output and 2m inputs for
m >= 2, so one position after pool4 needs 3, 6, 12 and 24 positions before pool4,
pool3, pool2 and pool1: P - 2 >= 24. Larger images then always reach it too, and the
upsampled scores cover the crop (tests check both, and that P = 25 fails).
"""


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


def _relu() -> nn.ReLU:
    return nn.ReLU(inplace=True)


class Inception(nn.Module):
    """Four branches concatenated: 1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 max pooling then 1x1.

    (N, in_channels, H, W) -> (N, out_channels, H, W). Every branch keeps the size
    and the centres (3x3 padded by 1, 5x5 by 2), so the module's map is the
    identity and its window is the 5x5 branch's: it states both, as
    :mod:`fcnseg.models.geometry` asks of a composite module.
    """

    geometry = AffineMap()
    span = 5

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        n1, r3, n3, r5, n5, proj = widths
        self.in_channels = in_channels
        self.out_channels = n1 + n3 + n5 + proj
        layers = OrderedDict(
            [
                ("1x1", nn.Conv2d(in_channels, n1, 1)),
                ("relu_1x1", _relu()),
                ("3x3_reduce", nn.Conv2d(in_channels, r3, 1)),
                ("relu_3x3_reduce", _relu()),
                ("3x3", nn.Conv2d(r3, n3, 3, padding=1)),
                ("relu_3x3", _relu()),
                ("5x5_reduce", nn.Conv2d(in_channels, r5, 1)),
                ("relu_5x5_reduce", _relu()),
                ("5x5", nn.Conv2d(r5, n5, 5, padding=2)),
                ("relu_5x5", _relu()),
                ("pool", nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)),
                ("pool_proj", nn.Conv2d(in_channels, proj, 1)),
                ("relu_pool_proj", _relu()),
            ]
        )
        for name, layer in layers.items():
            self.add_module(name, layer)

    def _chain(self, x: torch.Tensor, *names: str) -> torch.Tensor:
        for name in names:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self._chain(x, "1x1", "relu_1x1"),
                self._chain(x, "3x3_reduce", "relu_3x3_reduce", "3x3", "relu_3x3"),
                self._chain(x, "5x5_reduce", "relu_5x5_reduce", "5x5", "relu_5x5"),
                self._chain(x, "pool", "pool_proj", "relu_pool_proj"),
            ],
            1,
        )


def googlenet_backbone(
    widths: tuple[int, ...] = GOOGLENET_WIDTHS, in_channels: int = 3, input_padding: int = GOOGLENET_PADDING
) -> SequentialTrunk:
    """conv1 ... inception_5b of bvlc_googlenet, named as in Caffe (see the module's docstring).

    ``widths``: the 57 convolutions' output channels (:data:`GOOGLENET_WIDTHS`),
    narrower for small test nets. Poolings round up, as Caffe's do.
    """
    if len(widths) != len(GOOGLENET_CONVS):
        raise ValueError(
            f"GoogLeNet needs {len(GOOGLENET_CONVS)} widths (one per convolution), got {len(widths)}"
        )
    c1, c2r, c2 = widths[:3]

    def pool() -> nn.MaxPool2d:
        return nn.MaxPool2d(3, stride=2, ceil_mode=True)

    stages: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Sequential(
            OrderedDict([("7x7_s2", nn.Conv2d(in_channels, c1, 7, 2, input_padding)), ("relu_7x7", _relu())])
        ),
        pool1=nn.Sequential(OrderedDict([("3x3_s2", pool()), ("norm1", _lrn())])),
        conv2=nn.Sequential(
            OrderedDict(
                [
                    ("3x3_reduce", nn.Conv2d(c1, c2r, 1)),
                    ("relu_3x3_reduce", _relu()),
                    ("3x3", nn.Conv2d(c2r, c2, 3, padding=1)),
                    ("relu_3x3", _relu()),
                    ("norm2", _lrn()),
                ]
            )
        ),
        pool2=nn.Sequential(OrderedDict([("3x3_s2", pool())])),
    )
    channels = c2
    for i, stage in enumerate(INCEPTIONS):
        if stage in ("4a", "5a"):
            stages[f"pool{int(stage[0]) - 1}"] = nn.Sequential(OrderedDict([("3x3_s2", pool())]))
        block = Inception(channels, tuple(widths[3 + 6 * i : 9 + 6 * i]))
        stages[f"inception_{stage}"] = block
        channels = block.out_channels
    return SequentialTrunk(stages)
