"""Compute cost of a net at a given input size: multiply-accumulates and parameters, layer by layer.

Counted by running the net once with forward hooks, so the count follows the
sizes the net really sees (padding 100, ceil-mode pooling, crops). Only
convolutions and transposed convolutions are counted: they are all but a
fraction of a percent of an FCN's arithmetic. One multiply-accumulate (MAC) is
two floating-point operations (FLOPs). Build the net on the meta device to count
without computing: ``with torch.device("meta"): model = build_model("fcn8s")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ComputeCost", "LayerCost", "compute_cost"]


@dataclass(frozen=True)
class LayerCost:
    """One leaf layer in the order it ran: its output shape (C, H, W), MACs and parameters."""

    name: str
    layer: str
    output_shape: tuple[int, ...]
    macs: int
    params: int


@dataclass(frozen=True)
class ComputeCost:
    """Per-layer costs for one image of ``input_shape`` (C, H, W)."""

    input_shape: tuple[int, ...]
    layers: tuple[LayerCost, ...]
    params: int

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def gflops(self) -> float:
        """Billions of floating-point operations, two per multiply-accumulate."""
        return 2 * self.macs / 1e9


def conv_macs(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """Multiply-accumulates of one convolution or transposed convolution on one image.

    A convolution does k*k*C_in/groups MACs per output value; a transposed
    convolution does k*k*C_out/groups per input value (each input pixel is
    spread over a k x k window). Dilation changes where taps land, not how many.
    """
    if isinstance(layer, nn.ConvTranspose2d):
        return inputs[0][0].numel() * math.prod(layer.kernel_size) * layer.out_channels // layer.groups
    if isinstance(layer, nn.Conv2d):
        return output[0].numel() * math.prod(layer.kernel_size) * layer.in_channels // layer.groups
    return 0


def compute_cost(model: nn.Module, size: tuple[int, int], in_channels: int | None = None) -> ComputeCost:
    """Run ``model`` once on a (1, C, H, W) input of ``size`` (H, W) and count its cost.

    The input lives on the device of the model's parameters: on the meta device
    nothing is computed. ``in_channels`` defaults to the first convolution's.
    The model is run in eval mode under ``no_grad`` and left in its own mode. A net
    is counted as written, padding and all: the paper's arithmetic, not what
    :mod:`fcnseg.accel` skips.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    if in_channels is None:
        if not convs:
            raise ValueError("no convolution in the model: pass in_channels")
        in_channels = convs[0].in_channels
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    records: list[LayerCost] = []

    def record(name: str):
        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            params = sum(p.numel() for p in layer.parameters(recurse=False))
            shape = tuple(output.shape[1:])
            records.append(
                LayerCost(name, type(layer).__name__, shape, conv_macs(layer, inputs, output), params)
            )

        return hook

    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(record(name)) for name, m in leaves]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, *size, device=device))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    total = sum(p.numel() for p in model.parameters())
    return ComputeCost((in_channels, *size), tuple(records), total)
