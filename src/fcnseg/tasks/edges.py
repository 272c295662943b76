"""Edge detection, HED's task: images with annotators' boundaries, the HED net and its class-balanced
sigmoid loss, the BSDS benchmark's ODS / OIS / AP, edge maps as grey PNGs and overlays, and the side
outputs' geometry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from fcnseg import distributed
from fcnseg.accel import for_inference
from fcnseg.data.datasets import DataError
from fcnseg.data.edges import BSDS500, HEDPairs, SkeletonDataset, SyntheticEdges, edge_labels
from fcnseg.data.preprocess import preprocess, preprocessing_of
from fcnseg.data.registry import DEFAULT_SPLITS, open_dataset
from fcnseg.data.transforms import NetPairs, pad_collate
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.infer.edge_outputs import edge_output, merge_thinned, side_mean
from fcnseg.metrics.edges import EDGE_MAX_DIST, edge_counts, scores, suppress
from fcnseg.models.flops import compute_cost
from fcnseg.models.registry import build_model
from fcnseg.tasks.common import (
    INFO_SIZE,
    InferenceOptions,
    NetDescription,
    TaskBase,
    augmentation,
    hex_colour,
    write_picture,
)
from fcnseg.tasks.losses import HEDLoss

if TYPE_CHECKING:
    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = ["OVERLAY_COLOUR", "EdgeTask", "Targets", "grey_map", "predict_map", "predict_maps", "red_overlay"]

log = logging.getLogger(__name__)

OVERLAY_COLOUR = (255, 32, 32)
"""The colour of an edge or skeleton map drawn over its image."""


class Targets(Dataset):
    """Raw samples with their ground truth turned into training labels by ``label``."""

    def __init__(self, dataset: Dataset, label: Callable[[np.ndarray], np.ndarray]):
        self.dataset, self.label = dataset, label

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, truth = self.dataset[index]
        return image, self.label(truth)


@torch.no_grad()
def predict_maps(model: nn.Module, images: np.ndarray, output: str = "fuse") -> np.ndarray:
    """(N, H, W, 3) uint8 images of one size -> the (N, H, W) maps in [0, 1] that an edge or skeleton
    net predicts, with the preprocessing its weights expect, where the net is (by the speed layer's
    path: :func:`fcnseg.accel.for_inference`); ``output`` picks the net's own map
    (``model.edge_map``) or HED's merge (:data:`~fcnseg.infer.edge_outputs.EDGE_OUTPUTS`)."""
    x = preprocess(images, preprocessing_of(model)).to(next(model.parameters()).device)
    return edge_output(model, for_inference(model)(x), output).float().cpu().numpy()


def predict_map(model: nn.Module, image: np.ndarray, output: str = "fuse") -> np.ndarray:
    """The (H, W) map in [0, 1] of one (H, W, 3) uint8 image (:func:`predict_maps`)."""
    return predict_maps(model, image[None], output)[0]


@torch.no_grad()
def _thinned_merge(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """HED's merge as its evaluation scores it: the fused map and the side mean each thinned by NMS,
    then averaged (merge_res.m)."""
    x = preprocess(image, preprocessing_of(model))[None].to(next(model.parameters()).device)
    logits = for_inference(model)(x)
    fuse, sides = (m[0].float().cpu().numpy() for m in (edge_output(model, logits), side_mean(model, logits)))
    return merge_thinned(fuse, sides, suppress)


def grey_map(prediction: np.ndarray) -> np.ndarray:
    """An (H, W) map in [0, 1] as 8-bit grey: white (255) where the net is sure, black where it sees nothing."""
    return np.clip(np.rint(prediction * 255), 0, 255).astype(np.uint8)


def red_overlay(image: np.ndarray, prediction: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An (H, W) map in [0, 1] in :data:`OVERLAY_COLOUR` over its (H, W, 3) uint8 image: each pixel
    takes the colour with weight ``alpha`` times the map."""
    weight = alpha * prediction[..., None].astype(np.float32)
    shown = (1 - weight) * image.astype(np.float32) + weight * np.array(OVERLAY_COLOUR, dtype=np.float32)
    return np.clip(np.rint(shown), 0, 255).astype(np.uint8)


class EdgeTask(TaskBase):
    """An edge map per image; best.pt is the best validation ODS F-measure."""

    name = "edges"
    arch = "hed"
    score = "ods"
    metrics = ("ods", "ois", "ap")
    curves = {"ods": "ODS F", "ap": "AP"}
    synthetic = SyntheticEdges
    datasets_known = ("synthetic", "bsds500", "hed-bsds")
    max_dist = EDGE_MAX_DIST
    noun = "edge"
    """The map's kind, as ``fcnseg predict`` reports it: "drew edge maps of"."""
    meaning = "an edge"
    """What the map gives the probability of, for the page's legend."""

    def datasets(self, config: TrainConfig) -> tuple[Dataset, Dataset | None]:
        """The synthetic world's boundaries, or a data set's splits (HED-BSDS: its pairs, and
        BSDS500's validation split from ``val_data``)."""
        name = config.dataset
        if name not in self.datasets_known:
            raise ConfigError(f"the {self.name} task reads {', '.join(self.datasets_known)}, not {name!r}")
        if name == "synthetic":
            size = config.image_size
            return (
                self.synthetic(config.train_images, seed=0, size_range=size),
                self.synthetic(config.val_images, seed=1, size_range=size),
            )
        splits = DEFAULT_SPLITS[name]
        train = open_dataset(name, config.data, config.train_split or splits[0])
        if not config.validates:
            return train, None
        if name == "hed-bsds":  # HED's augmented pairs have no validation split: BSDS500's, when given
            val_split = config.val_split or splits[1]
            return train, open_dataset("bsds500", config.val_data, val_split) if config.val_data else None
        return train, open_dataset(name, config.data, config.val_split or splits[1])

    def check_data(self, train_set: Dataset, val_set: Dataset | None, progress: bool) -> None:
        """Read every sample of the sets made of files; list all that cannot be read."""
        problems = []
        for dataset in (train_set, val_set):
            if not isinstance(dataset, BSDS500 | HEDPairs | SkeletonDataset):
                continue
            for i in tqdm(range(len(dataset)), desc="checking data", disable=not progress, leave=False):
                try:
                    dataset[i]
                except (FcnsegError, OSError) as error:
                    problems.append(str(error))
        if problems:
            raise DataError(
                f"{len(problems)} sample(s) cannot be used:\n  " + "\n  ".join(problems), problems
            )
        val = len(val_set) if val_set is not None else 0
        log.info(f"data: {len(train_set)} training and {val} validation images ({self.name})")

    def build_model(self, config: TrainConfig, train_set: Dataset) -> nn.Module:
        if config.arch != self.arch:
            raise ConfigError(
                f"the {self.name} task trains {self.arch}, not {config.arch} (--arch {self.arch})"
            )
        model = build_model(config.arch, widths=config.widths)
        model.meta = {"preprocess": config.preprocess, "task": self.name}
        return model

    def label(self, truth: np.ndarray) -> np.ndarray:
        """The training label of one ground truth: HED's consensus of the annotators."""
        return edge_labels(truth)

    def train_samples(self, train_set: Dataset, config: TrainConfig) -> NetPairs:
        return NetPairs(Targets(train_set, self.label), config.preprocess, augmentation(config), config.seed)

    collate = staticmethod(pad_collate)

    def criterion(self, config: TrainConfig, train_set: Dataset) -> nn.Module:
        return HEDLoss(config.loss)

    def truths(self, truth: np.ndarray) -> list[np.ndarray]:
        """The maps a prediction is matched against: one per annotator."""
        return list(truth)

    def counts(self, prediction: np.ndarray, truth: np.ndarray, nms: bool = True) -> np.ndarray:
        """One image's matches at each threshold (:func:`~fcnseg.metrics.edges.edge_counts`)."""
        return edge_counts(prediction, self.truths(truth), max_dist=self.max_dist, nms=nms)

    def measure(
        self, model: nn.Module, dataset: Dataset, options: InferenceOptions, context: Context, progress: bool
    ) -> dict[str, Any]:
        """The benchmark's scores over ``dataset``, each process taking every world_size-th image."""
        was_training = model.training
        model.eval()
        counts = []
        indices = range(context.rank, len(dataset), context.world_size)
        for i in tqdm(indices, desc="evaluating", disable=not progress, leave=False):
            image, truth = dataset[i]
            merge = options.edge_output == "merge"
            edges = _thinned_merge(model, image) if merge else predict_map(model, image)
            try:
                counts.append(self.counts(edges, truth, nms=not merge))
            except ValueError as error:
                pairs = getattr(dataset, "pairs", None)
                sample = f"{pairs[i][1]}" if pairs else f"image {i} of {len(dataset)}"
                raise DataError(f"{sample}: {error}", [str(error)]) from error
        model.train(was_training)
        gathered = [c for part in distributed.all_gather_objects(counts, context) for c in part]
        return scores(gathered)

    def summary(self, metrics: dict[str, Any], model: nn.Module, dataset: Dataset | None = None) -> str:
        return "  ".join(f"{key.upper()} {metrics[key]:.4f}" for key in self.metrics)

    def evaluation_set(
        self, model: nn.Module, name: str, data: str | None, split: str | None, images: int, source: str
    ) -> Dataset:
        """Split ``split`` (default: the validation split) of data set ``name`` at ``data``, or
        ``images`` held-out synthetic images (the training runs' validation seed)."""
        self.check_dataset(name, source)
        return self.synthetic(images, seed=1) if name == "synthetic" else open_dataset(name, data, split)

    def class_names(self, model: nn.Module, dataset: Dataset | None = None) -> list[str]:
        """None: a map has no classes."""
        return []

    def predicts(self, model: nn.Module) -> str:
        return self.name

    def predict_images(
        self, model: nn.Module, images: np.ndarray, options: InferenceOptions
    ) -> list[np.ndarray]:
        """(N, H, W, 3) uint8 images of one size -> per image the (H, W) map in [0, 1]."""
        return list(predict_maps(model, images, options.edge_output))

    def prediction_suffixes(self, model: nn.Module, options: InferenceOptions) -> list[str]:
        return [".png", *([f"_overlay.{options.overlay_format}"] if options.overlay else [])]

    def write_prediction(
        self,
        model: nn.Module,
        stem: Path,
        image: np.ndarray,
        prediction: np.ndarray,
        options: InferenceOptions,
    ) -> None:
        """Writes ``stem.png``, the map in grey (white: sure); with ``options.overlay``
        ``stem_overlay.jpg``, the map in red over the image."""
        write_picture(f"{stem}.png", self.picture(model, image, prediction, options))
        if options.overlay:
            shown = Image.fromarray(red_overlay(image, prediction, options.overlay_alpha))
            write_picture(f"{stem}_overlay.{options.overlay_format}", shown)

    def predicted(self, model: nn.Module) -> str:
        return f"drew {self.noun} maps of"

    def picture(
        self, model: nn.Module, image: np.ndarray, prediction: np.ndarray, options: InferenceOptions
    ) -> Image.Image:
        """The map in grey: white where the net is sure, black where it sees nothing."""
        return Image.fromarray(grey_map(prediction))

    def page_info(self, model: nn.Module) -> dict[str, Any]:
        """No classes; what the map shows, and the colour the page draws it in over the image."""
        return {
            "classes": [],
            "legend": f"the grey level is the net's probability of {self.meaning} at each pixel: "
            "white is sure, black is none",
            "overlay_color": hex_colour(OVERLAY_COLOUR),
        }

    def page_view(
        self,
        model: nn.Module,
        image: np.ndarray,
        prediction: np.ndarray,
        picture: str,
        options: InferenceOptions,
    ) -> dict[str, Any]:
        return {"map": picture}

    def sample_figure(
        self, model: nn.Module, image: np.ndarray, truth: np.ndarray, scale: int = 3
    ) -> np.ndarray:
        """Image | ground truth (the first annotator's) | predicted map, in grey, enlarged ``scale`` times."""
        maps = (self.truths(truth)[0], predict_map(model, image))
        panels = [image, *(np.repeat(grey_map(m.astype(np.float32))[..., None], 3, 2) for m in maps)]
        return np.concatenate(panels, axis=1).repeat(scale, 0).repeat(scale, 1)

    def describe_net(self, model: nn.Module, size: tuple[int, int] | None = None) -> NetDescription:
        """Each side output's tap, stride, receptive field and crop offset, at ``size`` (default
        :data:`INFO_SIZE`)."""
        cost = compute_cost(model, size or INFO_SIZE)
        fields = {name: (tap.stride, tap.field) for name, tap in model.backbone.taps.items()}
        summary = []
        for tap, (score, _, offset) in zip(model.taps, model.sides, strict=True):
            stride, field = fields[tap.name]
            summary.append(
                f"{score:<17} on {tap.name.replace('relu', 'conv')}: stride {stride}, receptive field "
                f"{field}x{field}, crop at {offset}"
            )
        plane = "x".join(map(str, cost.input_shape[1:]))
        outputs = [("(output)", "sides, then fused", f"{model.outputs}x{plane}")]
        return NetDescription(cost, f"{self.name}, {model.outputs} outputs", fields, outputs, summary)
