"""FSDS's offline augmentation of a skeleton data set: 36 copies of every training image (3 scales x
4 rotations x 3 flips) with their object's edge and skeleton maps, whose scales are then computed
anew, as zeakey/skeleton trains on SK-LARGE."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fcnseg.data.edges import SkeletonDataset
from fcnseg.data.images import read_image
from fcnseg.data.matlab import load_mat
from fcnseg.errors import MissingExtraError
from fcnseg.files import atomic_write

__all__ = ["AUGMENTED_SPLIT", "FLIPS", "ROTATIONS", "SCALES", "augment_skeletons", "augmented"]

SCALES = (0.8, 1.0, 1.2)
ROTATIONS = (0, 90, 180, 270)  # degrees, counter-clockwise
FLIPS = ("none", "left-right", "up-down")
AUGMENTED_SPLIT = "train_aug"
"""The split the copies are written as (``images/train_aug``, ``groundTruth/train_aug``)."""
JPEG_QUALITY = 95


def augmented(
    image: np.ndarray, maps: Sequence[np.ndarray], scale: float, rotation: int, flip: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One copy: the (H, W, 3) uint8 image resized by ``scale`` (bicubic, MATLAB's imresize default),
    its (H, W) 0/1 maps by nearest neighbour so they stay one pixel wide where they were, then all
    rotated by ``rotation`` degrees counter-clockwise and flipped (``flip`` of :data:`FLIPS`).
    Rotations by quarter turns and flips move pixels without resampling them."""
    if rotation not in ROTATIONS or flip not in FLIPS:
        raise ValueError(
            f"rotation must be one of {ROTATIONS} and flip one of {FLIPS}, got {rotation}, {flip!r}"
        )
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
        maps = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize(size, Image.NEAREST)) for m in maps]
    turned = [np.rot90(a, rotation // 90) for a in (image, *maps)]
    if flip == "left-right":
        turned = [a[:, ::-1] for a in turned]
    elif flip == "up-down":
        turned = [a[::-1] for a in turned]
    image, *maps = (np.ascontiguousarray(a) for a in turned)
    return image, maps


def augment_skeletons(
    root: str | Path,
    name: str = "sk-large",
    split: str = "train",
    *,
    scales: Sequence[float] = SCALES,
    progress: bool = True,
) -> tuple[int, int]:
    """Write the copies of every image of ``split`` as the split :data:`AUGMENTED_SPLIT` of the same
    data set: ``images/train_aug/<stem>_s<scale>_r<degrees>_<flip>.jpg`` and its
    ``groundTruth/train_aug/...mat`` with the copied ``edge`` and ``symmetry`` maps, from which
    :class:`~fcnseg.data.edges.SkeletonDataset` computes the scales (twice the distance to the
    edge) of the copy, not of the original. Every file is written atomically, its ground truth
    before its image, so a listed image is always complete; copies already there are kept, so an
    interrupted run continues where it stopped. Returns (copies written, copies already there)."""
    savemat = _savemat()
    source = SkeletonDataset(root, split, name)
    images, truths = source.root / "images" / AUGMENTED_SPLIT, source.root / "groundTruth" / AUGMENTED_SPLIT
    variants = [(s, r, f) for s in scales for r in ROTATIONS for f in FLIPS]
    written = kept = 0
    bar = tqdm(
        total=len(source) * len(variants), unit="img", desc=f"{name} x{len(variants)}", disable=not progress
    )
    with bar:
        for image_path, truth_path in source.pairs:
            todo = [v for v in variants if not (images / f"{_stem(image_path, *v)}.jpg").is_file()]
            kept += len(variants) - len(todo)
            bar.update(len(variants) - len(todo))
            if not todo:
                continue
            image = read_image(image_path)
            truth = load_mat(truth_path, ["edge", "symmetry"])
            maps = [(np.asarray(truth[k]) != 0).astype(np.uint8) for k in ("edge", "symmetry")]
            for variant in todo:
                copy, (edge, symmetry) = augmented(image, maps, *variant)
                stem = _stem(image_path, *variant)
                mat = io.BytesIO()
                savemat(mat, {"edge": edge, "symmetry": symmetry}, do_compression=True)
                _write(truths / f"{stem}.mat", mat.getvalue())
                jpeg = io.BytesIO()
                Image.fromarray(copy).save(jpeg, format="JPEG", quality=JPEG_QUALITY)
                _write(images / f"{stem}.jpg", jpeg.getvalue())
                written += 1
                bar.update()
    return written, kept


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), durable=False)


def _stem(image_path: Path, scale: float, rotation: int, flip: str) -> str:
    return f"{image_path.stem}_s{scale:g}_r{rotation}_{flip}"


def _savemat():
    try:
        from scipy.io import savemat
    except ImportError:
        raise MissingExtraError(
            "writing skeleton ground truth needs scipy: pip install 'fcnseg[edges]' (or pip install scipy)"
        ) from None
    return savemat
