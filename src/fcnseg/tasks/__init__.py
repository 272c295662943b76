"""What the training loop trains: a task brings its data, model, loss, metrics and predictions.

One loop (:class:`fcnseg.train.trainer.Trainer`) runs every task, with validation, checkpoints,
resume, DDP, mixed precision and time limits. What differs between tasks is a small object
handed to it; a new task (edges, skeletons, boxes) is a module here and an entry in
:data:`TASKS`, and the loop stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fcnseg.errors import ConfigError
from fcnseg.tasks.detection import DetectionTask
from fcnseg.tasks.edges import EdgeTask
from fcnseg.tasks.segmentation import SegmentationTask
from fcnseg.tasks.siftflow import SiftFlowTask
from fcnseg.tasks.skeleton import SkeletonTask

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = ["TASKS", "Task", "get_task"]


class Task(Protocol):
    """The parts of training that differ between tasks. Methods get the run's settled config."""

    name: str
    arch: str
    """The net a run builds unless the config names another."""
    score: str
    """The key of :meth:`evaluate`'s result that picks ``best.pt``; higher is better."""
    metrics: tuple[str, ...]
    """The keys of :meth:`evaluate`'s result (floats) that ``log.csv`` records, in order."""
    curves: dict[str, str]
    """The metrics ``curves.png`` draws, with their labels."""

    def datasets(self, config: TrainConfig) -> tuple[Dataset, Dataset | None]:
        """The raw training and validation sets that ``config`` names."""
        ...

    def check_data(
        self, train_set: Dataset, val_set: Dataset | None, say: Callable[[str], None], progress: bool
    ) -> None:
        """Read the data once, before the first step: raise a ``DataError`` that lists every
        unusable sample, else ``say`` what the data is."""
        ...

    def build_model(self, config: TrainConfig, train_set: Dataset) -> nn.Module:
        """A fresh net for ``train_set`` (by ``fcnseg.build_model``, so that checkpoints can rebuild
        it), with ``meta`` saying what its weights expect."""
        ...

    def train_samples(self, train_set: Dataset, config: TrainConfig) -> Dataset:
        """``train_set`` as the loop reads it: indexed by (epoch, index) keys, (input, target) pairs,
        augmented from the key alone so that a resumed run sees the same samples."""
        ...

    def collate(self, samples: list[Any]) -> tuple[torch.Tensor, Any]:
        """One batch: inputs (N, C, H, W) and the targets the criterion takes."""
        ...

    def criterion(self, config: TrainConfig, train_set: Dataset) -> nn.Module:
        """The loss: ``criterion(outputs, targets, generator) -> scalar``; ``generator`` draws any
        randomness of the loss, and is a function of (seed, rank, step)."""
        ...

    def evaluate(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, context: Context, progress: bool
    ) -> dict[str, Any]:
        """The metrics of ``model`` on ``dataset`` (summed over the processes of ``context``),
        holding :attr:`score` and :attr:`metrics`."""
        ...

    def summary(self, metrics: dict[str, Any], model: nn.Module) -> str:
        """:meth:`evaluate`'s result as a table for people."""
        ...

    def prediction_suffixes(self, **options: Any) -> list[str]:
        """The endings of the files ``write_prediction`` writes after a stem, with these options."""
        ...

    def write_prediction(self, stem: Path, image: np.ndarray, prediction: Any, **options: Any) -> None:
        """Write one image's prediction to files named ``stem`` + a suffix, atomically."""
        ...


TASKS: dict[str, Callable[[], Task]] = {
    "segmentation": SegmentationTask,
    "siftflow": SiftFlowTask,
    "edges": EdgeTask,
    "skeleton": SkeletonTask,
    "detection": DetectionTask,
}
"""The tasks fcnseg trains, by the name ``TrainConfig.task`` (``fcnseg train --task``) gives."""


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]()
