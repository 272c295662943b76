"""Object detection with SSD: images with boxes, SSD300 or SSD512, the MultiBox loss, VOC mean average
precision, boxes drawn and written as JSON, and the source maps with their priors."""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
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
from fcnseg.data.synthetic import SyntheticDetection
from fcnseg.detection.evaluation import evaluate_detections
from fcnseg.detection.loss import MultiBoxLoss
from fcnseg.detection.priors import prior_boxes, prior_spec
from fcnseg.errors import ConfigError
from fcnseg.files import atomic_write
from fcnseg.infer.detect import MIN_SCORE, detect_images, detection_records, draw_boxes
from fcnseg.models.flops import ComputeCost, compute_cost
from fcnseg.models.registry import DETECTORS, build_model
from fcnseg.models.trunk import SequentialTrunk
from fcnseg.tasks.common import InferenceOptions, NetDescription, TaskBase, write_picture
from fcnseg.weights.transfer import caffe_name

if TYPE_CHECKING:
    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = ["DetectionTask", "evaluate_detector"]

log = logging.getLogger(__name__)


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


class DetectionTask(TaskBase):
    """Boxes of classes; best.pt is the best validation mAP (VOC2007's 11-point, as the reference)."""

    name = "detection"
    arch = "ssd300"
    score = "map07"
    metrics = ("map07", "map")
    curves = {"map07": "mAP (11-point)", "map": "mAP (area)"}
    synthetic = SyntheticDetection
    datasets_known = ("synthetic", "voc")

    def datasets(self, config: TrainConfig) -> tuple[Dataset, Dataset | None]:
        """The synthetic shapes with boxes, or VOC07+12 trainval / VOC07 test (``--train-split``,
        ``--val-split`` as ``2007-trainval+2012-trainval``)."""
        if config.dataset == "synthetic":
            return (
                self.synthetic(config.train_images, seed=0, size_range=config.image_size),
                self.synthetic(config.val_images, seed=1, size_range=config.image_size),
            )
        if config.dataset != "voc":
            raise ConfigError(f"task detection reads dataset synthetic or voc, not {config.dataset!r}")
        train, val = DEFAULT_DETECTION_SPLITS
        return (
            voc_detection_split(config.train_split or train, config.data),
            voc_detection_split(config.val_split or val, config.data) if config.validates else None,
        )

    def check_data(self, train_set: Dataset, val_set: Dataset | None, progress: bool) -> None:
        """Read every annotation of a VOC set, listing all that cannot be used; say what the data is.
        The synthetic sets are made, not read: nothing to check."""
        read = [d for d in (train_set, val_set) if d is not None and annotation_files(d)]
        boxes = sum(check_annotations(d, progress) for d in read)
        if read:
            val = f"{len(val_set)} validation images" if val_set is not None else "no validation images"
            log.info(
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

    def measure(
        self, model: nn.Module, dataset: Dataset, options: InferenceOptions, context: Context, progress: bool
    ) -> dict[str, Any]:
        """mAP over the whole set, computed by each process alike (detections do not sum like a
        confusion matrix)."""
        was_training = model.training
        try:
            return evaluate_detector(model, dataset, options.batch_size, progress)
        finally:
            model.train(was_training)

    def summary(self, metrics: dict[str, Any], model: nn.Module, dataset: Dataset | None = None) -> str:
        names = self.class_names(model, dataset)
        width = max(len("class"), *(len(n) for n in names))
        lines = [f"mAP {100 * metrics['map07']:.1f} (VOC07 11-point), {100 * metrics['map']:.1f} (area)", ""]
        lines.append(f"{'class':<{width}}  AP07   AP")
        for name, ap07, ap in zip(names[1:], metrics["ap07"][1:], metrics["ap"][1:], strict=True):
            shown = "    -      -" if math.isnan(ap) else f"{100 * ap07:5.1f}  {100 * ap:5.1f}"
            lines.append(f"{name:<{width}}  {shown}")
        return "\n".join(lines)

    def evaluation_set(
        self, model: nn.Module, name: str, data: str | None, split: str | None, images: int, source: str
    ) -> Dataset:
        """``images`` held-out synthetic images (the training runs' validation seed), or a VOC split
        (default: 2007-test); it must have the net's classes."""
        self.check_dataset(name, source)
        if name == "synthetic":
            dataset = self.synthetic(images, seed=1)
        else:
            dataset = voc_detection_split(split or DEFAULT_DETECTION_SPLITS[1], data)
        if model.num_classes != dataset.num_classes:
            raise ValueError(
                f"{source} detects {model.num_classes - 1} classes but {data} has {dataset.num_classes - 1}"
            )
        return dataset

    def predict_images(
        self, model: nn.Module, images: np.ndarray, options: InferenceOptions
    ) -> list[dict[str, np.ndarray]]:
        """Each image's detections (:func:`~fcnseg.infer.detect.detect_images`: pixel boxes, scores,
        labels, best first)."""
        return detect_images(model, list(images))

    def prediction_suffixes(self, model: nn.Module, options: InferenceOptions) -> list[str]:
        return [".json", f"_boxes.{options.overlay_format}"]

    def write_prediction(
        self,
        model: nn.Module,
        stem: Path,
        image: np.ndarray,
        prediction: dict[str, np.ndarray],
        options: InferenceOptions,
    ) -> None:
        """Writes ``stem.json`` (every detection: class, score, box) and ``stem_boxes.jpg``, the boxes
        of at least ``options.min_score`` drawn on the image."""
        height, width = image.shape[:2]
        records = detection_records(prediction, self.class_names(model))
        rows = ",\n  ".join(json.dumps(d) for d in records)  # one detection per line
        text = f'{{"width": {width}, "height": {height}, "detections": [\n  {rows}\n]}}\n'
        atomic_write(f"{stem}.json", lambda f: f.write(text.encode()), durable=False)
        write_picture(
            f"{stem}_boxes.{options.overlay_format}", self.picture(model, image, prediction, options)
        )

    def predicted(self, model: nn.Module) -> str:
        return "found boxes in"

    def picture(
        self,
        model: nn.Module,
        image: np.ndarray,
        prediction: dict[str, np.ndarray],
        options: InferenceOptions,
    ) -> Image.Image:
        """The image with its boxes of at least ``options.min_score``, labelled and in their classes' colours."""
        return draw_boxes(image, prediction, self.class_names(model), options.min_score)

    def page_info(self, model: nn.Module) -> dict[str, Any]:
        """The classes, and the score from which boxes are drawn unless the page asks otherwise."""
        return {**super().page_info(model), "min_score": MIN_SCORE}

    def page_view(
        self,
        model: nn.Module,
        image: np.ndarray,
        prediction: dict[str, np.ndarray],
        picture: str,
        options: InferenceOptions,
    ) -> dict[str, Any]:
        """The drawn boxes, and the boxes of at least ``options.min_score`` with how many of each class."""
        found = {key: value[prediction["scores"] >= options.min_score] for key, value in prediction.items()}
        return {
            "drawn": picture,
            "min_score": options.min_score,
            "detections": detection_records(found, self.class_names(model)),
            "counts": np.bincount(found["labels"], minlength=model.num_classes).tolist(),
        }

    def describe_net(self, model: nn.Module, size: tuple[int, int] | None = None) -> NetDescription:
        """The source maps that the heads read, each with its priors, at ``size`` (default: the net's
        design size, its priors' image size: 300x300 for SSD300)."""
        side = model.prior_spec.image_size
        cost = compute_cost(model, size or (side, side))
        fields = _ssd_fields(model)
        count = len(model.priors(cost.input_shape[1:]))
        outputs = [
            ("(loc)", "box offsets per prior", f"{count}x4"),
            ("(conf)", "class logits per prior", f"{count}x{model.num_classes}"),
        ]
        summary = _priors_table(model, cost, fields)
        return NetDescription(cost, f"detection, {model.num_classes} classes", fields, outputs, summary)


def _ssd_fields(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(stride, receptive field) of every layer of the trunk and extras, conv4_3_norm and the heads,
    from the geometry of the layers on each one's path from the input."""
    layers = [*model.backbone.named_children(), *model.extras.named_children()]
    fields = {
        name: (tap.stride, tap.field) for name, tap in SequentialTrunk(OrderedDict(layers)).taps.items()
    }
    names = [name for name, _ in layers]
    for source, reader in zip(model.sources, model.head_inputs, strict=True):
        fields[reader] = fields[source]  # conv4_3_norm scales each position: its geometry is conv4_3's
        path = layers[: names.index(source) + 1]
        for head in (f"{reader}_mbox_loc", f"{reader}_mbox_conf"):
            tap = SequentialTrunk(OrderedDict([*path, (head, model.heads[head])])).output
            fields[head] = (tap.stride, tap.field)
    return fields


def _ratio(value: float) -> str:
    return f"{value:g}" if value >= 1 else f"1/{1 / value:g}"


def _priors_table(model: nn.Module, cost: ComputeCost, fields: dict[str, tuple[int, int]]) -> list[str]:
    """One line per source map: its size (as the run gave it), stride and receptive field in input
    pixels, then its priors: their step (the spacing of their centres), sizes, aspect ratios and count."""
    shapes = {caffe_name(row.name): row.output_shape for row in cost.layers}
    header = (
        f"{'source':<14}{'map':>8}{'stride':>8}{'field':>7}{'step':>6}{'min':>7}{'max':>7}"
        f"  {'aspect ratios':<15}{'per location':>12}{'priors':>8}"
    )
    lines, total = [header, "-" * len(header)], 0
    for reader, layer, per_location in zip(
        model.head_inputs, model.prior_spec.layers, model.prior_spec.per_location, strict=True
    ):
        _, height, width = shapes[f"{reader}_mbox_loc"]
        stride, field = fields[reader]
        count = height * width * per_location
        total += count
        largest = "-" if layer.max_size is None else f"{layer.max_size:g}"
        ratios = ",".join(_ratio(r) for r in layer.ratios(model.prior_spec.flip))
        lines.append(
            f"{reader:<14}{f'{height}x{width}':>8}{stride:>8}{field:>7}{layer.step:>6g}{layer.min_size:>7g}"
            f"{largest:>7}  {ratios:<15}{per_location:>12}{count:>8,}"
        )
    return [
        *lines,
        f"priors            {total:,} (at (i + 0.5) * step: a min-sized box per aspect ratio, a sqrt(min*max) square)",
    ]
