"""Exact fast inference for FCN nets: the trimmed canvas (skip the constant padding), fused conv + ReLU.

The trunk runs on the trimmed canvas of :mod:`fcnseg.accel.canvas`, which skips
most of the 100-pixel input padding exactly, with kernels picked for inference:
channels-last blobs, convolution and ReLU fused, weights packed per input shape,
1x1 scores computed on the canvas before the copies back. The result equals the
padded net up to float rounding for every input size.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.accel import Shared
from fcnseg.accel.canvas import AxisPlan, canvas_reason, gather, layer_windows, plan_canvas
from fcnseg.accel.head import Blob, fcn_head
from fcnseg.accel.kernels import HUGE_KERNEL, matrix_convolution
from fcnseg.models.fcn import FCN
from fcnseg.models.layers import check_input


class _ConvReLU(nn.Conv2d):
    """A convolution with its ReLU fused, on channels-last blobs, by the fastest exact route for its shape.

    oneDNN runs fastest on weights reordered into the blocked layout it picks for
    the input's shape, and reorders on every call when they do not match (plain
    weights: fc6's 400 MB each time; weights packed for another shape: up to 10 s
    for fc6 at small sizes). So 3x3 convolutions keep weights packed for the last
    few input shapes (a cheap reorder per new shape), while 1x1 and huge-kernel
    convolutions (fc6, fc7: a new image size would cost a 400 MB reorder) go to
    MKL as one matrix product (im2col), as fast whatever the shape. bfloat16, or
    builds without oneDNN, use ``F.conv2d``.
    """

    SHAPES = 4
    """Input shapes whose packed weights are kept."""

    def __init__(self, conv: nn.Conv2d, relu: bool, padding: tuple[int, int] | None = None) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            padding if padding is not None else conv.padding,  # type: ignore[arg-type]
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            conv.bias is not None,
            device="meta",  # no initialisation: the tensors are the convolution's own
        )
        self.weight = nn.Parameter(conv.weight.detach(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.relu = relu
        self.as_matrix = False
        self.packed: OrderedDict[torch.Size, torch.Tensor] = OrderedDict()

    def pack(self) -> None:
        """Choose the route: the matrix product where that is fastest (see the class's docstring)."""
        self.packed.clear()
        self.as_matrix = (
            self.weight.dtype == torch.float32  # without native bfloat16, MKL's product runs at ~1 GFLOP/s
            and self.groups == 1
            and (self.kernel_size == (1, 1) or self.weight.numel() > HUGE_KERNEL)
        )

    def _packed_for(self, shape: torch.Size) -> torch.Tensor:
        if shape in self.packed:
            self.packed.move_to_end(shape)
        else:
            self.packed[shape] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach(),
                list(self.padding),  # type: ignore[arg-type]
                list(self.stride),
                list(self.dilation),
                self.groups,
                list(shape),
            )
            if len(self.packed) > self.SHAPES:
                self.packed.popitem(last=False)
        return self.packed[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.as_matrix:
            y = matrix_convolution(x, self.weight, self.bias, self.stride, self.padding, self.dilation)  # type: ignore[arg-type]
            return y.relu_() if self.relu else y
        if x.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            return torch.ops.mkldnn._convolution_pointwise(
                x.contiguous(memory_format=torch.channels_last),
                self._packed_for(x.shape),
                self.bias,
                list(self.padding),  # type: ignore[arg-type]
                list(self.stride),
                list(self.dilation),
                self.groups,
                "relu" if self.relu else "none",
                [],
                "",
            )
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return y.relu_() if self.relu else y


class _Float32LRN(nn.LocalResponseNorm):
    """Local response normalisation computed in float32 whatever its input's dtype: PyTorch's CPU
    kernel (an average pooling over channels) has no bfloat16 version."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _lrn_in_float32(module: nn.Module) -> nn.Module:
    """``module`` with every LocalResponseNorm in it (itself included) computing in float32."""
    if type(module) is nn.LocalResponseNorm:
        return _Float32LRN(module.size, module.alpha, module.beta, module.k)
    for name, child in module.named_children():
        setattr(module, name, _lrn_in_float32(child))
    return module


class FastFCN(nn.Module):
    """Inference-only twin of an :class:`FCN`: same output, computed on a trimmed canvas.

    (N, C, H, W) -> (N, num_classes, H, W) float32 for any H, W >= 1. The trunk runs
    on the canvas with fused convolutions (copies of the net's, packed for speed: a
    twin serves one set of weights); the head is the net's own layers, computed for
    what the crops keep (:func:`fcnseg.accel.head.fcn_head`). With
    ``dtype=torch.bfloat16`` the trunk runs in bfloat16 and the head in float32. A
    trunk the canvas cannot run (:func:`~fcnseg.accel.canvas.canvas_reason`: a
    composite module such as an inception module) runs as written, in ``dtype``.
    """

    def __init__(self, model: FCN, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        self.in_channels = model.in_channels
        self.num_classes = model.num_classes
        self.tap_names = model.skips
        self.net = Shared(model)
        self.as_written: nn.Module | None = None
        if canvas_reason(model.backbone) is not None:
            trunk = model.backbone
            if dtype != torch.float32:  # a copy in dtype; float32 runs the net's own trunk
                trunk = _lrn_in_float32(copy.deepcopy(trunk).to(dtype)).eval().requires_grad_(False)
            self.as_written = trunk
            return
        children = [(n, m) for n, m in model.backbone.named_children() if not isinstance(m, nn.Dropout)]
        steps: list[nn.Module] = []
        names: list[str] = []
        i = 0
        while i < len(children):
            name, layer = children[i]
            fuse = (
                isinstance(layer, nn.Conv2d)
                and name not in self.tap_names
                and i + 1 < len(children)
                and isinstance(children[i + 1][1], nn.ReLU)
            )
            if isinstance(layer, nn.Conv2d):
                padding = (0, 0) if not steps else None
                layer = _ConvReLU(layer, fuse, padding)
            elif isinstance(layer, nn.ReLU) and names and names[-1] in self.tap_names:
                layer = nn.ReLU()  # not in place: the tap before it stays the layer's output
            else:
                layer = copy.deepcopy(layer)
            steps.append(layer)
            names.append(children[i + 1][0] if fuse else name)
            i += 2 if fuse else 1
        self.pad0 = tuple(model.backbone[0].padding)  # type: ignore[arg-type]
        self.steps = _lrn_in_float32(nn.ModuleList(steps).to(dtype))
        for step in self.steps:
            if isinstance(step, _ConvReLU):
                step.pack()
        self.windows = tuple(layer_windows(s) for s in steps)
        self.taps = {names.index(tap): tap for tap in self.tap_names}
        self.keep = tuple(sorted({*self.taps, len(steps) - 1}))
        self.eval()
        self.requires_grad_(False)

    def plan(self, height: int, width: int) -> tuple[AxisPlan, AxisPlan]:
        """The canvas plans of both axes for an input of ``height`` x ``width``."""
        return plan_canvas(self.windows, self.pad0, (height, width), self.keep)

    def trunk(self, x: torch.Tensor) -> tuple[dict[str, Blob], Blob]:
        """The trunk's taps and output, float32, as blobs on the canvas."""
        if self.as_written is not None:
            taps, h = self.as_written.features(x.to(self.dtype), self.tap_names)
            return {k: Blob(v.float()) for k, v in taps.items()}, Blob(h.float())
        ph, pw = self.plan(*x.shape[-2:])
        h = F.pad(x.to(self.dtype), (*pw.pad, *ph.pad)).contiguous(memory_format=torch.channels_last)
        kept: dict[int, Blob] = {}
        for i, step in enumerate(self.steps):
            if i in ph.reindex or i in pw.reindex:
                h = gather(h, ph.reindex.get(i), pw.reindex.get(i), channels_last=True)
            h = step(h)
            if i in self.keep:
                kept[i] = Blob(h.float(), ph.expand[i], pw.expand[i])
        return {tap: kept[i] for i, tap in self.taps.items()}, kept[len(self.steps) - 1]

    def head(self, taps: dict[str, Blob], top: Blob, like: torch.Tensor) -> torch.Tensor:
        """The net's head, for what the crops keep: scores the size of ``like`` (the input)."""
        return fcn_head(self.net.module, top, taps, *like.shape[-2:]).contiguous()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(*self.trunk(check_input(x, self.in_channels)), x)
