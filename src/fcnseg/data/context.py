"""PASCAL-Context: whole-scene labels for VOC2010 images, reduced to the 59-class task (plus
background) exactly as the original FCN data layer reduces them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fcnseg.data.datasets import SegmentationDataset, read_id_list, require_files
from fcnseg.data.matlab import load_label_map
from fcnseg.data.voc import VOC_CLASSES, find_voc_dir

__all__ = ["CONTEXT_CLASSES", "PascalContextSegmentation", "context_lookup"]

CONTEXT_CLASSES = (
    *VOC_CLASSES,  # the 59 classes list the 20 VOC ones first, in VOC's order
    "bag",
    "bed",
    "bench",
    "book",
    "building",
    "cabinet",
    "ceiling",
    "clothes",
    "computer",
    "cup",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "keyboard",
    "light",
    "mountain",
    "mouse",
    "curtain",
    "platform",
    "sign",
    "plate",
    "road",
    "rock",
    "shelves",
    "sidewalk",
    "sky",
    "snow",
    "bedcloth",
    "track",
    "tree",
    "truck",
    "wall",
    "water",
    "window",
    "wood",
)
"""The 60 outputs of the FCN authors' PASCAL-Context models, in order (their ``classes-59.txt``)."""

_SUBSET_FILES = ("59_labels.txt", "classes-59.txt")
# The 59-class list spells three classes differently from the full label list; the FCN layer
# renames them to find them there.
_FULL_NAME = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}


def _read_labels(path: Path) -> list[tuple[int, str]]:
    """``<id>: <name>`` lines -> (id, name) pairs."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (it comes with the PASCAL-Context annotations)")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, sep, name = line.partition(":")
        if not sep or not key.strip().isdigit():
            raise ValueError(f"{path}:{number}: expected '<id>: <name>', got {line!r}")
        pairs.append((int(key), name.strip()))
    return pairs


def _compact(name: str) -> str:
    return name.replace(" ", "").lower()


def context_lookup(full_labels: Path, subset_labels: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """The table from full label ids (``LabelMap`` values) to task ids, and the task's class
    names. Task id 0 is background and takes every label not in the subset; subset class k
    (1-based, in the subset file's order) gets id k."""
    full = {_compact(name): i for i, name in _read_labels(full_labels)}
    subset = [name for _, name in _read_labels(subset_labels) if _compact(name) != "background"]
    lookup = np.zeros(max(full.values(), default=0) + 1, dtype=np.int64)
    for task_id, name in enumerate(subset, 1):
        key = _FULL_NAME.get(_compact(name), _compact(name))
        if key not in full:
            raise ValueError(f"class {name!r} of {subset_labels} is not in {full_labels}")
        lookup[full[key]] = task_id
    return lookup, ("background", *subset)


class PascalContextSegmentation(SegmentationDataset):
    """PASCAL-Context (Mottaghi et al. 2014), the 59 most frequent classes plus background
    (class 0, which also takes every other label): 60 classes, no ignored pixels.

    Layout: VOC2010 under ``voc_root`` (as its tar extracts), the Context annotations
    (trainval.tar.gz and 59_labels.txt from the PASCAL-Context site) under ``context_root``
    (default ``voc_root``)::

        voc_root/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
        voc_root/VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt
        context_root/trainval/<id>.mat     variable LabelMap: ids of labels.txt
        context_root/labels.txt            "<id>: <name>", all labels
        context_root/59_labels.txt         "<id>: <name>", the 59-class task in output order
    """

    def __init__(
        self,
        voc_root: str | Path,
        split: str = "train",
        context_root: str | Path | None = None,
    ):
        voc_dir = find_voc_dir(voc_root, "2010")
        self.context_root, self.split = Path(context_root or voc_root), split
        subset = next(
            (self.context_root / n for n in _SUBSET_FILES if (self.context_root / n).is_file()),
            self.context_root / _SUBSET_FILES[0],
        )
        self.lookup, names = context_lookup(self.context_root / "labels.txt", subset)
        split_list = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
        files = [
            (voc_dir / "JPEGImages" / f"{i}.jpg", self.context_root / "trainval" / f"{i}.mat")
            for i in read_id_list(split_list)
        ]
        require_files([p for pair in files for p in pair], split_list)
        super().__init__(files, names)

    def load_label(self, index: int) -> np.ndarray:
        path = self.files[index][1]
        full = load_label_map(path, "LabelMap")
        known = (full >= 0) & (full < len(self.lookup))
        return np.where(known, self.lookup[np.where(known, full, 0)], 0)
