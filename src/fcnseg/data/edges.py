"""Edge and skeleton data: BSDS500, HED-BSDS, SK-LARGE and SK506 readers, the synthetic world's
boundaries and medial axes, and the label rules of HED and FSDS (consensus edges, skeleton scales
and their classes).

Edge samples are ``(image (H, W, 3) uint8, boundaries (K, H, W) bool)``, one map per annotator;
skeleton samples are ``(image, scales (H, W) float32)``, the skeleton's scale (twice the distance
to the object's boundary) on skeleton pixels and 0 elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fcnseg.data.datasets import IGNORE_INDEX, DataError
from fcnseg.data.images import read_image, read_label
from fcnseg.data.matlab import MatReadError, load_mat
from fcnseg.data.synthetic import DEFAULT_SIZE_RANGE, make_sample, sample_seed
from fcnseg.errors import MissingExtraError

__all__ = [
    "BSDS500",
    "HEDPairs",
    "SCALE_THRESHOLDS",
    "SkeletonDataset",
    "SyntheticEdges",
    "SyntheticSkeletons",
    "edge_labels",
    "label_boundaries",
    "medial_axis",
    "quantise_scales",
    "skeleton_scales",
    "synthetic_skeleton",
]

SCALE_THRESHOLDS: dict[str, tuple[int, ...]] = {"sk506": (10, 26, 60, 150), "sk-large": (10, 32, 80, 180)}
"""Upper bounds of FSDS's scale classes 1..4 per data set, from the receptive fields of conv2_2..conv5_3
(14, 40, 92, 196 pixels): a skeleton pixel of scale s is class k when the (k-1)th bound <= s < the
kth, and background from the last bound on (DeepSkeleton's ``image_labelmap_data_layer.cpp``)."""


def _ndimage():
    try:
        from scipy import ndimage
    except ImportError:
        raise MissingExtraError(
            "skeleton labels need scipy: pip install 'fcnseg[edges]' (or pip install scipy)"
        ) from None
    return ndimage


def edge_labels(boundaries: np.ndarray, threshold: float = 0.5, ignore_weak: bool = False) -> np.ndarray:
    """HED's training label from several annotators' (K, H, W) boundary maps, as int64.

    HED averages the annotators into one map and its data layer computes ``label / 255`` in
    integer arithmetic (``ImageLabelmapDataLayer::load_batch``, "consensus sampling"): a pixel
    is an edge (1) where at least half of the annotators marked it, else not (0), so edges
    marked by fewer annotators count as negatives. ``ignore_weak`` instead gives those pixels
    (0 < mean < ``threshold``) :data:`IGNORE_INDEX`, which the loss skips.
    """
    mean = np.asarray(boundaries, dtype=np.float64).reshape(-1, *np.shape(boundaries)[-2:]).mean(axis=0)
    label = (mean >= threshold).astype(np.int64)
    if ignore_weak:
        label[(mean > 0) & (mean < threshold)] = IGNORE_INDEX
    return label


def skeleton_scales(skeleton: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Scales on the skeleton pixels: twice the distance to the nearest edge pixel (at least 2), 0 off
    the skeleton, as DeepSkeleton's ``aug_sk506_3_2.m`` makes them from ``symmetry`` and ``edge``."""
    skeleton, edges = np.asarray(skeleton, bool), np.asarray(edges, bool)
    if not edges.any():
        distance = np.full(skeleton.shape, np.inf)  # no boundary: larger than any receptive field
    else:
        distance = _ndimage().distance_transform_edt(~edges)
    return np.where(skeleton, 2 * np.maximum(distance, 1), 0).astype(np.float32)


def quantise_scales(scales: np.ndarray, thresholds: tuple[int, ...]) -> np.ndarray:
    """FSDS's per-pixel class (int64): 0 background (also scales from the last threshold on), else
    k = 1..len(thresholds) for scales in [previous bound, kth bound). Scales are first rounded to
    whole pixels, as the reference stores them in a uint8 PNG."""
    s = np.rint(np.asarray(scales, dtype=np.float64))
    classes = np.searchsorted(np.asarray(thresholds, dtype=np.float64), s, side="right") + 1
    classes[(s < 1) | (s >= thresholds[-1])] = 0
    return classes.astype(np.int64)


def label_boundaries(label: np.ndarray) -> np.ndarray:
    """The one-pixel boundaries between regions of a label map: a pixel is on the boundary when its
    right or lower neighbour has another label (so each boundary is drawn once, on one side)."""
    edges = np.zeros(label.shape, dtype=bool)
    edges[:, :-1] |= label[:, :-1] != label[:, 1:]
    edges[:-1, :] |= label[:-1, :] != label[1:, :]
    return edges


def medial_axis(mask: np.ndarray, min_separation: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """The medial axis of a region and the distance of every pixel to the nearest pixel outside it.

    Two neighbouring pixels whose nearest outside pixels lie at least ``min_separation`` apart
    straddle the axis; of the two, the one nearer the midpoint of those outside pixels is on it
    (the integer medial axis of Hesselink and Roerdink, 2008). The image border is no boundary.
    """
    mask = np.asarray(mask, bool)
    skeleton = np.zeros(mask.shape, dtype=bool)
    if mask.all() or not mask.any():
        return skeleton, np.zeros(mask.shape)
    distance, nearest = _ndimage().distance_transform_edt(mask, return_indices=True)
    points = np.stack(np.indices(mask.shape), axis=-1).astype(np.float64)
    feature = np.moveaxis(nearest, 0, -1).astype(np.float64)
    for axis in (0, 1):
        here = [slice(None), slice(None)]
        there = [slice(None), slice(None)]
        here[axis], there[axis] = slice(None, -1), slice(1, None)
        p, q = tuple(here), tuple(there)
        both = mask[p] & mask[q]
        fp, fq = feature[p], feature[q]
        apart = ((fp - fq) ** 2).sum(-1) >= min_separation**2
        side = ((fq - fp) * (fp + fq - points[p] - points[q])).sum(-1)
        straddle = both & apart
        skeleton[p] |= straddle & (side >= 0)
        skeleton[q] |= straddle & (side <= 0)
    return skeleton, distance


def synthetic_skeleton(label: np.ndarray) -> np.ndarray:
    """The scales of the medial axes of a synthetic label map's object regions (one region per class),
    twice the distance to the region's boundary; 0 elsewhere."""
    scales = np.zeros(label.shape, dtype=np.float32)
    for class_id in np.unique(label):
        if class_id == 0:
            continue
        axis, distance = medial_axis(label == class_id)
        scales[axis] = 2 * np.maximum(distance[axis], 1)
    return scales


class SyntheticEdges(torch.utils.data.Dataset):
    """The synthetic world's images with their exact object boundaries: item i is image i of
    :class:`~fcnseg.data.synthetic.SyntheticSegmentation` and its boundaries as one annotator."""

    def __init__(self, num_images: int, seed: int = 0, size_range: tuple[int, int] = DEFAULT_SIZE_RANGE):
        self.num_images, self.seed, self.size_range = num_images, seed, size_range

    def __len__(self) -> int:
        return self.num_images

    def _sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return make_sample(sample_seed(self.seed, index), size_range=self.size_range)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self._sample(index)
        return image, label_boundaries(label)[None]


class SyntheticSkeletons(SyntheticEdges):
    """The synthetic world's images with the medial axes of their objects and the axes' scales."""

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self._sample(index)
        return image, synthetic_skeleton(label)


def _find_layout(root: Path, split: str, kind: str, nested: tuple[str, ...] = ()) -> Path:
    """The folder holding ``images/<split>`` and ``groundTruth/<split>`` at or below ``root``."""
    for base in (root, *(root / n for n in nested)):
        if (base / "images" / split).is_dir() and (base / "groundTruth" / split).is_dir():
            return base
    raise DataError(
        f"{root}: no {kind} split {split!r} here: expected images/{split}/ and groundTruth/{split}/"
        + (f" (also looked in {', '.join(nested)})" if nested else ""),
        [],
    )


def _pairs(base: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, ground truth) files of a split; every image without its .mat is listed in one error."""
    images = sorted(p for p in (base / "images" / split).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    pairs, problems = [], []
    for image in images:
        truth = base / "groundTruth" / split / f"{image.stem}.mat"
        if truth.is_file():
            pairs.append((image, truth))
        else:
            problems.append(f"{image}: no ground truth {truth}")
    if problems:
        raise DataError(f"{base}: {len(problems)} image(s) of split {split} lack ground truth", problems)
    if not pairs:
        raise DataError(f"{base / 'images' / split}: no .jpg or .png images", [])
    return pairs


class _MatPairs(torch.utils.data.Dataset):
    """Images and their ground truth in MAT-files: ``images/<split>/<id>.jpg`` and
    ``groundTruth/<split>/<id>.mat`` at ``root`` or one of the folders ``nested`` below it. Each
    data set reads its ``variables`` of an image's file into its own ground truth (:meth:`truth`)."""

    variables: tuple[str, ...]

    def __init__(self, root: str | Path, split: str, kind: str, nested: tuple[str, ...]):
        self.root = _find_layout(Path(root), split, kind, nested)
        self.split = split
        self.pairs = _pairs(self.root, split)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, truth_path = self.pairs[index]
        image = read_image(image_path)
        return image, self.truth(load_mat(truth_path, list(self.variables)), image.shape[:2], truth_path)

    def truth(self, variables: dict, size: tuple[int, int], path: Path) -> np.ndarray:
        raise NotImplementedError


class BSDS500(_MatPairs):
    """The Berkeley Segmentation Data Set 500 (``BSR/BSDS500/data``): ``images/<split>/<id>.jpg`` and
    ``groundTruth/<split>/<id>.mat``, whose ``groundTruth`` cell holds one struct per annotator with
    a ``Boundaries`` map. Items are (image, boundaries (K, H, W) bool)."""

    variables = ("groundTruth",)

    def __init__(self, root: str | Path, split: str = "train"):
        super().__init__(root, split, "BSDS500", ("data", "BSDS500/data", "BSR/BSDS500/data"))

    def truth(self, variables: dict, size: tuple[int, int], path: Path) -> np.ndarray:
        """Each annotator's boundaries, (K, H, W) bool."""
        cells = variables.get("groundTruth")
        if not isinstance(cells, np.ndarray) or cells.dtype != object or cells.size == 0:
            raise MatReadError(f"{path}: expected a cell array groundTruth, one struct per annotator")
        maps = []
        for k, cell in enumerate(cells.flat):
            if isinstance(cell, np.ndarray) and cell.dtype == object and cell.size == 1:
                cell = cell.flat[0]
            boundaries = cell.get("Boundaries") if isinstance(cell, dict) else None
            if not isinstance(boundaries, np.ndarray) or boundaries.shape != size:
                raise MatReadError(
                    f"{path}: annotator {k + 1}: expected Boundaries of size {size}, got "
                    f"{getattr(boundaries, 'shape', type(boundaries).__name__)}"
                )
            maps.append(boundaries != 0)
        return np.stack(maps)


class SkeletonDataset(_MatPairs):
    """SK-LARGE or SK506: ``images/<split>/<id>.jpg`` and ``groundTruth/<split>/<id>.mat`` with the
    object's ``edge`` and ``symmetry`` (skeleton) maps. Items are (image, scales (H, W) float32) by
    :func:`skeleton_scales`; ``thresholds`` are the data set's scale classes."""

    variables = ("edge", "symmetry")

    def __init__(self, root: str | Path, split: str = "train", name: str = "sk-large"):
        if name not in SCALE_THRESHOLDS:
            raise ValueError(
                f"unknown skeleton data set {name!r}; choose one of {', '.join(SCALE_THRESHOLDS)}"
            )
        self.name, self.thresholds = name, SCALE_THRESHOLDS[name]
        super().__init__(root, split, name, ("SK-LARGE", "SK506", "sk506"))

    def truth(self, variables: dict, size: tuple[int, int], path: Path) -> np.ndarray:
        """The skeleton's scales (:func:`skeleton_scales`) from its ``symmetry`` and ``edge`` maps."""
        maps = {}
        for key in self.variables:
            value = variables.get(key)
            if not isinstance(value, np.ndarray) or value.shape != size:
                raise MatReadError(
                    f"{path}: expected a variable {key!r} of size {size}, got {getattr(value, 'shape', 'none')}"
                )
            maps[key] = value != 0
        return skeleton_scales(maps["symmetry"], maps["edge"])


class HEDPairs(torch.utils.data.Dataset):
    """HED's training list (``HED-BSDS/train_pair.lst``: lines ``image ground-truth`` relative to the
    list's folder), whose ground truths are grey PNGs of the annotators' mean (255: all of them).
    Items are (image, mean (1, H, W) float32), which :func:`edge_labels` turns into HED's labels."""

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        self.list = root / f"{split}_pair.lst"
        if not self.list.is_file():
            raise DataError(f"{root}: no {self.list.name} (HED-BSDS lists its pairs in train_pair.lst)", [])
        self.pairs, problems = [], []
        for number, line in enumerate(self.list.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            names = line.split()
            if len(names) != 2:
                problems.append(f"{self.list}:{number}: expected 'image ground-truth', got {line!r}")
                continue
            pair = (root / names[0], root / names[1])
            missing = [str(p) for p in pair if not p.is_file()]
            if missing:
                problems.append(f"{self.list}:{number}: no such file {', '.join(missing)}")
            self.pairs.append(pair)
        if problems:
            raise DataError(f"{self.list}: {len(problems)} line(s) cannot be used", problems)
        if not self.pairs:
            raise DataError(f"{self.list} lists no pairs", [])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, truth_path = self.pairs[index]
        image, truth = read_image(image_path), read_label(truth_path)
        if truth.shape != image.shape[:2]:
            raise DataError(
                f"{truth_path}: size {truth.shape} differs from {image_path}'s {image.shape[:2]}", []
            )
        return image, (truth.astype(np.float32) / 255)[None]
