"""Coordinate geometry of layers: where an output position sits in the input.

Every layer maps an output coordinate to the centre of its window in its input,
``x_in = a * x_out + b``. Composing these maps along a path gives the position of
any blob in image coordinates, and from that the crop offsets that align summed
blobs and the final score map with the input. Deriving offsets this way, instead
of tabling them, gives a new backbone correct alignment by construction.

A composite module (an inception module, a residual block) may state its own
geometry instead of being walked: ``geometry`` (an :class:`AffineMap`), ``span``
(the side of its window in input positions: the receptive field of one output
position) and ``out_channels``. Its output is then sized as a floor-mode window
of that span and map would size it (see :func:`out_length`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from torch import nn

from fcnseg.models.layers import ChannelScale

ELEMENTWISE = (
    nn.ReLU,
    nn.Dropout,
    nn.Dropout2d,
    nn.LocalResponseNorm,
    nn.BatchNorm2d,
    nn.Identity,
    ChannelScale,
)


WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def window(layer: nn.Module, axis: int = 0) -> tuple[int, int, int, int]:
    """Kernel, stride, padding and dilation of a (transposed) convolution or pooling along ``axis``."""
    if not isinstance(layer, WINDOWED + (nn.ConvTranspose2d,)):
        raise TypeError(f"no window known for {type(layer).__name__}")
    attrs = (layer.kernel_size, layer.stride, layer.padding, getattr(layer, "dilation", 1))
    return tuple(int(v[axis]) if isinstance(v, tuple) else int(v) for v in attrs)  # type: ignore[return-value]


def square_window(layer: nn.Module) -> tuple[int, int, int, int]:
    """:func:`window`, the same along both axes: our nets' geometry is square, anything else is refused."""
    rows, cols = window(layer, 0), window(layer, 1)
    if rows != cols:
        raise ValueError(
            f"geometry needs square kernels, strides, padding and dilation; {type(layer).__name__} has "
            f"{rows} along rows and {cols} along columns"
        )
    return rows


def declared_map(layer: nn.Module) -> AffineMap | None:
    """The map a module states for itself (``layer.geometry``), or None."""
    geometry = getattr(layer, "geometry", None)
    return geometry if isinstance(geometry, AffineMap) else None


def mapped_length(geometry: AffineMap, length: int) -> int:
    """Positions of a blob with map ``geometry`` for an input of ``length``, as floor-mode windows give them.

    A window of span k, stride s, padding p has shift b = (k - 1)/2 - p, so that its
    output length floor((n + 2p - k)/s) + 1 is floor((n - 1 - 2b)/s) + 1; the same
    holds for a chain of such windows with its composed map. Ceil-mode pooling may
    add one position per pooling.
    """
    return max(0, math.floor((length - 1 - 2 * geometry.shift) / geometry.scale) + 1)


def out_length(layer: nn.Module, length: int, axis: int = 0) -> int:
    """Output size along ``axis`` as PyTorch computes it (0 where the window does not fit)."""
    if isinstance(layer, ELEMENTWISE):
        return length
    if declared_map(layer) is not None:
        return mapped_length(declared_map(layer), length)
    if isinstance(layer, nn.Sequential):
        for inner in layer:
            length = out_length(inner, length, axis) if length else 0
        return length
    return window_length(length, *sliding_window(layer, axis))


def sliding_window(layer: nn.Module, axis: int = 0) -> tuple[int, int, int, bool]:
    """(span, stride, padding, ceil mode) of a convolution or pooling along ``axis``: the span is the
    dilated kernel's extent in input positions."""
    kernel, stride, padding, dilation = window(layer, axis)
    return dilation * (kernel - 1) + 1, stride, padding, getattr(layer, "ceil_mode", False)


def window_length(length: int, span: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    """Outputs of a sliding window of ``span`` input positions along an axis of ``length`` (0 where
    the window does not fit), with PyTorch's rule for ceil-mode pooling: the last window may hang
    over the end, but must start inside the input or its left padding."""
    reach = length + 2 * padding - span
    if reach < 0:
        return 0
    if not ceil_mode:
        return reach // stride + 1
    count = -(-reach // stride) + 1
    return count - 1 if (count - 1) * stride >= length + padding else count


def layer_span(layer: nn.Module) -> int:
    """Side of a layer's window in its input's positions: what one output position sees of its input."""
    if isinstance(layer, ELEMENTWISE):
        return 1
    if declared_map(layer) is not None:
        if not isinstance(getattr(layer, "span", None), int):
            raise TypeError(f"{type(layer).__name__} states its geometry but not its span (window side)")
        return layer.span
    if isinstance(layer, nn.Sequential):
        span, scale = 1, Fraction(1)
        for inner in layer:
            span += (layer_span(inner) - 1) * scale
            scale *= layer_map(inner).scale
        return int(span)
    return sliding_window(layer)[0]


@dataclass(frozen=True)
class AffineMap:
    """``x_outer = scale * x_inner + shift``, exact rational arithmetic."""

    scale: Fraction = Fraction(1)
    shift: Fraction = Fraction(0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", Fraction(self.scale))
        object.__setattr__(self, "shift", Fraction(self.shift))

    def then(self, inner: AffineMap) -> AffineMap:
        """The map of a deeper blob: apply ``inner`` first, then this one."""
        return AffineMap(self.scale * inner.scale, self.scale * inner.shift + self.shift)


def layer_map(layer: nn.Module) -> AffineMap:
    """The affine map from a layer's output coordinates to its input's.

    Convolution and pooling (kernel k, stride s, padding p, dilation d): a = s,
    b = d(k - 1)/2 - p. Transposed convolution: the inverse of the convolution
    with the same k, s, p. Element-wise layers: identity. A module stating its own
    ``geometry`` gets that.
    """
    if declared_map(layer) is not None:
        return declared_map(layer)
    if isinstance(layer, nn.ConvTranspose2d):
        k, s, p, d = square_window(layer)
        return AffineMap(Fraction(1, s), -(Fraction(d * (k - 1), 2) - p) / s)
    if isinstance(layer, WINDOWED):
        k, s, p, d = square_window(layer)
        return AffineMap(Fraction(s), Fraction(d * (k - 1), 2) - p)
    if isinstance(layer, nn.Sequential):
        return path_map(layer)
    if isinstance(layer, ELEMENTWISE):
        return AffineMap()
    raise TypeError(f"no geometry known for layer {type(layer).__name__}")


def path_map(layers: Iterable[nn.Module]) -> AffineMap:
    """Compose the maps of layers applied in order: blob coordinates -> input coordinates."""
    total = AffineMap()
    for layer in layers:
        total = total.then(layer_map(layer))
    return total


def crop_offset(reference: AffineMap, cropped: AffineMap, what: str = "blob") -> int:
    """Offset at which to crop ``cropped`` so that it aligns with ``reference``.

    Both maps send blob coordinates to input coordinates with equal scale; cropping
    at offset c means ``cropped[c + y]`` sits where ``reference[y]`` sits.
    """
    if reference.scale != cropped.scale:
        raise ValueError(f"cannot align {what}: strides differ ({cropped.scale} vs {reference.scale})")
    offset = (reference.shift - cropped.shift) / cropped.scale
    if offset.denominator != 1 or offset < 0:
        raise ValueError(f"cannot align {what}: crop offset {offset} is not a non-negative integer")
    return int(offset)
