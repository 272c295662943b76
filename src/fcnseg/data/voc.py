"""PASCAL VOC and SBD segmentation data sets, and the paper's split: train on SBD train, report on
seg11valid (the VOC2011 val images that are not in SBD train); and sbd-heldout, SBD val less
seg11valid, to pick a model on without touching either."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fcnseg.data.datasets import SegmentationDataset, read_id_list, require_files
from fcnseg.data.matlab import load_label_map

__all__ = [
    "VOC_CLASSES",
    "SBDSegmentation",
    "VOCSegmentation",
    "find_sbd_dir",
    "find_voc_dir",
    "pascal_split",
    "sbd_heldout_ids",
    "seg11valid_ids",
]

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# seg11valid is defined on the VOC2011 val list; VOC2012's val list extends it with 2012 images.
_SEG11_LAST_YEAR = 2011


def _first_holding(candidates: list[Path], marker: str, what: str, fetch: str, root: Path) -> Path:
    """The first of ``candidates`` that holds the folder ``marker``; else a FileNotFoundError that says
    where ``what`` was expected and how to get it (``fcnseg.download.fetch(fetch, root)``)."""
    for candidate in candidates:
        if (candidate / marker).is_dir():
            return candidate
    raise FileNotFoundError(
        f"no {what} under {root}: expected {candidates[0]}/{marker} "
        f"(get it with fcnseg.download.fetch('{fetch}', '{root}'))"
    )


def find_voc_dir(root: str | Path, year: str = "2012") -> Path:
    """The ``VOC<year>`` folder (holding JPEGImages/) under ``root``, wherever the tar put it."""
    root = Path(root)
    candidates = [
        root / "VOCdevkit" / f"VOC{year}",
        root / "TrainVal" / "VOCdevkit" / f"VOC{year}",  # the VOC2011 tar's layout
        root / f"VOC{year}",
        root,
    ]
    return _first_holding(candidates, "JPEGImages", f"PASCAL VOC{year}", f"voc{year}", root)


def find_sbd_dir(root: str | Path) -> Path:
    """SBD's ``dataset`` folder (holding img/ and cls/) under ``root``."""
    root = Path(root)
    candidates = [root / "benchmark_RELEASE" / "dataset", root / "dataset", root]
    return _first_holding(candidates, "cls", "SBD", "sbd", root)


def seg11valid_ids(voc_dir: Path, sbd_dir: Path) -> list[str]:
    """VOC2011 segmentation val ids (VOC val ids of years up to 2011) minus SBD train ids, in the
    VOC list's order: 736 images with the real lists."""
    val = read_id_list(voc_dir / "ImageSets" / "Segmentation" / "val.txt")
    sbd_train = set(read_id_list(sbd_dir / "train.txt"))
    return [i for i in val if int(i[:4]) <= _SEG11_LAST_YEAR and i not in sbd_train]


def _seg11valid(voc_dir: Path, sbd_root: Path) -> tuple[list[str], str | Path]:
    """The seg11valid ids and where they come from: ``seg11valid.txt`` in ImageSets/Segmentation if
    present, else :func:`seg11valid_ids` (SBD found under ``sbd_root``)."""
    listed = voc_dir / "ImageSets" / "Segmentation" / "seg11valid.txt"
    if listed.is_file():
        return read_id_list(listed), listed
    derived_from = f"seg11valid (from {listed.with_name('val.txt')} and SBD train.txt)"
    return seg11valid_ids(voc_dir, find_sbd_dir(sbd_root)), derived_from


def sbd_heldout_ids(voc_dir: Path, sbd_dir: Path) -> list[str]:
    """SBD val ids that are not in seg11valid, in SBD's order: images held out of SBD train (the
    paper's training set) and disjoint from seg11valid (where it reports), so that a model picked
    on them is not picked on the numbers it reports."""
    reported = set(_seg11valid(voc_dir, sbd_dir)[0])
    return [i for i in read_id_list(sbd_dir / "val.txt") if i not in reported]


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC segmentation: 21 classes (background first), 255 marks object boundaries.

    Layout (as the VOC tar extracts under ``root``)::

        root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
        root/VOCdevkit/VOC2012/SegmentationClass/<id>.png      palette PNGs of class ids
        root/VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt

    ``split`` is any list in ImageSets/Segmentation (train, val, trainval) or ``"seg11valid"``,
    the paper's validation set: taken from ``seg11valid.txt`` there if present, else derived from
    VOC val and SBD's train list (SBD found under ``sbd_root``, default ``root``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        year: str = "2012",
        sbd_root: str | Path | None = None,
    ):
        self.root = find_voc_dir(root, year)
        if split == "seg11valid":
            ids, listed_in = _seg11valid(self.root, Path(sbd_root or root))
        else:
            listed_in = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            ids = read_id_list(listed_in)
        files = [
            (self.root / "JPEGImages" / f"{i}.jpg", self.root / "SegmentationClass" / f"{i}.png") for i in ids
        ]
        require_files([p for pair in files for p in pair], listed_in)
        super().__init__(files, VOC_CLASSES)
        self.split = split


class SBDSegmentation(SegmentationDataset):
    """The Semantic Boundaries Dataset (Hariharan et al. 2011): VOC images with more masks,
    same 21 classes. The paper trains on its 8,498-image train split.

    Layout (as benchmark.tgz extracts under ``root``)::

        root/benchmark_RELEASE/dataset/img/<id>.jpg
        root/benchmark_RELEASE/dataset/cls/<id>.mat   struct GTcls, field Segmentation (uint8)
        root/benchmark_RELEASE/dataset/{train,val}.txt
    """

    def __init__(self, root: str | Path, split: str = "train", ids: list[str] | None = None):
        self.root = find_sbd_dir(root)
        listed_in = self.root / f"{split}.txt"
        ids = read_id_list(listed_in) if ids is None else ids
        files = [(self.root / "img" / f"{i}.jpg", self.root / "cls" / f"{i}.mat") for i in ids]
        require_files([p for pair in files for p in pair], listed_in)
        super().__init__(files, VOC_CLASSES)
        self.split = split

    def load_label(self, index: int) -> np.ndarray:
        return load_label_map(self.files[index][1], "GTcls", "Segmentation")


def pascal_split(name: str, voc_root: str | Path, sbd_root: str | Path | None = None) -> SegmentationDataset:
    """A PASCAL split by name, as recipes spell it: ``"sbd-train"``, ``"sbd-val"``,
    ``"seg11valid"``, ``"sbd-heldout"`` (:func:`sbd_heldout_ids`), or ``"voc-<split>"`` (e.g.
    ``"voc-val"``) for VOC2012's own lists."""
    if name == "sbd-heldout":
        sbd_dir = find_sbd_dir(sbd_root or voc_root)
        ids = sbd_heldout_ids(find_voc_dir(voc_root), sbd_dir)
        return SBDSegmentation(sbd_dir, "val", ids=ids)
    if name.startswith("sbd-"):
        return SBDSegmentation(sbd_root or voc_root, name.removeprefix("sbd-"))
    if name == "seg11valid":
        return VOCSegmentation(voc_root, "seg11valid", sbd_root=sbd_root)
    if name.startswith("voc-"):
        return VOCSegmentation(voc_root, name.removeprefix("voc-"))
    raise ValueError(
        f"unknown PASCAL split {name!r}: use sbd-train, sbd-val, seg11valid, sbd-heldout or voc-<split>"
    )
