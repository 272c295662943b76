"""The data sets fcnseg reads by name, with the paper's splits of each."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

__all__ = ["DATASETS", "DEFAULT_SPLITS", "MODALITY_CHANNELS", "open_dataset"]

DATASETS = (
    "synthetic",
    "folder",
    "voc",
    "sbd",
    "nyud",
    "siftflow",
    "context",
    "bsds500",
    "hed-bsds",
    "sk-large",
    "sk506",
)

DEFAULT_SPLITS = {
    "voc": ("sbd-train", "seg11valid"),  # the paper's PASCAL protocol
    "sbd": ("sbd-train", "seg11valid"),
    "nyud": ("trainval", "test"),  # the original repository's NYUD nets
    "siftflow": ("trainval", "test"),
    "context": ("train", "val"),
    "bsds500": ("train", "val"),  # edges
    "hed-bsds": ("train", "val"),  # HED's augmented training pairs; validation on BSDS500 (val_data)
    "sk-large": ("train", "test"),  # skeletons
    "sk506": ("train", "test"),
}
"""(train, validation) split of each data set that has splits, as the original nets used them."""

MODALITY_CHANNELS = {"rgb": 3, "hha": 3, "depth": 1, "rgbd": 4, "rgbhha": 6}
"""The input channels of each image kind NYUD offers (``TrainConfig.modality``)."""


def open_dataset(
    name: str,
    root: str | None = None,
    split: str | None = None,
    *,
    num_images: int = 50,
    image_size: tuple[int, int] = (64, 128),
    num_classes: int | None = None,
    modality: str | None = None,
) -> Dataset:
    """One split of a data set by name: raw (image, label) numpy pairs with ``class_names``; for
    the edge and skeleton sets (bsds500, sk-large, sk506) (image, boundaries) and (image, scales).

    ``split`` defaults to the paper's validation split of each data set. For
    ``synthetic``, split "train" is seed 0 and any other split seed 1, so the two
    never share an image; ``num_images`` and ``image_size`` size it. For ``folder``,
    ``root`` is the whole set and ``split`` is ignored; ``num_classes`` stands in
    for a missing ``classes.txt``. ``modality`` picks NYUD's input channels (rgb, hha, depth, rgbd,
    rgbhha; default rgb); other data sets have only RGB.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "synthetic":
        from fcnseg.data.synthetic import SyntheticSegmentation

        # Data seeds are fixed, apart from the training seed: runs with other seeds see the same data.
        seed = 0 if split == "train" else 1
        return SyntheticSegmentation(num_images, seed=seed, size_range=image_size)
    if not root:
        raise ValueError(f"data set {name!r} needs its folder")
    if modality not in (None, "rgb") and name != "nyud":
        raise ValueError(f"data set {name!r} has only RGB images, not modality {modality!r}")
    if name == "folder":
        from fcnseg.data.folder import FolderSegmentation

        has_class_list = (Path(root) / "classes.txt").is_file()
        return FolderSegmentation(root, num_classes=None if has_class_list else num_classes)
    split = split or DEFAULT_SPLITS[name][1]
    if name in ("voc", "sbd"):
        from fcnseg.data.voc import pascal_split

        return pascal_split(split, root)
    if name == "nyud":
        from fcnseg.data.nyud import NYUDSegmentation

        return NYUDSegmentation(root, split, modality or "rgb")
    if name == "bsds500":
        from fcnseg.data.edges import BSDS500

        return BSDS500(root, split)
    if name == "hed-bsds":
        from fcnseg.data.edges import HEDPairs

        return HEDPairs(root, split)
    if name in ("sk-large", "sk506"):
        from fcnseg.data.edges import SkeletonDataset

        return SkeletonDataset(root, split, name)
    if name == "siftflow":
        from fcnseg.data.siftflow import SiftFlowSegmentation

        return SiftFlowSegmentation(root, split)
    from fcnseg.data.context import PascalContextSegmentation

    return PascalContextSegmentation(root, split)
