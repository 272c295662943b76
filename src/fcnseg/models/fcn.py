"""The FCN head: score layers, skip fusion, learned upsampling and crops derived from geometry."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn

from fcnseg.models.geometry import AffineMap, crop_offset, layer_map
from fcnseg.models.layers import ChannelScale, bilinear_upsampler, check_input, crop, overlap
from fcnseg.models.trunk import Trunk, as_trunk

torch.fx.wrap("check_input")
torch.fx.wrap("crop")
torch.fx.wrap("overlap")


def upsampling_for(
    coarse: AffineMap, fine: AffineMap, cropped: str, what: str, kernel_size: int | None = None
) -> tuple[int, int]:
    """(kernel, padding) of the bilinear upsampling that takes a blob at ``coarse`` onto the grid
    ``fine`` (a skip's, or the input's) so that a crop at a whole, non-negative offset aligns them.

    The rule (with f the factor ``coarse.scale / fine.scale``): the original nets' kernel 2f
    without padding wherever that aligns (every Caffe net keeps its layers); otherwise 2f - 1,
    which moves the upsampled grid by half a position; then, where ``cropped`` is "skip" and the
    upsampled map would start before the skip, padding that drops the outputs in front (the skip
    is then cropped at 0). Where the output is cropped ("output"), the upsampled map must start at
    or before the first input pixel. A ``kernel_size`` given is taken as it is, without padding.
    """
    if kernel_size is not None:
        return kernel_size, 0
    factor = coarse.scale / fine.scale
    start = (coarse.shift - fine.shift) / fine.scale  # coarse position 0 on the fine grid
    for kernel in (int(2 * factor), int(2 * factor) - 1):
        lead = start - Fraction(kernel - 1, 2)  # where the upsampled map's first output sits
        if lead.denominator == 1:
            break
    else:
        raise ValueError(
            f"cannot align {what}: its coarse grid sits {start} positions into the fine one, and no "
            f"bilinear kernel of factor {factor} ({2 * factor} or {2 * factor - 1} wide) lands on a whole position"
        )
    if cropped == "skip":
        return kernel, int(max(0, -lead))
    if lead > 0:
        raise ValueError(
            f"cannot align {what}: the scores' first position sits {lead} pixels into the input; "
            "pad the trunk's first layer more so that the upsampled scores cover the input"
        )
    return kernel, 0


class FCN(nn.Module):
    """A fully convolutional net: a trunk, ``score_fr``, and skips fused coarse to fine.

    The head reads only the trunk's taps (:mod:`fcnseg.models.trunk`): their
    channels size the score layers, their geometry gives the crops. A plain
    ``nn.Sequential`` backbone becomes a :class:`~fcnseg.models.trunk.SequentialTrunk`.

    With ``skips=()`` this is FCN-32s; ``("pool4",)`` gives FCN-16s and
    ``("pool4", "pool3")`` FCN-8s (on ResNet: ``("layer3",)``, ``("layer3", "layer2")``).
    Each skip is scored by a 1x1 convolution (``score_pool4``), cropped to align and
    summed with the coarser scores upsampled 2x (``upscore2``, ``upscore_pool4``); the
    last upsampling (``upscore``, ``upscore16``, ``upscore8``) returns to the input's
    resolution and is cropped to exactly its height and width. Every crop offset comes
    from the layers' geometry.

    The upsamplings are bilinear, of kernel 2f for factor f (64/32, 4/2) as in the original
    nets, wherever that puts the crop on a whole pixel. Where it would fall on a half pixel
    (a trunk that keeps window centres, such as ResNet: tap i at input pixel s * i), the
    kernel is 2f - 1 (63/32, 3/2), and where a skip's crop would be negative the 2x
    upsampling is padded instead, so that it starts on the skip's first position (3/2 padded
    by 1, its far end kept by an output padding); the sum then covers what both maps hold
    (:func:`~fcnseg.models.layers.overlap`). Nothing is rounded: an alignment no such kernel
    reaches is refused (:func:`upsampling_for`).

    ``frozen_upsampling`` keeps "all" upsamplings bilinear (the original
    repository's nets), only the "final" one (the paper's text: the 2x ones
    learn), or "none".

    ``forward`` is the original net, every layer called as a module: hooks see each
    of them, and ``torch.fx`` traces it. :mod:`fcnseg.accel` runs the same net faster
    and exactly (skipping the constant input padding), beside it.

    (N, in_channels, H, W) -> (N, num_classes, H, W) for any H, W >= 1.
    """

    task = "segmentation"  # what it predicts: the fcnseg.tasks entry that trains and evaluates it

    def __init__(
        self,
        backbone: Trunk | nn.Sequential,
        num_classes: int,
        skips: Sequence[str] = (),
        skip_scales: Sequence[float] | None = None,
        final_kernel: int | None = None,
        frozen_upsampling: str = "all",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if frozen_upsampling not in ("final", "all", "none"):
            raise ValueError(f"frozen_upsampling must be final, all or none: {frozen_upsampling}")
        if skip_scales is not None and len(skip_scales) != len(skips):
            raise ValueError(f"one scale per skip needed: {skips} vs {skip_scales}")
        trunk = as_trunk(backbone)
        taps = trunk.taps
        unknown = [tap for tap in skips if tap not in taps]
        if unknown:
            raise ValueError(f"skips {unknown} are not taps of the trunk ({', '.join(taps)})")
        output = trunk.output
        self.num_classes = num_classes
        self.in_channels = trunk.in_channels
        self.skips = tuple(skips)
        self.backbone = trunk
        self.score_fr = nn.Conv2d(output.channels, num_classes, 1)
        nn.init.zeros_(self.score_fr.weight)
        nn.init.zeros_(self.score_fr.bias)

        coarse = output.geometry  # score_fr is 1x1: same positions as the trunk's output
        # (upsampling layer, skip tap, crop offset) per fusion, coarse to fine
        self.fusions: list[tuple[str, str, int]] = []
        upsample_name = "upscore2"
        for i, tap in enumerate(skips):
            tap_map = taps[tap].geometry
            factor = coarse.scale / tap_map.scale
            if factor != 2:
                raise ValueError(
                    f"skip {tap} must have half the stride of the blob above it: {tap_map.scale} is "
                    f"not {coarse.scale} / 2"
                )
            kernel, padding = upsampling_for(coarse, tap_map, "skip", f"score_{tap}")
            upsample = bilinear_upsampler(
                num_classes, 2, kernel, frozen=frozen_upsampling == "all", padding=padding
            )
            self.add_module(upsample_name, upsample)
            score = nn.Conv2d(taps[tap].channels, num_classes, 1)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            if skip_scales is not None:
                self.add_module(f"scale_{tap}", ChannelScale(score.in_channels, skip_scales[i]))
            self.add_module(f"score_{tap}", score)
            coarse = coarse.then(layer_map(upsample))
            offset = crop_offset(coarse, tap_map, what=f"score_{tap}")
            self.fusions.append((upsample_name, tap, offset))
            upsample_name = f"upscore_{tap}"

        if coarse.scale.denominator != 1:
            raise ValueError(f"the scores' stride {coarse.scale} is not a whole number of pixels")
        stride = int(coarse.scale)
        self.final_name = "upscore" if not skips else f"upscore{stride}"
        kernel, _ = upsampling_for(coarse, AffineMap(), "output", "score", final_kernel)
        final = bilinear_upsampler(num_classes, stride, kernel, frozen=frozen_upsampling != "none")
        self.add_module(self.final_name, final)
        self.output_offset = crop_offset(AffineMap(), coarse.then(layer_map(final)), what="score")

    @property
    def skip_offsets(self) -> dict[str, int]:
        """Crop offset of each skip's score map, e.g. {"pool4": 5, "pool3": 9} for VGG16."""
        return {tap: offset for _, tap, offset in self.fusions}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps, h = self.backbone.features(check_input(x, self.in_channels), self.skips)
        return self.head(taps, h, x)

    def head(self, taps: dict[str, torch.Tensor], h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The trunk's output ``h`` and its ``taps`` -> scores the size of ``like`` (the input)."""
        h = self.score_fr(h)
        for upsample_name, tap, offset in self.fusions:
            h = getattr(self, upsample_name)(h)
            skip = taps[tap]
            if hasattr(self, f"scale_{tap}"):
                skip = getattr(self, f"scale_{tap}")(skip)
            skip = getattr(self, f"score_{tap}")(skip)
            h = overlap(h, skip, offset)
            h = h + crop(skip, offset, h)
        return crop(getattr(self, self.final_name)(h), self.output_offset, like)

    def freeze_backbone(self) -> FCN:
        """Train only the score layers (the paper's FCN-32s-fixed)."""
        self.backbone.requires_grad_(False)
        return self
