"""Training curves as a PNG drawn with Pillow alone: loss, and the validation metrics, against step.

matplotlib would be a heavy dependency for two line charts; this draws axes, ticks,
lines and a legend directly so that every run can leave a picture of itself.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from fcnseg.files import atomic_write

__all__ = ["plot_curves"]

_PANEL = (460, 320)
_MARGIN = (64, 36, 16, 44)  # left, top, right, bottom
_LOSS_COLOUR = (31, 119, 180)
_COLOURS = ((214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))


def plot_curves(rows: Sequence[dict[str, float]], path: str | Path, metrics: dict[str, str]) -> Path:
    """Write two panels to ``path``: the training loss, and the validation ``metrics`` (column ->
    label), by step.

    ``rows`` are the trainer's log rows (``step``, ``train_loss`` and the metrics); NaN values
    (no validation set) are left out. Metrics all within [0, 1] are drawn on that scale.
    """
    font = ImageFont.load_default(size=13)
    image = Image.new("RGB", (2 * _PANEL[0], _PANEL[1]), "white")
    draw = ImageDraw.Draw(image)
    steps = [row["step"] for row in rows]
    loss = {"train loss": ([r["train_loss"] for r in rows], _LOSS_COLOUR)}
    _panel(draw, font, (0, 0), "training loss", steps, loss, None)
    series = {
        label: ([r[key] for r in rows], colour)
        for (key, label), colour in zip(metrics.items(), itertools.cycle(_COLOURS), strict=False)
    }
    values = [v for curve, _ in series.values() for v in curve if math.isfinite(v)]
    unit = (0.0, 1.0) if all(0 <= v <= 1 for v in values) else None
    _panel(draw, font, (_PANEL[0], 0), "validation", steps, series, unit)
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def _panel(draw, font, origin, title, steps, series, y_range) -> None:
    left, top = origin[0] + _MARGIN[0], origin[1] + _MARGIN[1]
    right, bottom = origin[0] + _PANEL[0] - _MARGIN[2], origin[1] + _PANEL[1] - _MARGIN[3]
    draw.text(((left + right) / 2, origin[1] + 10), title, fill="black", font=font, anchor="mt")
    draw.rectangle((left, top, right, bottom), outline="black")
    points = [
        (s, v)
        for values, _ in series.values()
        for s, v in zip(steps, values, strict=True)
        if math.isfinite(v)
    ]
    if not points:
        draw.text(((left + right) / 2, (top + bottom) / 2), "no data", fill="gray", font=font, anchor="mm")
        return
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    if y_range is None:
        y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
        pad = 0.05 * (y_high - y_low) or max(abs(y_high), 1.0) * 0.05
        y_low, y_high = y_low - pad, y_high + pad
    else:
        y_low, y_high = y_range
    x_high = x_high if x_high > x_low else x_low + 1

    def to_xy(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x_low) / (x_high - x_low) * (right - left)
        y = bottom - (value - y_low) / (y_high - y_low) * (bottom - top)
        return x, y

    for tick in _ticks(y_low, y_high):
        _, y = to_xy(x_low, tick)
        draw.line((left, y, right, y), fill=(230, 230, 230))
        draw.text((left - 6, y), f"{tick:.4g}", fill="black", font=font, anchor="rm")
    for tick in _ticks(x_low, x_high):
        x, _ = to_xy(tick, y_low)
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x, bottom + 6), f"{tick:.6g}", fill="black", font=font, anchor="mt")
    draw.text(((left + right) / 2, bottom + 24), "step", fill="black", font=font, anchor="mt")
    for i, (label, (values, colour)) in enumerate(series.items()):
        line = [to_xy(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=colour)
        draw.text((left + 8, top + 6 + 16 * i), label, fill=colour, font=font)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) within [low, high]."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]
