"""The trunk on the images' reach: each image computes only the positions its pixels reach, exactly.

The original nets pad conv1 by 100. A blob position whose receptive field holds
no image pixel sees only that padding's zeros (and the layers' own padding): its
value is the same for every image of a batch, and for a blank (all-zero) image
of the same size. So the trunk runs in two parts:

- the **frame**: one blank image of the batch's size runs on the trimmed canvas of
  :mod:`fcnseg.accel.canvas`, where a few positions per axis stand for the long
  runs of identical ones; it holds every position that no image reaches;
- the **reach**: each image computes, along each axis, only the interval of
  positions its pixels reach (``seen``), its windows unpadded. Segments of layers
  run between *assemblies*, which surround an image's reach with the frame's
  positions (and the layer's padding beyond the blob's border) that the next
  windows read.

Where the reach covers nearly all of a blob (the last stages), the trunk goes on
with whole blobs and the layers' own padding. A rough cost model chooses the
segments and that switch per batch shape (:func:`plan_reach`); whatever it picks,
every position holds the padded net's value, up to float rounding.

Gradients are exact too: the frame's positions are gathered from the blank canvas
with ``index_select``, whose backward sums, over the images and over all the
positions one canvas position stands for, what the padded net sums over them;
those positions share one receptive field of zeros, hence their values and their
Jacobians, so a weight's gradient sees the same total.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.accel.canvas import AxisPlan, Window, gather, layer_windows, layers_reason, plan_canvas
from fcnseg.accel.kernels import convolve, strictly_channels_last
from fcnseg.models.trunk import run_layers

__all__ = [
    "ReachPlan",
    "plan_reach",
    "run_trunk",
    "trunk_plan",
    "untrimmable_reason",
]

_Run = tuple[int, int]
"""Half-open interval [a, b) of positions along one axis."""

_Box = tuple[_Run, _Run]
"""Rows and columns."""


def _dropout_active(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.dropout._DropoutNd) and layer.training and layer.p > 0


def _cut(layers: Sequence[nn.Module]) -> int:
    """Layers before this index may run on the reach: up to the first dropout that draws a mask.

    A mask is drawn per element, so it must be drawn on the full blob, as the padded
    net draws it, for the same random numbers to land on the same positions.
    """
    return next((i for i, layer in enumerate(layers) if _dropout_active(layer)), len(layers))


def untrimmable_reason(backbone: nn.Sequential) -> str | None:
    """Why the reach would not equal ``backbone`` in its current mode; None when it does.

    Exact: convolutions with zero padding, max pooling, average pooling whose
    padding counts as zeros (``count_include_pad``, no ceil mode), and layers
    acting on each position alone (ReLU, LRN, dropout). Not exact: BatchNorm with
    batch statistics (the positions not computed would count), anything unknown.
    """
    named = list(backbone.named_children())
    named = named[: _cut([layer for _, layer in named])]
    reason = layers_reason(named)
    if reason is not None:
        return reason
    first = named[0][1]
    if isinstance(first.padding, str) or not any(first.padding):
        return "the first convolution has no zero padding to skip"
    for name, layer in named:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and (
            layer.training or layer.running_mean is None
        ):
            return f"{name}: BatchNorm with batch statistics sees every position"
        if isinstance(layer, nn.AvgPool2d) and (layer.ceil_mode or not layer.count_include_pad):
            return f"{name}: average pooling whose padding does not count as zeros"
    return None


# ----------------------------------------------------------------------------- planning


def _seen(windows: Sequence[Window | None], pad0: int, length: int) -> tuple[list[int], list[_Run]]:
    """Full length of every blob (0: the padded input), and the interval of it that the image reaches."""
    lengths, seen = [length + 2 * pad0], [(pad0, pad0 + length)]
    for w in windows:
        a, b = seen[-1]
        n = w.out_length(lengths[-1]) if w else lengths[-1]
        if w is not None:
            a = max(0, -(-(a + w.padding - w.span + 1) // w.stride))
            b = min(n, (b - 1 + w.padding) // w.stride + 1)
        lengths.append(n)
        seen.append((a, b))
    return lengths, seen


def _segment(
    windows: Sequence[Window | None], lengths: list[int], seen: list[_Run], j: int, k: int
) -> dict[int, _Run] | None:
    """What a segment of layers j..k-1 holds of blobs j+1..k, and reads of blob j; None if it cannot run.

    It ends holding ``seen[k]``; walking back, each window widens what its input must
    hold (span w, stride s, padding p: outputs [a, b) read inputs [s a - p, s (b - 1)
    - p + w)). Inside the segment windows run unpadded, so that must stay within the
    blob; at j, positions beyond the border are the layer's padding.
    """
    held = {k: seen[k]}
    a, b = seen[k]
    for i in range(k - 1, j - 1, -1):
        w = windows[i]
        if w is not None:
            a, b = a * w.stride - w.padding, (b - 1) * w.stride - w.padding + w.span
        if i > j and (a < 0 or b > lengths[i]):
            return None
        held[i] = (a, b)
    return held


def _area(box: _Box) -> int:
    return (box[0][1] - box[0][0]) * (box[1][1] - box[1][0])


COPY_COST = 100
"""Multiply-adds that assembling one element of a blob costs, roughly (copy forward, slice backward)."""

CALL_COST = 1_000_000
"""Multiply-adds that one more step costs, roughly, in call overhead (forward and backward)."""


@dataclass(frozen=True)
class ReachPlan:
    """How a trunk runs for one batch shape.

    ``bounds``: the layers before which an image's blob is assembled for the next
    segment (0 first); from layer ``whole`` on, whole blobs run with the layers'
    own padding. Per axis (rows, columns): ``lengths[i]``, the full length of blob
    i (the one entering layer i); ``held[i]``, the interval of it that the reach
    holds; ``reads[j]``, what the segment starting at j reads (padding included).
    ``blank``: the canvas plans of the blank image, run up to blob ``depth``;
    ``frames[(j, what)]``: per axis, the blank canvas positions that blob j's
    assembly gathers, for the reads of bound j (``what`` = "reads") or the whole
    blob ("whole"); one past the canvas stands for the padding.
    """

    bounds: tuple[int, ...]
    whole: int
    lengths: tuple[tuple[int, ...], tuple[int, ...]]
    held: tuple[dict[int, _Run], dict[int, _Run]]
    reads: tuple[dict[int, _Run], dict[int, _Run]]
    depth: int
    blank: tuple[AxisPlan, AxisPlan]
    frames: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    def region(self, j: int, what: str) -> _Box:
        """What blob j's assembly gives: the reads of bound j, or the whole blob."""
        if what == "reads":
            return self.reads[0][j], self.reads[1][j]
        return (0, self.lengths[0][j]), (0, self.lengths[1][j])


@functools.lru_cache(maxsize=256)
@torch.inference_mode(False)  # cached index tensors serve autograd too, wherever the first call came from
def plan_reach(
    windows: tuple[tuple[Window, Window] | None, ...],
    pad0: tuple[int, int],
    shape: tuple[int, int, int],
    work: tuple[int, ...],
    channels: tuple[int, ...],
    outputs: tuple[int, ...],
    device: torch.device,
) -> ReachPlan:
    """Plan layers ``windows`` (the first without its padding ``pad0``) for a batch ``shape`` (N, H, W).

    ``work[i]``: multiply-adds of layer i per output position (0 but for
    convolutions); ``channels[i]``: channels of blob i; ``outputs``: the blobs
    wanted whole (taps; the last one is the trunk's output). The segments (a
    shortest path over the windows' inputs) and the switch to whole blobs minimise
    the estimated work: the images' multiply-adds and the blank's, copies
    (:data:`COPY_COST`) and calls (:data:`CALL_COST`).
    """
    n, size = shape[0], shape[1:]
    last = len(windows)
    axes = [[w[axis] if w else None for w in windows] for axis in (0, 1)]
    lengths, seen = zip(*(_seen(axes[axis], pad0[axis], size[axis]) for axis in (0, 1)), strict=True)
    lengths = tuple(tuple(length) for length in lengths)
    full = [((0, lengths[0][i]), (0, lengths[1][i])) for i in range(last + 1)]
    framed = [(seen[0][i], seen[1][i]) != full[i] for i in range(last + 1)]  # some position no image reaches
    empty = plan_canvas(windows, pad0, size, (), blank=True)  # type: ignore[arg-type]
    blank_work = [0]
    for i in range(last):
        blank_work.append(
            blank_work[-1] + work[i] * empty[0].canvas[i + 1] * empty[1].canvas[i + 1] + CALL_COST
        )

    # best[k]: the least work for the reach to hold seen[k] of blob k, the segment's start, what it holds
    candidates = sorted({0, last, *outputs, *(i for i in range(last) if windows[i] is not None)})
    best: dict[int, tuple[float, int, tuple[dict[int, _Run], dict[int, _Run]]]] = {0: (0.0, -1, ({}, {}))}
    for k in candidates[1:]:
        for j in (j for j in candidates if j < k and j in best and not any(j < o < k for o in outputs)):
            rows, cols = (_segment(axes[a], lengths[a], seen[a], j, k) for a in (0, 1))
            if rows is None or cols is None:
                continue
            cost = best[j][0] + n * sum(work[i] * _area((rows[i + 1], cols[i + 1])) for i in range(j, k))
            cost += n * channels[j] * _area((rows[j], cols[j])) * COPY_COST + CALL_COST * (j > 0)
            if k not in best or cost < best[k][0]:
                best[k] = (cost, j, (rows, cols))

    def total(k: int) -> float:
        """The reach up to blob k, then whole blobs; the blank as deep as frames exist."""
        depth = max(i for i in range(k + 1) if framed[i] or i == 0)
        whole = n * sum(work[i] * _area(full[i + 1]) for i in range(k, last))
        return best[k][0] + whole + n * channels[k] * _area(full[k]) * COPY_COST + blank_work[depth]

    whole = min(best, key=total)
    held: tuple[dict[int, _Run], dict[int, _Run]] = ({0: seen[0][0]}, {0: seen[1][0]})
    reads: tuple[dict[int, _Run], dict[int, _Run]] = ({}, {})
    k = whole
    while k > 0:
        _, j, segment = best[k]
        for axis in (0, 1):
            reads[axis][j] = segment[axis][j]
            held[axis].update({i: segment[axis][i] for i in range(j + 1, k + 1)})
        k = j
    for i in range(whole + 1, last + 1):
        held[0][i], held[1][i] = full[i]
    bounds = tuple(sorted(reads[0]))

    def lacks(j: int, box: _Box) -> bool:
        """Whether ``box`` holds positions of blob j that the reach does not."""
        return any(
            max(a, 0) < h0 or min(b, length) > h1
            for (a, b), (h0, h1), length in zip(
                box, (held[0][j], held[1][j]), (lengths[0][j], lengths[1][j]), strict=True
            )
        )

    needs = {(j, "reads") for j in bounds if j > 0 and lacks(j, (reads[0][j], reads[1][j]))}
    needs |= {(j, "whole") for j in {*outputs, whole} if 0 < j <= whole and lacks(j, full[j])}
    blank = plan_canvas(windows, pad0, size, sorted({j - 1 for j, _ in needs}), device, blank=True)  # type: ignore[arg-type]
    frames = {}
    for j, what in sorted(needs):
        picks = []
        for axis, plan in enumerate(blank):
            expand = plan.expand[j - 1]
            canvas = torch.arange(lengths[axis][j]) if expand is None else expand.cpu()
            a, b = reads[axis][j] if what == "reads" else full[j][axis]
            position = torch.arange(a, b)
            inside = (position >= 0) & (position < lengths[axis][j])
            picks.append(torch.where(inside, canvas[position.clamp(0, lengths[axis][j] - 1)], plan.canvas[j]))
        frames[(j, what)] = (picks[0].to(device), picks[1].to(device))
    depth = max((j for j, _ in needs), default=0)
    return ReachPlan(bounds, whole, lengths, held, reads, depth, blank, frames)  # type: ignore[arg-type]


def trunk_plan(
    layers: Sequence[nn.Module],
    shape: Sequence[int],
    outputs: Sequence[int] = (),
    device: torch.device | str = "cpu",
) -> ReachPlan:
    """The plan for ``layers`` (a backbone's, up to its first dropout that draws a mask) on a batch
    of ``shape`` (N, C, H, W), with blobs ``outputs`` wanted whole; see :func:`plan_reach`."""
    first: nn.Conv2d = layers[0]  # type: ignore[assignment]
    windows = [layer_windows(layer) for layer in layers]
    windows[0] = tuple(Window(w.span, w.stride, 0) for w in windows[0])  # type: ignore[union-attr]
    channels = [shape[1]]
    for layer in layers:
        channels.append(layer.out_channels if isinstance(layer, nn.Conv2d) else channels[-1])
    return plan_reach(
        tuple(windows),  # type: ignore[arg-type]
        tuple(first.padding),  # type: ignore[arg-type]
        (shape[0], shape[2], shape[3]),
        tuple(layer.weight.numel() if isinstance(layer, nn.Conv2d) else 0 for layer in layers),
        tuple(channels),
        tuple(sorted({*outputs, len(layers)})),
        torch.device(device),
    )


# ----------------------------------------------------------------------------- running


def run_trunk(
    backbone: nn.Sequential, x: torch.Tensor, taps: Sequence[str] = ()
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run ``backbone`` on (N, C, H, W): its blobs named in ``taps``, and its output.

    Every blob equals the padded backbone's. Where :func:`untrimmable_reason` finds
    nothing, the frame runs once on a blank canvas and each image on its reach, as
    :func:`trunk_plan` plans, with the backbone's own modules and parameters, so
    training updates the backbone; elsewhere the layers run as written. A convolution
    runs in the layout and by the route fastest for it on the CPU
    (:data:`CHANNELS_LAST_WIDTH`, :data:`HUGE_KERNEL`). The blob entering the first
    dropout that draws a mask is the padded net's, memory layout included, so that
    the same random numbers give the same mask.
    """
    if untrimmable_reason(backbone) is not None:
        return run_layers(list(backbone.named_children()), x, taps)
    named = list(backbone.named_children())
    cut = _cut([layer for _, layer in named])
    layers, rest = [layer for _, layer in named[:cut]], named[cut:]
    outputs = {i + 1: name for i, (name, _) in enumerate(named[:cut]) if name in taps}
    plan = trunk_plan(layers, x.shape, tuple(outputs), x.device)
    cpu = x.device.type == "cpu"
    frames = _frames(layers, plan, x.new_zeros(()), cpu)
    natural = strictly_channels_last(x)  # the padded net's layout, followed layer by layer
    h, found = x, {}
    for i, layer in enumerate(layers):
        if i in plan.bounds:
            h = _assemble(h, plan, i, "reads", frames.get(i), _fill(layer))
        elif i == plan.whole and i not in outputs:  # (at an output, h is whole already)
            h = _assemble(h, plan, i, "whole", frames.get(i), 0.0)
        if isinstance(layer, nn.Conv2d):
            # PyTorch's rule: channels-last out when the input or the weight is (one pixel fits both)
            area = x.shape[-2] * x.shape[-1] if i == 0 else plan.lengths[0][i] * plan.lengths[1][i]
            natural = (natural and area > 1 and layer.in_channels > 1) or strictly_channels_last(layer.weight)
        h = _step(layer, h, i == 0 or i < plan.whole, cpu)
        if i + 1 in outputs or i + 1 == cut:
            full = _assemble(h, plan, i + 1, "whole", frames.get(i + 1), 0.0) if i + 1 <= plan.whole else h
            if i + 1 in outputs:
                found[outputs[i + 1]] = full
            if i + 1 in (plan.whole, cut):
                h = full
            if (
                i + 1 in outputs
                and _in_place(named[i + 1][1] if i + 1 < len(named) else None)
                and _shared(h, full)
            ):
                h = h.clone()  # the tap is the layer's output, not what an in-place ReLU makes of it
    if rest:
        h = h.contiguous(memory_format=torch.channels_last if natural else torch.contiguous_format)
    more, out = run_layers(rest, h, taps)
    return {**found, **more}, out


def _frames(
    layers: Sequence[nn.Module], plan: ReachPlan, like: torch.Tensor, cpu: bool
) -> dict[int, torch.Tensor]:
    """The blank image's canvas blobs that assemblies gather from, by blob index."""
    rows, cols = plan.blank
    h = like.new_zeros(1, layers[0].in_channels, rows.canvas[0], cols.canvas[0])
    wanted = {j for j, _ in plan.frames}
    frames = {}
    for i, layer in enumerate(layers[: plan.depth]):
        if i in rows.reindex or i in cols.reindex:
            h = gather(h, rows.reindex.get(i), cols.reindex.get(i), strictly_channels_last(h))
        h = (
            _blank_convolution(layer, rows.canvas[1], cols.canvas[1])
            if i == 0
            else _step(layer, h, False, cpu)
        )
        if i + 1 in wanted:
            frames[i + 1] = h
            if i + 1 < len(layers) and _in_place(layers[i + 1]):
                h = h.clone()  # the frame is the layer's output, as the tap it fills in
    return frames


def _blank_convolution(layer: nn.Conv2d, height: int, width: int) -> torch.Tensor:
    """What the first convolution makes of the blank image: its bias everywhere (no product to run)."""
    bias = layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_channels)
    return bias.view(1, -1, 1, 1).expand(1, -1, height, width).contiguous(memory_format=torch.channels_last)


def _fill(layer: nn.Module) -> float:
    """The value a layer's padding stands for: -inf for max pooling, zero otherwise."""
    return float("-inf") if isinstance(layer, nn.MaxPool2d) else 0.0


def _assemble(
    own: torch.Tensor, plan: ReachPlan, j: int, what: str, frame: torch.Tensor | None, fill: float
) -> torch.Tensor:
    """Blob j as bound j reads it, or whole (``what``): the reach ``own`` where it holds, the blank's
    canvas blob ``frame`` elsewhere, ``fill`` beyond the blob's border."""
    (ra, rb), (ca, cb) = plan.region(j, what)
    (ha, hb), (wa, wb) = plan.held[0][j], plan.held[1][j]
    top, bottom, left, right = max(ra, ha), min(rb, hb), max(ca, wa), min(cb, wb)
    box = (top - ha, bottom - ha, left - wa, right - wa)
    if frame is None or (j, what) not in plan.frames:  # nothing but padding around (the frame of j
        # may be there for another assembly of j: a tap's whole blob, when the reads need none of it)
        inner = own[:, :, box[0] : box[1], box[2] : box[3]]
        return F.pad(inner, (left - ca, cb - right, top - ra, rb - bottom), value=fill)
    rows, cols = plan.frames[(j, what)]
    frame = gather(F.pad(frame, (0, 1, 0, 1), value=fill), rows, cols, strictly_channels_last(own))
    return _Surround.apply(own, frame, box, (top - ra, left - ca))


class _Surround(torch.autograd.Function):
    """The blank's canvas blob ``frame`` (1, C, H, W) for every image, holding ``own[box]`` at ``at``.

    As an in-place slice assignment, but its gradients keep the blobs' memory layout
    (autograd hands an assigned slice a contiguous gradient: max pooling and oneDNN
    would copy it back to channels-last, at the size of their inputs).
    """

    @staticmethod
    def forward(ctx, own, frame, box, at):  # type: ignore[override]
        layout = torch.channels_last if strictly_channels_last(own) else torch.contiguous_format
        (top, bottom, left, right), (row, col) = box, at
        whole = frame.expand(own.shape[0], -1, -1, -1).contiguous(memory_format=layout)
        whole[:, :, row : row + bottom - top, col : col + right - left] = own[:, :, top:bottom, left:right]
        ctx.geometry = own.shape, layout, box, at
        return whole

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        shape, layout, (top, bottom, left, right), (row, col) = ctx.geometry
        placed = (slice(None), slice(None), slice(row, row + bottom - top), slice(col, col + right - left))
        grad_own = grad_frame = None
        if ctx.needs_input_grad[0]:
            if (bottom - top, right - left) == tuple(shape[-2:]):
                grad_own = grad[placed].contiguous(memory_format=layout)
            else:
                grad_own = grad.new_zeros(shape).contiguous(memory_format=layout)
                grad_own[:, :, top:bottom, left:right] = grad[placed]
        if ctx.needs_input_grad[1]:
            grad_frame = grad.sum(0, keepdim=True)
            grad_frame[placed] = 0
        return grad_own, grad_frame, None, None


def _step(layer: nn.Module, x: torch.Tensor, unpadded: bool, cpu: bool) -> torch.Tensor:
    """One layer; ``unpadded``: without its own padding (only whole windows)."""
    if isinstance(layer, nn.Conv2d):
        return convolve(layer, x, (0, 0) if unpadded else layer.padding, cpu)  # type: ignore[arg-type]
    if unpadded and isinstance(layer, nn.MaxPool2d):
        return F.max_pool2d(x, layer.kernel_size, layer.stride, 0, layer.dilation)
    if unpadded and isinstance(layer, nn.AvgPool2d):
        return F.avg_pool2d(x, layer.kernel_size, layer.stride, 0, divisor_override=layer.divisor_override)
    return layer(x)


def _shared(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors share memory (one is, or views, the other's)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _in_place(layer: nn.Module | None) -> bool:
    """Whether a layer overwrites its input (``ReLU(inplace=True)``)."""
    return bool(getattr(layer, "inplace", False))
