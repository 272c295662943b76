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

:func:`plan_canvas` plans a chain of layers so; the inference twin
(:mod:`fcnseg.accel.inference`) runs images on it, and training runs the *frame* on it (a
blank image: see :mod:`fcnseg.accel.reach`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fcnseg.models.geometry import ELEMENTWISE, WINDOWED, sliding_window, window_length
from fcnseg.models.trunk import SequentialTrunk

__all__ = ["AxisPlan", "Window", "canvas_reason", "gather", "layer_windows", "layers_reason", "plan_canvas"]

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
        """Output length (:func:`~fcnseg.models.geometry.window_length`); an error where none fits."""
        n = window_length(length, self.span, self.stride, self.padding, self.ceil_mode)
        if n == 0:
            raise ValueError(f"input of length {length} is smaller than a window of {self.span}")
        return n

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
    if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        raise TypeError("only explicit zero padding is supported")
    if isinstance(layer, WINDOWED):
        return tuple(Window(*sliding_window(layer, axis)) for axis in (0, 1))  # type: ignore[return-value]
    if isinstance(layer, ELEMENTWISE):
        return None
    raise TypeError(f"no trimmed canvas known for layer {type(layer).__name__}")


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of the canvas differs from the full blobs, for one input length.

    ``pad``: zeros before and after the image (instead of the first layer's padding).
    ``reindex[i]``: before step i, canvas positions to take from the current canvas.
    ``expand[i]``: after step i, the canvas position of every full position (None: same).
    ``lengths[i]``: full length of the blob entering step i (the last: of the output);
    ``canvas[i]``: its length on the canvas, as step i - 1 gives it (before any copy).
    """

    pad: tuple[int, int]
    reindex: dict[int, torch.Tensor]
    expand: dict[int, torch.Tensor | None]
    lengths: tuple[int, ...]
    canvas: tuple[int, ...]


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
    blank: bool = False,
) -> AxisPlan:
    """Plan one axis for an image of ``length``: canvas drops per stretch, copies between stretches.

    ``windows[0]`` is the first layer without its padding ``pad0``, which the canvas
    input carries instead; ``keep`` lists the steps whose full output is needed.
    ``blank``: the image is zeros too, so that the whole input is one run.
    """
    total = length + 2 * pad0
    lengths = [total]
    runs: list[tuple[_Run, _Run]] = [
        ((0, total), (total, total)) if blank else ((0, pad0), (pad0 + length, total))
    ]
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
    canvas = tuple(n - sum(d) for n, d in zip(lengths, out_drops, strict=True))
    return AxisPlan((pad0 - first[0], pad0 - first[1]), reindex, expand, tuple(lengths), canvas)


def plan_canvas(
    windows: Sequence[tuple[Window, Window] | None],
    pad0: tuple[int, int],
    size: tuple[int, int],
    keep: Sequence[int],
    device: torch.device | str = "cpu",
    blank: bool = False,
) -> tuple[AxisPlan, AxisPlan]:
    """The (rows, columns) plans of a chain of layers for an input of ``size`` (H, W).

    ``windows`` are each layer's (see :func:`layer_windows`), the first without its
    padding ``pad0``, which the canvas input carries instead (the plans' ``pad``);
    ``keep`` lists the layers whose full output is wanted back. ``blank``: plan a
    blank (all-zero) image, whose canvas input is ``canvas[0]`` zeros. Plans are
    cached; their index tensors live on ``device``.
    """
    device = torch.device(device)
    return tuple(  # type: ignore[return-value]
        _plan_axis(
            tuple(w[axis] if w else None for w in windows),
            pad0[axis],
            size[axis],
            tuple(keep),
            device,
            blank,
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


def canvas_reason(trunk: nn.Module) -> str | None:
    """Why the trimmed canvas cannot run ``trunk``; None when it can: a plain sequential trunk of
    layers that :func:`layers_reason` accepts."""
    if type(trunk) is not SequentialTrunk:
        return f"a {type(trunk).__name__} is no plain layer sequence"
    return layers_reason(list(trunk.named_children()))


def layers_reason(layers: Sequence[tuple[str, nn.Module]]) -> str | None:
    """Why the canvas cannot run named ``layers``; None when they start with a convolution and the
    canvas knows every layer's windows."""
    if not layers or not isinstance(layers[0][1], nn.Conv2d):
        return "the trunk does not start with a convolution"
    for name, layer in layers:
        try:
            layer_windows(layer)
        except TypeError as error:
            return f"{name}: {error}"
    return None
