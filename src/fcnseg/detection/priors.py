"""SSD's prior (default) boxes, as Caffe's PriorBox layer lays them out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "SSD300_PRIORS",
    "SSD512_PRIORS",
    "VARIANCES",
    "PriorLayer",
    "PriorSpec",
    "prior_boxes",
    "prior_spec",
]

VARIANCES = (0.1, 0.1, 0.2, 0.2)
"""The PriorBox variances of ssd_pascal.py: centre-size offsets are divided by them when encoded."""


@dataclass(frozen=True)
class PriorLayer:
    """The priors of one source map: ``step`` pixels apart, sized ``min_size`` (and
    ``sqrt(min_size * max_size)``), plus each aspect ratio and, flipped, its inverse."""

    source: str
    map_size: int  # at the spec's image size; other sizes pass their own map sizes
    step: float
    min_size: float
    max_size: float | None
    aspect_ratios: tuple[float, ...]

    def ratios(self, flip: bool = True) -> list[float]:
        """1, then each ratio and (with ``flip``) its inverse, skipping repeats, as PriorBox orders them."""
        found = [1.0]
        for ratio in self.aspect_ratios:
            if any(abs(ratio - r) < 1e-6 for r in found):
                continue
            found.append(ratio)
            if flip:
                found.append(1.0 / ratio)
        return found

    def per_location(self, flip: bool = True) -> int:
        return len(self.ratios(flip)) + (self.max_size is not None)


@dataclass(frozen=True)
class PriorSpec:
    """All priors of a net, in the order its heads are concatenated."""

    image_size: int
    layers: tuple[PriorLayer, ...]
    offset: float = 0.5
    flip: bool = True
    clip: bool = False
    variances: tuple[float, float, float, float] = VARIANCES

    @property
    def per_location(self) -> list[int]:
        return [layer.per_location(self.flip) for layer in self.layers]


SSD300_PRIORS = PriorSpec(
    image_size=300,
    layers=(
        PriorLayer("conv4_3", 38, 8, 30, 60, (2,)),
        PriorLayer("fc7", 19, 16, 60, 111, (2, 3)),
        PriorLayer("conv6_2", 10, 32, 111, 162, (2, 3)),
        PriorLayer("conv7_2", 5, 64, 162, 213, (2, 3)),
        PriorLayer("conv8_2", 3, 100, 213, 264, (2,)),
        PriorLayer("conv9_2", 1, 300, 264, 315, (2,)),
    ),
)
"""examples/ssd/ssd_pascal.py: sizes from 20% to 90% of 300 pixels (conv4_3 at 10%), no clipping."""

SSD512_PRIORS = PriorSpec(
    image_size=512,
    layers=(
        PriorLayer("conv4_3", 64, 8, 35.84, 76.8, (2,)),
        PriorLayer("fc7", 32, 16, 76.8, 153.6, (2, 3)),
        PriorLayer("conv6_2", 16, 32, 153.6, 230.4, (2, 3)),
        PriorLayer("conv7_2", 8, 64, 230.4, 307.2, (2, 3)),
        PriorLayer("conv8_2", 4, 128, 307.2, 384.0, (2, 3)),
        PriorLayer("conv9_2", 2, 256, 384.0, 460.8, (2,)),
        PriorLayer("conv10_2", 1, 512, 460.8, 537.6, (2,)),
    ),
)
"""ssd_pascal_512.py of the released SSD512 model: sizes from 15% to 90% of 512 pixels in steps of 15%
(conv4_3 at 7%, its max at 15%), 7 source maps, steps 8 .. 512, no clipping: 24,564 priors."""

_SPECS = {"ssd300": SSD300_PRIORS, "ssd512": SSD512_PRIORS}


def prior_spec(name: str) -> PriorSpec:
    """The prior spec of a detector by name (``"ssd300"``, ``"ssd512"``)."""
    if name not in _SPECS:
        raise ValueError(f"unknown prior spec {name!r}; choose one of {', '.join(_SPECS)}")
    return _SPECS[name]


def prior_boxes(
    spec: str | PriorSpec = "ssd300",
    image_size: tuple[int, int] | None = None,
    map_sizes: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """(P, 4) priors (cx, cy, w, h) in [0, 1] of the image: 8,732 for ``"ssd300"``, 24,564 for ``"ssd512"``.

    Ordered as Caffe's PriorBox outputs concatenate: source map by source map, row by
    row, column by column, and at each location min size, ``sqrt(min * max)``, then
    each aspect ratio r (width ``min * sqrt(r)``, height ``min / sqrt(r)``) and its
    inverse. Centres are ``(j + offset) * step`` pixels. ``image_size`` (H, W) and
    ``map_sizes`` give the priors of another input size; by default the spec's own.
    """
    if isinstance(spec, str):
        spec = prior_spec(spec)
    height, width = image_size or (spec.image_size, spec.image_size)
    sizes = map_sizes or [(layer.map_size, layer.map_size) for layer in spec.layers]
    if len(sizes) != len(spec.layers):
        raise ValueError(f"{len(spec.layers)} source maps need {len(spec.layers)} map sizes, got {sizes}")
    boxes = []
    for layer, (rows, cols) in zip(spec.layers, sizes, strict=True):
        shapes = [(layer.min_size, layer.min_size)]
        if layer.max_size is not None:
            side = math.sqrt(layer.min_size * layer.max_size)
            shapes.append((side, side))
        shapes += [
            (layer.min_size * math.sqrt(r), layer.min_size / math.sqrt(r))
            for r in layer.ratios(spec.flip)[1:]
        ]
        wh = torch.tensor(shapes, dtype=torch.float64) / torch.tensor([width, height], dtype=torch.float64)
        cy = (torch.arange(rows, dtype=torch.float64) + spec.offset) * layer.step / height
        cx = (torch.arange(cols, dtype=torch.float64) + spec.offset) * layer.step / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 1, 2).expand(-1, len(shapes), 2)
        boxes.append(torch.cat([centres, wh.expand(rows * cols, -1, -1)], dim=-1).reshape(-1, 4))
    priors = torch.cat(boxes)
    if spec.clip:  # clip the corners, as PriorBox does, then back to centre and size
        corners = torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1).clamp(
            0, 1
        )
        priors = torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], 1)
    return priors.float()
