"""Reading images and label masks from disk robustly: any PIL mode in, one well-defined array out,
and errors that name the file."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fcnseg.data.palette import pascal_palette
from fcnseg.errors import FcnsegError

__all__ = [
    "MAX_PIXELS",
    "ImageReadError",
    "ImageTooLarge",
    "check_pair",
    "image_files",
    "image_size",
    "read_depth",
    "read_image",
    "read_label",
]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_INDEX_MODES = ("P", "L", "1", *_SIXTEEN_BIT)


class ImageReadError(FcnsegError):
    """An image or mask that cannot be decoded or interpreted; the message names the file."""


class ImageTooLarge(ImageReadError):
    """An image over the pixel limit, refused from its header before anything is decoded."""


MAX_PIXELS = 178_956_970
"""The largest image read by default: PIL's default decompression-bomb limit (about 179 MP)."""

_PIL_GUARD = threading.Lock()

_READABLE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
"""Files a folder of images holds: those whose suffix PIL can open."""


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` by name (by suffix, hidden files skipped, not recursive)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in _READABLE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


@contextlib.contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Lift PIL's global size guard while a larger limit (or none) is checked here instead."""
    if max_pixels is not None and max_pixels <= MAX_PIXELS:
        yield  # PIL's guard (by default the same limit) may stay
        return
    with _PIL_GUARD:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _too_large(path: str | Path, width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"cannot read image {path}: {width}x{height} = {width * height / 1e6:.3g} MP is over "
        f"the {max_pixels / 1e6:.3g} MP limit that guards against decompression bombs; for a "
        "file you trust, raise it (--max-megapixels of fcnseg predict or serve)"
    )


@contextlib.contextmanager
def _header(path: str | Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """``path`` opened (its header read, nothing decoded) and checked to be at most ``max_pixels``."""
    try:
        with _pixel_limit(max_pixels), Image.open(path) as im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise _too_large(path, width, height, max_pixels)
            yield im
    except (FileNotFoundError, ImageReadError):
        raise
    except Image.DecompressionBombError as exc:  # PIL's guard, at MAX_PIXELS
        raise ImageTooLarge(
            f"cannot read image {path}: {str(exc).rstrip('.')}; for a file you trust, raise the limit "
            "(--max-megapixels of fcnseg predict or serve)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def image_size(path: str | Path, *, max_pixels: int | None = MAX_PIXELS) -> tuple[int, int]:
    """An image's (width, height) from its header alone: :class:`ImageTooLarge` over ``max_pixels``
    (None: no limit), :class:`ImageReadError` if it is no image."""
    with _header(path, max_pixels) as im:
        return im.size


def _open(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Fully decode ``path`` (so truncated files fail here, not later) in its EXIF orientation.

    An image over ``max_pixels`` (None: no limit) is refused from its header, before
    anything is decoded.
    """
    with _header(path, max_pixels) as im:  # its decoding errors too become an ImageReadError
        im.load()
        return ImageOps.exif_transpose(im)


def _sixteen_bit_values(im: Image.Image, path: str | Path) -> np.ndarray:
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageReadError(
            f"{path}: 32-bit image with values in [{values.min()}, {values.max()}]; "
            "expected 16-bit values in [0, 65535]"
        )
    return values


def read_image(path: str | Path, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, upright as a viewer shows it (EXIF orientation).

    Grayscale and palette images are expanded to RGB, alpha is dropped, CMYK converted;
    16-bit images are scaled from [0, 65535] to [0, 255] (divided by 257) rather than clipped,
    so a depth or medical image keeps its contrast. Images over ``max_pixels`` are refused
    (None: no limit).
    """
    im = _open(path, max_pixels)
    if im.mode in _SIXTEEN_BIT:
        gray = np.round(_sixteen_bit_values(im, path) / 257.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ImageReadError(f"{path}: floating-point images (mode 'F') have no defined 8-bit scale")
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_depth(path: str | Path) -> np.ndarray:
    """Read a single-channel 8- or 16-bit image (a depth map) as (H, W) uint16, values unscaled."""
    im = _open(path)
    if im.mode not in ("L", *_SIXTEEN_BIT):
        raise ImageReadError(f"{path}: expected a single-channel 16-bit depth image, got mode {im.mode!r}")
    return _sixteen_bit_values(im, path).astype(np.uint16)


def read_label(path: str | Path) -> np.ndarray:
    """Read a label mask as (H, W) int64 class ids.

    Palette PNGs give their palette indices (never their colours: that is how PASCAL VOC stores
    labels), grayscale and 16-bit images their values, and an RGB colour mask is mapped back
    through the PASCAL palette. Colours that are not in the palette are an error.
    """
    im = _open(path)
    if im.mode in _INDEX_MODES:
        return np.asarray(im).astype(np.int64)
    if im.mode in ("RGB", "RGBA"):
        return _colours_to_ids(np.asarray(im.convert("RGB")), path)
    raise ImageReadError(
        f"{path}: label masks must be palette, grayscale or RGB images, got mode {im.mode!r}"
    )


def _colours_to_ids(rgb: np.ndarray, path: str | Path) -> np.ndarray:
    def code(colours: np.ndarray) -> np.ndarray:
        colours = colours.astype(np.int64)
        return (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]

    ids_by_code = {int(c): i for i, c in enumerate(code(pascal_palette(256)))}
    codes, inverse = np.unique(code(rgb), return_inverse=True)
    unknown = [int(c) for c in codes if int(c) not in ids_by_code]
    if unknown:
        listed = ", ".join(str((c >> 16, (c >> 8) & 255, c & 255)) for c in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ImageReadError(
            f"{path}: RGB mask has {len(unknown)} colour(s) not in the PASCAL palette: "
            f"{listed}{more}. Save masks as palette or grayscale PNGs of class ids instead."
        )
    ids = np.array([ids_by_code[int(c)] for c in codes], dtype=np.int64)
    return ids[inverse].reshape(rgb.shape[:2])


def check_pair(image: np.ndarray, label: np.ndarray, image_path: str | Path, label_path: str | Path) -> None:
    """Raise ``ImageReadError`` unless the image (H, W, C) and label (..., H, W) have the same size."""
    if image.shape[:2] != label.shape[-2:]:
        (h, w), (lh, lw) = image.shape[:2], label.shape[-2:]
        raise ImageReadError(
            f"image and label sizes differ: {image_path} is {w}x{h} (WxH) but {label_path} is {lw}x{lh}"
        )
