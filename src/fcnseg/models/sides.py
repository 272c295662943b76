"""Nets that predict from side outputs of every stage of a VGG16 trunk: HED (edges) and FSDS (skeletons).

Both read conv1_2 ... conv5_3 through 1x1 score layers, upsample each by a fixed bilinear
transposed convolution, crop it to the input at an offset derived from the trunk's geometry,
and fuse the side maps by learned 1x1 convolutions. Layers carry the reference prototxts' names
(``score-dsn3``, ``upsample_4``, ``new-score-weighting``), so a converted model reads like them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fcnseg.models.fcn import upsampling_for
from fcnseg.models.geometry import AffineMap, crop_offset, layer_map
from fcnseg.models.layers import bilinear_upsampler, check_input, crop
from fcnseg.models.trunk import SequentialTrunk, Tap, Trunk
from fcnseg.models.vgg import VGG16_CONVS, VGG16_WIDTHS, vgg16_backbone

torch.fx.wrap("check_input")
torch.fx.wrap("crop")

__all__ = ["FSDS", "HED", "side_taps", "vgg16_side_trunk"]

HED_INPUT_PADDING = 35
"""conv1_1's padding in HED and FSDS: enough for a 1x1 image to reach conv5_3 (in place of FCN's 100)."""

SIDE_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
"""The last convolution of each VGG16 stage, which the side outputs read (after its ReLU)."""


def side_taps(trunk: Trunk, names: Sequence[str]) -> list[Tap]:
    """The trunk's taps that side outputs read, by the name of the convolution that makes them: each
    is read after the convolution's ReLU (Caffe's in-place ReLU overwrites the convolution's blob)."""
    taps = []
    for name in names:
        relu = "relu" + name.removeprefix("conv")
        taps.append(trunk.tap(relu if relu in trunk.taps else name))
    return taps


def vgg16_side_trunk(widths: Sequence[int] | None = None, in_channels: int = 3) -> SequentialTrunk:
    """VGG16 conv1_1 ... relu5_3 with conv1_1 padded by 35: HED's trunk, without pool5 and the fc layers.

    ``widths``: 5 (a stage each; a sixth, fc, is ignored) or 13 (a convolution each, conv1_1 .. conv5_3).
    """
    widths = tuple(widths or VGG16_WIDTHS)
    if len(widths) in (5, 6):
        convs = widths[:5] + (1,)
    elif len(widths) == len(VGG16_CONVS):
        convs = widths + (1, 1)
    else:
        raise ValueError(
            f"HED and FSDS need 5 widths (conv1..conv5) or 13 (conv1_1 .. conv5_3), got {widths}"
        )
    full = vgg16_backbone(convs, in_channels=in_channels, input_padding=HED_INPUT_PADDING)
    return full[: list(dict(full.named_children())).index("relu5_3") + 1]


def _given_trunk(trunk: Trunk | None, taps: Sequence[str], count: int, widths) -> Trunk | None:
    """A trunk given in place of VGG16's (its ``taps`` read, ``count`` of them), checked; None if none."""
    if len(taps) != count:
        raise ValueError(f"the side outputs read {count} taps, got {len(taps)}: {list(taps)}")
    if trunk is not None and widths is not None:
        raise ValueError("a trunk given replaces VGG16's: widths do not apply")
    return trunk


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 side score layer as the reference prototxts leave it: they give it no filler, so Caffe's
    default, a constant 0, fills its weights and bias (the paper's text is silent on it)."""
    layer = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


Mults = tuple[tuple[float, float], tuple[float, float]]
"""(lr_mult, decay_mult) of a layer's weight, then of its bias: Caffe's ``param`` entries."""
_TRUNK_MULTS: Mults = ((1, 1), (2, 0))
_CONV5_MULTS: Mults = ((100, 1), (200, 0))  # the reference prototxts' conv5 multipliers
_SIDE_MULTS: Mults = ((0.01, 1), (0.02, 0))


class _SideOutputNet(nn.Module):
    """The trunk, a 1x1 score layer per tap with ``channels`` outputs, and the upsampling and crops that
    bring each to the input's size; ``forward`` fuses the side maps (:meth:`fuse`, each net's own)."""

    def __init__(
        self,
        trunk: Trunk,
        layers: Sequence[str],
        channels: Sequence[int],
        score_name: str,
        upsample_name: str,
    ):
        super().__init__()
        self.backbone = trunk
        self.in_channels = trunk.in_channels
        self.taps = side_taps(trunk, layers)
        self.sides: list[tuple[str, str | None, int]] = []  # score layer, upsampler, crop offset
        self.lr_mults: dict[str, Mults] = {
            name: _CONV5_MULTS if name.startswith("conv5") else _TRUNK_MULTS
            for name, m in trunk.named_children()
            if isinstance(m, nn.Conv2d)
        }
        for layer, tap, width in zip(layers, self.taps, channels, strict=True):
            score = score_name.format(stage=layer.removeprefix("conv").split("_")[0])
            self.add_module(score, _zero_conv(tap.channels, width))
            self.lr_mults[score] = _SIDE_MULTS
            geometry, upsample = tap.geometry, None
            factor = tap.geometry.scale
            if factor != 1:
                if factor.denominator != 1:
                    raise ValueError(f"{tap.name} has stride {factor}: not an integer upsampling factor")
                upsample = upsample_name.format(factor=int(factor))
                # Caffe's Deconvolution with lr 0 and the bilinear weights its solver puts in; its kernel
                # as the FCN head chooses it (2f where that aligns, as in the prototxts)
                kernel, _ = upsampling_for(geometry, AffineMap(), "output", f"side output {score}")
                self.add_module(
                    upsample, bilinear_upsampler(width, int(factor), kernel, frozen=True, bias=True)
                )
                geometry = geometry.then(layer_map(getattr(self, upsample)))
            self.sides.append((score, upsample, crop_offset(AffineMap(), geometry, f"side output {score}")))

    @property
    def crop_offsets(self) -> list[int]:
        """Where each side map is cut out of its upsampled blob: derived from the geometry."""
        return [offset for _, _, offset in self.sides]

    @property
    def tap_names(self) -> list[str]:
        """The trunk's blobs that the side layers read."""
        return [tap.name for tap in self.taps]

    def side_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The side maps at the input's size, in tap order."""
        blobs, _ = self.backbone.features(check_input(x, self.in_channels), self.tap_names)
        return self.side_maps(blobs, x)

    def head(self, taps: dict[str, torch.Tensor], h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The trunk's ``taps`` -> the net's output the size of ``like`` (the input)."""
        return self.fuse(self.side_maps(taps, like))

    def side_maps(self, blobs: dict[str, torch.Tensor], like: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's tapped ``blobs`` -> the side maps, each scored, upsampled and cropped to the size
        of ``like`` (the input)."""
        maps = []
        for tap, (score, upsample, offset) in zip(self.taps, self.sides, strict=True):
            h = getattr(self, score)(blobs[tap.name])
            if upsample is not None:
                h = getattr(self, upsample)(h)
            maps.append(crop(h, offset, like))
        return maps

    def fuse(self, sides: list[torch.Tensor]) -> torch.Tensor:
        """The side maps -> the net's output: the sides and their fusion, concatenated."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps, h = self.backbone.features(check_input(x, self.in_channels), self.tap_names)
        return self.head(taps, h, x)


class HED(_SideOutputNet):
    """Holistically-nested edge detection (Xie and Tu, 2015), as ``examples/hed/train_val.prototxt``.

    (N, 3, H, W) -> logits (N, 6, H, W): the five side outputs (conv1_2 ... conv5_3), then their
    fusion by ``new-score-weighting`` (a 1x1 convolution over the five, starting at 0.2 each).
    """

    task = "edges"
    num_classes = 1
    outputs = 6

    def __init__(
        self,
        widths: Sequence[int] | None = None,
        in_channels: int = 3,
        trunk: Trunk | None = None,
        taps: Sequence[str] = SIDE_LAYERS,
    ):
        super().__init__(
            _given_trunk(trunk, taps, 5, widths) or vgg16_side_trunk(widths, in_channels),
            taps,
            (1,) * 5,
            "score-dsn{stage}",
            "upsample_{factor}",
        )
        fuse = nn.Conv2d(5, 1, 1)
        nn.init.constant_(fuse.weight, 0.2)
        nn.init.zeros_(fuse.bias)
        self.add_module("new-score-weighting", fuse)
        self.lr_mults["new-score-weighting"] = ((0.001, 1), (0.002, 0))

    def fuse(self, sides: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.cat(sides, dim=1)
        return torch.cat([stacked, getattr(self, "new-score-weighting")(stacked)], dim=1)

    @staticmethod
    def edge_map(logits: torch.Tensor) -> torch.Tensor:
        """(N, H, W) edge probabilities: the fused output's sigmoid."""
        return torch.sigmoid(logits[:, -1])


FSDS_SIDE_CHANNELS = (2, 3, 4, 5)
"""Outputs of the side layers on conv2_2 ... conv5_3: background and the scales each stage can see."""
FSDS_FUSE_INIT = (0.25, 0.25, 0.333, 0.5, 1.0)
"""Initial weights of ``cat0-score`` ... ``cat4-score``, each over the sides that see that class."""


class FSDS(_SideOutputNet):
    """Fusing scale-associated deep side outputs (Shen et al., 2016), as DeepSkeleton's
    ``examples/DeepSkeleton/train_val.prototxt``.

    (N, 3, H, W) -> logits (N, 19, H, W): the four sides (2, 3, 4 and 5 channels: background, then
    scale classes 1 .. k-1 for the side on stage k), then the fused 5 classes, where the score of
    class c is a 1x1 convolution (``cat<c>-score``) over class c of every side that has it.
    """

    task = "skeleton"
    num_classes = 5
    outputs = sum(FSDS_SIDE_CHANNELS) + 5

    def __init__(
        self,
        widths: Sequence[int] | None = None,
        in_channels: int = 3,
        trunk: Trunk | None = None,
        taps: Sequence[str] = SIDE_LAYERS[1:],
    ):
        super().__init__(
            _given_trunk(trunk, taps, 4, widths) or vgg16_side_trunk(widths, in_channels),
            taps,
            FSDS_SIDE_CHANNELS,
            "score-dsn-{stage}",
            "upsample-{factor}",
        )
        for c, init in enumerate(FSDS_FUSE_INIT):
            sources = sum(width > c for width in FSDS_SIDE_CHANNELS)
            fuse = nn.Conv2d(sources, 1, 1)
            nn.init.constant_(fuse.weight, init)
            nn.init.zeros_(fuse.bias)
            self.add_module(f"cat{c}-score", fuse)
            self.lr_mults[f"cat{c}-score"] = ((0.01 if c == 2 else 0.05, 1), (0.002, 0))

    def fuse(self, sides: list[torch.Tensor]) -> torch.Tensor:
        fused = [
            getattr(self, f"cat{c}-score")(
                torch.cat(
                    [
                        s[:, c : c + 1]
                        for s, width in zip(sides, FSDS_SIDE_CHANNELS, strict=True)
                        if width > c
                    ],
                    dim=1,
                )
            )
            for c in range(len(FSDS_FUSE_INIT))
        ]
        return torch.cat([*sides, *fused], dim=1)

    @staticmethod
    def edge_map(logits: torch.Tensor) -> torch.Tensor:
        """(N, H, W) skeleton probabilities: 1 - P(background) of the fused output."""
        return 1 - torch.softmax(logits[:, -len(FSDS_FUSE_INIT) :], dim=1)[:, 0]
