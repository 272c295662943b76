"""Skeleton detection, FSDS's task: images with skeletons and their scales, the FSDS net and its
class-balanced softmax over scale classes, the skeleton benchmarks' F-measure, and skeleton maps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from fcnseg.data.edges import SCALE_THRESHOLDS, SyntheticSkeletons, quantise_scales
from fcnseg.data.transforms import NetPairs
from fcnseg.errors import ConfigError
from fcnseg.metrics.edges import SKELETON_MAX_DIST, skeleton_counts
from fcnseg.models.sides import FSDS_FUSE_INIT, FSDS_SIDE_CHANNELS
from fcnseg.tasks.edges import EdgeTask
from fcnseg.tasks.losses import FSDSLoss

if TYPE_CHECKING:
    from fcnseg.train.config import TrainConfig

__all__ = ["SkeletonTask"]

SYNTHETIC_THRESHOLDS = SCALE_THRESHOLDS["sk506"]
"""The synthetic world's objects are SK506-sized in its images."""


class SkeletonTask(EdgeTask):
    """A skeleton map per image (1 - P(background)); best.pt is the best validation F-measure."""

    name = "skeleton"
    arch = "fsds"
    curves = {"ods": "F-measure", "ap": "AP"}
    synthetic = SyntheticSkeletons
    datasets_known = ("synthetic", "sk-large", "sk506")
    max_dist = SKELETON_MAX_DIST
    noun = "skeleton"
    meaning = "a skeleton (an object's medial axis)"

    def __init__(self) -> None:
        self.thresholds = SYNTHETIC_THRESHOLDS

    def build_model(self, config: TrainConfig, train_set: Dataset) -> nn.Module:
        model = super().build_model(config, train_set)
        model.meta["scale_thresholds"] = list(getattr(train_set, "thresholds", SYNTHETIC_THRESHOLDS))
        return model

    def label(self, truth: np.ndarray) -> np.ndarray:
        """FSDS's scale classes of the skeleton pixels (0: background)."""
        return quantise_scales(truth, self.thresholds)

    def train_samples(self, train_set: Dataset, config: TrainConfig) -> NetPairs:
        if config.scale_range is not None:
            raise ConfigError(
                "the skeleton task cannot rescale images (scale_range): the skeletons' scales would not follow"
            )
        self.thresholds = tuple(getattr(train_set, "thresholds", SYNTHETIC_THRESHOLDS))
        return super().train_samples(train_set, config)

    def criterion(self, config: TrainConfig, train_set: Dataset) -> nn.Module:
        return FSDSLoss((*FSDS_SIDE_CHANNELS, len(FSDS_FUSE_INIT)), config.loss)

    def truths(self, truth: np.ndarray) -> list[np.ndarray]:
        """The skeleton: the pixels with a scale."""
        return [truth > 0]

    def counts(self, prediction: np.ndarray, truth: np.ndarray, nms: bool = True) -> np.ndarray:
        """Matches against the skeleton (the pixels with a scale), as FSDS's evaluation counts them:
        each map divided by its maximum, 100 thresholds (:func:`~fcnseg.metrics.edges.skeleton_counts`)."""
        return skeleton_counts(prediction, self.truths(truth)[0], max_dist=self.max_dist, nms=nms)
