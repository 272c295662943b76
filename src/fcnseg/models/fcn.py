"""The FCN head: score layers, skip fusion, learned upsampling and crops derived from geometry."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fcnseg.models.geometry import AffineMap, crop_offset, layer_map
from fcnseg.models.layers import ChannelScale, bilinear_upsampler, check_input, crop
from fcnseg.models.trunk import Trunk, as_trunk

torch.fx.wrap("check_input")
torch.fx.wrap("crop")


class FCN(nn.Module):
    """A fully convolutional net: a trunk, ``score_fr``, and skips fused coarse to fine.

    The head reads only the trunk's taps (:mod:`fcnseg.models.trunk`): their
    channels size the score layers, their geometry gives the crops. A plain
    ``nn.Sequential`` backbone becomes a :class:`~fcnseg.models.trunk.SequentialTrunk`.

    With ``skips=()`` this is FCN-32s; ``("pool4",)`` gives FCN-16s and
    ``("pool4", "pool3")`` FCN-8s. Each skip is upsampled 2x (``upscore2``,
    ``upscore_pool4``), scored by a 1x1 convolution (``score_pool4``), cropped to
    align and summed; the last upsampling (``upscore``, ``upscore16``,
    ``upscore8``) returns to the input's resolution and is cropped to exactly its
    height and width. Every crop offset comes from the layers' geometry.
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
                raise ValueError(f"skip {tap} must have half the stride of the blob above it")
            upsample = bilinear_upsampler(num_classes, 2, frozen=frozen_upsampling == "all")
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

        stride = int(coarse.scale)
        self.final_name = "upscore" if not skips else f"upscore{stride}"
        final = bilinear_upsampler(num_classes, stride, final_kernel, frozen=frozen_upsampling != "none")
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
            h = h + crop(getattr(self, f"score_{tap}")(skip), offset, h)
        return crop(getattr(self, self.final_name)(h), self.output_offset, like)

    def freeze_backbone(self) -> FCN:
        """Train only the score layers (the paper's FCN-32s-fixed)."""
        self.backbone.requires_grad_(False)
        return self
