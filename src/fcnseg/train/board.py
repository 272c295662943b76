"""TensorBoard event files in a run's folder (``fcnseg train --tensorboard``, the tensorboard extra):
the loss and learning rate of every step, the metrics of every validation, and pictures of the net's
predictions on the first validation images, the same ones each time, to watch them improve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from fcnseg.errors import MissingExtraError

__all__ = ["EXTRA", "PICTURES", "Board", "pictures", "require_tensorboard"]

EXTRA = "fcnseg[tensorboard]"

PICTURES = 3
"""Validation images pictured at each validation: enough to see the net learn, and cheap to draw."""


def require_tensorboard() -> type:
    """torch's ``SummaryWriter``, or a :class:`MissingExtraError` that names the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch's module raises it when tensorboard is not installed
        raise MissingExtraError(
            f"--tensorboard needs the tensorboard extra: pip install '{EXTRA}'"
        ) from error
    return SummaryWriter


class Board:
    """The event files of one run, written by rank 0."""

    def __init__(self, folder: Path, step: int):
        """Events go to ``folder``. A run that starts at ``step`` hides the events of later steps that
        a run killed between checkpoints had written (TensorBoard's purge), as it makes them again."""
        self.writer = require_tensorboard()(str(folder), purge_step=step + 1)

    def add_step(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def add_validation(self, step: int, metrics: dict[str, float], figures: list[np.ndarray]) -> None:
        """A validation's ``metrics`` (NaN ones, of a run without validation data, left out) and
        ``figures`` ((H, W, 3) uint8), then everything so far flushed to disk."""
        for name, value in metrics.items():
            if not math.isnan(value):
                self.writer.add_scalar(f"val/{name}", value, step)
        for i, figure in enumerate(figures):
            self.writer.add_image(f"predictions/{i}", figure, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def pictures(task: Any, model: nn.Module, dataset: Dataset | None, count: int = PICTURES) -> list[np.ndarray]:
    """The task's figure (image | ground truth | prediction: ``sample_figure``) of the first ``count``
    images of ``dataset`` by ``model`` in eval mode, at their own size; none for a task without one."""
    figure = getattr(task, "sample_figure", None)
    if figure is None or dataset is None:
        return []
    training = model.training
    model.eval()
    try:
        return [figure(model, *dataset[i], scale=1) for i in range(min(count, len(dataset)))]
    finally:
        model.train(training)
