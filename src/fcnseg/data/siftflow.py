"""SIFT Flow outdoor scenes with two labelings: 33 semantic classes and 3 geometric classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fcnseg.data.datasets import (
    IGNORE_INDEX,
    SegmentationDataset,
    read_id_list,
    require_files,
    validate_label,
)
from fcnseg.data.matlab import load_label_map

__all__ = [
    "SIFTFLOW_GEOMETRIC_CLASSES",
    "SIFTFLOW_HEADS",
    "SIFTFLOW_HEAD_NAMES",
    "SIFTFLOW_SEMANTIC_CLASSES",
    "SiftFlowSegmentation",
]

SIFTFLOW_SEMANTIC_CLASSES = (
    "awning",
    "balcony",
    "bird",
    "boat",
    "bridge",
    "building",
    "bus",
    "car",
    "cow",
    "crosswalk",
    "desert",
    "door",
    "fence",
    "field",
    "grass",
    "moon",
    "mountain",
    "person",
    "plant",
    "pole",
    "river",
    "road",
    "rock",
    "sand",
    "sea",
    "sidewalk",
    "sign",
    "sky",
    "staircase",
    "streetlight",
    "sun",
    "tree",
    "window",
)
SIFTFLOW_GEOMETRIC_CLASSES = ("sky", "horizontal", "vertical")
SIFTFLOW_HEADS = ("sem", "geo")
"""The heads, in channel order: ``score_sem`` then ``score_geo`` of the original nets (their layers' suffixes)."""
SIFTFLOW_HEAD_NAMES = ("semantic", "geometric")
"""The heads' names for people, in the same order: a two-headed net's ``meta["head_names"]``."""

_SCENES = "spatial_envelope_256x256_static_8outdoorcategories"
_TASKS = (*SIFTFLOW_HEAD_NAMES, "both")


class SiftFlowSegmentation(SegmentationDataset):
    """SIFT Flow (Liu et al. 2009), 2,688 images of 256x256.

    Layout (``root`` is the folder SiftFlowDataset.zip extracts to; the split lists come with
    the FCN code, ``data/sift-flow/{trainval,test}.txt``, ids such as ``coast_natu975``)::

        root/Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg
        root/SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat   S
        root/GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat        S
        root/{trainval,test}.txt

    Labels follow the original FCN data layer: semantic 1..33 -> 0..32, geometric 1..3 -> 0..2,
    and the void values (0, and -1 for geometric) -> 255.

    ``task="both"`` gives labels of shape (2, H, W), semantic first, for the paper's two-headed
    net; then ``class_names`` is the pair (semantic names, geometric names) and ``num_classes``
    the pair (33, 3).
    """

    def __init__(self, root: str | Path, split: str = "trainval", task: str = "semantic"):
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
        self.root, self.split, self.task = Path(root), split, task
        ids = read_id_list(self.root / f"{split}.txt")
        label_dir = "GeoLabels" if task == "geometric" else "SemanticLabels"
        files = [
            (
                self.root / "Images" / _SCENES / f"{i}.jpg",
                self.root / label_dir / _SCENES / f"{i}.mat",
            )
            for i in ids
        ]
        needed = [p for pair in files for p in pair]
        if task == "both":
            needed += [self.root / "GeoLabels" / _SCENES / f"{i}.mat" for i in ids]
        require_files(needed, self.root / f"{split}.txt")
        names = {
            "semantic": SIFTFLOW_SEMANTIC_CLASSES,
            "geometric": SIFTFLOW_GEOMETRIC_CLASSES,
            "both": (SIFTFLOW_SEMANTIC_CLASSES, SIFTFLOW_GEOMETRIC_CLASSES),
        }[task]
        super().__init__(files, names)

    @property
    def num_classes(self) -> int | tuple[int, int]:
        if self.task == "both":
            return tuple(len(names) for names in self.class_names)
        return len(self.class_names)

    def load_label(self, index: int) -> np.ndarray:
        path = self.files[index][1]
        if self.task != "both":
            return _read_s(path)
        geo_path = self.root / "GeoLabels" / _SCENES / path.name
        semantic, geometric = _read_s(path), _read_s(geo_path)
        if semantic.shape != geometric.shape:
            raise ValueError(f"{path} is {semantic.shape} but {geo_path} is {geometric.shape}")
        return np.stack([semantic, geometric])

    def check_label(self, label: np.ndarray, path: Path) -> None:
        if self.task != "both":
            return validate_label(label, self.num_classes, path)
        validate_label(label[0], len(SIFTFLOW_SEMANTIC_CLASSES), path)
        geo_path = self.root / "GeoLabels" / _SCENES / path.name
        validate_label(label[1], len(SIFTFLOW_GEOMETRIC_CLASSES), geo_path)


def _read_s(path: Path) -> np.ndarray:
    """The ``S`` matrix of a label file, shifted so that classes start at 0 and void is 255."""
    raw = load_label_map(path, "S")
    return np.where(raw <= 0, IGNORE_INDEX, raw - 1)
