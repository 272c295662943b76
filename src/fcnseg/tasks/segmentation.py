"""Semantic segmentation, the paper's task: image/mask pairs, an FCN, the per-pixel softmax loss,
the four metrics of one confusion matrix, and palette PNGs of class ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from fcnseg.data.datasets import Split, check_pairs, files_of, holdout
from fcnseg.data.preprocess import get_preprocessing
from fcnseg.data.registry import DEFAULT_SPLITS, open_dataset
from fcnseg.data.transforms import (
    Compose,
    NetPairs,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    pad_collate,
)
from fcnseg.infer.overlay import colorize, overlay
from fcnseg.metrics.segmentation import evaluate_confusion, format_metrics, scores
from fcnseg.models.fcn import FCN
from fcnseg.models.registry import build_model
from fcnseg.train.losses import SegmentationLoss, class_pixel_counts, median_frequency_weights
from fcnseg.weights.checkpoint import atomic_write

if TYPE_CHECKING:
    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = ["SegmentationTask"]


class SegmentationTask:
    """A class per pixel; best.pt is the best validation mean IU."""

    name = "segmentation"
    arch = "fcn8s"
    score = "mean_iu"
    metrics = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
    curves = {"mean_iu": "mean IU", "pixel_acc": "pixel acc."}

    def datasets(self, config: TrainConfig) -> tuple[Dataset, Dataset | None]:
        """The synthetic set; a folder with a second one or a held-out share; or a data set's splits
        (no validation set with ``val_split = "none"``)."""
        name = config.dataset
        if name == "synthetic":
            size = config.image_size
            return (
                open_dataset(name, split="train", num_images=config.train_images, image_size=size),
                open_dataset(name, split="val", num_images=config.val_images, image_size=size),
            )
        if name == "folder":
            from fcnseg.data.folder import FolderSegmentation

            train = FolderSegmentation(config.data, num_classes=config.num_classes)
            if config.val_data:
                return train, FolderSegmentation(config.val_data, class_names=train.class_names)
            return holdout(train, config.val_fraction, seed=0)
        splits = DEFAULT_SPLITS[name]
        train = open_dataset(name, config.data, config.train_split or splits[0], modality=config.modality)
        if not config.validates:
            return train, None
        return train, open_dataset(name, config.data, config.val_split or splits[1], modality=config.modality)

    def check_data(
        self, train_set: Dataset, val_set: Dataset | None, say: Callable[[str], None], progress: bool
    ) -> None:
        """Read every image/mask pair of the sets made of files, and say what the data is and which
        classes no mask holds."""
        folders = {id(d): d for d in map(files_of, (train_set, val_set)) if d is not None}
        counts = [check_pairs(d, progress=progress) for d in folders.values()]
        if not folders:
            return
        source = files_of(train_set)
        held_out = isinstance(val_set, Split) and val_set.dataset is source
        val = f"{len(val_set)} validation images" if val_set is not None else "no validation images"
        if held_out:
            val += f" (held out of {source.root} at random; --val-data to give your own)"
        say(f"data: {len(train_set)} training and {val}; {train_set.num_classes} classes")
        if getattr(source, "classes_from", None) == "masks":
            say(
                f"classes: counted in the masks (ids 0..{source.num_classes - 1}); name them in "
                f"{source.root / 'classes.txt'}, one per line"
            )
        empty = [source.class_names[c] for c in np.flatnonzero(sum(counts) == 0)] if source else []
        if empty:
            say(f"warning: no pixel of class {', '.join(empty)} in any mask: it cannot be learned")

    def build_model(self, config: TrainConfig, train_set: Dataset) -> FCN:
        model = build_model(
            config.arch,
            train_set.num_classes,
            widths=config.widths,
            in_channels=get_preprocessing(config.preprocess).channels,
            frozen_upsampling=config.frozen_upsampling,
        )
        model.meta = {"class_names": list(train_set.class_names), "preprocess": config.preprocess}
        return model

    def train_samples(self, train_set: Dataset, config: TrainConfig) -> NetPairs:
        transforms = []
        if config.scale_range is not None:
            transforms.append(RandomScale(config.scale_range))
        if config.flip:
            transforms.append(RandomHorizontalFlip())
        if config.crop is not None:
            transforms.append(RandomCrop(config.crop))
        return NetPairs(
            train_set, config.preprocess, Compose(transforms) if transforms else None, config.seed
        )

    collate = staticmethod(pad_collate)

    def criterion(self, config: TrainConfig, train_set: Dataset) -> SegmentationLoss:
        weight = None
        if config.class_balance:
            labels = (train_set[i][1] for i in range(len(train_set)))
            counts = class_pixel_counts(labels, train_set.num_classes)
            weight = median_frequency_weights(*counts, power=config.class_balance_power)
        return SegmentationLoss(
            reduction=config.loss,
            weight=weight,
            keep_prob=config.loss_keep_prob,
            sampling_scope=config.loss_sampling,
            sampling_cell=config.loss_sampling_cell,
        )

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, context: Context, progress: bool
    ) -> dict[str, Any]:
        confusion = evaluate_confusion(
            model,
            dataset,
            model.num_classes,
            batch_size=config.val_batch_size,
            context=context,
            progress=progress,
        )
        return scores(confusion)

    def summary(self, metrics: dict[str, Any], model: nn.Module) -> str:
        names = model.meta.get("class_names") or [str(i) for i in range(model.num_classes)]
        return format_metrics(metrics, names)

    def prediction_suffixes(self, *, overlay_format: str | None = None, probs: bool = False) -> list[str]:
        overlay_suffix = [f"_overlay.{overlay_format}"] if overlay_format else []
        return [".png", *overlay_suffix, *(["_probs.npy"] if probs else [])]

    def write_prediction(
        self,
        stem: Path,
        image: np.ndarray,
        prediction: tuple[np.ndarray, np.ndarray | None],
        *,
        overlay_format: str | None = None,
        overlay_alpha: float = 0.5,
        probs_dtype: str = "float16",
    ) -> None:
        """``prediction``: the (H, W) label map, and the (C, H, W) probabilities or None. Writes
        ``stem.png``, the class ids as a palette PNG; with ``overlay_format`` ("jpg" or "png")
        ``stem_overlay.jpg``, the colours over the image; with probabilities ``stem_probs.npy``."""
        labels, probs = prediction
        atomic_write(f"{stem}.png", lambda f: colorize(labels).save(f, format="PNG"))
        if overlay_format:
            shown = Image.fromarray(overlay(image, labels, alpha=overlay_alpha))
            kind = "JPEG" if overlay_format == "jpg" else "PNG"
            atomic_write(f"{stem}_overlay.{overlay_format}", lambda f: shown.save(f, format=kind))
        if probs is not None:
            atomic_write(f"{stem}_probs.npy", lambda f: np.save(f, probs.astype(probs_dtype)))
