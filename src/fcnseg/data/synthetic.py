"""A seeded synthetic data set: textured shapes on cluttered backgrounds, with masks or boxes.

It is the built-in data for the demo and the tests: no download, and every image
is a pure function of its seed. Like real classes, each class has its own look, a
family of colours and a preferred texture, and neighbouring families overlap (an
orange disc and an orange ring look alike). Background clutter includes blobs
painted in the classes' own looks, so appearance says roughly *what*, while only
shape and context say exactly *where*: a net must learn both, and its boundaries
show how fine its output is. Objects occlude each other and run off the border.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fcnseg.data.palette import pascal_palette
from fcnseg.logs import show_bars

__all__ = [
    "CLASS_LOOKS",
    "CLASS_NAMES",
    "DEFAULT_SIZE_RANGE",
    "DIFFICULT_VISIBLE",
    "SyntheticDetection",
    "SyntheticSegmentation",
    "make_detection_sample",
    "make_sample",
    "sample_seed",
    "write_synthetic_folder",
]

CLASS_NAMES: tuple[str, ...] = ("background", "disc", "square", "triangle", "ring", "bar")
DEFAULT_SIZE_RANGE: tuple[int, int] = (64, 128)

TEXTURES = ("solid", "stripes", "speckle", "shading", "checker")

# Each object class's look: centre hue (degrees) and preferred texture. Hues spread
# +-_HUE_SPREAD around the centre, so families next to each other on the colour wheel
# overlap: red discs meet yellow rings in orange, blue squares meet purple bars.
CLASS_LOOKS = {
    1: (0.0, "shading"),
    2: (215.0, "checker"),
    3: (120.0, "stripes"),
    4: (50.0, "solid"),
    5: (285.0, "speckle"),
}
_HUE_SPREAD = 40.0
_PREFERRED_TEXTURE = 0.6  # otherwise any texture
_CLASS_LOOKING_CLUTTER = 0.6  # share of clutter blobs painted in a class's look; the rest is drab
_MIN_RADIUS = 3.0  # pixels; smaller shapes are no longer recognisable


def sample_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` of a data set seeded with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


def make_sample(
    seed: int,
    size: tuple[int, int] | None = None,
    *,
    size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """One image and its label map, a pure function of ``seed``.

    ``size`` is (H, W); when None, H and W are drawn independently from the
    inclusive ``size_range``. Returns image (H, W, 3) uint8 RGB and label (H, W)
    int64 with ids into :data:`CLASS_NAMES`.
    """
    image, label, _, _ = _draw(seed, size, size_range)
    return image, label


def make_detection_sample(
    seed: int,
    size: tuple[int, int] | None = None,
    *,
    size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The image of :func:`make_sample` and a box around what shows of each of its objects.

    Boxes are pixel corners (xmin, ymin, xmax, ymax) of the object's visible pixels (float32,
    xmax = last column + 1); an object hidden entirely by later ones or by clutter has no box, and
    one of which less than :data:`DIFFICULT_VISIBLE` shows is marked ``difficult``. Labels are ids
    into :data:`CLASS_NAMES` (never 0).
    """
    image, _, instances, shapes = _draw(seed, size, size_range)
    boxes, labels, difficult = [], [], []
    for k, (class_id, area) in enumerate(shapes, start=1):
        rows, cols = np.nonzero(instances == k)
        if len(rows) == 0:
            continue
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        labels.append(class_id)
        difficult.append(len(rows) < DIFFICULT_VISIBLE * area)
    return image, {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
    }


DIFFICULT_VISIBLE = 0.25
"""An object of which less than this share of its pixels shows is ``difficult`` (VOC's sense:
it counts neither for nor against a detector)."""


def _draw(
    seed: int, size: tuple[int, int] | None, size_range: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Image, label map, instance map (k for the k-th object, 0 elsewhere) and each object's
    (class id, pixel count before occlusion)."""
    rng = np.random.default_rng(seed)
    if size is None:
        low, high = _check_size_range(size_range)
        size = tuple(int(s) for s in rng.integers(low, high + 1, size=2))
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (H, W), got {size}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5

    image = _background(rng, yy, xx)
    label = np.zeros((height, width), dtype=np.int64)
    instances = np.zeros((height, width), dtype=np.int64)
    shapes = []
    for _ in range(rng.integers(1, 4)):
        _paint(rng, image, yy, xx, _blob_mask(rng, height, width), _clutter_look(rng))
    for _ in range(rng.integers(2, 6)):
        class_id = int(rng.integers(1, len(CLASS_NAMES)))
        mask = _SHAPES[class_id](rng, yy, xx, *_placement(rng, height, width))
        _paint(rng, image, yy, xx, mask, class_id)
        label[mask] = class_id
        shapes.append((class_id, int(mask.sum())))
        instances[mask] = len(shapes)
    if rng.random() < 0.3:  # clutter in front of the objects
        mask = _blob_mask(rng, height, width, coverage=0.06)
        _paint(rng, image, yy, xx, mask, _clutter_look(rng))
        label[mask] = 0
        instances[mask] = 0
    image += rng.normal(0.0, rng.uniform(2.0, 10.0), size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, instances, shapes


class SyntheticSegmentation(torch.utils.data.Dataset):
    """``num_images`` synthetic pairs generated on the fly; item i is
    ``make_sample(sample_seed(seed, i), size_range=size_range)`` as numpy
    (image (H, W, 3) uint8, label (H, W) int64)."""

    class_names: tuple[str, ...] = CLASS_NAMES
    num_classes: int = len(CLASS_NAMES)

    def __init__(self, num_images: int, seed: int = 0, size_range: tuple[int, int] = DEFAULT_SIZE_RANGE):
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.num_images = num_images
        self.seed = seed
        self.size_range = _check_size_range(size_range)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        index %= self.num_images
        return make_sample(sample_seed(self.seed, index), size_range=self.size_range)


class SyntheticDetection(SyntheticSegmentation):
    """The same images as :class:`SyntheticSegmentation`, with boxes: item i is
    ``make_detection_sample(sample_seed(seed, i), size_range=size_range)``, (image, target)."""

    class_names: tuple[str, ...] = CLASS_NAMES

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return make_detection_sample(
            sample_seed(self.seed, index % self.num_images), size_range=self.size_range
        )


def write_synthetic_folder(
    root: str | Path,
    num_images: int,
    seed: int = 0,
    size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
) -> Path:
    """Write the data set in the generic folder layout and return ``root``.

    Images go to ``root/images/<stem>.png`` (RGB) and labels to
    ``root/masks/<stem>.png`` as palette PNGs whose pixel index is the class id
    (PASCAL colours), the same encoding as VOC's ``SegmentationClass``.
    """
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    dataset = SyntheticSegmentation(num_images, seed=seed, size_range=size_range)
    palette = pascal_palette(256).reshape(-1).tolist()
    width = max(5, len(str(num_images - 1)))
    for i in tqdm(range(num_images), desc="synthetic images", disable=not show_bars(num_images >= 100)):
        image, label = dataset[i]
        stem = f"{i:0{width}d}"
        Image.fromarray(image).save(images_dir / f"{stem}.png")
        mask = Image.fromarray(label.astype(np.uint8))
        mask.putpalette(palette)
        mask.save(masks_dir / f"{stem}.png")
    return root


def _check_size_range(size_range: tuple[int, int]) -> tuple[int, int]:
    low, high = (int(s) for s in size_range)
    if not 1 <= low <= high:
        raise ValueError(f"size_range must satisfy 1 <= low <= high, got {size_range}")
    return low, high


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A gradient between two drab colours plus low-frequency colour noise, (H, W, 3) float32."""
    height, width = yy.shape
    start, end = _drab(rng), _drab(rng)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx / width + np.sin(angle) * yy / height
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    image = start + t[..., None] * (end - start)
    cells = int(rng.integers(3, 8))
    image += rng.uniform(10, 40) * _smooth_noise(rng, height, width, cells, channels=3)
    return image


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """Standard-normal noise on a coarse grid, bilinearly upsampled to (H, W, channels)."""
    m = cells + 1
    grid = rng.standard_normal((m, m * channels)).astype(np.float32)
    rows = (_interp_matrix(height, m) @ grid).reshape(height, m, channels)
    return _interp_matrix(width, m) @ rows


def _interp_matrix(n: int, m: int) -> np.ndarray:
    """(n, m) matrix that linearly interpolates m grid values onto n pixel centres."""
    pos = (np.arange(n, dtype=np.float32) + 0.5) / n * (m - 1)
    low = np.minimum(pos.astype(np.int64), m - 2)
    frac = pos - low
    matrix = np.zeros((n, m), dtype=np.float32)
    matrix[np.arange(n), low] = 1 - frac
    matrix[np.arange(n), low + 1] = frac
    return matrix


def _blob_mask(rng: np.random.Generator, height: int, width: int, coverage: float = 0.12) -> np.ndarray:
    """Irregular distractor blobs covering about ``coverage`` of the image, (H, W) bool."""
    field = _smooth_noise(rng, height, width, int(rng.integers(3, 7)), channels=1)[..., 0]
    return field > np.quantile(field, 1 - coverage * rng.uniform(0.5, 1.5))


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue / 360 % 1, saturation, value), dtype=np.float32) * 255


def _drab(rng: np.random.Generator) -> np.ndarray:
    """A colour of no class: greyish, any hue."""
    return _hsv(rng.uniform(0, 360), rng.uniform(0, 0.3), rng.uniform(0.15, 0.95))


def _clutter_look(rng: np.random.Generator) -> int:
    """The look of a clutter blob: a class id (it resembles that class) or 0 (drab)."""
    return int(rng.integers(1, len(CLASS_NAMES))) if rng.random() < _CLASS_LOOKING_CLUTTER else 0


def _paint(
    rng: np.random.Generator, image: np.ndarray, yy: np.ndarray, xx: np.ndarray, mask: np.ndarray, look: int
) -> None:
    """Fill ``image[mask]`` in place with a texture in the look of class ``look`` (0: drab)."""
    if not mask.any():
        return
    ys, xs = yy[mask], xx[mask]
    if look:
        hue, preferred = CLASS_LOOKS[look]
        hue += rng.uniform(-_HUE_SPREAD, _HUE_SPREAD)
        colour = _hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
        texture = preferred if rng.random() < _PREFERRED_TEXTURE else TEXTURES[rng.integers(len(TEXTURES))]
    else:
        colour = _drab(rng)
        texture = TEXTURES[rng.integers(len(TEXTURES))]
    # Textures vary the colour's brightness, so every pixel keeps the family's hue.
    if texture == "solid":
        shade = np.ones(len(ys), dtype=np.float32)
    elif texture in ("stripes", "checker"):
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 9)
        u = np.cos(angle) * xs + np.sin(angle) * ys
        on = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)) > 0
        if texture == "checker":
            v = -np.sin(angle) * xs + np.cos(angle) * ys
            on ^= np.sin(2 * np.pi * v / period) > 0
        shade = np.where(on, 1.0, 0.45).astype(np.float32)
    elif texture == "speckle":
        shade = rng.uniform(0.5, 1.15, size=len(ys)).astype(np.float32)
    else:  # shading, as if lit from one side
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xs + np.sin(angle) * ys
        shade = 1 + 0.7 * (ramp - ramp.mean()) / max(float(np.ptp(ramp)), 1.0)
    image[mask] = colour * shade[:, None] + rng.normal(0, 6, size=3).astype(np.float32)


def _placement(rng: np.random.Generator, height: int, width: int) -> tuple[float, ...]:
    """Centre (cy, cx), size radius r and rotation angle of one object."""
    short = min(height, width)
    radius = max(_MIN_RADIUS, rng.uniform(0.15, 0.35) * short)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    return cy, cx, radius, rng.uniform(0, 2 * np.pi)


def _rotated(yy, xx, cy, cx, angle):
    dy, dx = yy - cy, xx - cx
    cos, sin = np.cos(angle), np.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _disc(rng, yy, xx, cy, cx, r, angle):
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _square(rng, yy, xx, cy, cx, r, angle):
    u, v = _rotated(yy, xx, cy, cx, angle)
    half = 0.85 * r  # about the area of a disc of radius r
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(rng, yy, xx, cy, cx, r, angle):
    # Equilateral triangle with circumradius 1.2 r: three half-planes at inradius 0.6 r.
    mask = np.ones(yy.shape, dtype=bool)
    for k in range(3):
        a = angle + 2 * np.pi * k / 3
        mask &= np.cos(a) * (xx - cx) + np.sin(a) * (yy - cy) <= 0.6 * r
    return mask


def _ring(rng, yy, xx, cy, cx, r, angle):
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    inner = r * rng.uniform(0.4, 0.6)
    return (d2 <= r**2) & (d2 >= inner**2)


def _bar(rng, yy, xx, cy, cx, r, angle):
    u, v = _rotated(yy, xx, cy, cx, angle)
    half_length = r * rng.uniform(1.1, 1.6)
    half_width = max(1.5, r * rng.uniform(0.25, 0.4))
    return (np.abs(u) <= half_length) & (np.abs(v) <= half_width)


# Indexed by class id; entry 0 (background) is never drawn.
_SHAPES = (None, _disc, _square, _triangle, _ring, _bar)
