"""Joint image/label augmentations, the net's inputs made from raw pairs, and a padding collate.

Every transform takes ``(image, label, rng)`` and returns ``(image, label)``:
``image`` is an (H, W, C) uint8 array, ``label`` an (H, W) int64 array, and
``rng`` a ``numpy.random.Generator`` that supplies all randomness, so that a
seeded generator replays the same augmentations. Geometry is applied to both
arrays together so the mask stays aligned with the pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fcnseg.data.datasets import IGNORE_INDEX
from fcnseg.data.preprocess import preprocess

__all__ = [
    "Compose",
    "JointTransform",
    "NetPairs",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "check_pair",
    "pad_collate",
    "resize_image",
    "resize_label",
]

Pair = tuple[np.ndarray, np.ndarray]
JointTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Pair]


def check_pair(image: np.ndarray, label: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is (H, W, C) and ``label`` is (H, W) of the same size."""
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    if label.ndim != 2:
        raise ValueError(f"label must be (H, W), got shape {label.shape}")
    if image.shape[:2] != label.shape:
        raise ValueError(f"image size {image.shape[:2]} and label size {label.shape} differ (H, W)")


class Compose:
    """Apply joint transforms in order, sharing one generator."""

    def __init__(self, transforms: Sequence[JointTransform]):
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        for transform in self.transforms:
            image, label = transform(image, label, rng)
        return image, label

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomHorizontalFlip:
    """Mirror image and label left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        check_pair(image, label)
        if rng.random() < self.p:
            return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomScale:
    """Resize by a factor drawn uniformly from ``scale_range``.

    The image is interpolated bilinearly (antialiased when shrinking); the label
    with centred nearest-neighbour, since averaging class ids would invent classes.
    Output size is ``round(H * s), round(W * s)``, at least 1.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0)):
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        check_pair(image, label)
        scale = rng.uniform(*self.scale_range)
        height, width = label.shape
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        if size == (height, width):
            return image, label
        return resize_image(image, size), resize_label(label, size)

    def __repr__(self) -> str:
        return f"RandomScale(scale_range={self.scale_range})"


def resize_image(image: np.ndarray, size: tuple[int, int], *, antialias: bool = True) -> np.ndarray:
    """Bilinear resize of an (H, W, C) uint8 image to ``size`` = (H', W'); ``antialias`` smooths
    when shrinking, as Pillow does (without: as OpenCV's INTER_LINEAR)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map to ``size`` = (H', W'), dtype kept."""
    # "nearest-exact" samples pixel centres; plain "nearest" shifts the mask by up to a pixel.
    x = torch.from_numpy(np.ascontiguousarray(label))[None, None].double()
    x = F.interpolate(x, size=size, mode="nearest-exact")
    return x[0, 0].numpy().astype(label.dtype)


class RandomCrop:
    """Cut a random ``size`` window; pad first where the image is smaller.

    Padding goes to the bottom and right: the label with ``ignore_index`` so padded
    pixels add no loss, the image with ``fill``.
    """

    def __init__(self, size: int | tuple[int, int], ignore_index: int = IGNORE_INDEX, fill: int = 0):
        height, width = (size, size) if isinstance(size, int) else size
        if height < 1 or width < 1:
            raise ValueError(f"crop size must be positive, got {size}")
        self.size = (int(height), int(width))
        self.ignore_index = ignore_index
        self.fill = fill

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        check_pair(image, label)
        crop_h, crop_w = self.size
        pad_h = max(0, crop_h - label.shape[0])
        pad_w = max(0, crop_w - label.shape[1])
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=self.fill)
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        top = int(rng.integers(0, label.shape[0] - crop_h + 1))
        left = int(rng.integers(0, label.shape[1] - crop_w + 1))
        window = (slice(top, top + crop_h), slice(left, left + crop_w))
        return np.ascontiguousarray(image[window]), np.ascontiguousarray(label[window])

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, ignore_index={self.ignore_index}, fill={self.fill})"


class NetPairs(Dataset):
    """Raw pairs -> (preprocessed image (3, H, W) float32, label (H, W) int64), augmented reproducibly.

    Indexed by (epoch, index): the augmentation of an image is drawn from a generator
    seeded by (seed, epoch, index), so it does not depend on worker processes or on
    where a resumed run restarted.
    """

    def __init__(self, dataset: Dataset, mode: str, transform: JointTransform | None = None, seed: int = 0):
        self.dataset, self.mode, self.transform, self.seed = dataset, mode, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, label = self.dataset[index]
        if self.transform is not None:
            image, label = self.transform(image, label, np.random.default_rng([self.seed, epoch, index]))
        return preprocess(image, self.mode), torch.as_tensor(label, dtype=torch.int64)


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images of different sizes by padding bottom/right to the largest.

    ``batch`` holds (image (C, H, W) float, label (H, W) int64) pairs. Returns
    images (N, C, Hmax, Wmax) padded with 0 and labels (N, Hmax, Wmax) padded with
    ``ignore_index``, so padding never contributes to the loss or the metrics.
    Images keep their top-left corner, matching the crop alignment of the nets.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    channels = batch[0][0].shape[0]
    for i, (image, label) in enumerate(batch):
        if image.dim() != 3 or label.dim() != 2:
            raise ValueError(
                f"batch item {i}: expected image (C, H, W) and label (H, W), "
                f"got {tuple(image.shape)} and {tuple(label.shape)}"
            )
        if image.shape[1:] != label.shape:
            raise ValueError(
                f"batch item {i}: image size {tuple(image.shape[1:])} and "
                f"label size {tuple(label.shape)} differ (H, W)"
            )
        if image.shape[0] != channels:
            raise ValueError(f"batch item {i} has {image.shape[0]} channels, item 0 has {channels}")
    height = max(label.shape[0] for _, label in batch)
    width = max(label.shape[1] for _, label in batch)
    first_image, first_label = batch[0]
    images = first_image.new_zeros((len(batch), channels, height, width))
    labels = first_label.new_full((len(batch), height, width), ignore_index)
    for i, (image, label) in enumerate(batch):
        images[i, :, : image.shape[1], : image.shape[2]] = image
        labels[i, : label.shape[0], : label.shape[1]] = label
    return images, labels
