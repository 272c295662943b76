"""Portable graphs of an FCN for other runtimes: the trimmed canvas for one input size, as ONNX.

The fast path (:mod:`fcnseg.accel.inference`) owes its speed to two things: the work
it skips (the trimmed canvas, the head computed for what the crops keep) and its
kernels (oneDNN calls with fused ReLU). A runtime brings its own kernels; what it
can take over is the skipping. :class:`CanvasGraph` is the fast path's computation
for one input size in operations every exporter knows: plain convolutions and
ReLUs, the canvas's copies as ``index_select`` with constant indices (``Gather`` in
ONNX), the head's bilinear upsampling as products with constant matrices. Its
output equals ``model(x)`` to float rounding, and exported with int8 fake
quantizers (:mod:`fcnseg.accel.quantize`) it is the int8 graph.
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.accel import Shared
from fcnseg.accel.canvas import canvas_reason, gather, layer_windows, plan_canvas
from fcnseg.accel.head import Blob, fcn_head
from fcnseg.accel.quantize import Calibration, quantized_layers, quantized_net
from fcnseg.models.fcn import FCN
from fcnseg.models.layers import check_input

__all__ = ["OPSET", "CanvasGraph", "graph_reason", "onnx_graph", "padded_graph"]

OPSET = 17
"""ONNX opset of the graphs: per-channel QDQ needs 13; 17 is what both runtimes run fully."""


def graph_reason(model: nn.Module) -> str | None:
    """Why no portable canvas graph can be built for ``model``; None when one can: an FCN
    (one head or several) whose trunk the canvas runs."""
    if not isinstance(model, FCN):
        return f"a {type(model).__name__} is no FCN: runtime graphs are built for FCN nets"
    reason = canvas_reason(model.backbone)
    return None if reason is None else f"its trunk cannot run on the canvas ({reason})"


class CanvasGraph(nn.Module):
    """``model``'s computation on the trimmed canvas for inputs of one size, in portable operations.

    (N, C, height, width) -> (N, num_classes, height, width) float32, equal to
    ``model(x)`` to float rounding; with ``calibration`` the trunk between int8 fake
    quantizers. Reads ``model``'s parameters (it is built per set of weights).
    """

    def __init__(self, model: FCN, height: int, width: int, calibration: Calibration | None = None) -> None:
        super().__init__()
        reason = graph_reason(model)
        if reason is not None:
            raise ValueError(f"no canvas graph: {reason}")
        self.net = Shared(model)
        self.in_channels = model.in_channels
        self.size = (height, width)
        layers = [(n, m) for n, m in model.backbone.named_children() if not isinstance(m, nn.Dropout)]
        first = layers[0][1]
        self.pad0 = tuple(first.padding)  # type: ignore[arg-type]
        unpadded = copy.copy(first)  # shares the parameters
        unpadded.padding = (0, 0)
        layers[0] = (layers[0][0], unpadded)
        windows = tuple(layer_windows(m) for _, m in layers)
        if calibration is not None:
            layers = quantized_layers(layers, calibration)
            self.quantize_input = calibration.params("input")
        else:
            layers = [(n, nn.ReLU() if isinstance(m, nn.ReLU) else m) for n, m in layers]
            self.quantize_input = None
        self.steps = nn.ModuleList(m for _, m in layers)
        names = [n for n, _ in layers]
        self.taps = {names.index(tap): tap for tap in model.skips}
        self.keep = tuple(sorted({*self.taps, len(layers) - 1}))
        self.plans = plan_canvas(windows, self.pad0, self.size, self.keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels)
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"this graph takes {self.size} inputs, got {tuple(x.shape[-2:])}")
        rows, cols = self.plans
        if self.quantize_input is not None:
            x = self.quantize_input(x)
        h = F.pad(x, (*cols.pad, *rows.pad))
        kept: dict[int, Blob] = {}
        for i, step in enumerate(self.steps):
            h = step(gather(h, rows.reindex.get(i), cols.reindex.get(i), channels_last=False))
            if i in self.keep:
                kept[i] = Blob(h, rows.expand[i], cols.expand[i])
        taps = {tap: kept[i] for i, tap in self.taps.items()}
        return fcn_head(self.net.module, kept[len(self.steps) - 1], taps, *self.size)


def padded_graph(model: FCN, calibration: Calibration | None = None) -> nn.Module:
    """The padded net for any input size: ``model`` itself, or with ``calibration`` a copy between
    int8 fake quantizers (:func:`~fcnseg.accel.quantize.quantized_net`)."""
    return model if calibration is None else quantized_net(model, calibration)


def onnx_graph(module: nn.Module, example: torch.Tensor, dynamic_size: bool):
    """``module`` exported to ONNX (input ``image``, output ``scores``, dynamic batch; with
    ``dynamic_size`` dynamic height and width too) as an ``onnx.ModelProto``, with quantized
    weights stored as int8 (:func:`fold_weight_quantizers`). Needs the ``onnx`` package."""
    import onnx

    axes = {0: "batch", **({2: "height", 3: "width"} if dynamic_size else {})}
    shared = getattr(module, "net", None)
    if isinstance(shared, Shared):
        module = _Exported(module, shared.module)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # shapes read in forward become constants: right for a graph of one input size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        module(example)  # the head's cached constant matrices, computed before the trace records them
        torch.onnx.export(
            module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["image"],
            output_names=["scores"], dynamic_axes={"image": axes, "scores": axes},
        )  # fmt: skip
    graph = onnx.load_from_string(buffer.getvalue())
    fold_weight_quantizers(graph)
    return graph


class _Exported(nn.Module):
    """A graph with the net it reads as a submodule, so that the exporter takes the net's
    parameters as the graph's weights (a graph holds its net apart: :class:`~fcnseg.accel.Shared`)."""

    def __init__(self, graph: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.graph, self.net = graph, net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def fold_weight_quantizers(proto) -> int:
    """Replace each ``QuantizeLinear`` of a constant (a quantized weight) by its int8 result, and drop
    the float weights no node reads any more: the file holds int8 weights, and every runtime sees
    the ``DequantizeLinear`` -> ``Conv`` pattern it fuses. Returns how many were folded."""
    from onnx import numpy_helper

    graph = proto.graph
    constants = {i.name: i for i in graph.initializer}
    values = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}  # shared constants

    def value(name: str) -> np.ndarray | None:
        while name in aliases:
            name = aliases[name]
        if name in constants:
            return numpy_helper.to_array(constants[name])
        if name in values:
            return numpy_helper.to_array(values[name].attribute[0].t)
        return None

    kept, folded = [], 0
    for node in graph.node:
        weight = value(node.input[0]) if node.op_type == "QuantizeLinear" else None
        if weight is None or weight.ndim < 2:
            kept.append(node)
            continue
        scale, zero = value(node.input[1]), value(node.input[2])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        shape[axis] = -1
        info = np.iinfo(zero.dtype)
        q = np.round(weight / scale.reshape(shape)) + zero.reshape(shape).astype(np.float32)
        graph.initializer.append(
            numpy_helper.from_array(np.clip(q, info.min, info.max).astype(zero.dtype), node.output[0])
        )
        folded += 1
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for initializer in unused:
        graph.initializer.remove(initializer)
    return folded
