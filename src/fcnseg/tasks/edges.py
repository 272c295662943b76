"""Edge detection, HED's task: images with annotators' boundaries, the HED net and its class-balanced
sigmoid loss, the BSDS benchmark's ODS / OIS / AP, and edge maps as grey PNGs and overlays."""

from __future__ import annotations

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
from fcnseg.data.datasets import DataError
from fcnseg.data.edges import BSDS500, HEDPairs, SkeletonDataset, SyntheticEdges, edge_labels
from fcnseg.data.preprocess import preprocess, preprocessing_of
from fcnseg.data.registry import DEFAULT_SPLITS, open_dataset
from fcnseg.data.transforms import (
    Compose,
    NetPairs,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    pad_collate,
)
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.infer.edge_outputs import edge_output, merge_thinned, side_mean
from fcnseg.metrics.edges import EDGE_MAX_DIST, edge_counts, scores, suppress
from fcnseg.models.registry import build_model
from fcnseg.train.edge_losses import HEDLoss
from fcnseg.weights.checkpoint import atomic_write

if TYPE_CHECKING:
    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = ["OVERLAY_COLOUR", "EdgeTask", "Targets", "grey_map", "predict_map", "red_overlay"]

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
def predict_map(
    model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu", output: str = "fuse"
) -> np.ndarray:
    """The (H, W) map in [0, 1] that an edge or skeleton net predicts for an (H, W, 3) uint8 image,
    with the preprocessing its weights expect; ``output`` picks the net's own map (``model.edge_map``)
    or HED's merge (:data:`~fcnseg.infer.edge_outputs.EDGE_OUTPUTS`)."""
    x = preprocess(image, preprocessing_of(model))[None].to(device)
    return edge_output(model, model(x), output)[0].float().cpu().numpy()


@torch.no_grad()
def _thinned_merge(model: nn.Module, image: np.ndarray, device: torch.device | str) -> np.ndarray:
    """HED's merge as its evaluation scores it: the fused map and the side mean each thinned by NMS,
    then averaged (merge_res.m)."""
    logits = model(preprocess(image, preprocessing_of(model))[None].to(device))
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


class EdgeTask:
    """An edge map per image; best.pt is the best validation ODS F-measure."""

    name = "edges"
    arch = "hed"
    score = "ods"
    metrics = ("ods", "ois", "ap")
    curves = {"ods": "ODS F", "ap": "AP"}
    synthetic = SyntheticEdges
    datasets_known = ("synthetic", "bsds500", "hed-bsds")
    max_dist = EDGE_MAX_DIST

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

    def check_data(
        self, train_set: Dataset, val_set: Dataset | None, say: Callable[[str], None], progress: bool
    ) -> None:
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
        say(f"data: {len(train_set)} training and {val} validation images ({self.name})")

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
        transforms = []
        if config.scale_range is not None:
            transforms.append(RandomScale(config.scale_range))
        if config.flip:
            transforms.append(RandomHorizontalFlip())
        if config.crop is not None:
            transforms.append(RandomCrop(config.crop))
        transform = Compose(transforms) if transforms else None
        return NetPairs(Targets(train_set, self.label), config.preprocess, transform, config.seed)

    collate = staticmethod(pad_collate)

    def criterion(self, config: TrainConfig, train_set: Dataset) -> nn.Module:
        return HEDLoss(config.loss)

    def truths(self, truth: np.ndarray) -> list[np.ndarray]:
        """The maps a prediction is matched against: one per annotator."""
        return list(truth)

    def counts(self, prediction: np.ndarray, truth: np.ndarray, nms: bool = True) -> np.ndarray:
        """One image's matches at each threshold (:func:`~fcnseg.metrics.edges.edge_counts`)."""
        return edge_counts(prediction, self.truths(truth), max_dist=self.max_dist, nms=nms)

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, context: Context, progress: bool
    ) -> dict[str, Any]:
        """The benchmark's scores over ``dataset``, each process taking every world_size-th image."""
        was_training = model.training
        model.eval()
        counts = []
        indices = range(context.rank, len(dataset), context.world_size)
        for i in tqdm(indices, desc="evaluating", disable=not progress, leave=False):
            image, truth = dataset[i]
            merge = config.edge_output == "merge"
            edges = (_thinned_merge if merge else predict_map)(model, image, context.device)
            try:
                counts.append(self.counts(edges, truth, nms=not merge))
            except ValueError as error:
                pairs = getattr(dataset, "pairs", None)
                sample = f"{pairs[i][1]}" if pairs else f"image {i} of {len(dataset)}"
                raise DataError(f"{sample}: {error}", [str(error)]) from error
        model.train(was_training)
        gathered = [c for part in distributed.all_gather_objects(counts, context) for c in part]
        return scores(gathered)

    def summary(self, metrics: dict[str, Any], model: nn.Module) -> str:
        return "  ".join(f"{key.upper()} {metrics[key]:.4f}" for key in self.metrics)

    def prediction_suffixes(self, *, overlay_format: str | None = None, **options: Any) -> list[str]:
        return [".png", *([f"_overlay.{overlay_format}"] if overlay_format else [])]

    def write_prediction(
        self,
        stem: Path,
        image: np.ndarray,
        prediction: np.ndarray,
        *,
        overlay_format: str | None = None,
        overlay_alpha: float = 0.5,
        **options: Any,
    ) -> None:
        """``prediction``: the (H, W) map in [0, 1]. Writes ``stem.png``, the map in grey (white: sure
        edge); with ``overlay_format`` ("jpg" or "png") ``stem_overlay.jpg``, the map in red over
        the image."""
        grey = grey_map(prediction)
        atomic_write(f"{stem}.png", lambda f: Image.fromarray(grey).save(f, format="PNG"))
        if overlay_format:
            picture = Image.fromarray(red_overlay(image, prediction, overlay_alpha))
            kind = "JPEG" if overlay_format == "jpg" else "PNG"
            atomic_write(f"{stem}_overlay.{overlay_format}", lambda f: picture.save(f, format=kind))
