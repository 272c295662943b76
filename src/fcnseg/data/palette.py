"""The PASCAL VOC colour map, used for label PNGs and for showing label maps."""

from __future__ import annotations

import numpy as np

__all__ = ["pascal_palette"]


def pascal_palette(num_classes: int = 256) -> np.ndarray:
    """The VOC ``labelcolormap``: class id -> RGB, as a (num_classes, 3) uint8 array.

    VOC spreads the bits of the class id over the channels, three bits per round
    from the most significant colour bit down, so that neighbouring ids get very
    different colours: bit 0 of the id goes to red, bit 1 to green, bit 2 to blue
    (at value 128), the next three bits to value 64, and so on. Id 255 (the void
    label) comes out as (224, 224, 192).
    """
    if not 0 < num_classes <= 256:
        raise ValueError(f"num_classes must be in [1, 256], got {num_classes}")
    ids = np.arange(num_classes)
    palette = np.zeros((num_classes, 3), dtype=np.int64)
    for round_ in range(8):
        shift = 7 - round_
        for channel in range(3):
            bit = (ids >> (3 * round_ + channel)) & 1
            palette[:, channel] |= bit << shift
    return palette.astype(np.uint8)
