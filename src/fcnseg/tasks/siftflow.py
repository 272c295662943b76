"""SIFT Flow's joint task: semantic (33 classes) and geometric (3 classes) labels from one net with two
heads and one loss each, as the original siftflow-fcn* nets train."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fcnseg import distributed
from fcnseg.data.datasets import IGNORE_INDEX, DataError
from fcnseg.data.preprocess import get_preprocessing, preprocess, preprocessing_of
from fcnseg.data.registry import DEFAULT_SPLITS
from fcnseg.data.siftflow import SIFTFLOW_HEAD_NAMES, SIFTFLOW_HEADS, SiftFlowSegmentation
from fcnseg.data.transforms import NetPairs, pad_collate
from fcnseg.errors import ConfigError
from fcnseg.infer.overlay import figure
from fcnseg.infer.predict import inference_forward, predict_batch
from fcnseg.metrics.segmentation import confusion_matrix, format_metrics, scores
from fcnseg.models.heads import MultiHeadFCN
from fcnseg.models.registry import build_model
from fcnseg.tasks.common import InferenceOptions
from fcnseg.tasks.losses import SegmentationLoss
from fcnseg.tasks.segmentation import SegmentationTask, check_palette

if TYPE_CHECKING:
    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = ["HEADS", "HeadsLoss", "SiftFlowTask", "head_suffix"]

log = logging.getLogger(__name__)

HEADS = SIFTFLOW_HEADS
_METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")


class HeadsLoss(nn.Module):
    """The sum of one softmax loss per head (the original ``loss`` and ``loss_geo``), over (N, 2, H, W)
    targets that hold each head's labels."""

    def __init__(self, heads: tuple[int, ...], loss: SegmentationLoss):
        super().__init__()
        self.heads, self.loss = heads, loss

    def forward(
        self, scores: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        parts = scores.split(self.heads, dim=1)
        return sum(self.loss(part, target[:, i], generator) for i, part in enumerate(parts))


def head_suffix(index: int, name: str) -> str:
    """What follows an image's stem in the files of a head: nothing for the first head (the semantic
    one: ``x.png`` as from any segmentation net), ``_<name>`` for the others (``x_geometric.png``)."""
    return f"_{name}" if index else ""


class SiftFlowTask(SegmentationTask):
    """Two heads on one trunk; best.pt is the best semantic mean IU. Log columns are each metric of
    each head (``sem_mean_iu``, ``geo_pixel_acc``, ...). A prediction is a label map per head.

    The original notes that SIFT Flow's test set lacks some semantic classes: the mean IU here
    averages over the classes present (absent ones are NaN and dropped), as the paper scores them.
    """

    name = "siftflow"
    score = "sem_mean_iu"
    metrics = tuple(f"{head}_{metric}" for head in HEADS for metric in _METRICS)
    curves = {"sem_mean_iu": "semantic mean IU", "geo_pixel_acc": "geometric pixel acc."}
    datasets_known = ("siftflow",)
    takes = ()
    runtimes = True
    serves = False

    def datasets(self, config: TrainConfig) -> tuple[Dataset, Dataset | None]:
        if config.dataset != "siftflow":
            raise ConfigError(f"task siftflow reads the SIFT Flow data set, not {config.dataset!r}")
        if config.flip or config.scale_range or config.crop or config.class_balance:
            raise ConfigError("task siftflow takes no flip, scale_range, crop or class_balance")
        splits = DEFAULT_SPLITS["siftflow"]
        return (
            self.open_split(config.data, config.train_split or splits[0]),
            self.open_split(config.data, config.val_split or splits[1]) if config.validates else None,
        )

    @staticmethod
    def open_split(root: str | Path, split: str) -> SiftFlowSegmentation:
        """One split with both labelings (for ``fcnseg evaluate``, without the training split)."""
        return SiftFlowSegmentation(root, split, task="both")

    def check_data(self, train_set: Dataset, val_set: Dataset | None, progress: bool) -> None:
        """Read every image and both label files once; one DataError lists all that cannot be used."""
        problems = []
        for dataset in (d for d in (train_set, val_set) if d is not None):
            for index in tqdm(range(len(dataset)), desc="checking images and labels", disable=not progress):
                try:
                    dataset[index]
                except (ValueError, OSError) as error:
                    problems.append(str(error))
        if problems:
            shown = "\n  ".join(problems[:20])
            raise DataError(f"{len(problems)} SIFT Flow samples cannot be used:\n  {shown}", problems)
        val = len(val_set) if val_set is not None else 0
        log.info(
            f"data: {len(train_set)} training and {val} validation images; heads of {train_set.num_classes} classes"
        )

    def build_model(self, config: TrainConfig, train_set: Dataset) -> MultiHeadFCN:
        heads = list(train_set.num_classes)
        model = build_model(
            config.arch,
            sum(heads),
            widths=config.widths,
            in_channels=get_preprocessing(config.preprocess).channels,
            frozen_upsampling=config.frozen_upsampling,
            heads=heads,
        )
        names = [name for head in train_set.class_names for name in head]
        model.meta = {
            "class_names": names,
            "heads": heads,
            "head_names": list(SIFTFLOW_HEAD_NAMES),
            "preprocess": config.preprocess,
        }
        return model

    @staticmethod
    def collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, H, W) and labels (N, 2, H, W), padded with the ignore label."""
        images, first = pad_collate([(image, label[0]) for image, label in samples])
        labels = [first] + [
            pad_collate([(im, lab[i]) for im, lab in samples])[1] for i in range(1, len(HEADS))
        ]
        return images, torch.stack(labels, 1)

    def criterion(self, config: TrainConfig, train_set: Dataset) -> HeadsLoss:
        loss = SegmentationLoss(
            reduction=config.loss,
            keep_prob=config.loss_keep_prob,
            sampling_scope=config.loss_sampling,
            sampling_cell=config.loss_sampling_cell,
        )
        return HeadsLoss(tuple(train_set.num_classes), loss)

    def sample_figure(
        self, model: nn.Module, image: np.ndarray, truth: np.ndarray, scale: int = 3
    ) -> np.ndarray:
        """Image | each head's ground truth and prediction (``truth``: (2, H, W)), by the plain net in
        eval mode, over a legend of both heads' classes: a geometric id is drawn in the colour of
        its place after the semantic classes."""
        x = preprocess(image, preprocessing_of(model))[None].to(next(model.parameters()).device)
        with torch.no_grad():
            predictions = [part.argmax(1)[0].cpu().numpy() for part in model.split(model(x))]
        panels, offset = [("image", image)], 0
        for name, labels, predicted, classes in zip(
            model.head_names, truth, predictions, model.heads, strict=True
        ):
            shown = np.where(labels == IGNORE_INDEX, labels, labels + offset)
            panels += [(f"{name} truth", shown), (f"{name} prediction", predicted + offset)]
            offset += classes
        return figure(panels, self.class_names(model), scale=scale)

    def measure(
        self, model: nn.Module, dataset: Dataset, options: InferenceOptions, context: Context, progress: bool
    ) -> dict[str, Any]:
        """Each head's four metrics (and per-class IU), from one confusion matrix per head."""
        if tuple(model.heads) != tuple(dataset.num_classes):
            raise ValueError(
                f"the net's heads have {list(model.heads)} classes, the data's labels {list(dataset.num_classes)}"
            )
        shard = list(range(context.rank, len(dataset), context.world_size))
        loader = DataLoader(
            NetPairs(dataset, preprocessing_of(model)),
            batch_size=options.batch_size,
            sampler=[(0, i) for i in shard],
            collate_fn=self.collate,
        )
        confusions = [torch.zeros(n, n, dtype=torch.int64, device=context.device) for n in model.heads]
        was_training = model.training
        model.eval()
        forward = inference_forward(
            model, options.precision, options.backend, options.calibration, context.device
        )
        with torch.no_grad():
            for images, labels in tqdm(loader, desc="validate", leave=False, disable=not progress):
                labels = labels.to(context.device)
                for i, part in enumerate(model.split(forward(images.to(context.device)))):
                    confusions[i] += confusion_matrix(
                        part.argmax(1), labels[:, i], model.heads[i], IGNORE_INDEX
                    )
        model.train(was_training)
        result: dict[str, Any] = {}
        for head, confusion in zip(HEADS, confusions, strict=True):
            for key, value in scores(distributed.all_reduce_sum(confusion, context).cpu()).items():
                result[f"{head}_{key}"] = value
        return result

    def summary(self, metrics: dict[str, Any], model: nn.Module, dataset: Dataset | None = None) -> str:
        """A table per head, under the head's name (its metrics are the ``sem_``, ``geo_`` keys)."""
        names = self.class_names(model, dataset)
        bounds = np.cumsum([0, *model.heads])
        tables = []
        for i, (head, title) in enumerate(zip(HEADS, model.head_names, strict=True)):
            own = {key[len(head) + 1 :]: v for key, v in metrics.items() if key.startswith(f"{head}_")}
            tables.append(f"{title}:\n" + format_metrics(own, names[bounds[i] : bounds[i + 1]]))
        return "\n\n".join(tables)

    def class_names(self, model: nn.Module, dataset: Dataset | None = None) -> list[str]:
        """The heads' class names in channel order: the metadata's, else the data set's (listed per
        head), else each head's class ids."""
        heads = getattr(dataset, "class_names", None) or [[str(i) for i in range(n)] for n in model.heads]
        return list(
            getattr(model, "meta", {}).get("class_names") or [name for head in heads for name in head]
        )

    def evaluation_set(
        self, model: nn.Module, name: str, data: str | None, split: str | None, images: int, source: str
    ) -> Dataset:
        """Split ``split`` (default: test) of SIFT Flow at ``data``, with both labelings."""
        self.check_dataset(name, source)
        return self.open_split(data, split or DEFAULT_SPLITS[name][1])

    def predicts(self, model: nn.Module) -> str:
        return f"{model.num_classes} classes (heads {'+'.join(map(str, model.heads))})"

    def default_class_names(self, model: nn.Module) -> list[str] | None:
        return None

    def check_prediction(self, model: nn.Module, options: InferenceOptions, source: str) -> None:
        self.check_options(model, options, source)
        check_palette(source, max(model.heads), " in a head")

    def predict_images(
        self, model: nn.Module, images: np.ndarray, options: InferenceOptions
    ) -> list[dict[str, np.ndarray]]:
        """(N, H, W, 3) uint8 images of one size -> per image each head's (H, W) label map by head name."""
        labels, _ = predict_batch(
            model,
            images,
            max_memory=options.max_memory,
            precision=options.precision,
            backend=options.backend,
            calibration=options.calibration,
        )
        return [{head: maps[i] for head, maps in labels.items()} for i in range(len(images))]

    def prediction_suffixes(self, model: nn.Module, options: InferenceOptions) -> list[str]:
        """Each head's files (:func:`head_suffix`), in the order of the model's heads."""
        own = super().prediction_suffixes(model, options)
        heads = model.head_names
        suffixes = [head_suffix(i, name) + suffix for i, name in enumerate(heads) for suffix in own]
        if len({s.lower() for s in suffixes}) < len(suffixes):
            raise ValueError(f"the head names {list(heads)} give two heads the same file: {suffixes}")
        return suffixes

    def write_prediction(
        self,
        model: nn.Module,
        stem: Path,
        image: np.ndarray,
        prediction: dict[str, np.ndarray],
        options: InferenceOptions,
    ) -> None:
        """``prediction``: each head's (H, W) label map by head name, in channel order. Each is written
        as a segmentation net's, its files named ``stem`` + :func:`head_suffix` + the usual ending."""
        for i, (name, labels) in enumerate(prediction.items()):
            super().write_prediction(
                model, Path(f"{stem}{head_suffix(i, name)}"), image, (labels, None), options
            )

    def predicted(self, model: nn.Module) -> str:
        return f"wrote {' and '.join(model.head_names)} label maps of"
