"""Convolution routes for the CPU: the memory layout and the kernel fastest for a layer's shape, exactly.

Both the training wrappers (:mod:`fcnseg.accel.reach`) and the inference twin
(:mod:`fcnseg.accel.inference`) run a convolution by these rules; the numbers are the
layer's, only the way to compute them changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CHANNELS_LAST_WIDTH", "HUGE_KERNEL", "convolve", "matrix_convolution"]

CHANNELS_LAST_WIDTH = 128
"""On the CPU, convolutions with at most this many output channels run channels-last.

oneDNN reorders default-layout blobs into its blocked layout and back on every
call, forward and backward: for wide, shallow blobs (VGG's first two stages) that
costs more than the convolution gains, while for deep ones its blocked kernels
beat the channels-last ones.
"""

HUGE_KERNEL = 1 << 24
"""On the CPU, convolution weights with more elements than this (fc6) run as one matrix product
(im2col), instead of oneDNN reordering 400 MB of weights on every call."""


def matrix_convolution(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """``F.conv2d`` (no groups) as one matrix product (im2col), differentiable.

    The input's windows, laid out channels-last (each row one output position's (C_in, k, k)
    window: a free view for a 1x1 convolution of a channels-last blob), times the layer's
    (C_out, C_in k k) weights, a view of them transposed: no copy of fc6's 400 MB.
    (N, C_in, H, W) -> (N, C_out, H', W'), channels-last.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = weight.shape[-2:], stride, padding, dilation
    rows = x.permute(0, 2, 3, 1)
    if ph or pw:
        rows = F.pad(rows, (0, 0, pw, pw, ph, ph))
    if (kh, kw, sh, sw) != (1, 1, 1, 1):
        rows = rows.unfold(1, dh * (kh - 1) + 1, sh)[..., ::dh].unfold(2, dw * (kw - 1) + 1, sw)[..., ::dw]
    n, height, width = rows.shape[:3]
    columns = rows.reshape(n * height * width, -1)
    matrix = weight.view(weight.shape[0], -1).t()
    y = columns @ matrix if bias is None else torch.addmm(bias, columns, matrix)
    return y.view(n, height, width, -1).permute(0, 3, 1, 2)


def convolve(layer: nn.Conv2d, x: torch.Tensor, padding: tuple[int, int], cpu: bool) -> torch.Tensor:
    """``layer`` with ``padding``, with its own parameters, by the fastest exact route for its shape
    (on the CPU: :data:`CHANNELS_LAST_WIDTH`, :data:`HUGE_KERNEL`)."""
    w = layer.weight
    if cpu and w.numel() > HUGE_KERNEL and layer.groups == 1:
        return matrix_convolution(x, w, layer.bias, layer.stride, padding, layer.dilation)  # type: ignore[arg-type]
    if cpu:
        wide = layer.out_channels > CHANNELS_LAST_WIDTH
        x = x.contiguous(memory_format=torch.contiguous_format if wide else torch.channels_last)
    return F.conv2d(x, w, layer.bias, layer.stride, padding, layer.dilation, layer.groups)
