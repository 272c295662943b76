"""The base every data set shares: a list of (image, label) files read and checked on access,
and helpers to read split lists and find missing files up front."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from fcnseg.data.images import ImageReadError, check_pair, read_image, read_label
from fcnseg.errors import FcnsegError

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "InMemory",
    "SegmentationDataset",
    "Split",
    "check_pairs",
    "files_of",
    "holdout",
    "read_id_list",
    "require_files",
    "validate_label",
]

IGNORE_INDEX = 255
"""The label of pixels that carry no class (object boundaries in VOC, unlabelled pixels)."""


class DataError(FcnsegError):
    """Image/mask pairs that cannot be used; ``problems`` lists every one of them."""

    def __init__(self, message: str, problems: Sequence[str]):
        super().__init__(message)
        self.problems = list(problems)


def validate_label(label: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Raise ``ImageReadError`` if ``label`` holds ids outside [0, num_classes) other than ``IGNORE_INDEX``."""
    bad = (label < 0) | ((label >= num_classes) & (label != IGNORE_INDEX))
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(map(str, values[:20])) + (" ..." if len(values) > 20 else "")
        raise ImageReadError(
            f"{path}: label values {shown} are not class ids for num_classes={num_classes} "
            f"(valid: 0..{num_classes - 1}, and {IGNORE_INDEX} = ignore)"
        )


def read_id_list(path: Path) -> list[str]:
    """The ids of a split file, one per line (blank lines skipped); a missing file says which
    splits the same folder does have."""
    if not path.is_file():
        found = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"split list {path} not found; splits in {path.parent}: {', '.join(found) or 'none'}"
        )
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def require_files(paths: Iterable[Path], listed_in: str | Path) -> None:
    """Fail at construction, not mid-epoch, when files named by a split list are missing."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        shown = "\n  ".join(missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise FileNotFoundError(f"{len(missing)} file(s) of {listed_in} are missing:\n  {shown}{more}")


class SegmentationDataset(Dataset):
    """(image, label) pairs of numpy arrays, raw: image (H, W, C) uint8, label (H, W) int64 with
    ``IGNORE_INDEX`` (255) = ignore. Augmentation and the net's preprocessing come later, in training.

    Subclasses fill ``files`` with (image path, label path) pairs and override ``load_image`` /
    ``load_label`` when their files are not plain images and masks.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, files: Sequence[tuple[Path, Path]], class_names: Sequence[str]):
        self.files = [(Path(i), Path(m)) for i, m in files]
        self.class_names = tuple(class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.load_image(index), self.load_label(index)
        image_path, label_path = self.files[index]
        check_pair(image, label, image_path, label_path)
        self.check_label(label, label_path)
        return image, label

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.files[index][0])

    def load_label(self, index: int) -> np.ndarray:
        return read_label(self.files[index][1])

    def check_label(self, label: np.ndarray, path: Path) -> None:
        validate_label(label, self.num_classes, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.num_classes} classes)"


class InMemory(Dataset):
    """Every pair of ``source`` read once and kept, so that epochs do not pay again for
    generating or decoding them (for data sets that fit in memory, like the synthetic one)."""

    def __init__(self, source: Dataset, desc: str = "loading", progress: bool = False):
        self.class_names = getattr(source, "class_names", None)
        self.num_classes = getattr(source, "num_classes", None)
        self.pairs = [source[i] for i in tqdm(range(len(source)), desc=desc, disable=not progress)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pairs[index]


class Split(Dataset):
    """Some images of a data set, which keeps its class names."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.class_names = dataset.class_names
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.dataset[self.indices[index]]


def holdout(dataset: Dataset, fraction: float, seed: int) -> tuple[Split, Split]:
    """A fixed random split of ``dataset`` into train and val (val at least one image)."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    size = max(1, round(fraction * len(dataset)))
    if size >= len(dataset):
        raise ValueError(f"{len(dataset)} images cannot be split into train and val")
    return Split(dataset, sorted(order[size:])), Split(dataset, sorted(order[:size]))


def files_of(dataset: Dataset | None) -> SegmentationDataset | None:
    """The data set of files behind ``dataset`` (a split reads its parent's files), or None."""
    dataset = dataset.dataset if isinstance(dataset, Split) else dataset
    return dataset if isinstance(dataset, SegmentationDataset) else None


def check_pairs(dataset: SegmentationDataset, progress: bool = False, listed: int = 20) -> np.ndarray:
    """Read every pair of ``dataset`` once, as training would, and return the pixel count per class.

    Raises one :class:`DataError` naming every pair that cannot be read, has an image and mask of
    different sizes, or has label values that are not class ids, so that a bad file is found
    before the first step rather than in the middle of an epoch.
    """
    counts = np.zeros(dataset.num_classes, dtype=np.int64)
    problems = []
    for index in tqdm(
        range(len(dataset)), desc="checking images and masks", unit="pair", disable=not progress
    ):
        try:
            _, label = dataset[index]
        except (ValueError, OSError) as error:
            problems.append(str(error))
            continue
        counts += np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=dataset.num_classes)
    if problems:
        shown = "\n  ".join(problems[:listed])
        more = f"\n  ... and {len(problems) - listed} more" if len(problems) > listed else ""
        raise DataError(
            f"{len(problems)} of {len(dataset)} image/mask pairs cannot be used; fix or remove them:"
            f"\n  {shown}{more}",
            problems,
        )
    return counts
