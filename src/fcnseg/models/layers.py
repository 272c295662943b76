"""Layers FCN adds to a classifier: bilinear upsampling, fixed channel scaling, cropping.

:func:`crop` and :func:`check_input` look at sizes, which ``torch.fx`` cannot trace through: a
module that calls them registers them with ``torch.fx.wrap("crop")`` at its top, so that a traced
net records them as calls and checks sizes when it runs.
"""

from __future__ import annotations

import torch
from torch import nn


def bilinear_taps(kernel_size: int) -> torch.Tensor:
    """(k,) float64: one axis of the bilinear kernel, a triangle over ``(k + 1) // 2`` steps each side."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    return 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights that make a transposed convolution upsample bilinearly, channel by channel.

    (channels, channels, k, k): class c maps only to class c, so classes never mix.
    Odd and even kernels both work; the factor is ``(k + 1) // 2``.
    """
    taps = bilinear_taps(kernel_size)
    filt = (taps[:, None] * taps[None, :]).to(torch.float32)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


def bilinear_upsampler(
    channels: int,
    factor: int,
    kernel_size: int | None = None,
    frozen: bool = False,
    bias: bool = False,
    padding: int = 0,
) -> nn.ConvTranspose2d:
    """A transposed convolution with output stride ``factor``, initialised to bilinear.

    The kernel is ``2 * factor`` unless given (FCN-AlexNet uses 63 for 32x).
    ``frozen`` keeps it fixed, as the paper does for the final upsampling. ``bias`` adds
    a zero bias (Caffe's Deconvolution has one unless ``bias_term: false``: HED's, FSDS's).
    ``padding`` drops that many outputs at each end; as many as the stride allows come back
    at the far end (``output_padding``), so that the output still reaches the last input's
    neighbourhood.
    """
    kernel_size = kernel_size or 2 * factor
    layer = nn.ConvTranspose2d(
        channels,
        channels,
        kernel_size,
        stride=factor,
        padding=padding,
        output_padding=min(padding, factor - 1),
        bias=bias,
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, kernel_size))
        if bias:
            layer.bias.zero_()
    return layer.requires_grad_(not frozen)


class ChannelScale(nn.Module):
    """Multiply every channel by a fixed factor (Caffe's Scale layer with lr 0).

    FCN-8s at-once scales pool4 by 0.01 and pool3 by 0.0001 before scoring them, so
    that the skips start small relative to the coarse scores.
    """

    def __init__(self, channels: int, value: float) -> None:
        super().__init__()
        self.register_buffer("weight", torch.full((channels,), float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, value={self.weight[0].item():g}"


def crop_like(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, height, width), starting at ``offset`` in both axes."""
    if x.shape[-2] < offset + height or x.shape[-1] < offset + width:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} at offset {offset} to {(height, width)}")
    return x[:, :, offset : offset + height, offset : offset + width]


def crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """Caffe's Crop layer: (N, C, h, w) -> (N, C, H, W), the size of ``like`` (N', C', H, W), from
    ``offset`` in both axes."""
    return crop_like(x, offset, like.shape[-2], like.shape[-1])


def overlap(x: torch.Tensor, other: torch.Tensor, offset: int) -> torch.Tensor:
    """``x`` cut to what ``other`` holds from ``offset`` on, where ``other`` is shorter:
    (N, C, h, w) -> (N, C, min(h, H - offset), min(w, W - offset)) for ``other`` (N', C', H, W).
    A skip fused at ``offset`` covers the upsampled scores in the original nets (a no-op there);
    on a trunk padded to keep sizes (ResNet) the upsampled scores may reach one position further."""
    return x[:, :, : other.shape[-2] - offset, : other.shape[-1] - offset]


def check_input(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` itself if it is (N, ``channels``, H, W); otherwise an error naming both shapes."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"expected input (N, {channels}, H, W), got {tuple(x.shape)}")
    return x
