"""Large images: activation-memory estimates and tiled inference with blended, stride-aligned tiles.

An FCN's output near a border depends on the zero padding there, so a tile's
border pixels differ from the whole-image result. Tiles therefore start on
multiples of the net's output stride (so that every tile sees the same pooling
grid as the whole image) and overlap by a little more than twice the context a
score needs; their scores are blended with weights that are zero within that
context of an inner tile border and ramp linearly to one beyond it. Every pixel
then comes only from tiles that saw all of its context, and the blended scores
match the whole-image scores to float rounding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fcnseg.models.dense import output_stride as stride_of
from fcnseg.models.fcn import FCN
from fcnseg.models.fusion import LateFusionFCN, streams_of

BYTES_PER_VALUE = 4
"""Activations are float32."""

BACKEND_FACTOR = 2.0
"""Measured peak / derived peak: oneDNN reorders a convolution's input and output into
blocked layouts, so a layer briefly holds about two copies of each. On CPU a full-width
VGG16 FCN peaked at 780-980 bytes per padded pixel (512 and 1024 px inputs) against 512
derived from conv1_2's input and output; see benchmarks/RESULTS.md."""

DEFAULT_MEMORY_FRACTION = 0.5
"""Share of the memory available now that inference may use by default."""


class MemoryBudgetError(ValueError):
    """A memory budget too small for even one tile: with the default budget, the machine has too
    little memory free now (a server answers that it is busy, not that the image is wrong)."""


def activation_bytes(model: FCN | LateFusionFCN, height: int, width: int, batch: int = 1) -> int:
    """Estimated peak activation memory of one forward pass on (batch, C, height, width).

    Walks the trunk's taps with their sizes (the input padding included) and takes
    the largest input + output pair of any step, scaled by ``BACKEND_FACTOR``; a
    step that changes neither the blob's shape nor its receptive field (ReLU,
    dropout, LRN) is taken as computed in place. Adds the class-score maps of the
    head at the final upsampled size (scores, their crop and the softmax). Weights
    are not counted. A late fusion's streams are summed.
    """
    return sum(_stream_bytes(stream, height, width, batch) for stream in streams_of(model))


def _stream_bytes(model: FCN, height: int, width: int, batch: int) -> int:
    trunk = model.backbone
    sizes = trunk.blob_sizes(height, width)
    before, field = (model.in_channels, height, width), 1
    peak = math.prod(before)
    for name, tap in trunk.taps.items():
        shape = (tap.channels, *sizes[name])
        if (shape, tap.field) != (before, field):
            peak = max(peak, math.prod(before) + math.prod(shape))
        before, field = shape, tap.field
    stride = stride_of(model)
    up_h, up_w = (before[1] + 1) * stride, (before[2] + 1) * stride
    head = 3 * model.num_classes * up_h * up_w
    return int(batch * BYTES_PER_VALUE * (BACKEND_FACTOR * peak + head))


def receptive_field(model: FCN | LateFusionFCN) -> int:
    """Side of the square of input pixels that one coarse score sees (404 for VGG16)."""
    return max(stream.backbone.output.field for stream in streams_of(model))


def output_stride(model: FCN | LateFusionFCN) -> int:
    """Input pixels between coarse scores (32 for VGG16): tiles start on multiples of it."""
    return math.lcm(*(stride_of(stream) for stream in streams_of(model)))


def available_memory(device: torch.device) -> int:
    """Bytes free now on ``device``: the allocator's count for CUDA and XPU, else MemAvailable of
    /proc/meminfo (the CPU's memory, which MPS shares)."""
    if device.type in ("cuda", "xpu"):
        return int(getattr(torch, device.type).mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_max_memory(device: torch.device) -> int:
    """The default inference budget: ``DEFAULT_MEMORY_FRACTION`` of what is available now."""
    return int(DEFAULT_MEMORY_FRACTION * available_memory(device))


def parse_memory(text: str) -> int:
    """'512M', '4G', '4GiB', '1.5g' or a plain byte count -> bytes (binary units)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1] if value and value[-1] in "KMGT" else ""
    try:
        amount = float(value[: len(value) - len(unit)])
    except ValueError:
        raise ValueError(f"cannot read memory size {text!r}; write e.g. 512M or 4G") from None
    if amount <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(amount * units[unit])


def context_margin(model: FCN | LateFusionFCN) -> int:
    """Pixels a score needs on each side to be unaffected by a tile border, rounded up to the stride.

    Half the receptive field, plus two strides for the upsampling kernels that
    spread each coarse score over its neighbours (288 for VGG16, 256 for AlexNet).
    """
    stride = output_stride(model)
    return stride * math.ceil((receptive_field(model) / 2 + 2 * stride) / stride)


@dataclass(frozen=True)
class TilePlan:
    """Square tiles of side ``tile`` every ``step`` pixels (multiples of the net's stride).

    Near an inner tile border, ``margin`` pixels get weight zero; the weight then
    rises linearly over the rest of the overlap, which must exceed ``2 * margin``
    so that every pixel has a tile that trusts it.
    """

    tile: int
    step: int
    margin: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.step <= self.tile or self.overlap <= 2 * self.margin:
            raise ValueError(f"bad tiling {self}: need 0 < step <= tile and overlap > 2 * margin")

    @property
    def overlap(self) -> int:
        return self.tile - self.step


def plan_tiles(model: FCN | LateFusionFCN, budget: int) -> TilePlan:
    """The largest stride-aligned square tile whose forward pass fits ``budget`` bytes.

    Tiles overlap by ``2 * context_margin + stride`` (608 pixels for VGG16).
    """
    stride, margin = output_stride(model), context_margin(model)
    overlap = 2 * margin + stride
    tile = overlap + stride
    if activation_bytes(model, tile, tile) > budget:
        raise MemoryBudgetError(
            f"memory budget {budget / 2**20:.0f} MiB is too small for even one {tile}x{tile} tile "
            f"(needs about {activation_bytes(model, tile, tile) / 2**20:.0f} MiB); raise max_memory"
        )
    while activation_bytes(model, tile + stride, tile + stride) <= budget:
        tile += stride
    return TilePlan(tile, tile - overlap, margin)


def tile_spans(length: int, plan: TilePlan) -> list[tuple[int, int]]:
    """[start, end) of the tiles along an axis: starts every ``step``, the last one clipped."""
    spans = []
    start = 0
    while True:
        end = min(start + plan.tile, length)
        spans.append((start, end))
        if end == length:
            return spans
        start += plan.step


def ramp(length: int, plan: TilePlan, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """(length,) blending weights of a tile along one axis.

    At an inner border (``ramp_start``/``ramp_end``) the weight is 0 for the
    first ``plan.margin`` pixels, then rises linearly to 1 across the rest of the
    overlap; at the image's own borders it stays 1.
    """
    distance = torch.arange(length, dtype=torch.float32)
    rise = plan.overlap - 2 * plan.margin
    weights = torch.ones(length)
    if ramp_start:
        weights = torch.minimum(weights, ((distance - plan.margin + 0.5) / rise).clamp(min=0))
    if ramp_end:
        weights = torch.minimum(weights, ((length - 1 - distance - plan.margin + 0.5) / rise).clamp(min=0))
    return weights


def tiled_scores(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, num_classes: int, plan: TilePlan
) -> torch.Tensor:
    """(N, 3, H, W) -> (N, C, H, W) scores from overlapping tiles, blended by linear ramps.

    Weights only ramp at inner tile borders, never at the image's own borders,
    and every pixel's weights are normalised to sum to one. The last tile of a row
    is clipped to the image but is still longer than the overlap, so every pixel
    lies beyond the margin of some tile.
    """
    n, _, height, width = x.shape
    scores = torch.zeros(n, num_classes, height, width, device=x.device)
    total = torch.zeros(height, width, device=x.device)
    for y0, y1 in tile_spans(height, plan):
        wy = ramp(y1 - y0, plan, y0 > 0, y1 < height).to(x.device)
        for x0, x1 in tile_spans(width, plan):
            wx = ramp(x1 - x0, plan, x0 > 0, x1 < width).to(x.device)
            weight = wy[:, None] * wx[None, :]
            scores[:, :, y0:y1, x0:x1] += forward(x[:, :, y0:y1, x0:x1]) * weight
            total[y0:y1, x0:x1] += weight
    return scores.div_(total)
