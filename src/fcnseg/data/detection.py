"""Detection data: PASCAL VOC boxes (VOC07+12), SSD's augmentation, and batches of boxes.

A raw sample is (image (H, W, 3) uint8 RGB, target): ``boxes`` (n, 4) float32 pixel corners
(xmin, ymin, xmax, ymax) as the annotation gives them, ``labels`` (n,) int64 ids into the data
set's ``class_names`` (0 is the background, never a box) and ``difficult`` (n,) bool. The net
sees boxes divided by the image's width and height, as Caffe's annotated data does.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from fcnseg.data.datasets import DataError, read_id_list, require_files
from fcnseg.data.images import read_image
from fcnseg.data.preprocess import preprocess
from fcnseg.data.transforms import resize_image
from fcnseg.data.voc import VOC_CLASSES, find_voc_dir
from fcnseg.errors import FcnsegError

__all__ = [
    "DEFAULT_DETECTION_SPLITS",
    "AnnotationError",
    "DetectionSamples",
    "annotation_files",
    "VOCDetection",
    "check_annotations",
    "detection_collate",
    "normalised_target",
    "read_voc_annotation",
    "resize_for_net",
    "ssd_augment",
    "voc_detection_split",
]

DEFAULT_DETECTION_SPLITS = ("2007-trainval+2012-trainval", "2007-test")
"""ssd_pascal.py's data: train on VOC2007 trainval and VOC2012 trainval, test on VOC2007 test."""

Target = dict[str, np.ndarray]


class AnnotationError(FcnsegError):
    """A VOC annotation that cannot be read or used; the message names the file and every bad object."""


def read_voc_annotation(path: Path, class_names: Sequence[str] = VOC_CLASSES) -> Target:
    """The boxes of a VOC ``Annotations/<id>.xml``; an :class:`AnnotationError` naming the file lists
    every bad object."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise AnnotationError(f"{path}: not a readable VOC annotation ({error})") from None
    boxes, labels, difficult, problems = [], [], [], []
    for n, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        try:
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            problems.append(f"object {n} ({name or 'no name'}): bndbox needs numbers xmin, ymin, xmax, ymax")
            continue
        if not all(math.isfinite(c) for c in coords):
            problems.append(f"object {n} ({name or 'no name'}): bndbox {coords} is not finite")
        elif name not in class_names[1:]:
            problems.append(f"object {n}: class {name!r} is not one of {', '.join(class_names[1:])}")
        elif not (coords[0] < coords[2] and coords[1] < coords[3]):
            problems.append(f"object {n} ({name}): degenerate box {coords} (needs xmin < xmax, ymin < ymax)")
        else:
            boxes.append(coords)
            labels.append(class_names.index(name))
            difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    if problems:
        raise AnnotationError(f"{path}: " + "; ".join(problems))
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
    }


class VOCDetection(Dataset):
    """PASCAL VOC detection, 20 classes (``class_names`` has the background first, as the net's ids).

    Layout (as the VOC tars extract under ``root``)::

        root/VOCdevkit/VOC<year>/JPEGImages/<id>.jpg
        root/VOCdevkit/VOC<year>/Annotations/<id>.xml
        root/VOCdevkit/VOC<year>/ImageSets/Main/<split>.txt
    """

    class_names: tuple[str, ...] = VOC_CLASSES

    def __init__(self, root: str | Path, year: str = "2007", split: str = "trainval"):
        self.root = find_voc_dir(root, year)
        listed = self.root / "ImageSets" / "Main" / f"{split}.txt"
        ids = read_id_list(listed)
        self.files = [
            (self.root / "JPEGImages" / f"{i}.jpg", self.root / "Annotations" / f"{i}.xml") for i in ids
        ]
        require_files([p for pair in self.files for p in pair], listed)
        self.year, self.split = year, split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        image, annotation = self.files[index]
        return read_image(image), read_voc_annotation(annotation, self.class_names)

    def __repr__(self) -> str:
        return f"VOCDetection({self.root}, {self.split}, {len(self)} images)"


class _Concat(Dataset):
    """Data sets one after another, with the first one's class names."""

    def __init__(self, parts: Sequence[Dataset]):
        self.parts = list(parts)
        self.class_names = parts[0].class_names
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, Target]:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part][index - int(self.starts[part])]


def voc_detection_split(name: str, root: str | Path) -> Dataset:
    """VOC detection splits by name: ``<year>-<split>`` joined by ``+``, e.g. ``"2007-trainval+2012-trainval"``."""
    parts = []
    for part in name.split("+"):
        year, _, split = part.partition("-")
        if not (year.isdigit() and split):
            raise ValueError(f"VOC detection split {part!r} must read <year>-<split>, e.g. 2007-test")
        parts.append(VOCDetection(root, year, split))
    return parts[0] if len(parts) == 1 else _Concat(parts)


def annotation_files(dataset: Dataset) -> list[tuple[Path, Path]]:
    """The (image, annotation) files of a VOC data set or a join of them; none for a made one."""
    return [f for part in getattr(dataset, "parts", [dataset]) for f in getattr(part, "files", [])]


def check_annotations(dataset: Dataset, progress: bool = False, listed: int = 20) -> int:
    """Read every annotation of a VOC data set (or a join of them): a DataError lists all bad ones;
    returns the number of boxes."""
    files = annotation_files(dataset)
    problems, boxes = [], 0
    for _, annotation in tqdm(files, desc="checking annotations", disable=not progress or len(files) < 100):
        try:
            boxes += len(read_voc_annotation(annotation, dataset.class_names)["labels"])
        except ValueError as error:
            problems.append(str(error))
    if problems:
        shown = "\n  ".join(problems[:listed]) + (
            f"\n  ... and {len(problems) - listed} more" if len(problems) > listed else ""
        )
        raise DataError(f"{len(problems)} annotation(s) cannot be used:\n  {shown}", problems)
    return boxes


def normalised_target(target: Target, height: int, width: int) -> Target:
    """Boxes divided by the image's width and height (Caffe's normalised boxes)."""
    scale = np.array([width, height, width, height], dtype=np.float32)
    return {**target, "boxes": target["boxes"].astype(np.float32) / scale}


# ----- SSD's augmentation (ssd_pascal.py's train_transform_param and batch_sampler) -----

_MEAN_RGB = (123, 117, 104)  # ssd_pascal.py's mean_value (104, 117, 123) in BGR
_RESAMPLING = (Image.BILINEAR, Image.BOX, Image.NEAREST, Image.BICUBIC, Image.LANCZOS)
"""interp_mode LINEAR, AREA, NEAREST, CUBIC, LANCZOS4, one drawn per image."""

_SAMPLERS = (  # (min_scale, max_scale, min_jaccard, max_jaccard, max_trials); aspect ratios 0.5 to 2
    (1.0, 1.0, None, None, 1),  # the whole image
    *((0.3, 1.0, overlap, None, 50) for overlap in (0.1, 0.3, 0.5, 0.7, 0.9)),
    (0.3, 1.0, None, 1.0, 50),
)


def _iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    low, high = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(high - low, 0, None).prod(1)
    union = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], 1) - inter
    return inter / np.maximum(union, 1e-12)


def _distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Caffe's DistortImage: brightness (+-32), then contrast, saturation (x0.5..1.5) and hue
    (+-18 of OpenCV's 180) in one of two orders, each applied with probability 0.5."""

    def brightness(x: np.ndarray) -> np.ndarray:
        return (
            np.clip(x.astype(np.float32) + rng.uniform(-32, 32), 0, 255).astype(np.uint8)
            if rng.random() < 0.5
            else x
        )

    def contrast(x: np.ndarray) -> np.ndarray:
        return (
            np.clip(x.astype(np.float32) * rng.uniform(0.5, 1.5), 0, 255).astype(np.uint8)
            if rng.random() < 0.5
            else x
        )

    def saturation(x: np.ndarray) -> np.ndarray:
        if rng.random() >= 0.5:
            return x
        hsv = np.asarray(Image.fromarray(x).convert("HSV")).astype(np.float32)
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))

    def hue(x: np.ndarray) -> np.ndarray:
        if rng.random() >= 0.5:
            return x
        hsv = np.asarray(Image.fromarray(x).convert("HSV")).astype(np.int32)
        hsv[..., 0] = (hsv[..., 0] + round(rng.uniform(-18, 18) * 256 / 180)) % 256  # PIL's hue runs 0..255
        return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))

    order = (contrast, saturation, hue) if rng.random() > 0.5 else (saturation, hue, contrast)
    image = brightness(image)
    for step in order:
        image = step(image)
    return image


def _expand(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """With probability 0.5, the image at a random place on a mean-coloured canvas up to 4x its size."""
    if rng.random() >= 0.5:
        return image, boxes
    ratio = rng.uniform(1.0, 4.0)
    height, width = image.shape[:2]
    big_h, big_w = int(height * ratio), int(width * ratio)
    top, left = int(rng.uniform(0, big_h - height)), int(rng.uniform(0, big_w - width))
    canvas = np.empty((big_h, big_w, 3), dtype=np.uint8)
    canvas[:] = _MEAN_RGB
    canvas[top : top + height, left : left + width] = image
    scale = np.array([width, height, width, height], dtype=np.float32)
    shift = np.array([left, top, left, top], dtype=np.float32)
    big = np.array([big_w, big_h, big_w, big_h], dtype=np.float32)
    return canvas, (boxes * scale + shift) / big


def _sample_crop(boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """One of the windows the seven batch samplers find (normalised corners), or None for the whole image."""
    found = []
    for min_scale, max_scale, min_jaccard, max_jaccard, trials in _SAMPLERS:
        for _ in range(trials):
            scale = rng.uniform(min_scale, max_scale)
            ratio = np.clip(rng.uniform(0.5, 2.0), scale**2, 1 / scale**2)
            w, h = min(1.0, scale * np.sqrt(ratio)), min(1.0, scale / np.sqrt(ratio))
            x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            window = np.array([x, y, x + w, y + h], dtype=np.float32)
            if min_jaccard is None and max_jaccard is None:
                found.append(window)
                break
            overlaps = _iou_one(window, boxes) if len(boxes) else np.zeros(0)
            good = np.ones(len(overlaps), bool)
            if min_jaccard is not None:
                good &= overlaps >= min_jaccard
            if max_jaccard is not None:
                good &= overlaps <= max_jaccard
            if good.any():
                found.append(window)
                break
    return found[int(rng.integers(len(found)))] if found else None


def _crop(image: np.ndarray, target: Target, window: np.ndarray) -> tuple[np.ndarray, Target]:
    """Cut ``window``; keep the boxes whose centre lies in it (emit_constraint CENTER), clipped to it."""
    height, width = image.shape[:2]
    x0, y0 = int(window[0] * width), int(window[1] * height)
    x1, y1 = max(x0 + 1, int(window[2] * width)), max(y0 + 1, int(window[3] * height))
    cut = np.array([x0 / width, y0 / height, x1 / width, y1 / height], dtype=np.float32)
    boxes = target["boxes"]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (centre >= cut[:2]).all(1) & (centre <= cut[2:]).all(1)
    size = np.tile(cut[2:] - cut[:2], 2)
    moved = np.clip((boxes - np.tile(cut[:2], 2)) / size, 0, 1)
    keep = inside & (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
    return image[y0:y1, x0:x1], {k: (moved if k == "boxes" else v)[keep] for k, v in target.items()}


def ssd_augment(
    image: np.ndarray, target: Target, rng: np.random.Generator, size: int = 300
) -> tuple[np.ndarray, Target]:
    """ssd_pascal.py's training transform of one image with normalised boxes, drawn from ``rng``:
    photometric distortion, expansion, one of the seven IoU-constrained crops, a resize to
    ``size`` x ``size`` (interpolation drawn from five) and a mirror with probability 0.5."""
    image = _distort(image, rng)
    image, boxes = _expand(image, target["boxes"], rng)
    target = {**target, "boxes": boxes}
    window = _sample_crop(boxes, rng)
    if window is not None:
        image, target = _crop(image, target, window)
    resample = _RESAMPLING[int(rng.integers(len(_RESAMPLING)))]
    image = np.asarray(Image.fromarray(image).resize((size, size), resample))
    if rng.random() < 0.5:
        image = image[:, ::-1]
        boxes = target["boxes"]
        target = {
            **target,
            "boxes": np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1),
        }
    return np.ascontiguousarray(image), target


def resize_for_net(image: np.ndarray, size: int = 300) -> np.ndarray:
    """The test transform: an (H, W, 3) uint8 image warped to ``size`` x ``size`` as the reference's
    ``cv::resize`` with INTER_LINEAR does it (half-pixel centres, no smoothing when shrinking; Pillow's
    bilinear smooths), to within OpenCV's fixed-point rounding of one grey level. Normalised boxes
    stay as they are."""
    return resize_image(image, (size, size), antialias=False)


class DetectionSamples(Dataset):
    """Raw samples -> (preprocessed image (3, size, size), target of tensors with normalised boxes).

    Indexed by (epoch, index) keys: the augmentation of an image is drawn from a generator seeded by
    (seed, epoch, index) alone, so a resumed run sees the same samples. ``augment`` None: the test
    transform (a resize) only.
    """

    def __init__(
        self,
        dataset: Dataset,
        mode: str,
        augment: Callable[..., tuple[np.ndarray, Target]] | None = ssd_augment,
        seed: int = 0,
        size: int = 300,
    ):
        self.dataset, self.mode, self.augment, self.seed, self.size = dataset, mode, augment, seed, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        epoch, index = key
        image, target = self.dataset[index]
        target = normalised_target(target, *image.shape[:2])
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            image, target = self.augment(image, target, rng, self.size)
        else:
            image = resize_for_net(image, self.size)
        return preprocess(image, self.mode), {k: torch.as_tensor(v) for k, v in target.items()}


def detection_collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images of one size stacked (N, C, H, W); targets stay a list, one dict of boxes per image."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    sizes = {tuple(image.shape) for image, _ in batch}
    if len(sizes) > 1:
        raise ValueError(f"detection batches need images of one size, got {sorted(sizes)}")
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]
