"""Convolution routes for the CPU: the memory layout and the kernel fastest for a layer's shape, exactly.

Both the training wrappers (:mod:`fcnseg.accel.reach`) and the inference twin
(:mod:`fcnseg.accel.inference`) run a convolution by these rules; the numbers are the
layer's, only the way to compute them changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHANNELS_LAST_WIDTH",
    "HUGE_KERNEL",
    "PRODUCT_GRADIENT_WIDTH",
    "convolve",
    "matrix_convolution",
    "strictly_channels_last",
    "weight_gradient",
]

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


PRODUCT_GRADIENT_WIDTH = 64
"""On the CPU, stride-1 convolutions with at least this many input and output channels take their
weight gradient from :func:`weight_gradient` (k*k matrix products) instead of oneDNN.

Measured on a 2-core AVX2 EPYC (``benchmarks/RESULTS.md``): oneDNN's channels-last weight
gradient runs at a quarter of its forward speed (VGG16's conv1_2 at 500x500: 1.23 s against
0.34 s as products); narrower layers are faster in oneDNN.
"""


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


def strictly_channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is laid out channels-last, and not also contiguous (one pixel, one channel)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def weight_gradient(
    grad: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], dilation: tuple[int, int]
) -> torch.Tensor:
    """The weight gradient of a stride-1 convolution without groups or padding: ``grad`` (N, C_out,
    H', W') of its output, ``x`` (N, C_in, H, W) its input -> (C_out, C_in, kh, kw).

    Tap (i, j) of the kernel is one batched matrix product: ``grad``, its rows widened to W with
    zeros, against ``x`` read from offset (i dh) W + j dw, both flattened over (H, W) as views in
    their own memory layout (default or channels-last).
    """
    n, c_out, height_out, width_out = grad.shape
    width = x.shape[-1]
    length = (height_out - 1) * width + width_out  # from the first output position to the last
    layout = torch.channels_last if strictly_channels_last(grad) else torch.contiguous_format
    rows = torch.empty(
        n, c_out, height_out, width, dtype=grad.dtype, device=grad.device, memory_format=layout
    )
    rows[..., width_out:] = 0
    rows[..., :width_out] = grad
    products, flat = rows.flatten(2)[:, :, :length], x.flatten(2)  # views, in either layout
    out = grad.new_empty(c_out, x.shape[1], *kernel)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            start = dilation[0] * i * width + dilation[1] * j
            out[:, :, i, j] = torch.bmm(products, flat[:, :, start : start + length].transpose(1, 2)).sum(0)
    return out


class _ProductGradientConvolution(torch.autograd.Function):
    """``F.conv2d`` with stride 1 and no groups whose weight gradient is :func:`weight_gradient`."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.geometry = padding, dilation
        return F.conv2d(x, weight, bias, 1, padding, dilation)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        (ph, pw), dilation = ctx.geometry
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [ph, pw], dilation, False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
            grad_weight = weight_gradient(grad, padded, weight.shape[-2:], dilation)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None


def convolve(layer: nn.Conv2d, x: torch.Tensor, padding: tuple[int, int], cpu: bool) -> torch.Tensor:
    """``layer`` with ``padding``, with its own parameters, by the fastest exact route for its shape
    (on the CPU: :data:`CHANNELS_LAST_WIDTH`, :data:`HUGE_KERNEL`, :data:`PRODUCT_GRADIENT_WIDTH`)."""
    w = layer.weight
    if cpu and w.numel() > HUGE_KERNEL and layer.groups == 1:
        return matrix_convolution(x, w, layer.bias, layer.stride, padding, layer.dilation)  # type: ignore[arg-type]
    if not cpu:
        return F.conv2d(x, w, layer.bias, layer.stride, padding, layer.dilation, layer.groups)
    wide = layer.out_channels > CHANNELS_LAST_WIDTH
    x = x.contiguous(memory_format=torch.contiguous_format if wide else torch.channels_last)
    if (
        torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")  # autocast casts the forward's operands, not the products'
        and w.requires_grad
        and layer.stride == (1, 1)
        and layer.groups == 1
        and min(layer.in_channels, layer.out_channels) >= PRODUCT_GRADIENT_WIDTH
    ):
        return _ProductGradientConvolution.apply(x, w, layer.bias, padding, layer.dilation)
    return F.conv2d(x, w, layer.bias, layer.stride, padding, layer.dilation, layer.groups)
