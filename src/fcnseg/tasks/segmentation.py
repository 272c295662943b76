"""Semantic segmentation, the paper's task: image/mask pairs, an FCN, the per-pixel softmax loss,
the four metrics of one confusion matrix, palette PNGs of class ids and overlays, and the FCN's
strides and crop offsets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from fcnseg.data.datasets import Split, check_pairs, files_of, holdout
from fcnseg.data.preprocess import get_preprocessing, preprocess, preprocessing_of
from fcnseg.data.registry import DEFAULT_SPLITS, open_dataset
from fcnseg.data.synthetic import SyntheticSegmentation
from fcnseg.data.transforms import NetPairs, pad_collate
from fcnseg.data.voc import VOC_CLASSES
from fcnseg.files import atomic_write
from fcnseg.infer import crf
from fcnseg.infer.overlay import colorize, figure, overlay
from fcnseg.infer.predict import inference_forward, predict_batch
from fcnseg.metrics.segmentation import evaluate_confusion, format_metrics, scores
from fcnseg.models.fcn import FCN
from fcnseg.models.flops import compute_cost
from fcnseg.models.registry import build_model
from fcnseg.models.tvfcn import TorchvisionFCN
from fcnseg.tasks.common import (
    INFO_SIZE,
    REFINEMENTS,
    InferenceOptions,
    NetDescription,
    TaskBase,
    augmentation,
    write_picture,
)
from fcnseg.tasks.losses import SegmentationLoss, class_pixel_counts, median_frequency_weights

if TYPE_CHECKING:
    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = ["PALETTE_SIZE", "SegmentationTask", "check_palette"]

log = logging.getLogger(__name__)

PALETTE_SIZE = 256
"""The most classes a palette PNG holds."""


def check_palette(source: str, classes: int, where: str = "") -> None:
    """Refuse a net whose label maps a palette PNG cannot hold (``where``: " in a head")."""
    if classes > PALETTE_SIZE:
        raise ValueError(
            f"{source}: model has {classes} classes{where} but a palette PNG holds at most {PALETTE_SIZE}"
        )


class SegmentationTask(TaskBase):
    """A class per pixel; best.pt is the best validation mean IU."""

    name = "segmentation"
    arch = "fcn8s"
    score = "mean_iu"
    metrics = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
    curves = {"mean_iu": "mean IU", "pixel_acc": "pixel acc."}
    synthetic = SyntheticSegmentation
    datasets_known = ("synthetic", "folder", "voc", "sbd", "nyud", "siftflow", "context")
    takes = REFINEMENTS
    runtimes = True

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
            if not config.validates:  # every image trains: none is held out for a validation not run
                return train, None
            if config.val_data:
                return train, FolderSegmentation(config.val_data, class_names=train.class_names)
            return holdout(train, config.val_fraction, seed=0)
        splits = DEFAULT_SPLITS[name]
        train = open_dataset(name, config.data, config.train_split or splits[0], modality=config.modality)
        if not config.validates:
            return train, None
        return train, open_dataset(name, config.data, config.val_split or splits[1], modality=config.modality)

    def check_data(self, train_set: Dataset, val_set: Dataset | None, progress: bool) -> None:
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
        log.info(f"data: {len(train_set)} training and {val}; {train_set.num_classes} classes")
        if getattr(source, "classes_from", None) == "masks":
            log.info(
                f"classes: counted in the masks (ids 0..{source.num_classes - 1}); name them in "
                f"{source.root / 'classes.txt'}, one per line"
            )
        empty = [source.class_names[c] for c in np.flatnonzero(sum(counts) == 0)] if source else []
        if empty:
            log.warning(f"no pixel of class {', '.join(empty)} in any mask: it cannot be learned")

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
        return NetPairs(train_set, config.preprocess, augmentation(config), config.seed)

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

    def measure(
        self, model: nn.Module, dataset: Dataset, options: InferenceOptions, context: Context, progress: bool
    ) -> dict[str, Any]:
        """The four metrics and per-class IU of one confusion matrix over ``dataset`` (of the dense
        CRF's labels with ``options.crf``)."""
        confusion = evaluate_confusion(
            model,
            dataset,
            model.num_classes,
            batch_size=options.batch_size,
            context=context,
            progress=progress,
            crf=crf.CRFSettings() if options.crf else None,
            forward=inference_forward(
                model, options.precision, options.backend, options.calibration, context.device
            ),
        )
        return scores(confusion)

    def summary(self, metrics: dict[str, Any], model: nn.Module, dataset: Dataset | None = None) -> str:
        return format_metrics(metrics, self.class_names(model, dataset))

    def evaluation_set(
        self, model: nn.Module, name: str, data: str | None, split: str | None, images: int, source: str
    ) -> Dataset:
        """Split ``split`` (default: the paper's validation split) of data set ``name`` at ``data``,
        or ``images`` held-out synthetic images; it must have the net's classes."""
        self.check_dataset(name, source)
        dataset = open_dataset(name, data, split, num_images=images, num_classes=model.num_classes)
        if model.num_classes != dataset.num_classes:
            raise ValueError(
                f"{source} predicts {model.num_classes} classes but {data} has {dataset.num_classes}"
            )
        return dataset

    def default_class_names(self, model: nn.Module) -> list[str] | None:
        """PASCAL VOC's, for a net of its 21 classes (the original nets' files name none)."""
        return list(VOC_CLASSES) if model.num_classes == len(VOC_CLASSES) else None

    def check_options(self, model: nn.Module, options: InferenceOptions, source: str) -> None:
        """The refinements apply (the dense CRF if its extra is installed)."""
        super().check_options(model, options, source)
        if options.crf:
            crf.require()

    def check_prediction(self, model: nn.Module, options: InferenceOptions, source: str) -> None:
        self.check_options(model, options, source)
        check_palette(source, model.num_classes)

    def predict_images(
        self, model: nn.Module, images: np.ndarray, options: InferenceOptions
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(N, H, W, 3) uint8 images of one size -> per image the (H, W) label map and, with
        ``options.probs``, the (C, H, W) probabilities (else None)."""
        labels, probs = predict_batch(
            model,
            images,
            return_probs=options.probs,
            tta_flip=options.tta_flip,
            tta_scales=options.tta_scales,
            max_memory=options.max_memory,
            precision=options.precision,
            crf=crf.CRFSettings() if options.crf else None,
            backend=options.backend,
            calibration=options.calibration,
        )
        return [(labels[i], probs[i] if options.probs else None) for i in range(len(labels))]

    def prediction_suffixes(self, model: nn.Module, options: InferenceOptions) -> list[str]:
        overlay_suffix = [f"_overlay.{options.overlay_format}"] if options.overlay else []
        return [".png", *overlay_suffix, *(["_probs.npy"] if options.probs else [])]

    def write_prediction(
        self,
        model: nn.Module,
        stem: Path,
        image: np.ndarray,
        prediction: tuple[np.ndarray, np.ndarray | None],
        options: InferenceOptions,
    ) -> None:
        """Writes ``stem.png``, the class ids as a palette PNG; with ``options.overlay``
        ``stem_overlay.jpg``, the colours over the image; with probabilities ``stem_probs.npy``."""
        labels, probs = prediction
        write_picture(f"{stem}.png", self.picture(model, image, prediction, options))
        if options.overlay:
            shown = Image.fromarray(overlay(image, labels, alpha=options.overlay_alpha))
            write_picture(f"{stem}_overlay.{options.overlay_format}", shown)
        if probs is not None:
            atomic_write(
                f"{stem}_probs.npy", lambda f: np.save(f, probs.astype(options.probs_dtype)), durable=False
            )

    def predicted(self, model: nn.Module) -> str:
        return "segmented"

    def picture(
        self,
        model: nn.Module,
        image: np.ndarray,
        prediction: tuple[np.ndarray, Any],
        options: InferenceOptions,
    ) -> Image.Image:
        """The label map as a palette PNG of class ids in the PASCAL colours."""
        return colorize(prediction[0])

    def page_view(
        self,
        model: nn.Module,
        image: np.ndarray,
        prediction: tuple[np.ndarray, Any],
        picture: str,
        options: InferenceOptions,
    ) -> dict[str, Any]:
        """The label map (``picture``, its URL) and each class's share of the pixels."""
        labels = prediction[0]
        counts = np.bincount(labels.ravel(), minlength=model.num_classes)
        return {"labels": picture, "shares": (counts / max(labels.size, 1)).tolist()}

    def sample_figure(
        self, model: nn.Module, image: np.ndarray, truth: np.ndarray, scale: int = 3
    ) -> np.ndarray:
        """Image | ground truth | prediction of the plain net (in eval mode) over a legend of the classes."""
        x = preprocess(image, preprocessing_of(model))[None].to(next(model.parameters()).device)
        with torch.no_grad():
            labels = model(x).argmax(1)[0].cpu().numpy()
        panels = [("image", image), ("ground truth", truth), ("prediction", labels)]
        return figure(panels, self.class_names(model), scale=scale)

    def describe_net(self, model: nn.Module, size: tuple[int, int] | None = None) -> NetDescription:
        """The score layers' geometry at ``size`` (default :data:`INFO_SIZE`): output stride, where
        score_fr's cells sit, the crop offsets."""
        if not hasattr(model, "backbone"):
            raise ValueError(
                f"{model.config['arch']} is a late fusion of {len(model.streams)} fcn32s streams: "
                "`fcnseg info fcn32s` describes each"
            )
        cost = compute_cost(model, size or INFO_SIZE)
        trunk = model.backbone
        fields = {name: (tap.stride, tap.field) for name, tap in trunk.taps.items()}
        plane = "x".join(map(str, cost.input_shape[1:]))
        leaves = {row.name.removeprefix("backbone.") for row in cost.layers}
        stages = [  # taps that are whole stages (ResNet's layer1 ...), not rows of the table
            f"{tap.name} {tap.channels}ch /{tap.stride} field {tap.field}"
            for tap in trunk.taps.values()
            if tap.name not in leaves
        ]
        taps = [f"trunk taps        {'; '.join(stages)}"] if stages else []
        if isinstance(model, TorchvisionFCN):
            out = trunk.output
            summary = [
                f"output stride     {out.stride} ({out.name}, dilated), then the classifier (FCNHead)",
                f"scores at         x = {out.geometry.scale} * i + {float(out.geometry.shift):g} in input "
                "pixels, resized bilinearly (align_corners=False), which shows them at "
                f"{out.stride} * i + {(out.stride - 1) / 2:g} where a side is a multiple of {out.stride}",
                *taps,
                f"receptive field   {out.field}x{out.field} pixels ({out.name}), "
                f"{out.field + 2 * out.stride}x{out.field + 2 * out.stride} after the classifier's 3x3",
            ]
            outputs = [("(output)", "bilinear resize", f"{model.num_classes}x{plane}")]
            return NetDescription(cost, f"{model.num_classes} classes", fields, outputs, summary)
        fields["score_fr"] = fields[trunk.output.name]  # 1x1: the trunk output's positions
        stride, field = fields["score_fr"]
        coarse = trunk.output.geometry
        final = getattr(model, model.final_name)
        offsets = [f"{model.final_name} {model.output_offset}"]
        offsets += [f"score_{tap} {offset}" for tap, offset in model.skip_offsets.items()]
        summary = [
            f"output stride     {stride} (score_fr), upsampled by {model.final_name} "
            f"({final.kernel_size[0]}/{final.stride[0]})",
            f"score_fr centres  x = {coarse.scale} * i + {float(coarse.shift):g} in input pixels",
            f"crop offsets      {', '.join(offsets)}",
            *taps,
            f"receptive field   {field}x{field} pixels (score_fr)",
        ]
        outputs = [("(output)", f"crop at {model.output_offset}", f"{model.num_classes}x{plane}")]
        return NetDescription(cost, f"{model.num_classes} classes", fields, outputs, summary)
