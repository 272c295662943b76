"""Object detection with SSD: images with boxes, SSD300 or SSD512, the MultiBox loss, VOC mean average precision,
and boxes drawn and written as JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from fcnseg.data.detection import (
    DEFAULT_DETECTION_SPLITS,
    DetectionSamples,
    annotation_files,
    check_annotations,
    detection_collate,
    ssd_augment,
    voc_detection_split,
)
from fcnseg.detection.evaluation import evaluate_detections
from fcnseg.detection.loss import MultiBoxLoss
from fcnseg.detection.priors import prior_boxes, prior_spec
from fcnseg.errors import ConfigError
from fcnseg.infer.detect import MIN_SCORE, detect_images, detection_records, draw_boxes
from fcnseg.models.registry import DETECTORS, build_model
from fcnseg.weights.checkpoint import atomic_write

if TYPE_CHECKING:
    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = ["DetectionTask", "evaluate_detector"]


def evaluate_detector(
    model: nn.Module, dataset: Dataset, batch_size: int = 1, progress: bool = False
) -> dict[str, Any]:
    """VOC mAP (:func:`fcnseg.detection.evaluate_detections`) of an SSD on a data set of (image, target),
    boxes in the images' pixels as the devkit scores them."""
    detections, truths = [], []
    pending: list[np.ndarray] = []

    def flush() -> None:
        detections.extend(detect_images(model, pending))
        pending.clear()

    for index in tqdm(range(len(dataset)), desc="evaluating", unit="img", disable=not progress):
        image, target = dataset[index]
        truths.append(target)
        pending.append(image)
        if len(pending) >= batch_size:
            flush()
    flush()
    return evaluate_detections(detections, truths, model.num_classes)


class DetectionTask:
    """Boxes of classes; best.pt is the best validation mAP (VOC2007's 11-point, as the reference)."""

    name = "detection"
    arch = "ssd300"
    score = "map07"
    metrics = ("map07", "map")
    curves = {"map07": "mAP (11-point)", "map": "mAP (area)"}

    def datasets(self, config: TrainConfig) -> tuple[Dataset, Dataset | None]:
        """The synthetic shapes with boxes, or VOC07+12 trainval / VOC07 test (``--train-split``,
        ``--val-split`` as ``2007-trainval+2012-trainval``)."""
        if config.dataset == "synthetic":
            from fcnseg.data.synthetic import SyntheticDetection

            return (
                SyntheticDetection(config.train_images, seed=0, size_range=config.image_size),
                SyntheticDetection(config.val_images, seed=1, size_range=config.image_size),
            )
        if config.dataset != "voc":
            raise ConfigError(f"task detection reads dataset synthetic or voc, not {config.dataset!r}")
        train, val = DEFAULT_DETECTION_SPLITS
        return (
            voc_detection_split(config.train_split or train, config.data),
            voc_detection_split(config.val_split or val, config.data) if config.validates else None,
        )

    def check_data(
        self, train_set: Dataset, val_set: Dataset | None, say: Callable[[str], None], progress: bool
    ) -> None:
        """Read every annotation of a VOC set, listing all that cannot be used; say what the data is.
        The synthetic sets are made, not read: nothing to check."""
        read = [d for d in (train_set, val_set) if d is not None and annotation_files(d)]
        boxes = sum(check_annotations(d, progress) for d in read)
        if read:
            val = f"{len(val_set)} validation images" if val_set is not None else "no validation images"
            say(
                f"data: {len(train_set)} training and {val}, {boxes} boxes; {train_set.num_classes - 1} classes"
            )

    def build_model(self, config: TrainConfig, train_set: Dataset) -> nn.Module:
        if config.arch not in DETECTORS:
            raise ConfigError(f"task detection trains {', '.join(DETECTORS)}, not {config.arch!r}")
        model = build_model(config.arch, train_set.num_classes, widths=config.widths)
        model.meta = {
            "class_names": list(train_set.class_names),
            "preprocess": config.preprocess,
            "task": self.name,
        }
        return model

    def train_samples(self, train_set: Dataset, config: TrainConfig) -> DetectionSamples:
        size = prior_spec(config.arch).image_size  # 300 or 512: the net's design size
        return DetectionSamples(train_set, config.preprocess, ssd_augment, config.seed, size)

    collate = staticmethod(detection_collate)

    def criterion(self, config: TrainConfig, train_set: Dataset) -> MultiBoxLoss:
        return MultiBoxLoss(prior_boxes(config.arch))

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, context: Context, progress: bool
    ) -> dict[str, Any]:
        """mAP over the whole set, computed by each process alike (detections do not sum like a
        confusion matrix)."""
        was_training = model.training
        try:
            return evaluate_detector(model, dataset, config.val_batch_size, progress)
        finally:
            model.train(was_training)

    def summary(self, metrics: dict[str, Any], model: nn.Module) -> str:
        names = model.meta.get("class_names") or [str(i) for i in range(model.num_classes)]
        width = max(len("class"), *(len(n) for n in names))
        lines = [f"mAP {100 * metrics['map07']:.1f} (VOC07 11-point), {100 * metrics['map']:.1f} (area)", ""]
        lines.append(f"{'class':<{width}}  AP07   AP")
        for name, ap07, ap in zip(names[1:], metrics["ap07"][1:], metrics["ap"][1:], strict=True):
            shown = "    -      -" if math.isnan(ap) else f"{100 * ap07:5.1f}  {100 * ap:5.1f}"
            lines.append(f"{name:<{width}}  {shown}")
        return "\n".join(lines)

    def prediction_suffixes(self, *, overlay_format: str | None = "jpg") -> list[str]:
        return [".json", *([f"_boxes.{overlay_format}"] if overlay_format else [])]

    def write_prediction(
        self,
        stem: Path,
        image: np.ndarray,
        prediction: tuple[dict[str, np.ndarray], list[str]],
        *,
        overlay_format: str | None = "jpg",
        min_score: float = MIN_SCORE,
    ) -> None:
        """``prediction``: one image's detections (pixel boxes) and the class names. Writes
        ``stem.json`` (every detection: class, score, box) and ``stem_boxes.jpg``, the boxes of at
        least ``min_score`` drawn on the image."""
        found, names = prediction
        height, width = image.shape[:2]
        rows = ",\n  ".join(json.dumps(d) for d in detection_records(found, names))  # one detection per line
        text = f'{{"width": {width}, "height": {height}, "detections": [\n  {rows}\n]}}\n'
        atomic_write(f"{stem}.json", lambda f: f.write(text.encode()))
        if overlay_format:
            shown = draw_boxes(image, found, names, min_score)
            kind = "JPEG" if overlay_format == "jpg" else "PNG"
            atomic_write(f"{stem}_boxes.{overlay_format}", lambda f: shown.save(f, format=kind))
