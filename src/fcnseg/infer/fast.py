"""Exact fast inference for FCN nets: the trimmed canvas (skip the constant padding), fused conv + ReLU.

The net runs on the trimmed canvas of :mod:`fcnseg.models.canvas`, which skips
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

from fcnseg.models.canvas import AxisPlan, gather, layer_windows, plan_canvas, upsample_and_crop
from fcnseg.models.fcn import FCN
from fcnseg.models.fusion import LateFusionFCN
from fcnseg.models.layers import crop_like
from fcnseg.models.trunk import SequentialTrunk


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

    HUGE = 1 << 24
    """Weights with more elements than this go to im2col: reordering them per shape costs seconds."""

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
        )
        self.load_state_dict(conv.state_dict())
        self.relu = relu
        self.matrix: torch.Tensor | None = None
        self.packed: OrderedDict[torch.Size, torch.Tensor] = OrderedDict()

    def pack(self) -> None:
        """Lay float32 weights out as an im2col matrix where that is the route taken."""
        weight = self.weight.detach()
        self.packed.clear()
        self.matrix = None
        if (
            weight.dtype == torch.float32  # without native bfloat16, MKL's product runs at ~1 GFLOP/s
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.bias is not None
            and (self.kernel_size == (1, 1) or weight.numel() > self.HUGE)
        ):
            self.matrix = weight.permute(2, 3, 1, 0).reshape(-1, self.out_channels)  # (kh kw cin, cout)

    def _im2col(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        rows = x.permute(0, 2, 3, 1)
        if ph or pw:
            rows = F.pad(rows, (0, 0, pw, pw, ph, ph))
        if (kh, kw, sh, sw) != (1, 1, 1, 1):
            rows = rows.unfold(1, kh, sh).unfold(2, kw, sw).permute(0, 1, 2, 4, 5, 3)
        n, height, width = rows.shape[:3]
        y = torch.addmm(self.bias, rows.reshape(n * height * width, -1), self.matrix)  # type: ignore[arg-type]
        y = y.relu_() if self.relu else y
        return y.view(n, height, width, -1).permute(0, 3, 1, 2)

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
        if self.matrix is not None:
            return self._im2col(x)
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


def _fast_upsampler(layer: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """A per-class transposed convolution when classes do not mix (the bilinear ones): C times less work.

    Exact: the dropped weights are zeros.
    """
    w = layer.weight.detach()
    if layer.groups != 1 or w.shape[0] != w.shape[1] or layer.bias is not None:
        return copy.deepcopy(layer)
    eye = torch.eye(w.shape[0], dtype=torch.bool)
    if w[~eye].any():
        return copy.deepcopy(layer)
    grouped = nn.ConvTranspose2d(
        w.shape[0],
        w.shape[0],
        layer.kernel_size,  # type: ignore[arg-type]
        layer.stride,  # type: ignore[arg-type]
        layer.padding,  # type: ignore[arg-type]
        layer.output_padding,  # type: ignore[arg-type]
        groups=w.shape[0],
        bias=False,
        dilation=layer.dilation,  # type: ignore[arg-type]
    )
    with torch.no_grad():
        grouped.weight.copy_(w[eye].view(w.shape[0], 1, *w.shape[2:]))
    return grouped


def canvas_reason(trunk: nn.Module) -> str | None:
    """Why the trimmed canvas cannot run ``trunk``; None when it can: a sequential trunk that starts
    with a convolution, of layers whose windows the canvas knows."""
    if not isinstance(trunk, SequentialTrunk):
        return f"a {type(trunk).__name__} is no layer sequence"
    if not isinstance(trunk[0], nn.Conv2d):
        return "the trunk does not start with a convolution"
    for name, layer in trunk.named_children():
        try:
            layer_windows(layer)
        except TypeError as error:
            return f"{name}: {error}"
    return None


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

    (N, C, H, W) -> (N, num_classes, H, W) float32 for any H, W >= 1. With
    ``dtype=torch.bfloat16`` the backbone runs in bfloat16 and the head in float32.
    A trunk the canvas cannot run (:func:`canvas_reason`: a composite module such as
    an inception module) runs as written, in ``dtype``, before the same head.
    """

    def __init__(self, model: FCN, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        self.in_channels = model.in_channels
        self.num_classes = model.num_classes
        self.skips = model.skips
        self.fusions = list(model.fusions)
        self.final_name = model.final_name
        self.output_offset = model.output_offset
        self.as_written: FCN | None = None
        if canvas_reason(model.backbone) is not None:
            self.as_written = copy.deepcopy(model).eval().requires_grad_(False)
            self.as_written.backbone = _lrn_in_float32(self.as_written.backbone.to(dtype))
            return
        children = [(n, m) for n, m in model.backbone.named_children() if not isinstance(m, nn.Dropout)]
        steps: list[nn.Module] = []
        names: list[str] = []
        i = 0
        while i < len(children):
            name, layer = children[i]
            fuse = (
                isinstance(layer, nn.Conv2d)
                and name not in self.skips
                and i + 1 < len(children)
                and isinstance(children[i + 1][1], nn.ReLU)
            )
            if isinstance(layer, nn.Conv2d):
                padding = (0, 0) if not steps else None
                layer = _ConvReLU(layer, fuse, padding)
            elif isinstance(layer, nn.ReLU) and names and names[-1] in self.skips:
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
        self.taps = {names.index(tap): tap for tap in self.skips}
        self.keep = tuple(sorted({*self.taps, len(steps) - 1}))
        self.score_fr = copy.deepcopy(model.score_fr)
        self.head = nn.ModuleDict(
            {
                name: _fast_upsampler(m) if isinstance(m, nn.ConvTranspose2d) else copy.deepcopy(m)
                for name, m in model.named_children()
                if name not in ("backbone", "score_fr")
            }
        )
        self.eval()
        self.requires_grad_(False)

    def plan(self, height: int, width: int) -> tuple[AxisPlan, AxisPlan]:
        """The canvas plans of both axes for an input of ``height`` x ``width``."""
        return plan_canvas(self.windows, self.pad0, (height, width), self.keep)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if self.as_written is not None:
            taps, h = self.as_written.backbone.run(x.to(self.dtype), self.skips)
            return self.as_written.score(h.float(), {k: v.float() for k, v in taps.items()}, height, width)
        ph, pw = self.plan(height, width)
        h = F.pad(x.to(self.dtype), (*pw.pad, *ph.pad)).contiguous(memory_format=torch.channels_last)
        full: dict[int, torch.Tensor] = {}
        for i, step in enumerate(self.steps):
            if i in ph.reindex or i in pw.reindex:
                h = gather(h, ph.reindex.get(i), pw.reindex.get(i), channels_last=True)
            h = step(h)
            if i in self.keep:
                full[i] = h
        taps = {self.taps[i]: (full[i], ph.expand[i], pw.expand[i]) for i in self.taps}
        last = len(self.steps) - 1
        h = gather(self.score_fr(full[last].float()), ph.expand[last], pw.expand[last], channels_last=True)
        for upsample_name, tap, offset in self.fusions:
            h = self.head[upsample_name](h)
            skip, rows, cols = taps[tap]
            skip = skip.float()
            if f"scale_{tap}" in self.head:
                skip = self.head[f"scale_{tap}"](skip)
            skip = gather(self.head[f"score_{tap}"](skip), rows, cols, channels_last=True)
            h = h + crop_like(skip, offset, h.shape[-2], h.shape[-1])
        return upsample_and_crop(
            self.head[self.final_name], h, self.output_offset, height, width
        ).contiguous()


def optimize(model: FCN | LateFusionFCN, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An inference-only copy of ``model`` whose output equals ``model.eval()(x)`` for every input size.

    float32 agrees to float rounding (about 1e-6 relative); bfloat16 trades
    exactness for speed only on CPUs with native bfloat16 arithmetic. A late fusion
    gets a fast twin per stream.
    """
    if isinstance(model, LateFusionFCN):
        return LateFusionFCN([FastFCN(stream, dtype) for stream in model.streams.values()], model.names)
    return FastFCN(model, dtype)
