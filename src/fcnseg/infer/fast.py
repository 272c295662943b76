"""Exact fast inference for FCN nets: skip the constant padding far from the image, fuse conv + ReLU.

The original nets pad conv1 by 100, so that at 500x500 about half the arithmetic
of the first stages is spent on rows and columns that see only zeros. Along one
axis, every blob is [border frame | run | core around the image | run | border
frame], where a *run* is a stretch of identical slices: its positions see only
padding zeros within their receptive field, and far from the blob's own border.
Removing all but a few positions of each run from the canvas commutes exactly
with every convolution and pooling, provided that (i) the number removed is a
multiple of the layer's stride, (ii) the canvas keeps at least ``kernel - 1`` run
positions at each layer's input (so no window straddles both sides) and (iii) at
least one at its output (a representative to copy back). So the net runs on a
smaller canvas and the removed slices are copied back (``index_select``) only
where the runs get too short to satisfy (ii) and (iii), once per stride level,
and at the skips and the end, where the head needs full blobs. The result equals
the padded net up to float rounding for every input size: nothing is
approximated, only duplicated work is skipped.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models.fcn import FCN
from fcnseg.models.geometry import ELEMENTWISE
from fcnseg.models.layers import crop_like

_Run = tuple[int, int]
"""Half-open interval [a, b) of positions along one axis holding identical slices."""


@dataclass(frozen=True)
class _Window:
    """A sliding window (convolution or pooling) along one axis."""

    span: int
    stride: int
    padding: int
    ceil_mode: bool = False

    def out_length(self, length: int) -> int:
        """Output length, with PyTorch's rule for ceil-mode pooling (the last window starts inside)."""
        extent = length + 2 * self.padding - self.span
        if extent < 0:
            raise ValueError(f"input of length {length} is smaller than a window of {self.span}")
        if not self.ceil_mode:
            return extent // self.stride + 1
        n = -(-extent // self.stride) + 1
        return n - 1 if (n - 1) * self.stride >= length + self.padding else n

    def run_after(self, run: _Run) -> _Run:
        """The outputs whose whole window lies in ``run``: they too are identical."""
        a, b = run
        lo = -(-(a + self.padding) // self.stride)
        hi = (b + self.padding - self.span) // self.stride + 1
        return (lo, hi) if a < b and lo < hi else (0, 0)


def _windows(layer: nn.Module) -> tuple[_Window, _Window] | None:
    """The (height, width) windows of a spatial layer; None for a layer acting per position."""
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise TypeError("only explicit zero padding is supported")
        k, s, p, d = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        return tuple(_Window(d[i] * (k[i] - 1) + 1, s[i], p[i]) for i in (0, 1))  # type: ignore[return-value]
    if isinstance(layer, nn.MaxPool2d | nn.AvgPool2d):
        k, s, p = (nn.modules.utils._pair(v) for v in (layer.kernel_size, layer.stride, layer.padding))
        d = nn.modules.utils._pair(getattr(layer, "dilation", 1))
        return tuple(  # type: ignore[return-value]
            _Window(d[i] * (k[i] - 1) + 1, s[i], p[i], layer.ceil_mode) for i in (0, 1)
        )
    if isinstance(layer, ELEMENTWISE):
        return None
    raise TypeError(f"no fast path known for layer {type(layer).__name__}")


@dataclass(frozen=True)
class _AxisPlan:
    """How one axis of the canvas differs from the full blobs, for one input length.

    ``pad``: zeros before and after the image (instead of the first layer's padding).
    ``reindex[i]``: before step i, canvas positions to take from the current canvas.
    ``expand[i]``: after step i, the canvas position of every full position (None: same).
    """

    pad: tuple[int, int]
    reindex: dict[int, torch.Tensor]
    expand: dict[int, torch.Tensor | None]
    lengths: tuple[int, ...]


def _removal(windows: tuple[_Window | None, ...], runs: list[tuple[_Run, _Run]], side: int) -> int:
    """The largest number of run positions a stretch of layers can drop from its input canvas.

    It must divide by every stride in the stretch; each layer needs ``span - 1`` run
    positions left at its input (no window sees both sides) and one at its output.
    """
    total_stride = 1
    for w in windows:
        total_stride *= w.stride if w else 1
    length = runs[0][side][1] - runs[0][side][0]
    best = 0
    for drop in range(total_stride, length, total_stride):
        scale = 1
        for i, w in enumerate(windows):
            if w is None:
                continue
            n_in, n_out = (runs[j][side][1] - runs[j][side][0] for j in (i, i + 1))
            if n_in - drop // scale < max(w.span - 1, 1) or n_out - drop // (scale * w.stride) < 1:
                return best
            scale *= w.stride
        best = drop
    return best


def _canvas_map(length: int, runs: tuple[_Run, _Run], drops: tuple[int, int]) -> torch.Tensor:
    """Full position -> canvas position, when the canvas drops the last ``drops`` positions of each run."""
    full_to_canvas = torch.empty(length, dtype=torch.long)
    kept = torch.ones(length, dtype=torch.bool)
    for (_, b), drop in zip(runs, drops, strict=True):
        kept[b - drop : b] = False
    canvas = torch.cumsum(kept, 0) - 1
    full_to_canvas[:] = canvas
    for (_, b), drop in zip(runs, drops, strict=True):
        full_to_canvas[b - drop : b] = canvas[b - drop - 1] if drop else 0
    return full_to_canvas


def _kept(length: int, runs: tuple[_Run, _Run], drops: tuple[int, int]) -> torch.Tensor:
    """Full positions that stay on the canvas."""
    kept = torch.ones(length, dtype=torch.bool)
    for (_, b), drop in zip(runs, drops, strict=True):
        kept[b - drop : b] = False
    return kept.nonzero().flatten()


@functools.lru_cache(maxsize=256)
def _plan_axis(
    windows: tuple[_Window | None, ...], pad0: int, length: int, keep: tuple[int, ...]
) -> _AxisPlan:
    """Plan one axis for an image of ``length``: canvas drops per stretch, copies between stretches.

    ``windows[0]`` is the first layer without its padding ``pad0``, which the canvas
    input carries instead; ``keep`` lists the steps whose full output is needed.
    """
    lengths = [length + 2 * pad0]
    runs: list[tuple[_Run, _Run]] = [((0, pad0), (pad0 + length, length + 2 * pad0))]
    for w in windows:
        lengths.append(w.out_length(lengths[-1]) if w else lengths[-1])
        runs.append(tuple(w.run_after(r) for r in runs[-1]) if w else runs[-1])  # type: ignore[arg-type]
    # A stretch starts at the input and after every strided layer: copies are cheapest there.
    starts = [0] + [i + 1 for i, w in enumerate(windows[:-1]) if w and w.stride > 1]
    bounds = list(zip(starts, [*starts[1:], len(windows)], strict=True))
    # out_drops[i]: drops of the blob entering step i, before any copy (step 0: the padded input).
    out_drops: list[tuple[int, int]] = [(0, 0)] * (len(windows) + 1)
    reindex: dict[int, torch.Tensor] = {}
    for start, end in bounds:
        drops = tuple(_removal(windows[start:end], runs[start : end + 1], side) for side in (0, 1))
        if start == 0:
            out_drops[0] = drops  # type: ignore[assignment]
        elif drops != out_drops[start]:
            old = _canvas_map(lengths[start], runs[start], out_drops[start])
            reindex[start] = old[_kept(lengths[start], runs[start], drops)]  # type: ignore[arg-type]
        scale = 1
        for i in range(start, end):
            scale *= windows[i].stride if windows[i] else 1
            out_drops[i + 1] = tuple(d // scale for d in drops)  # type: ignore[assignment]
    expand = {
        i: _canvas_map(lengths[i + 1], runs[i + 1], out_drops[i + 1]) if any(out_drops[i + 1]) else None
        for i in keep
    }
    first = out_drops[0]
    return _AxisPlan((pad0 - first[0], pad0 - first[1]), reindex, expand, tuple(lengths))


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


class FastFCN(nn.Module):
    """Inference-only twin of an :class:`FCN`: same output, computed on a trimmed canvas.

    (N, C, H, W) -> (N, num_classes, H, W) float32 for any H, W >= 1. With
    ``dtype=torch.bfloat16`` the backbone runs in bfloat16 and the head in float32.
    """

    def __init__(self, model: FCN, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        self.in_channels = model.in_channels
        self.skips = model.skips
        self.fusions = list(model.fusions)
        self.final_name = model.final_name
        self.output_offset = model.output_offset
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
            else:
                layer = copy.deepcopy(layer)
            steps.append(layer)
            names.append(children[i + 1][0] if fuse else name)
            i += 2 if fuse else 1
        first = model.backbone[0]
        if not isinstance(first, nn.Conv2d):
            raise TypeError("the backbone must start with a convolution")
        self.pad0 = tuple(first.padding)  # type: ignore[arg-type]
        self.steps = nn.ModuleList(steps).to(dtype)
        for step in self.steps:
            if isinstance(step, _ConvReLU):
                step.pack()
        self.windows = tuple(_windows(s) for s in steps)
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

    def plan(self, height: int, width: int) -> tuple[_AxisPlan, _AxisPlan]:
        """The canvas plans of both axes for an input of ``height`` x ``width``."""
        return tuple(  # type: ignore[return-value]
            _plan_axis(tuple(w[axis] if w else None for w in self.windows), self.pad0[axis], size, self.keep)
            for axis, size in ((0, height), (1, width))
        )

    @staticmethod
    def _gather(x: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
        """Pick canvas rows and columns, keeping the channels-last layout."""
        if rows is None and cols is None:
            return x
        y = x.permute(0, 2, 3, 1)
        if rows is not None:
            y = y.index_select(1, rows)
        if cols is not None:
            y = y.index_select(2, cols)
        return y.permute(0, 3, 1, 2)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        ph, pw = self.plan(height, width)
        h = F.pad(x.to(self.dtype), (*pw.pad, *ph.pad)).contiguous(memory_format=torch.channels_last)
        full: dict[int, torch.Tensor] = {}
        for i, step in enumerate(self.steps):
            if i in ph.reindex or i in pw.reindex:
                h = self._gather(h, ph.reindex.get(i), pw.reindex.get(i))
            h = step(h)
            if i in self.keep:
                full[i] = h
        taps = {self.taps[i]: (full[i], ph.expand[i], pw.expand[i]) for i in self.taps}
        last = len(self.steps) - 1
        h = self._gather(self.score_fr(full[last].float()), ph.expand[last], pw.expand[last])
        for upsample_name, tap, offset in self.fusions:
            h = self.head[upsample_name](h)
            skip, rows, cols = taps[tap]
            skip = skip.float()
            if f"scale_{tap}" in self.head:
                skip = self.head[f"scale_{tap}"](skip)
            skip = self._gather(self.head[f"score_{tap}"](skip), rows, cols)
            h = h + crop_like(skip, offset, h.shape[-2], h.shape[-1])
        h = self.head[self.final_name](h)
        return crop_like(h, self.output_offset, height, width).contiguous()


def optimize(model: FCN, dtype: torch.dtype = torch.float32) -> FastFCN:
    """An inference-only copy of ``model`` whose output equals ``model.eval()(x)`` for every input size.

    float32 agrees to float rounding (about 1e-6 relative); bfloat16 trades
    exactness for speed only on CPUs with native bfloat16 arithmetic.
    """
    return FastFCN(model, dtype)
