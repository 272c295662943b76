"""NYUDv2 indoor scenes with the 40-class task of Gupta et al., in RGB, HHA, RGB+HHA or depth, in the
layout of the FCN authors' nyud.tar.gz."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fcnseg.data.datasets import SegmentationDataset, read_id_list, require_files
from fcnseg.data.images import read_depth, read_image
from fcnseg.data.matlab import load_label_map

__all__ = ["MODALITIES", "NYUD_CLASSES", "NYUDSegmentation"]

NYUD_CLASSES = (
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refrigerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
)

_MODALITY_DIRS = {"rgb": "images", "hha": "hha", "rgbhha": "images", "depth": "depth", "rgbd": "images"}
MODALITIES = tuple(_MODALITY_DIRS)


class NYUDSegmentation(SegmentationDataset):
    """NYUDv2, 40 classes; raw label 0 (unlabelled) becomes 255 and classes 1..40 become 0..39,
    as the original FCN data layer does.

    Layout (``root`` is the extracted ``nyud`` folder; the split lists come with the FCN code,
    ``data/nyud/{train,val,test}.txt``, ids such as ``5001``)::

        root/data/images/img_<id>.png    RGB
        root/data/hha/img_<id>.png       HHA encoding of depth, 3 x uint8
        root/data/depth/img_<id>.png     16-bit depth
        root/segmentation/img_<id>.mat   variable ``segmentation``, 0 = unlabelled, 1..40
        root/{train,val,test,trainval}.txt

    The original nets train on ``trainval`` (795 images) and are scored on ``test`` (654); without
    a ``trainval.txt`` it is ``train.txt`` then ``val.txt``.

    ``modality`` picks the image: ``"rgb"`` or ``"hha"`` (H, W, 3) uint8, ``"rgbhha"`` (H, W, 6)
    uint8 (RGB channels first), ``"depth"`` (H, W, 1) uint16, unscaled so that the log-depth
    preprocessing of the paper keeps its precision, or ``"rgbd"`` (H, W, 4) uint16, RGB then depth.
    """

    def __init__(self, root: str | Path, split: str = "train", modality: str = "rgb"):
        if modality not in _MODALITY_DIRS:
            raise ValueError(f"modality must be one of {sorted(_MODALITY_DIRS)}, got {modality!r}")
        self.root, self.modality, self.split = Path(root), modality, split
        listed = self.root / f"{split}.txt"
        if split == "trainval" and not listed.is_file():
            ids = read_id_list(self.root / "train.txt") + read_id_list(self.root / "val.txt")
            listed = self.root / "train.txt"
        else:
            ids = read_id_list(listed)
        data = self.root / "data"
        files = [
            (data / _MODALITY_DIRS[modality] / f"img_{i}.png", self.root / "segmentation" / f"img_{i}.mat")
            for i in ids
        ]
        needed = [p for pair in files for p in pair]
        extra = {"rgbhha": "hha", "rgbd": "depth"}.get(modality)
        if extra:
            needed += [data / extra / f"img_{i}.png" for i in ids]
        require_files(needed, listed)
        super().__init__(files, NYUD_CLASSES)

    def load_image(self, index: int) -> np.ndarray:
        path = self.files[index][0]
        if self.modality == "depth":
            return read_depth(path)[:, :, None]
        image = read_image(path)
        if self.modality in ("rgbhha", "rgbd"):
            other_path = path.parent.parent / _MODALITY_DIRS["depth" if self.modality == "rgbd" else "hha"]
            other_path = other_path / path.name
            other = (
                read_image(other_path) if self.modality == "rgbhha" else read_depth(other_path)[:, :, None]
            )
            if other.shape[:2] != image.shape[:2]:
                raise ValueError(f"{path} is {image.shape[:2]} but {other_path} is {other.shape[:2]}")
            image = np.concatenate([image.astype(other.dtype), other], axis=2)
        return image

    def load_label(self, index: int) -> np.ndarray:
        path = self.files[index][1]
        raw = load_label_map(path, "segmentation")
        return np.where(raw == 0, self.ignore_index, raw - 1)
