"""Showing label maps: PASCAL-coloured palette images, and label colours blended over a photo."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcnseg.data.datasets import IGNORE_INDEX
from fcnseg.data.palette import pascal_palette

__all__ = ["colorize", "figure", "overlay", "side_by_side"]


def colorize(label_map: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """(H, W) class ids -> a palette ("P" mode) PIL image; saved as PNG it keeps the ids.

    ``palette`` is (K, 3) uint8 RGB, the PASCAL colour map by default; 255 (ignore)
    shows in VOC's border colour.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {label_map.shape}")
    if label_map.size and (label_map.min() < 0 or label_map.max() > 255):
        raise ValueError(
            f"label ids must be in [0, 255] for a palette image, got {label_map.min()}..{label_map.max()}"
        )
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:] = pascal_palette(256) if palette is None else _full_palette(palette)
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(colours.reshape(-1).tolist())
    return image


def overlay(
    image_uint8: np.ndarray, label_map: np.ndarray, palette: np.ndarray | None = None, alpha: float = 0.5
) -> np.ndarray:
    """Blend label colours over an image: (H, W, 3) uint8 and (H, W) ids -> (H, W, 3) uint8.

    Each pixel becomes ``(1 - alpha) * image + alpha * colour[label]``; background
    (id 0) and ignored pixels (``IGNORE_INDEX``) are left as they are so that the scene stays visible.
    """
    image = np.asarray(image_uint8)
    label_map = np.asarray(label_map)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if label_map.shape != image.shape[:2]:
        raise ValueError(f"label map {label_map.shape} and image {image.shape[:2]} differ in size (H, W)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = pascal_palette(256) if palette is None else _full_palette(palette)
    ids = np.clip(label_map, 0, 255).astype(np.int64)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours[ids].astype(np.float32)
    shown = (label_map != 0) & (label_map != IGNORE_INDEX)
    out = image.copy()
    out[shown] = np.rint(blended[shown]).astype(np.uint8)
    return out


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """(H, W, 3) uint8 panels of equal height in one row, separated by white gaps."""
    if not panels:
        raise ValueError("no panels to join")
    height = panels[0].shape[0]
    if any(p.shape[0] != height or p.ndim != 3 for p in panels):
        raise ValueError(f"panels must be (H, W, 3) of one height, got {[p.shape for p in panels]}")
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for panel in panels:
        row += [panel, spacer]
    return np.concatenate(row[:-1], axis=1)


def figure(
    panels: Sequence[tuple[str, np.ndarray]],
    class_names: Sequence[str],
    palette: np.ndarray | None = None,
    scale: int = 1,
    font_size: int = 14,
) -> np.ndarray:
    """Titled panels in a row above a colour legend of ``class_names``: one picture to read at a glance.

    Each panel is (title, (H, W, 3) uint8 image) or (title, (H, W) class ids, drawn in the
    palette's colours); all have one size and are enlarged ``scale`` times without smoothing.
    Returns (H', W', 3) uint8.
    """
    colours = pascal_palette(256) if palette is None else _full_palette(palette)
    pictures = []
    for _, panel in panels:
        panel = np.asarray(panel)
        picture = colours[np.clip(panel, 0, 255).astype(np.int64)] if panel.ndim == 2 else panel
        pictures.append(np.kron(picture, np.ones((scale, scale, 1), dtype=np.uint8)))
    row = side_by_side(pictures)
    font = ImageFont.load_default(size=font_size)
    line = font_size + 8
    swatch = font_size
    # Legend entries flow left to right and wrap at the row's width.
    places, x, y = [], 0, 0
    for class_id, name in enumerate(class_names):
        width = swatch + 6 + int(font.getlength(name)) + 16
        if x and x + width > row.shape[1]:
            x, y = 0, y + line
        places.append((class_id, name, x, y))
        x += width
    canvas = Image.new("RGB", (row.shape[1], line + row.shape[0] + 6 + y + line), "white")
    canvas.paste(Image.fromarray(row), (0, line))
    draw = ImageDraw.Draw(canvas)
    left = 0
    for (title, _), picture in zip(panels, pictures, strict=True):
        draw.text((left + 2, 3), title, fill="black", font=font)
        left += picture.shape[1] + 4
    top = line + row.shape[0] + 6
    for class_id, name, x, y in places:
        draw.rectangle(
            (x + 2, top + y + 2, x + 2 + swatch, top + y + 2 + swatch),
            fill=tuple(int(c) for c in colours[class_id]),
            outline="black",
        )
        draw.text((x + swatch + 8, top + y + 1), name, fill="black", font=font)
    return np.asarray(canvas)


def _full_palette(palette: np.ndarray) -> np.ndarray:
    """A (K, 3) palette extended to 256 entries with the PASCAL colours."""
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) > 256:
        raise ValueError(f"palette must be (K <= 256, 3) RGB, got shape {palette.shape}")
    full = pascal_palette(256)
    full[: len(palette)] = palette
    return full
