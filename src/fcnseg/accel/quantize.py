"""Post-training static int8 quantization of an FCN's trunk: calibrated ranges and fake quantizers.

int8 runtimes (onnxruntime, OpenVINO) run a graph in which every convolution of the
trunk reads quantized inputs and weights: ``QuantizeLinear`` -> ``DequantizeLinear``
pairs (QDQ) around the float operations say where, and the runtimes fuse them into
integer kernels. This module computes where and with which scales:

- :func:`calibrate` runs the plain net on a few images and records, for each layer of
  the trunk, the range of its output (and of the trunk's input);
- :class:`Quantized` wraps one layer between fake quantizers: its input (a
  convolution's) and weights (per output channel, symmetric int8), and its output
  (uint8, as the ReLU outputs it feeds are never negative). In torch it computes in
  float32 what the runtime computes in integers, so it is the reference an int8
  runtime is checked against, and exported to ONNX it becomes the QDQ pairs.

The head (score layers, upsampling) stays float32: it is a small share of the work
and the scores' rounding would show in the labels.
"""

from __future__ import annotations

import copy
import functools
import os
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnseg.accel import _weights_fingerprint
from fcnseg.data.images import image_files, read_image
from fcnseg.data.preprocess import preprocess, preprocessing_of
from fcnseg.devices import cpu_flags

__all__ = [
    "ACTIVATION_LEVELS",
    "Calibration",
    "QParams",
    "CALIBRATION_IMAGES",
    "Quantized",
    "calibrate",
    "calibration_images",
    "calibration_of",
    "cpu_has_vnni",
    "quantized_layers",
    "quantized_net",
]

ACTIVATION_LEVELS = 255
"""uint8 activations: 0..255."""

_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


@functools.cache
def cpu_has_vnni() -> bool:
    """Whether the CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8).

    Without one, x86 int8 kernels multiply uint8 by int8 with ``vpmaddubsw``, whose 16-bit pair
    sums saturate for large weights: weights then get 7 bits (:attr:`Calibration.weight_bits`).
    """
    return bool(_VNNI_FLAGS & cpu_flags())


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine uint8 quantization: ``x ~ scale * (q - zero_point)``, q in 0..255."""

    scale: float
    zero_point: int

    @classmethod
    def of_range(cls, low: float, high: float) -> QParams:
        """The parameters that cover [low, high] (widened to hold 0, which must stay exact: the
        canvas and the convolutions pad with zeros)."""
        low, high = min(low, 0.0), max(high, 0.0)
        scale = max(high - low, 1e-8) / ACTIVATION_LEVELS
        return cls(scale, int(min(max(round(-low / scale), 0), ACTIVATION_LEVELS)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, ACTIVATION_LEVELS)


@dataclass(frozen=True)
class Calibration:
    """The ranges an int8 graph quantizes by: ``ranges`` maps ``"input"`` and each trunk layer's
    name to the (min, max) of its output over the calibration images; ``weight_bits`` (8, or 7
    where int8 kernels would saturate: :func:`cpu_has_vnni`); ``images``: how many were seen."""

    ranges: tuple[tuple[str, float, float], ...]
    weight_bits: int = 8
    images: int = 0

    def params(self, name: str) -> QParams:
        for key, low, high in self.ranges:
            if key == name:
                return QParams.of_range(low, high)
        raise KeyError(f"no calibrated range for {name!r}: calibrate with this net")

    def to_dict(self) -> dict:
        return {
            "ranges": [list(r) for r in self.ranges],
            "weight_bits": self.weight_bits,
            "images": self.images,
        }


def calibrate(model: nn.Module, images: Iterable[np.ndarray], weight_bits: int | None = None) -> Calibration:
    """The ranges of ``model``'s trunk over ``images`` ((H, W, 3) uint8 RGB, each at its own size,
    preprocessed as the model's weights expect): the plain net runs in eval mode with hooks on
    its trunk's layers, which are removed afterwards.

    ``weight_bits`` defaults to 8 where the CPU has VNNI, else 7 (see :func:`cpu_has_vnni`).
    """
    ranges: dict[str, tuple[float, float]] = {}

    def widen(name: str, x: torch.Tensor) -> None:
        low, high = float(x.min()), float(x.max())
        old = ranges.get(name, (low, high))
        ranges[name] = (min(old[0], low), max(old[1], high))

    layers = list(model.backbone.named_children())
    hooks = [layer.register_forward_hook(lambda _m, _i, y, n=name: widen(n, y)) for name, layer in layers]
    hooks.append(layers[0][1].register_forward_pre_hook(lambda _m, x: widen("input", x[0])))
    count = 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for image in images:
                model(preprocess(np.asarray(image), preprocessing_of(model))[None].to(device))
                count += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not count:
        raise ValueError("calibration needs at least one image")
    bits = weight_bits if weight_bits is not None else (8 if cpu_has_vnni() else 7)
    return Calibration(tuple((k, lo, hi) for k, (lo, hi) in ranges.items()), bits, count)


CALIBRATION_IMAGES = 32
"""The most images of a folder that calibration reads (in name order): ranges settle after a few."""


def calibration_images(folder: str | os.PathLike, limit: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """The first ``limit`` images of ``folder`` (by name; files PIL opens), as (H, W, 3) uint8 RGB."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"calibration: {root} is no folder of images")
    files = image_files(root)
    if not files:
        raise ValueError(f"calibration: {root} holds no image files")
    return [read_image(p) for p in files[:limit]]


_CALIBRATIONS: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, Calibration]]] = (
    weakref.WeakKeyDictionary()
)


def calibration_of(
    model: nn.Module, source: Calibration | str | os.PathLike | Sequence[np.ndarray] | None
) -> Calibration | None:
    """``source`` as a calibration of ``model``: itself, or :func:`calibrate` on a folder's images
    (computed once per net, weights and folder) or on the images given."""
    if source is None or isinstance(source, Calibration):
        return source
    if isinstance(source, str | os.PathLike):
        key = str(Path(source).resolve())
        weights = _weights_fingerprint(model)
        known = _CALIBRATIONS.setdefault(model, {}).get(key)
        if known is None or known[0] != weights:
            known = (weights, calibrate(model, calibration_images(source)))
            _CALIBRATIONS[model][key] = known
        return known[1]
    return calibrate(model, source)


class Quantized(nn.Module):
    """A trunk layer between fake quantizers (any of them None: not quantized there).

    (N, C, H, W) -> the layer's output, computed as an int8 runtime computes it: a
    convolution on its quantized input with weights quantized per output channel
    (symmetric, ``weight_bits``), the output quantized per tensor.
    """

    def __init__(
        self,
        layer: nn.Module,
        input: QParams | None,
        output: QParams | None,
        weight_bits: int = 8,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.input, self.output = input, output
        if isinstance(layer, nn.Conv2d):
            # int8 storage either way (ONNX knows no int7): fewer bits is a larger scale
            weight = layer.weight.detach()
            limit = 2 ** (weight_bits - 1) - 1
            self.register_buffer("scales", (weight.abs().amax((1, 2, 3)) / limit).clamp_min(1e-12))
            self.register_buffer("zeros", torch.zeros(weight.shape[0], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input is not None:
            x = self.input(x)
        layer = self.layer
        if isinstance(layer, nn.Conv2d):
            weight = torch.fake_quantize_per_channel_affine(
                layer.weight, self.scales, self.zeros, 0, -128, 127
            )
            x = torch.nn.functional.conv2d(
                x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
            )
        else:
            x = layer(x)
        return self.output(x) if self.output is not None else x


def quantized_layers(
    layers: Sequence[tuple[str, nn.Module]], calibration: Calibration
) -> list[tuple[str, nn.Module]]:
    """``layers`` (a trunk's, in order) wrapped in :class:`Quantized` where an int8 runtime quantizes.

    A convolution reads its input quantized (as the tensor before it was), with its
    weights; its output is quantized unless a ReLU follows, whose output is (the
    runtimes fuse convolution, ReLU and quantization into one integer kernel). A
    pooling passes its input's quantization on (the maximum of quantized values is
    one), so that the runtimes pool in integers. Other layers (LRN) are quantized
    by their own range; ReLUs are made out of place, as taps may precede them.
    """
    out: list[tuple[str, nn.Module]] = []
    current = calibration.params("input")
    for i, (name, layer) in enumerate(layers):
        following = layers[i + 1][1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Conv2d):
            output = None if isinstance(following, nn.ReLU) else calibration.params(name)
            wrapped: nn.Module = Quantized(layer, current, output, calibration.weight_bits)
            current = output or current
        elif isinstance(layer, nn.ReLU):
            current = calibration.params(name)
            wrapped = Quantized(nn.ReLU(), None, current)
        elif isinstance(layer, nn.MaxPool2d):
            wrapped = Quantized(layer, None, current)
        elif isinstance(layer, nn.Dropout):
            wrapped = layer
        else:
            current = calibration.params(name)
            wrapped = Quantized(layer, None, current)
        out.append((name, wrapped))
    return out


def quantized_net(model: nn.Module, calibration: Calibration) -> nn.Module:
    """A copy of ``model`` (an FCN of a sequential trunk) whose trunk layers are :func:`quantized_layers`:
    the padded net as an int8 runtime computes it, for any input size. ``model`` is left alone."""
    twin = copy.deepcopy(model).eval()
    for name, layer in quantized_layers(list(twin.backbone.named_children()), calibration):
        setattr(twin.backbone, name, layer)
    return twin
