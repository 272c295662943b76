"""The trimmed canvas: an FCN's layers run without most of their 100-pixel input padding, exactly.

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
and where full blobs are needed. Nothing is approximated, only duplicated work
is skipped: the result equals the padded net up to float rounding for every
input size.

Gradients are exact too. A copy back (``index_select``) sums the gradients of
the copies into their representative, so each run's gradient total is that of
the padded net, and every position of a run has the same input window: a
weight's gradient only ever sees the total. Max-pooling ties inside a run (all
its values are equal) route the gradient to another position of the same run,
which changes nothing for the same reason.

:func:`run_trunk` runs a backbone this way, for training and evaluation alike
(the default of :class:`~fcnseg.models.fcn.FCN`), with the backbone's own
modules and parameters and standard differentiable ops only. A batch also
computes what lies beyond its images' reach (the frame and what is left of the
runs: the same for every image) once; :func:`upsample_and_crop` computes only
the part of the final upsampling that the crop keeps. The planner
(:func:`plan_canvas`) is shared with the inference twin in ``fcnseg.infer.fast``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models.geometry import ELEMENTWISE
from fcnseg.models.layers import bilinear_kernel, bilinear_taps, crop_like

__all__ = [
    "AxisPlan",
    "Window",
    "gather",
    "layer_windows",
    "plan_canvas",
    "run_trunk",
    "untrimmable_reason",
    "upsample_and_crop",
]

_Run = tuple[int, int]
"""Half-open interval [a, b) of positions along one axis holding identical slices."""


@dataclass(frozen=True)
class Window:
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


def layer_windows(layer: nn.Module) -> tuple[Window, Window] | None:
    """The (height, width) windows of a spatial layer; None for a layer acting per position.

    Raises TypeError for a layer whose geometry is unknown.
    """
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise TypeError("only explicit zero padding is supported")
        k, s, p, d = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        return tuple(Window(d[i] * (k[i] - 1) + 1, s[i], p[i]) for i in (0, 1))  # type: ignore[return-value]
    if isinstance(layer, nn.MaxPool2d | nn.AvgPool2d):
        k, s, p = (nn.modules.utils._pair(v) for v in (layer.kernel_size, layer.stride, layer.padding))
        d = nn.modules.utils._pair(getattr(layer, "dilation", 1))
        return tuple(  # type: ignore[return-value]
            Window(d[i] * (k[i] - 1) + 1, s[i], p[i], layer.ceil_mode) for i in (0, 1)
        )
    if isinstance(layer, ELEMENTWISE):
        return None
    raise TypeError(f"no trimmed canvas known for layer {type(layer).__name__}")


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of the canvas differs from the full blobs, for one input length.

    ``pad``: zeros before and after the image (instead of the first layer's padding).
    ``reindex[i]``: before step i, canvas positions to take from the current canvas.
    ``expand[i]``: after step i, the canvas position of every full position (None: same).
    ``lengths[i]``: full length of the blob entering step i (the last: of the output).
    ``stretches``: the (first, end) steps between copies.
    ``core[end]``: the canvas positions of a stretch's output that the image reaches,
    and ``reach[first]`` the input positions they depend on, when inside the canvas.
    """

    pad: tuple[int, int]
    reindex: dict[int, torch.Tensor]
    expand: dict[int, torch.Tensor | None]
    lengths: tuple[int, ...]
    stretches: tuple[tuple[int, int], ...]
    reach: dict[int, tuple[int, int] | None]
    core: dict[int, tuple[int, int]]


def _removal(windows: tuple[Window | None, ...], runs: list[tuple[_Run, _Run]], side: int) -> int:
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
@torch.inference_mode(False)  # cached index tensors serve autograd too, wherever the first call came from
def _plan_axis(
    windows: tuple[Window | None, ...],
    pad0: int,
    length: int,
    keep: tuple[int, ...],
    device: torch.device,
) -> AxisPlan:
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
    entering: dict[int, tuple[int, int]] = {}  # drops of the canvas each stretch works on
    for start, end in bounds:
        drops = tuple(_removal(windows[start:end], runs[start : end + 1], side) for side in (0, 1))
        entering[start] = drops  # type: ignore[assignment]
        if start == 0:
            out_drops[0] = drops  # type: ignore[assignment]
        elif drops != out_drops[start]:
            old = _canvas_map(lengths[start], runs[start], out_drops[start])
            reindex[start] = old[_kept(lengths[start], runs[start], drops)].to(device)  # type: ignore[arg-type]
        scale = 1
        for i in range(start, end):
            scale *= windows[i].stride if windows[i] else 1
            out_drops[i + 1] = tuple(d // scale for d in drops)  # type: ignore[assignment]
    expand = {
        i: _canvas_map(lengths[i + 1], runs[i + 1], out_drops[i + 1]).to(device)
        if any(out_drops[i + 1])
        else None
        for i in keep
    }
    first = out_drops[0]
    reach, core = _image_reach(windows, lengths, pad0, length, bounds, out_drops, entering)
    return AxisPlan(
        (pad0 - first[0], pad0 - first[1]), reindex, expand, tuple(lengths), tuple(bounds), reach, core
    )


def _image_reach(
    windows: tuple[Window | None, ...],
    lengths: list[int],
    pad0: int,
    length: int,
    bounds: list[tuple[int, int]],
    out_drops: list[tuple[int, int]],
    entering: dict[int, tuple[int, int]],
) -> tuple[dict[int, tuple[int, int] | None], dict[int, tuple[int, int]]]:
    """Per stretch: the canvas interval its image-dependent output needs, and that output's interval.

    Positions outside the image's receptive reach are the same for every image:
    a batch can compute them once (see :func:`run_trunk`).
    """
    seen = [(pad0, pad0 + length)]  # full positions whose input window reaches the image
    for w, n in zip(windows, lengths[1:], strict=True):
        a, b = seen[-1]
        if w is not None:
            a = max(0, -(-(a + w.padding - w.span + 1) // w.stride))
            b = min(n, (b - 1 + w.padding) // w.stride + 1)
        seen.append((a, b))
    reach: dict[int, tuple[int, int] | None] = {}
    core: dict[int, tuple[int, int]] = {}
    for start, end in bounds:
        shift = out_drops[end][0]  # the canvas lacks that many run positions left of the image's reach
        a, b = core[end] = (seen[end][0] - shift, seen[end][1] - shift)
        for w in reversed(windows[start:end]):
            if w is not None:
                a, b = a * w.stride - w.padding, (b - 1) * w.stride - w.padding + w.span
        canvas = lengths[start] - sum(entering[start])
        reach[start] = (a, b) if 0 <= a and b <= canvas else None
    return reach, core


def plan_canvas(
    windows: Sequence[tuple[Window, Window] | None],
    pad0: tuple[int, int],
    size: tuple[int, int],
    keep: Sequence[int],
    device: torch.device | str = "cpu",
) -> tuple[AxisPlan, AxisPlan]:
    """The (rows, columns) plans of a chain of layers for an input of ``size`` (H, W).

    ``windows`` are each layer's (see :func:`layer_windows`), the first without its
    padding ``pad0``, which the canvas input carries instead (the plans' ``pad``);
    ``keep`` lists the layers whose full output is wanted back. Plans are cached;
    their index tensors live on ``device``.
    """
    device = torch.device(device)
    return tuple(  # type: ignore[return-value]
        _plan_axis(
            tuple(w[axis] if w else None for w in windows),
            pad0[axis],
            size[axis],
            tuple(keep),
            device,
        )
        for axis in (0, 1)
    )


def gather(
    x: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None, channels_last: bool
) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, len(rows), len(cols)): pick canvas rows and columns (None: all).

    The result is laid out channels-last when ``channels_last``, else contiguous:
    each keeps the copies whole rows of memory.
    """
    if rows is None and cols is None:
        return x
    y = x.permute(0, 2, 3, 1) if channels_last else x
    first = 1 if channels_last else 2
    if rows is not None:
        y = y.index_select(first, rows)
    if cols is not None:
        y = y.index_select(first + 1, cols)
    return y.permute(0, 3, 1, 2) if channels_last else y


# ----------------------------------------------------------------------------- training and evaluation


def _dropout_active(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.dropout._DropoutNd) and layer.training and layer.p > 0


def _cut(layers: Sequence[nn.Module]) -> int:
    """Layers before this index may run on the canvas: up to the first dropout that draws a mask.

    A mask is drawn per element, so it must be drawn on the full blob, as the padded
    net draws it, for the same random numbers to land on the same positions.
    """
    return next((i for i, layer in enumerate(layers) if _dropout_active(layer)), len(layers))


def untrimmable_reason(backbone: nn.Sequential) -> str | None:
    """Why the trimmed canvas would not equal ``backbone`` in its current mode; None when it does.

    Exact: convolutions with zero padding, max and average pooling, and layers
    acting on each position alone (ReLU, LRN, dropout). Not exact: BatchNorm
    with batch statistics (the removed positions would count), anything unknown.
    """
    layers = list(backbone.children())
    if not layers or not isinstance(layers[0], nn.Conv2d):
        return "the backbone does not start with a convolution"
    if isinstance(layers[0].padding, str) or not any(layers[0].padding):
        return "the first convolution has no zero padding to skip"
    for name, layer in list(backbone.named_children())[: _cut(layers)]:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and (
            layer.training or layer.running_mean is None
        ):
            return f"{name}: BatchNorm with batch statistics sees every position"
        try:
            layer_windows(layer)
        except TypeError as error:
            return f"{name}: {error}"
    return None


def _tracing() -> bool:
    """Tracing and compiling record the plan of the example's size: they must get the padded layers."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def _strictly_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


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

SHARED_SAVING = 0.2
"""A batch shares what lies outside the images' reach where that spares this much of a stretch's work."""


def run_trunk(
    backbone: nn.Sequential, x: torch.Tensor, taps: Sequence[str] = (), trim: bool = True
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run ``backbone`` on (N, C, H, W): its blobs named in ``taps``, and its output.

    Every blob equals the padded backbone's. With ``trim`` (and where
    :func:`untrimmable_reason` finds nothing) the layers run on the trimmed canvas,
    with the backbone's own modules and parameters, so training updates the backbone.

    Two more exact savings on the CPU: a convolution runs in the layout and by the
    route fastest for it (:data:`CHANNELS_LAST_WIDTH`, :data:`HUGE_KERNEL`), and a
    batch computes the positions beyond its images' reach (the frame and what is
    left of the runs: the same for every image) once, on its first image, and only
    the reach of the others (:data:`SHARED_SAVING`). The blob entering the first
    dropout that draws a mask is the padded net's, memory layout included, so that
    the same random numbers give the same mask. Tracing and compiling get the padded
    layers: a plan holds for one input size only.
    """
    if not trim or _tracing() or untrimmable_reason(backbone) is not None:
        return _run_padded(list(backbone.named_children()), x, taps)
    named = list(backbone.named_children())
    cut = _cut([layer for _, layer in named])
    canvas_layers, full_layers = named[:cut], named[cut:]
    first: nn.Conv2d = canvas_layers[0][1]  # type: ignore[assignment]
    windows = [layer_windows(layer) for _, layer in canvas_layers]
    windows[0] = tuple(Window(w.span, w.stride, 0) for w in windows[0])  # type: ignore[union-attr]
    names = [name for name, _ in canvas_layers]
    keep = sorted({*(names.index(tap) for tap in taps if tap in names), cut - 1})
    rows, cols = plan_canvas(windows, first.padding, tuple(x.shape[-2:]), keep, x.device)  # type: ignore[arg-type]
    cpu = x.device.type == "cpu"
    stretches = dict(rows.stretches) if cpu and rows.stretches == cols.stretches else {}
    natural = _strictly_channels_last(x)  # the padded net's layout, followed layer by layer
    h = F.pad(x, (*cols.pad, *rows.pad))
    shared, split, found = None, None, {}
    for i, (name, layer) in enumerate(canvas_layers):
        if i in rows.reindex or i in cols.reindex:
            h = gather(h, rows.reindex.get(i), cols.reindex.get(i), _strictly_channels_last(h))
        if i in stretches:
            split = _shared_split(rows, cols, i, stretches[i], keep, h.shape)
        if split is not None and windows[i] is not None:  # in-place layers before act on the whole blob
            (top, bottom), (left, right) = split
            shared, h, split = h[:1], h[1:, :, top:bottom, left:right], None
        if isinstance(layer, nn.Conv2d):
            # PyTorch's rule: channels-last out when the input or the weight is (one pixel fits both)
            area = x.shape[-2] * x.shape[-1] if i == 0 else rows.lengths[i] * cols.lengths[i]
            natural = (natural and area > 1 and layer.in_channels > 1) or _strictly_channels_last(
                layer.weight
            )
        if shared is not None:
            shared = _step(layer, shared, i == 0, cpu)
        h = _step(layer, h, i == 0 or shared is not None, cpu)
        if shared is not None and i + 1 in (*stretches, len(canvas_layers)):
            h, shared = _assemble(shared, h, rows.core[i + 1], cols.core[i + 1]), None
        if i in keep:
            full = gather(h, rows.expand[i], cols.expand[i], _strictly_channels_last(h))
            if name in taps:
                found[name] = full
            if i == cut - 1:
                layout = torch.channels_last if natural else torch.contiguous_format
                h = full.contiguous(memory_format=layout) if full_layers else full
    rest, out = _run_padded(full_layers, h, taps)
    return {**found, **rest}, out


def _shared_split(
    rows: AxisPlan, cols: AxisPlan, start: int, end: int, keep: Sequence[int], shape: torch.Size
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The canvas region the batch's other images need for stretch [start, end), when sharing pays."""
    reach = rows.reach[start], cols.reach[start]
    if reach[0] is None or reach[1] is None or any(start <= i < end - 1 for i in keep):
        return None
    n, area = shape[0], (reach[0][1] - reach[0][0]) * (reach[1][1] - reach[1][0])
    own = area / (shape[-2] * shape[-1])
    return reach if n > 1 and 1 + (n - 1) * own <= (1 - SHARED_SAVING) * n else None  # type: ignore[return-value]


def _step(layer: nn.Module, x: torch.Tensor, unpadded: bool, cpu: bool) -> torch.Tensor:
    """One layer on the canvas; ``unpadded``: without its own padding (only whole windows)."""
    if isinstance(layer, nn.Conv2d):
        return _convolve(layer, x, (0, 0) if unpadded else layer.padding, cpu)  # type: ignore[arg-type]
    if unpadded and isinstance(layer, nn.MaxPool2d):
        return F.max_pool2d(x, layer.kernel_size, layer.stride, 0, layer.dilation)
    if unpadded and isinstance(layer, nn.AvgPool2d):
        return F.avg_pool2d(x, layer.kernel_size, layer.stride, 0, divisor_override=layer.divisor_override)
    return layer(x)


def _assemble(
    shared: torch.Tensor, own: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]
) -> torch.Tensor:
    """(1, C, H, W) and (N - 1, C, h, w) -> (N, C, H, W): the first image, then the others,
    which are the first outside ``rows`` x ``cols`` and ``own`` inside."""
    (top, bottom), (left, right) = rows, cols
    n = own.shape[0]

    def around(block: torch.Tensor) -> torch.Tensor:
        return block.expand(n, -1, -1, -1)

    middle = torch.cat(
        [around(shared[:, :, top:bottom, :left]), own, around(shared[:, :, top:bottom, right:])], 3
    )
    others = torch.cat([around(shared[:, :, :top]), middle, around(shared[:, :, bottom:])], 2)
    whole = torch.cat([shared, others])
    return whole.contiguous(memory_format=torch.channels_last) if _strictly_channels_last(own) else whole


def _convolve(layer: nn.Conv2d, x: torch.Tensor, padding: tuple[int, int], cpu: bool) -> torch.Tensor:
    """``layer`` with ``padding``, with its own parameters, by the fastest exact route for its shape."""
    w = layer.weight
    if cpu and w.numel() > HUGE_KERNEL and layer.groups == 1:
        n, _, height, width = x.shape
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
        out_h = (height + 2 * padding[0] - dh * (kh - 1) - 1) // sh + 1
        out_w = (width + 2 * padding[1] - dw * (kw - 1) - 1) // sw + 1
        columns = F.unfold(x, layer.kernel_size, layer.dilation, padding, layer.stride)
        y = torch.matmul(w.view(w.shape[0], -1), columns)
        if layer.bias is not None:
            y = y + layer.bias[:, None]
        return y.view(n, w.shape[0], out_h, out_w)
    if cpu:
        wide = layer.out_channels > CHANNELS_LAST_WIDTH
        x = x.contiguous(memory_format=torch.contiguous_format if wide else torch.channels_last)
    return F.conv2d(x, w, layer.bias, layer.stride, padding, layer.dilation, layer.groups)


def _run_padded(
    layers: Sequence[tuple[str, nn.Module]], x: torch.Tensor, taps: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    found = {}
    for name, layer in layers:
        x = layer(x)
        if name in taps:
            found[name] = x
    return found, x


def upsample_and_crop(
    layer: nn.ConvTranspose2d, x: torch.Tensor, offset: int, height: int, width: int
) -> torch.Tensor:
    """``crop_like(layer(x), offset, height, width)``, computing only what the crop keeps.

    An output position o of a transposed convolution (stride s, span k, no padding)
    sums inputs i with ``s*i <= o < s*i + k``: inputs outside the reach of the crop
    are left out, exactly. A frozen bilinear upsampler (the final one of the paper's
    nets) is two small matrix products per class instead, ``rows @ x @ cols.T``,
    which give the cropped output directly: the same sums, without the crop's copy.
    """
    spans = [d * (k - 1) + 1 for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
    reaches = [(n - 1) * s + span for n, s, span in zip(x.shape[-2:], layer.stride, spans, strict=True)]
    simple = not any(layer.padding) and not any(layer.output_padding)
    if _tracing() or not simple or offset + height > reaches[0] or offset + width > reaches[1]:
        return crop_like(layer(x), offset, height, width)  # crop_like names the sizes that do not fit
    if _is_frozen_bilinear(layer):
        k, (sh, sw) = layer.kernel_size[0], layer.stride
        rows = _interpolation(k, sh, offset, height, x.shape[-2], x.dtype, x.device)
        cols = _interpolation(k, sw, offset, width, x.shape[-1], x.dtype, x.device)
        return torch.matmul(torch.matmul(rows, x), cols.T)
    sliced = []
    for axis, size in ((0, height), (1, width)):
        s = layer.stride[axis]
        first = max(0, -(-(offset - spans[axis] + 1) // s))  # the first input reaching the crop
        last = min(x.shape[2 + axis] - 1, (offset + size - 1) // s)
        sliced.append((first, last + 1, offset - first * s))
    (top, bottom, row), (left, right, col) = sliced
    y = layer(x[:, :, top:bottom, left:right])
    return y[:, :, row : row + height, col : col + width]


_BILINEAR: weakref.WeakKeyDictionary[nn.Module, tuple[weakref.ref, int | None, bool]] = (
    weakref.WeakKeyDictionary()
)
"""Per upsampler: whether its weight (that tensor, at that version) is the bilinear kernel."""


def _is_frozen_bilinear(layer: nn.ConvTranspose2d) -> bool:
    """A fixed transposed convolution whose weights are exactly :func:`bilinear_kernel`'s."""
    w = layer.weight
    if w.requires_grad or w.is_meta or layer.groups != 1 or layer.bias is not None:
        return False
    if w.shape[0] != w.shape[1] or w.shape[2] != w.shape[3] or layer.dilation != (1, 1):
        return False
    version = None if w.is_inference() else w._version  # inference tensors keep no version: look each time
    known = _BILINEAR.get(layer)
    if known is None or known[0]() is not w or version is None or known[1] != version:
        bilinear = bilinear_kernel(w.shape[0], w.shape[2]).to(w.device, w.dtype)
        known = (weakref.ref(w), version, torch.equal(w, bilinear))
        _BILINEAR[layer] = known
    return known[2]


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)  # cached matrices serve autograd too, wherever the first call came from
def _interpolation(
    kernel: int, stride: int, offset: int, out_length: int, in_length: int, dtype, device
) -> torch.Tensor:
    """(out_length, in_length): output ``offset + o`` of a bilinear upsampling as weights of its inputs."""
    taps = bilinear_taps(kernel).to(dtype)
    tap = torch.arange(offset, offset + out_length)[:, None] - stride * torch.arange(in_length)[None, :]
    inside = (tap >= 0) & (tap < kernel)
    return torch.where(inside, taps[tap.clamp(0, kernel - 1)], 0).to(device)
