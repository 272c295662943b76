"""The FCN head computed for what the crops keep: the fast path's scoring, fusion and upsampling.

The plain head (:class:`fcnseg.models.fcn.FCN`) scores whole blobs, upsamples them and
crops. Here the same sums skip what the crops throw away: the 1x1 score layers see only
the positions a crop keeps (they act on each position alone), a frozen bilinear
upsampling is two small matrix products per class, and the final upsampling computes
only the input-sized crop. Blobs may come on a trimmed canvas (:class:`Blob` with the
canvas positions of every full position), as the inference twin gives them, or whole,
as training on the images' reach gives them.
"""

from __future__ import annotations

import functools
import weakref
from typing import NamedTuple

import torch
from torch import nn

from fcnseg.accel.canvas import gather
from fcnseg.models.fcn import FCN
from fcnseg.models.layers import bilinear_kernel, bilinear_taps, crop_like

__all__ = ["Blob", "fcn_head", "upsample", "upsample_and_crop"]


class Blob(NamedTuple):
    """A blob, whole (``rows``/``cols`` None) or on a trimmed canvas: then ``rows[i]`` is the canvas
    row that holds full row i, and likewise ``cols``."""

    x: torch.Tensor
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None

    def whole(self) -> torch.Tensor:
        """The full blob (N, C, len(rows), len(cols))."""
        return gather(self.x, self.rows, self.cols, channels_last=False)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the full blob; int(): a traced graph (:mod:`fcnseg.accel.graphs`) keeps
        these sizes as constants."""
        x, rows, cols = self
        return (
            len(rows) if rows is not None else int(x.shape[-2]),
            len(cols) if cols is not None else int(x.shape[-1]),
        )

    def scored(
        self, layers: list[nn.Module], offset: int = 0, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``crop(full blob through layers, offset, like)`` for layers that act on each position alone
        (1x1 scores, scalings), without computing what the crop drops; the whole blob when ``like``
        is None."""
        x, rows, cols = self
        full = self.size
        height, width = full if like is None else (int(like.shape[-2]), int(like.shape[-1]))
        if offset + height > full[0] or offset + width > full[1]:
            raise ValueError(f"cannot crop {full} at offset {offset} to {(height, width)}")
        if rows is None:
            x = x[:, :, offset : offset + height]
        if cols is None:
            x = x[:, :, :, offset : offset + width]
        for layer in layers:
            x = layer(x)
        picked = [
            None if at is None else at[offset : offset + n] for at, n in ((rows, height), (cols, width))
        ]
        return gather(x, *picked, channels_last=True)


def fcn_head(model: FCN, top: Blob, taps: dict[str, Blob], height: int, width: int) -> torch.Tensor:
    """``model``'s head on the trunk's output ``top`` and its ``taps``: (N, num_classes, height, width),
    the scores the plain head gives (see the module's docstring)."""
    h = top.scored([model.score_fr])
    for upsample_name, tap, offset in model.fusions:
        h = upsample(getattr(model, upsample_name), h)
        layers = [getattr(model, name) for name in (f"scale_{tap}", f"score_{tap}") if hasattr(model, name)]
        rows, cols = taps[tap].size  # the plain head's overlap(): h cut to what the skip holds
        h = h[:, :, : rows - offset, : cols - offset]
        h = h + taps[tap].scored(layers, offset, h)
    return upsample_and_crop(getattr(model, model.final_name), h, model.output_offset, height, width)


def upsample_and_crop(
    layer: nn.ConvTranspose2d, x: torch.Tensor, offset: int, height: int, width: int
) -> torch.Tensor:
    """``crop_like(layer(x), offset, height, width)``, computing only what the crop keeps.

    An output position o of a transposed convolution (stride s, span k, no padding)
    sums inputs i with ``s*i <= o < s*i + k``: inputs outside the reach of the crop
    are left out, exactly. A frozen bilinear upsampler (the final one of the paper's
    nets) is two small matrix products per class instead, ``rows @ x @ cols.T``,
    which give the cropped output directly: the same sums, without the crop's copy.
    """
    spans = [d * (k - 1) + 1 for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
    reaches = [(int(n) - 1) * s + span for n, s, span in zip(x.shape[-2:], layer.stride, spans, strict=True)]
    simple = not any(layer.padding) and not any(layer.output_padding)
    if not simple or offset + height > reaches[0] or offset + width > reaches[1]:
        return crop_like(layer(x), offset, height, width)  # crop_like names the sizes that do not fit
    if _is_frozen_bilinear(layer):
        k, (sh, sw) = layer.kernel_size[0], layer.stride
        rows = _interpolation(k, sh, offset, height, int(x.shape[-2]), x.dtype, x.device)
        cols = _interpolation(k, sw, offset, width, int(x.shape[-1]), x.dtype, x.device)
        return torch.matmul(torch.matmul(rows, x), cols.T)
    sliced = []
    for axis, size in ((0, height), (1, width)):
        s = layer.stride[axis]
        first = max(0, -(-(offset - spans[axis] + 1) // s))  # the first input reaching the crop
        last = min(int(x.shape[2 + axis]) - 1, (offset + size - 1) // s)
        sliced.append((first, last + 1, offset - first * s))
    (top, bottom, row), (left, right, col) = sliced
    y = layer(x[:, :, top:bottom, left:right])
    return y[:, :, row : row + height, col : col + width]


def upsample(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; a frozen bilinear upsampler without padding as two small matrix products
    (see :func:`upsample_and_crop`): the same sums, without the zero weights between classes."""
    if any(layer.padding) or any(layer.output_padding) or not _is_frozen_bilinear(layer):
        return layer(x)
    height, width = (
        (int(n) - 1) * s + k for n, s, k in zip(x.shape[-2:], layer.stride, layer.kernel_size, strict=True)
    )
    return upsample_and_crop(layer, x, 0, height, width)


_BILINEAR: weakref.WeakKeyDictionary[nn.Module, tuple[weakref.ref, int | None, bool]] = (
    weakref.WeakKeyDictionary()
)
"""Per upsampler: whether its weight (that tensor, at that version) is the bilinear kernel."""


def _is_frozen_bilinear(layer: nn.ConvTranspose2d) -> bool:
    """A fixed transposed convolution whose weights are exactly :func:`bilinear_kernel`'s."""
    w = layer.weight
    if w.requires_grad or w.is_meta or layer.groups != 1 or layer.bias is not None:
        return False
    if w.shape[0] != w.shape[1] or w.shape[2] != w.shape[3] or layer.dilation != (1, 1):
        return False
    version = None if w.is_inference() else w._version  # inference tensors keep no version: look each time
    known = _BILINEAR.get(layer)
    if known is None or known[0]() is not w or version is None or known[1] != version:
        bilinear = bilinear_kernel(w.shape[0], w.shape[2]).to(w.device, w.dtype)
        known = (weakref.ref(w), version, torch.equal(w, bilinear))
        _BILINEAR[layer] = known
    return known[2]


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)  # cached matrices serve autograd too, wherever the first call came from
def _interpolation(
    kernel: int, stride: int, offset: int, out_length: int, in_length: int, dtype, device
) -> torch.Tensor:
    """(out_length, in_length): output ``offset + o`` of a bilinear upsampling as weights of its inputs."""
    taps = bilinear_taps(kernel).to(dtype)
    tap = torch.arange(offset, offset + out_length)[:, None] - stride * torch.arange(in_length)[None, :]
    inside = (tap >= 0) & (tap < kernel)
    return torch.where(inside, taps[tap.clamp(0, kernel - 1)], 0).to(device)
