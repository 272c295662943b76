"""Dense output from a coarse net: shift-and-stitch, filter rarefaction, and dilated FCNs built by it.

Section 3.2 of the paper. A net with output stride f predicts every f-th pixel.
Shift-and-stitch runs it on f^2 shifted copies of the input and interleaves the
outputs; filter rarefaction gets the same dense output in one pass by removing a
layer's stride and spreading every later filter out (dilation). Rarefaction keeps
every weight, so it turns a trained FCN-32s into an FCN of output stride 16 or 8.

Where the two disagree, and why: both see the same zeros around the input image
(shifted-in zeros and the first layer's zero padding are both zero pixels). After
the first layer they differ at borders only: a rarefied layer pads its feature map
with zeros, while a shifted pass has real activations there (computed from the
shifted-in zeros) or, at the far side, a ceil-mode pooling window cut short by the
end of the map. :func:`exact_region` gives the outputs untouched by either.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models.fcn import FCN
from fcnseg.models.geometry import ELEMENTWISE, AffineMap, out_length, path_map, window
from fcnseg.models.trunk import Trunk
from fcnseg.models.vgg import VGG16_WIDTHS, vgg16_backbone

__all__ = [
    "DILATED_ARCHS",
    "coarse_part",
    "dilated_fcn",
    "exact_region",
    "output_stride",
    "rarefied_kernel",
    "rarefy",
    "shift_and_stitch",
    "to_pixels",
    "vgg_fcn_dilated",
]

DILATED_ARCHS = {16: "fcn16s-dilated", 8: "fcn8s-dilated"}
"""Registered names of FCN-32s rarefied to output stride 16 (pool5) and 8 (pool4, pool5)."""

_STRIDED = (nn.Conv2d, nn.MaxPool2d)


def coarse_part(model: nn.Module) -> nn.Sequential:
    """The layers that compute coarse scores: an FCN's backbone then ``score_fr``.

    Any other net must be an ``nn.Sequential`` (nested ones allowed) and is
    returned as it is. The layers are shared with ``model``, not copied.
    """
    if isinstance(model, FCN):
        if not isinstance(model.backbone, nn.Sequential):
            raise TypeError(
                f"a {type(model.backbone).__name__} trunk is no layer sequence: its order is unknown"
            )
        return nn.Sequential(OrderedDict([*model.backbone.named_children(), ("score_fr", model.score_fr)]))
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"expected an FCN or an nn.Sequential, got {type(model).__name__}")
    return model


def _leaves(net: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """(dotted name, layer) in the order the forward pass applies them."""
    leaves = []
    for name, module in net.named_modules():
        children = list(module.children())
        if children and not isinstance(module, nn.Sequential):
            raise TypeError(f"{name} ({type(module).__name__}) is not a layer sequence: its order is unknown")
        if not children and module is not net:
            leaves.append((name, module))
    return leaves


def output_stride(net: nn.Module) -> int:
    """Total stride of ``net`` (for a net on a trunk, of the trunk's output): 32 for VGG16's pool5."""
    trunk = getattr(net, "backbone", None)
    scale = trunk.output.geometry.scale if isinstance(trunk, Trunk) else path_map(coarse_part(net)).scale
    if scale.denominator != 1:
        raise ValueError(f"output stride {scale} is not an integer")
    return int(scale)


def _square(value: int | tuple[int, ...], what: str) -> int:
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"rarefaction needs square {what}, got {value}")
        return int(value[0])
    return int(value)


def shift_and_stitch(net: nn.Module, x: torch.Tensor, factor: int | None = None) -> torch.Tensor:
    """Output ``factor`` times denser than ``net``'s, from ``factor``^2 shifted passes.

    (N, C, H, W) -> (N, K, h, w). With output stride f and u = f / factor, pass
    (dx, dy) sees the input shifted right by u*dx and down by u*dy (zeros enter at
    the left and top); its output q lands at dense index factor*q - dx, so every
    prediction sits at the centre of its receptive field. The result is the output
    of :func:`rarefy` applied to the last strided layers whose strides multiply to
    ``factor``: dense index j has its centre at ``u * j + b`` in input pixels, b the
    shift of ``path_map`` (12.5 for VGG16). ``factor`` defaults to f (stride 1).
    Accepts an ``nn.Sequential`` or an FCN, whose coarse part (backbone, score_fr) it runs.
    """
    layers = coarse_part(net)
    stride = output_stride(layers)
    factor = factor or stride
    if stride % factor:
        raise ValueError(f"factor {factor} does not divide the output stride {stride}")
    unit = stride // factor
    outputs = {
        (dy, dx): layers(F.pad(x, (unit * dx, 0, unit * dy, 0)))
        for dy in range(factor)
        for dx in range(factor)
    }
    # Shift d covers dense indices factor*q - d for q < its output size; keep the rectangle all cover.
    height = min(factor * out.shape[-2] - dy for (dy, _), out in outputs.items())
    width = min(factor * out.shape[-1] - dx for (_, dx), out in outputs.items())
    if height < 1 or width < 1:
        raise ValueError(f"input {tuple(x.shape[-2:])} is too small for a dense output")
    first = outputs[0, 0]
    dense = first.new_empty(*first.shape[:2], height, width)
    for (dy, dx), out in outputs.items():
        ry, rx = -dy % factor, -dx % factor  # dense residue class of this shift
        qy, qx = int(dy > 0), int(dx > 0)  # index factor*0 - d < 0 is cut off
        ny, nx = len(range(ry, height, factor)), len(range(rx, width, factor))
        dense[..., ry::factor, rx::factor] = out[..., qy : qy + ny, qx : qx + nx]
    return dense


def to_pixels(scores: torch.Tensor, position: AffineMap, size: tuple[int, int]) -> torch.Tensor:
    """Scores at every pixel of a (H, W) input, interpolated bilinearly from a coarse or dense map.

    (N, K, h, w) -> (N, K, H, W). Score i sits at input pixel ``position.scale * i
    + position.shift`` (``path_map`` of the net that made it); pixels past the
    first or last score take its value. Unlike the FCN's learned upsampling this
    needs no crop, so any map (stitched, rarefied, coarse) is compared on equal terms.
    """
    rows = _interpolation(size[0], scores.shape[-2], position)
    cols = _interpolation(size[1], scores.shape[-1], position)
    out = scores[..., rows[0], :] * (1 - rows[2])[:, None] + scores[..., rows[1], :] * rows[2][:, None]
    return out[..., cols[0]] * (1 - cols[2]) + out[..., cols[1]] * cols[2]


def _interpolation(pixels: int, count: int, position: AffineMap) -> tuple[torch.Tensor, ...]:
    """Lower and upper score index and the weight of the upper one, for each pixel."""
    index = (torch.arange(pixels, dtype=torch.float64) - float(position.shift)) / float(position.scale)
    index = index.clamp(0, count - 1)
    lower = index.floor().long().clamp(max=max(count - 2, 0))
    upper = (lower + 1).clamp(max=count - 1)
    return lower, upper, (index - lower).float()


def rarefy(net: nn.Sequential, layer_name: str) -> nn.Sequential:
    """A new net with ``layer_name``'s stride s removed and every later filter rarefied by s.

    Later convolutions and (unpadded) max-poolings get dilation d*s and padding p*s, so a
    later filter f becomes f'_ij = f_{i/s, j/s} where s divides i and j, else 0
    (see :func:`rarefied_kernel`), and the map of every layer keeps its centres:
    ``path_map`` of the result has the same shift, with scale divided by s. Weights
    are copied unchanged. Repeat per strided layer until the stride you want is
    left; with none left, the output equals :func:`shift_and_stitch` (see
    :func:`exact_region` for the borders). ``layer_name`` is dotted in nested
    sequences.
    """
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"rarefy takes an nn.Sequential (an FCN's backbone), got {type(net).__name__}")
    rarefied = copy.deepcopy(net)
    _rarefy_in_place(rarefied, layer_name)
    return rarefied


def _rarefy_in_place(net: nn.Sequential, layer_name: str) -> None:
    leaves = _leaves(net)
    names = [name for name, _ in leaves]
    if layer_name not in names:
        raise ValueError(f"no layer {layer_name!r} in the net ({names})")
    index = names.index(layer_name)
    target = leaves[index][1]
    if not isinstance(target, _STRIDED):
        raise TypeError(
            f"{layer_name} is a {type(target).__name__}; only convolutions and max-pooling stride"
        )
    factor = _square(target.stride, "strides")
    if factor == 1:
        raise ValueError(f"{layer_name} has stride 1: nothing to rarefy")
    target.stride = (1, 1) if isinstance(target, nn.Conv2d) else 1
    for name, layer in leaves[index + 1 :]:
        _spread(layer, factor, name)


def _spread(layer: nn.Module, factor: int, name: str) -> None:
    """Dilate ``layer``'s window by ``factor`` in place, padding scaled to keep its centre."""
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"{name}: rarefaction needs explicit zero padding, got {layer.padding}")
        # a 1x1 filter is its own rarefaction
        layer.dilation = tuple(
            factor * d if k > 1 else d for d, k in zip(layer.dilation, layer.kernel_size, strict=True)
        )
        layer.padding = tuple(factor * p for p in layer.padding)
    elif isinstance(layer, nn.MaxPool2d):
        if _square(layer.padding, "padding"):
            # PyTorch caps a max-pool's padding at half its undilated kernel; p*s would exceed it
            raise ValueError(f"{name}: cannot rarefy a padded max-pooling (padding {layer.padding})")
        layer.dilation = factor * _square(layer.dilation, "dilation")
    elif not isinstance(layer, ELEMENTWISE):
        raise TypeError(f"cannot rarefy through {name} ({type(layer).__name__}): no dilated form known")


def rarefied_kernel(weight: torch.Tensor, factor: int) -> torch.Tensor:
    """The zero-stuffed filter f'_ij = f_{i/s, j/s} if s | i and s | j, else 0.

    (O, I, k, k) -> (O, I, s(k-1)+1, s(k-1)+1). Convolving with it (padding p*s)
    is exactly the convolution with ``dilation=s``, which never stores the zeros.
    """
    out, inp, kh, kw = weight.shape
    stuffed = weight.new_zeros(out, inp, factor * (kh - 1) + 1, factor * (kw - 1) + 1)
    stuffed[..., ::factor, ::factor] = weight
    return stuffed


def exact_region(rarefied: nn.Module, size: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of ``rarefied``'s output where it equals :func:`shift_and_stitch` exactly.

    For a (H, W) input, an output is exact when its receptive field, traced back
    layer by layer, reads no padding of any layer after the first, and no window
    past the end of a map. Outside the region the two may differ: there the
    rarefied net reads zero padding (or a max-pooling's -inf), where a shifted
    pass reads activations computed from its shifted-in zeros on the left and top,
    or a ceil-mode window cut short by the map's end on the right and bottom. Zero
    pixels around the input itself are the same in both, so the first
    convolution's padding (100 in the FCNs) costs nothing. Compare only where both
    outputs are defined: the region may run past the stitched output's end.
    """
    layers = [layer for _, layer in _leaves(coarse_part(rarefied))]
    return tuple(slice(*_exact_interval(layers, length, axis)) for axis, length in enumerate(size))


def _exact_interval(layers: list[nn.Module], length: int, axis: int) -> tuple[int, int]:
    """[lo, hi) of exact outputs along one axis; out-of-map reads are exact only at a conv's input."""
    lo, hi = None, None  # None: unbounded, the zeros around the input are the same in both
    for layer in layers:
        if isinstance(layer, ELEMENTWISE):
            continue
        k, s, p, d = window(layer, axis)
        if isinstance(layer, nn.MaxPool2d):
            lo, hi = max(lo or 0, 0), min(length if hi is None else hi, length)  # -inf is not zero
        count = out_length(layer, length, axis)
        # output o reads o*s - p + [0, d(k-1)]: exact when all of it lies in [lo, hi)
        lo = 0 if lo is None else max(0, -(-(lo + p) // s))
        hi = count if hi is None else min(count, (hi - 1 + p - d * (k - 1)) // s + 1)
        length = count
    return (0, length) if lo is None else (lo, max(lo, hi))


def dilated_fcn(model: FCN, stride: int) -> FCN:
    """A new FCN of output stride ``stride`` from a skip-less FCN, keeping every weight.

    The backbone's strided layers are rarefied from the top (pool5 first) until
    the output stride is ``stride``; ``score_fr`` is copied and the final
    upsampling becomes a bilinear one of factor ``stride``. When that shorter
    upsampling cannot reach back to the image's first pixel, or a 1x1 image gets
    no score, conv1's padding grows just enough (VGG16: 100 -> 105 at stride 16,
    109 at stride 8), so the crop offset stays a non-negative integer.
    """
    if model.skips:
        raise ValueError(f"dilate a net without skips (FCN-32s); this one fuses {model.skips}")
    backbone = copy.deepcopy(model.backbone)
    current = output_stride(backbone)
    strided = [(name, layer) for name, layer in _leaves(backbone) if isinstance(layer, _STRIDED)]
    while current > stride and strided:
        name, layer = strided.pop()
        step = _square(layer.stride, "strides")
        if step > 1 and current // step >= stride:
            _rarefy_in_place(backbone, name)
            current //= step
    if current != stride:
        raise ValueError(f"output stride {stride} is not reachable by removing whole strides of this net")

    final = getattr(model, model.final_name)
    frozen = "none" if final.weight.requires_grad else "final"
    _pad_for_any_size(backbone, stride)
    dilated = FCN(backbone, model.num_classes, frozen_upsampling=frozen)
    dilated.score_fr.load_state_dict(model.score_fr.state_dict())
    dilated.to(model.score_fr.weight.device).train(model.training)
    config = getattr(model, "config", None)
    if config and config.get("arch") == "fcn32s" and stride in DILATED_ARCHS:
        dilated.config = {**config, "arch": DILATED_ARCHS[stride]}
    if hasattr(model, "meta"):
        dilated.meta = dict(model.meta)
    return dilated


def vgg_fcn_dilated(stride: int) -> Callable[..., FCN]:
    """The registry's builder of FCN-32s on VGG16 rarefied to output stride ``stride``."""

    def build(num_classes: int, widths: tuple[int, ...] | None, in_channels: int, **head: Any) -> FCN:
        backbone = vgg16_backbone(widths or VGG16_WIDTHS, in_channels=in_channels)
        return dilated_fcn(FCN(backbone, num_classes, **head), stride)

    return build


def _pad_for_any_size(backbone: nn.Sequential, stride: int) -> None:
    """Grow the first convolution's padding until a 1x1 image gets a score and a crop offset >= 0.

    Rarefied pools lose the ceil-mode window past the map's end that let the
    original nets score a 1x1 image, and a shorter final upsampling reaches back
    less far: both need a little more padding than the original 100.
    """
    layers = [layer for _, layer in _leaves(backbone)]
    first = next(layer for layer in layers if isinstance(layer, nn.Conv2d))
    kernel = 2 * stride  # the final bilinear upsampling's
    upsample = nn.ConvTranspose2d(1, 1, kernel, stride=stride)
    while True:
        offset = -path_map([*layers, upsample]).shift  # upsampled pixel 0 sits at input -offset
        length = 1
        for layer in layers:
            length = out_length(layer, length, 0) if length else 0
        if offset >= 0 and length and (length - 1) * stride + kernel >= offset + 1:
            return
        first.padding = tuple(p + 1 for p in first.padding)
