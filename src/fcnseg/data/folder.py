"""A data set from any folder of images and masks paired by name: the way in for one's own data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fcnseg.data.datasets import IGNORE_INDEX, DataError, SegmentationDataset
from fcnseg.data.images import read_label
from fcnseg.logs import show_bars

__all__ = ["IMAGE_SUFFIXES", "MASK_SUFFIXES", "FolderSegmentation"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless only: JPEG would alter class ids
_LISTED = 20


class FolderSegmentation(SegmentationDataset):
    """Images and label masks in two folders, paired by their path without suffix.

    Layout::

        root/classes.txt          optional: one class name per line, background first
        root/images/a.jpg         any of .png .jpg .jpeg .bmp .tif .tiff .webp;
        root/images/sub/b.png     subfolders are fine and mirrored in masks/
        root/masks/a.png          palette or grayscale PNG of class ids, 255 = ignore
        root/masks/sub/b.png      (an RGB mask in PASCAL palette colours also works)

    The classes come from ``classes.txt`` if present, else from ``class_names`` or
    ``num_classes``, else from the masks themselves (the largest id other than 255, plus
    one); names then default to ``class0``, ``class1``, ... ``classes_from`` says which.
    Every image needs a mask and every mask an image; otherwise one error lists what is
    unpaired. A layout that cannot be used raises a :class:`DataError` (a missing folder a
    ``FileNotFoundError``) that names the files.
    """

    def __init__(
        self,
        root: str | Path,
        images: str = "images",
        masks: str = "masks",
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
    ):
        self.root = Path(root)
        image_dir, mask_dir = self.root / images, self.root / masks
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} does not exist; expected layout:\n{_LAYOUT}")
        lossy = sorted(p.name for p in mask_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if lossy:
            raise DataError(
                f"masks in {mask_dir} must be lossless (PNG): JPEG compression changes class ids; "
                f"found {_listing(lossy)}",
                lossy,
            )
        image_files = _by_key(image_dir, IMAGE_SUFFIXES)
        mask_files = _by_key(mask_dir, MASK_SUFFIXES)
        if not image_files and not mask_files:
            raise DataError(
                f"no images in {image_dir} ({' '.join(IMAGE_SUFFIXES)}) and no masks in {mask_dir} "
                f"({' '.join(MASK_SUFFIXES)})",
                [],
            )
        unpaired = sorted(
            [str(image_files[k].relative_to(self.root)) for k in image_files.keys() - mask_files.keys()]
            + [str(mask_files[k].relative_to(self.root)) for k in mask_files.keys() - image_files.keys()]
        )
        if unpaired:
            raise DataError(
                f"{len(unpaired)} file(s) in {self.root} have no partner (an image needs a mask "
                f"of the same name in {masks}/, and a mask an image in {images}/): "
                f"{_listing(unpaired)}",
                unpaired,
            )
        files = [(image_files[k], mask_files[k]) for k in sorted(image_files)]
        names, self.classes_from = _class_names(self.root, class_names, num_classes, [m for _, m in files])
        super().__init__(files, names)


_LAYOUT = "  root/images/<name>.<jpg|png|...>\n  root/masks/<name>.png\n  root/classes.txt (optional)"


def _by_key(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Files under ``folder`` keyed by their relative path without suffix; two files with one
    key (a.jpg and a.png) are ambiguous and an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in suffixes or path.name.startswith(".") or not path.is_file():
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in found:
            raise DataError(f"{found[key]} and {path} have the same name: which one is meant?", [str(path)])
        found[key] = path
    return found


def _class_names(
    root: Path, class_names: Sequence[str] | None, num_classes: int | None, masks: list[Path]
) -> tuple[tuple[str, ...], str]:
    """The class names and where they came from: classes.txt, the caller, or the masks."""
    listed = root / "classes.txt"
    if listed.is_file():
        try:
            text = listed.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"{listed} is not UTF-8 text ({error}): write one class name per line", []
            ) from None
        names, source = tuple(line.strip() for line in text.splitlines() if line.strip()), "classes.txt"
        if class_names is not None and tuple(class_names) != names:
            raise DataError(f"class_names {list(class_names)} contradict {listed}: {list(names)}", [])
    elif class_names is not None:
        names, source = tuple(class_names), "given"
    else:
        count, source = (
            (num_classes, "given") if num_classes is not None else (_count_in_masks(masks), "masks")
        )
        names = tuple(f"class{i}" for i in range(count))
    if num_classes is not None and num_classes != len(names):
        raise DataError(f"num_classes={num_classes} but {len(names)} class names: {list(names)}", [])
    if not names:
        raise DataError(f"the class list of {root} is empty", [])
    return names, source


def _count_in_masks(masks: list[Path]) -> int:
    """One more than the largest class id in ``masks`` (255 = ignore is not a class).

    Unreadable masks are skipped here: checking every pair is the trainer's first step, and it
    lists all problems at once.
    """
    largest = 0
    for path in tqdm(
        masks, desc="counting classes in the masks", unit="mask", disable=not show_bars(len(masks) >= 200)
    ):
        try:
            ids = np.unique(read_label(path))
        except (ValueError, OSError):
            continue
        ids = ids[ids != IGNORE_INDEX]
        if ids.size:
            largest = max(largest, int(ids.max()))
    return largest + 1


def _listing(names: list[str]) -> str:
    more = f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more
