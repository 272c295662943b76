"""What a task is: its data, model, loss and metrics for the training loop, and its predictions,
their files and pictures, its evaluation and its description of a net for the faces.

One loop (:class:`fcnseg.train.trainer.Trainer`) runs every task, with validation, checkpoints,
resume, DDP, mixed precision and time limits; the commands (``fcnseg predict``, ``evaluate``,
``info``, ``convert``, ``demo``) and the web page (``fcnseg serve``) ask the task of a net
(:func:`task_of`) and never switch on it. What differs between tasks is a small object; a new
task is a module here and an entry in :data:`TASKS`, and the loop and the faces stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fcnseg.errors import ConfigError
from fcnseg.tasks.common import InferenceOptions, NetDescription
from fcnseg.tasks.detection import DetectionTask
from fcnseg.tasks.edges import EdgeTask
from fcnseg.tasks.segmentation import SegmentationTask
from fcnseg.tasks.siftflow import SiftFlowTask
from fcnseg.tasks.skeleton import SkeletonTask

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn
    from torch.utils.data import Dataset

    from fcnseg.distributed import Context
    from fcnseg.train.config import TrainConfig

__all__ = ["TASKS", "Task", "get_task", "task_of"]


class Task(Protocol):
    """What differs between tasks: first what the training loop asks (methods get the run's settled
    config), then what the faces ask. :class:`~fcnseg.tasks.common.TaskBase` holds the defaults."""

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

    def check_data(self, train_set: Dataset, val_set: Dataset | None, progress: bool) -> None:
        """Read the data once, before the first step: raise a ``DataError`` that lists every
        unusable sample, else log what the data is (INFO, the task module's logger)."""
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

    def summary(self, metrics: dict[str, Any], model: nn.Module, dataset: Dataset | None = None) -> str:
        """:meth:`evaluate`'s result as a table for people (classes named as :meth:`class_names`)."""
        ...

    # What the faces ask: fcnseg evaluate.
    datasets_known: tuple[str, ...]
    """The data sets (``fcnseg evaluate --dataset``) this task's nets are scored on."""

    def evaluation_set(
        self, model: nn.Module, name: str, data: str | None, split: str | None, images: int, source: str
    ) -> Dataset:
        """One split (default: the validation split) of data set ``name`` at ``data``, or ``images``
        held-out synthetic images; a ValueError naming ``source`` if it does not fit the net."""
        ...

    def measure(
        self, model: nn.Module, dataset: Dataset, options: InferenceOptions, context: Context, progress: bool
    ) -> dict[str, Any]:
        """:meth:`evaluate`'s metrics with the faces' options (batch size, the dense CRF)."""
        ...

    def check_options(self, model: nn.Module, options: InferenceOptions, source: str) -> None:
        """A ValueError naming the refinements of ``options`` (CRF, TTA, probabilities) that the net
        of ``source`` cannot give; a MissingExtraError for one whose extra is not installed."""
        ...

    def class_names(self, model: nn.Module, dataset: Dataset | None = None) -> list[str]:
        """The net's class names (its metadata's, else ``dataset``'s, else numbers); none for maps."""
        ...

    # fcnseg predict and fcnseg serve.
    serves: bool
    """Whether ``fcnseg serve``'s page has a view of this task's results."""

    def check_prediction(self, model: nn.Module, options: InferenceOptions, source: str) -> None:
        """:meth:`check_options`, and a ValueError if the net's predictions cannot be written."""
        ...

    def predict_images(self, model: nn.Module, images: np.ndarray, options: InferenceOptions) -> list[Any]:
        """(N, H, W, 3) uint8 RGB images of one size -> one prediction per image, on the plain net or
        ``fcnseg.infer``'s prediction functions."""
        ...

    def prediction_suffixes(self, model: nn.Module, options: InferenceOptions) -> list[str]:
        """The endings of the files :meth:`write_prediction` writes after a stem."""
        ...

    def write_prediction(
        self, model: nn.Module, stem: Path, image: np.ndarray, prediction: Any, options: InferenceOptions
    ) -> None:
        """Write one image's prediction to files named ``stem`` + a suffix, atomically."""
        ...

    def predicted(self, model: nn.Module) -> str:
        """What ``fcnseg predict`` did to the images, before "N of M images": ``segmented``."""
        ...

    def picture(
        self, model: nn.Module, image: np.ndarray, prediction: Any, options: InferenceOptions
    ) -> Image.Image:
        """The prediction as ``fcnseg predict`` draws it: the label map, the grey map, the drawn boxes."""
        ...

    def page_info(self, model: nn.Module) -> dict[str, Any]:
        """The task's fields of the page's ``GET /info``: ``classes`` (id, name, colour) and what
        its view needs (a legend, a colour, a default score)."""
        ...

    def page_view(
        self, model: nn.Module, image: np.ndarray, prediction: Any, picture: str, options: InferenceOptions
    ) -> dict[str, Any]:
        """The page's view of a prediction, whose :meth:`picture` is at the URL ``picture``."""
        ...

    # fcnseg info and fcnseg convert.
    def predicts(self, model: nn.Module) -> str:
        """What the net predicts, for people: ``21 classes``, ``edges``."""
        ...

    def default_class_names(self, model: nn.Module) -> list[str] | None:
        """The class names a converted net that names none gets, if any."""
        ...

    def describe_net(self, model: nn.Module, size: tuple[int, int] | None = None) -> NetDescription:
        """What ``fcnseg info`` says of the net at input size ``size`` (H, W; default: the task's)."""
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


def task_of(model: nn.Module) -> Task:
    """The task of a net (``model.task``: each fcnseg net names the task that made it)."""
    return get_task(model.task)
