"""Training FCNs: the paper's recipe and a normalised one, resumable bit for bit, on one or many processes.

One :class:`TrainConfig` holds a whole experiment (a recipe file is one in TOML).
:class:`Trainer` runs it: periodic validation with the paper's four metrics, a
CSV log and a PNG of the curves, ``last.pt`` and ``best.pt`` written atomically.
Every source of randomness is either derived from (seed, epoch, index, step) or
saved in the checkpoint, so a run killed at any moment and resumed ends with the
same weights as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import math
import os
import random
import signal
import threading
import time
import types
import typing
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from fcnseg.data.datasets import DataError, SegmentationDataset, check_pairs
from fcnseg.data.preprocess import get_preprocessing, preprocess
from fcnseg.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomScale, pad_collate
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.models.fcn import FCN
from fcnseg.models.registry import ARCHITECTURES, build_model
from fcnseg.train import distributed
from fcnseg.train.losses import (
    REDUCTIONS,
    SAMPLING_SCOPES,
    class_pixel_counts,
    median_frequency_weights,
    segmentation_loss,
)
from fcnseg.train.metrics import confusion_matrix, scores
from fcnseg.train.plot import plot_curves
from fcnseg.weights.checkpoint import atomic_save, checkpoint_dict, read_checkpoint
from fcnseg.weights.hub import resolve

__all__ = [
    "LOG_COLUMNS",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_datasets",
    "copy_matching_layers",
    "evaluate_confusion",
    "open_dataset",
    "train",
]

LOG_COLUMNS = ("step", "epoch", "train_loss", "pixel_acc", "mean_acc", "mean_iu", "fw_iu", "lr", "seconds")
"""Columns of ``log.csv``: one row per validation."""

DATASETS = ("synthetic", "folder", "voc", "sbd", "nyud", "siftflow", "context")
_DEFAULT_SPLITS = {
    "voc": ("sbd-train", "seg11valid"),  # the paper's PASCAL protocol
    "sbd": ("sbd-train", "seg11valid"),
    "nyud": ("train", "val"),
    "siftflow": ("trainval", "test"),
    "context": ("train", "val"),
}
# Settings that change the trajectory: resuming with other values would not continue the same run.
_RESUME_IGNORES = {
    "epochs", "out", "workers", "progress", "device", "init", "notes", "channels_last", "checkpoint_every",
}  # fmt: skip

RECIPES: dict[str, dict[str, Any]] = {
    "fcnseg": {},
    "paper": {
        "loss": "sum",
        "optimizer": "sgd",
        "lr": 1e-10,
        "momentum": 0.99,
        "weight_decay": 5e-4,
        "caffe_bias": True,
        "lr_schedule": "fixed",
        "batch_size": 1,
        "weight_init": "default",
        "preprocess": "caffe",
    },
}
"""Named starting points for a config. "fcnseg" is the defaults of :class:`TrainConfig`: a
normalised loss with Adam, which learns on any data without tuning. "paper" is the solver of
the original repository: the summed per-pixel loss with SGD at lr 1e-10, momentum 0.99, weight
decay 5e-4, biases at twice the lr and without decay, one image per step, fixed lr."""

AUTO = "auto"
"""``init``: ImageNet weights where the net can take them and they can be had, else from scratch.
``preprocess``: the initial weights' preprocessing, else "imagenet"."""


class TrainingDiverged(FcnsegError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good one."""


def _fits(value: Any, hint: Any) -> bool:
    """Whether a plain value (from TOML or a checkpoint) has the type of a TrainConfig field."""
    args, origin = typing.get_args(hint), typing.get_origin(hint)
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)  # other generics (dict[str, float]): the container only


def _type_name(hint: Any) -> str:
    return str(hint).replace("NoneType", "None") if typing.get_args(hint) else hint.__name__


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run after a step; ``last.pt`` holds it, ready for ``resume``."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


@dataclass
class TrainConfig:
    """One experiment. The defaults learn on one's own data with no tuning: ImageNet weights when
    they can be had, a per-pixel mean loss with Adam at lr 1e-4 and a poly schedule, one image of
    any size per step. The paper's solver is the recipe "paper" (:data:`RECIPES`,
    :meth:`from_dict`)."""

    # Net
    arch: str = "fcn8s"
    widths: tuple[int, ...] | None = None
    frozen_upsampling: str = "final"
    # A checkpoint, a published name (weights.hub.resolve; "imagenet"), "auto" or None (from scratch).
    init: str | None = AUTO
    weight_init: str = "kaiming"  # of the backbone before any init is copied in; "default": PyTorch's
    dropout: float | None = None  # overrides fc6/fc7 dropout (VGG's 0.5); 0 learns faster from scratch
    # Data
    dataset: str | None = None  # None: "folder" when data names a folder, else "synthetic"
    data: str | None = None
    val_data: str | None = None  # folder data set: a second folder, else val_fraction of data
    val_fraction: float = 0.1
    train_split: str | None = None
    val_split: str | None = None
    train_images: int = 400  # synthetic only
    val_images: int = 50
    image_size: tuple[int, int] = (64, 128)  # synthetic: range of heights and widths
    preprocess: str = AUTO
    flip: bool = False
    scale_range: tuple[float, float] | None = None
    crop: int | None = None
    num_classes: int | None = None  # folder data set without classes.txt: else counted in the masks
    # Loss
    loss: str = "mean"
    ignore_index: int = 255
    class_balance: bool = False
    class_balance_power: float = 1.0  # median-frequency weights to this power; 0.5 is gentler
    loss_keep_prob: float = 1.0
    loss_sampling: str = "image"
    loss_sampling_cell: int = 1
    # Optimisation
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    caffe_bias: bool = False  # True: biases learn at twice the lr, without weight decay, as in the Caffe nets
    lr_schedule: str = "poly"
    batch_size: int = 1
    epochs: int = 20
    max_steps: int | None = None
    time_limit: float | None = None  # seconds; stops early (and makes "poly" anneal by time) when reached
    amp: str = "off"
    # NHWC activations (on CPU the trunk picks each convolution's layout itself: it changes
    # little there). Same math, but dropout masks are drawn in memory order: not the default layout's.
    channels_last: bool = False
    # Running
    seed: int = 0
    val_every: int = 0  # steps between validations; 0 = once per epoch
    checkpoint_every: float = 600.0  # seconds: last.pt is also written this often between validations
    val_batch_size: int = 1
    workers: int = 0
    device: str | None = None
    out: str = "runs/fcn"
    progress: bool = True
    notes: str = ""  # what the experiment is, kept with the run

    def __post_init__(self) -> None:
        if self.dataset is None:
            self.dataset = "folder" if self.data else "synthetic"
        if self.init is not None and self.init.lower() == "none":  # TOML and flags cannot say None
            self.init = None
        if self.widths is not None:
            self.widths = tuple(int(w) for w in self.widths)
        self.image_size = tuple(int(s) for s in self.image_size)
        if self.scale_range is not None:
            self.scale_range = tuple(float(s) for s in self.scale_range)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the setting that is out of range."""
        choices = {
            "dataset": DATASETS,
            "loss": REDUCTIONS,
            "loss_sampling": SAMPLING_SCOPES,
            "optimizer": ("sgd", "adam"),
            "lr_schedule": ("fixed", "poly"),
            "amp": ("off", "bf16", "fp16"),
            "weight_init": ("default", "kaiming"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.preprocess != AUTO:
            get_preprocessing(self.preprocess)
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"num_classes must be positive, got {self.num_classes}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0 seconds, got {self.checkpoint_every}")
        positive = ("lr", "batch_size", "epochs", "val_batch_size", "loss_sampling_cell")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be positive, got {self.max_steps}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ConfigError(f"time_limit must be positive, got {self.time_limit}")
        if not 0 < self.loss_keep_prob <= 1:
            raise ConfigError(f"loss_keep_prob must be in (0, 1], got {self.loss_keep_prob}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_every < 0 or self.workers < 0:
            raise ConfigError("val_every and workers must be >= 0")
        if self.dataset != "synthetic" and not self.data:
            raise ConfigError(f"dataset {self.dataset!r} needs a data folder (data = ...)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a plain dict (a parsed recipe file); unknown keys are an error.

        ``recipe`` names a starting point in :data:`RECIPES` ("paper"); the other keys override it.
        """
        values = dict(values)
        recipe = values.pop("recipe", "fcnseg")
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown training settings: {', '.join(unknown)}; known: recipe, {', '.join(sorted(known))}"
            )
        hints = typing.get_type_hints(cls)
        wrong = [
            f"{k} = {v!r} (expected {_type_name(hints[k])})"
            for k, v in values.items()
            if not _fits(v, hints[k])
        ]
        if wrong:
            raise ConfigError(f"training settings of the wrong type: {'; '.join(wrong)}")
        return cls(**{**RECIPES[recipe], **values})

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, so that it can be stored in a ``weights_only`` checkpoint."""
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@dataclass
class TrainResult:
    """What a run produced: the trained model, the log rows and the files written."""

    model: FCN
    history: list[dict[str, float]]
    best_metrics: dict[str, Any] | None
    out: Path
    steps: int


@dataclass
class _Run:
    """What a training run carries from step to step and writes into ``last.pt``."""

    model: FCN
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: dict[str, float]  # step, epoch, epoch_step, best_mean_iu, seconds
    history: list[dict[str, float]]
    best_metrics: dict[str, Any] | None


# ----------------------------------------------------------------------------- data


class _Split(Dataset):
    """A subset of a data set that keeps its class names."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.class_names = dataset.class_names
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


def _holdout(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A fixed random split of one folder into train and val (val at least one image)."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    size = max(1, round(fraction * len(dataset)))
    if size >= len(dataset):
        raise ValueError(f"{len(dataset)} images cannot be split into train and val")
    return _Split(dataset, sorted(order[size:])), _Split(dataset, sorted(order[:size]))


def open_dataset(
    name: str,
    root: str | None = None,
    split: str | None = None,
    *,
    num_images: int = 50,
    image_size: tuple[int, int] = (64, 128),
    num_classes: int | None = None,
) -> Dataset:
    """One split of a data set by name: raw (image, label) numpy pairs with ``class_names``.

    ``split`` defaults to the paper's validation split of each data set. For
    ``synthetic``, split "train" is seed 0 and any other split seed 1, so the two
    never share an image; ``num_images`` and ``image_size`` size it. For ``folder``,
    ``root`` is the whole set and ``split`` is ignored; ``num_classes`` stands in
    for a missing ``classes.txt``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "synthetic":
        from fcnseg.data.synthetic import SyntheticSegmentation

        # Data seeds are fixed, apart from the training seed: runs with other seeds see the same data.
        seed = 0 if split == "train" else 1
        return SyntheticSegmentation(num_images, seed=seed, size_range=image_size)
    if not root:
        raise ValueError(f"data set {name!r} needs its folder")
    if name == "folder":
        from fcnseg.data.folder import FolderSegmentation

        has_class_list = (Path(root) / "classes.txt").is_file()
        return FolderSegmentation(root, num_classes=None if has_class_list else num_classes)
    split = split or _DEFAULT_SPLITS[name][1]
    if name in ("voc", "sbd"):
        from fcnseg.data.voc import pascal_split

        return pascal_split(split, root)
    if name == "nyud":
        from fcnseg.data.nyud import NYUDSegmentation

        return NYUDSegmentation(root, split)
    if name == "siftflow":
        from fcnseg.data.siftflow import SiftFlowSegmentation

        return SiftFlowSegmentation(root, split)
    from fcnseg.data.context import PascalContextSegmentation

    return PascalContextSegmentation(root, split)


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """The train and validation sets a config names."""
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
        if config.val_data:
            return train, FolderSegmentation(config.val_data, class_names=train.class_names)
        return _holdout(train, config.val_fraction, seed=0)
    splits = _DEFAULT_SPLITS[name]
    return (
        open_dataset(name, config.data, config.train_split or splits[0]),
        open_dataset(name, config.data, config.val_split or splits[1]),
    )


class _Samples(Dataset):
    """Raw pairs -> (preprocessed image (3, H, W), label (H, W) int64), augmented reproducibly.

    Indexed by (epoch, index): the augmentation of an image is drawn from a generator
    seeded by (seed, epoch, index), so it does not depend on worker processes or on
    where a resumed run restarted.
    """

    def __init__(self, dataset: Dataset, mode: str, transform: Compose | None = None, seed: int = 0):
        self.dataset, self.mode, self.transform, self.seed = dataset, mode, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, label = self.dataset[index]
        if self.transform is not None:
            image, label = self.transform(image, label, np.random.default_rng([self.seed, epoch, index]))
        return preprocess(image, self.mode), torch.as_tensor(label, dtype=torch.int64)


class _EpochSampler(Sampler):
    """This process's share of one epoch as (epoch, index) keys, from batch position ``start`` on.

    The order is ``DistributedSampler``'s: shuffled by (seed, epoch) and split over
    ranks, so it is the same whether or not the epoch was interrupted.
    """

    def __init__(self, shard: DistributedSampler, epoch: int, skip: int = 0):
        self.shard, self.epoch, self.skip = shard, epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.shard.set_epoch(self.epoch)
        indices = list(self.shard)[self.skip :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return len(self.shard) - self.skip


def _augmentation(config: TrainConfig) -> Compose | None:
    transforms = []
    if config.scale_range is not None:
        transforms.append(RandomScale(config.scale_range))
    if config.flip:
        transforms.append(RandomHorizontalFlip())
    if config.crop is not None:
        transforms.append(RandomCrop(config.crop, ignore_index=config.ignore_index))
    return Compose(transforms) if transforms else None


# ----------------------------------------------------------------------------- model


def copy_matching_layers(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of ``state_dict`` whose name and shape match ``model``'s; return their names.

    This is staged training's surgery: FCN-16s takes backbone, ``score_fr`` from
    FCN-32s; FCN-8s also takes ``upscore2`` and ``score_pool4`` from FCN-16s. Layers
    that are new (or shaped differently, e.g. another number of classes) keep their
    initialisation. Copying nothing at all is an error.
    """
    own = model.state_dict()
    copied = [k for k, v in state_dict.items() if k in own and own[k].shape == v.shape]
    if not copied:
        raise ValueError("the initial checkpoint shares no layer (same name and shape) with this net")
    with torch.no_grad():
        for key in copied:
            own[key].copy_(state_dict[key])
    return copied


def _kaiming_init(model: FCN) -> None:
    """He initialisation of the backbone: a deep plain VGG trains from scratch only with it."""
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{config.arch} has no trainable parameters")
    if not config.caffe_bias:
        return [{"params": [p for _, p in trainable], "lr_mult": 1.0}]
    weights = [p for n, p in trainable if not n.endswith("bias")]
    biases = [p for n, p in trainable if n.endswith("bias")]
    return [
        {"params": weights, "lr_mult": 1.0},
        {"params": biases, "lr_mult": 2.0, "weight_decay": 0.0},
    ]


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, config)
    # On the CPU one fused kernel updates all parameters: the same step to float rounding, several
    # times faster (VGG16's SGD step 0.35 -> 0.06 s, the demo net's Adam 1.5 -> 0.3 ms).
    fused = True if all(p.device.type == "cpu" for group in groups for p in group["params"]) else None
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=fused
        )
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


# ----------------------------------------------------------------------------- randomness


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """The global generators' states as tensors and lists, loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(words), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, words, gauss_next = state["python"]
    random.setstate((version, tuple(words), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The loss-sampling generator of one step: a function of (seed, rank, step) alone."""
    words = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


# ----------------------------------------------------------------------------- evaluation


def evaluate_confusion(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    *,
    preprocess_mode: str = "caffe",
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    amp: str = "off",
    ignore_index: int = 255,
    context: distributed.Context | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The (num_classes, num_classes) confusion matrix of ``model`` over ``dataset``.

    Images are scored at their own size; batches of several are padded with the
    ignore label, which the matrix skips. Under ``torchrun`` each process scores
    every ``world_size``-th image and the matrices are summed.
    """
    context = context or distributed.Context(device=torch.device(device))
    device = torch.device(device)
    shard = list(range(context.rank, len(dataset), context.world_size))
    loader = DataLoader(
        _Samples(dataset, preprocess_mode),
        batch_size=batch_size,
        sampler=[(0, i) for i in shard],
        collate_fn=functools.partial(pad_collate, ignore_index=ignore_index),
    )
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(device, amp):
        for images, labels in tqdm(loader, desc="validate", leave=False, disable=not progress):
            labels = labels.to(device)
            pred = model(images.to(device)).argmax(1)
            confusion += confusion_matrix(pred, labels, num_classes, ignore_index)
    model.train(was_training)
    return distributed.all_reduce_sum(confusion, context).cpu()


def _autocast(device: torch.device, amp: str):
    if amp == "off" or device.type != "cuda":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# ----------------------------------------------------------------------------- log


def _read_log(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _format(row[k]) for k in LOG_COLUMNS} for row in rows)
    os.replace(tmp, path)


def _format(value: float) -> str:
    # repr round-trips: a resumed run reads back exactly the rows it wrote.
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


# ----------------------------------------------------------------------------- trainer

_IMAGENET = {arch: "imagenet" for arch in ARCHITECTURES if arch != "fcn-alexnet"} | {
    "fcn-alexnet": "imagenet-caffe"
}
"""The ImageNet weights that "auto" starts each net from (torchvision's VGG16 has no AlexNet twin:
torchvision's AlexNet is single-tower, without LRN, so FCN-AlexNet takes the Caffe one)."""


def _file_dataset(dataset: Dataset | None) -> SegmentationDataset | None:
    """The data set of files behind ``dataset`` (a held-out split reads its parent's files)."""
    dataset = dataset.dataset if isinstance(dataset, _Split) else dataset
    return dataset if isinstance(dataset, SegmentationDataset) else None


class _StepTimer:
    """Times the first steps of a run, to say up front how long an epoch and the run will take."""

    WARMUP = 1  # the first step pays once for allocations and kernel choices
    STEPS, SECONDS = 5, 10.0  # measure this many steps, or for this long, whichever comes first

    def __init__(self, steps_per_epoch: int, steps_left: int):
        self.steps_per_epoch, self.steps_left = steps_per_epoch, steps_left
        self.count = 0
        self.start: float | None = 0.0

    def tick(self) -> str | None:
        """Call after every step; returns the estimate once, as soon as it is known."""
        self.count += 1
        if self.count == self.WARMUP:
            self.start = time.perf_counter()
        if self.count <= self.WARMUP or self.start is None:
            return None
        measured, elapsed = self.count - self.WARMUP, time.perf_counter() - self.start
        if measured < self.STEPS and elapsed < self.SECONDS:
            return None
        self.start = None  # said once
        per_step = elapsed / measured
        return (
            f"about {_duration(per_step)} per step: {_duration(per_step * self.steps_per_epoch)} per epoch of "
            f"{self.steps_per_epoch} steps, {_duration(per_step * self.steps_left)} for the {self.steps_left} "
            "steps to go, plus validation (Ctrl-C saves last.pt; --resume continues)"
        )


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


class Trainer:
    """Runs one :class:`TrainConfig`; see :meth:`fit`.

    ``train_set``/``val_set`` (raw (image, label) numpy pairs with ``class_names``)
    replace the data sets the config names; ``val_set=None`` with a config data set
    means "the config's validation set".
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        train_set: Dataset | None = None,
        val_set: Dataset | None = None,
        context: distributed.Context | None = None,
    ):
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self.context = context
        self._train_set, self._val_set = train_set, val_set

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``epochs`` (or ``max_steps``), validating and saving along the way.

        ``resume`` continues from ``out/last.pt``; without it an existing run in
        ``out`` is an error rather than being overwritten. Every image/mask pair is
        read once before the first step, and all bad ones are reported together.
        Raises :class:`TrainingDiverged` on a NaN or infinite loss, and
        :class:`TrainingInterrupted` after saving ``last.pt`` on Ctrl-C or SIGTERM.
        """
        context = self.context or distributed.init_from_env(self.config.device)
        self.context = context
        if not resume and self.last_path.exists():
            raise ValueError(
                f"{self.out} already holds a run ({self.last_path}); resume it or pick another out"
            )
        saved = self._load_resume_state() if resume else None

        train_set, val_set = self._train_set, self._val_set
        if train_set is None:
            train_set, built_val = build_datasets(self.config)
            val_set = val_set if val_set is not None else built_val
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        self._check_data(train_set, val_set)
        initial = None if saved is not None else self._initial_weights()
        config = self.config = self._resolved(saved, initial)
        num_classes = train_set.num_classes

        _seed_everything(config.seed)
        model = self._build_model(num_classes, train_set.class_names, initial)
        device = context.device
        model.to(device, memory_format=self._memory_format)
        if config.amp != "off" and device.type != "cuda":
            warnings.warn(f"mixed precision ({config.amp}) needs CUDA; training in float32", stacklevel=2)
        net = model
        if context.enabled:
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = _optimizer(model, config)
        scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and device.type == "cuda")
        weight = self._class_weights(train_set, num_classes)
        weight = weight.to(device) if weight is not None else None

        shard = DistributedSampler(
            train_set, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=config.seed
        )
        steps_per_epoch = math.ceil(len(shard) / config.batch_size)
        total_steps = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)

        state = {
            "step": 0, "epoch": 0, "epoch_step": 0, "best_mean_iu": -1.0, "seconds": 0.0,
            "loss_sum": 0.0, "loss_count": 0,  # training loss since the last log row
        }  # fmt: skip
        history: list[dict[str, float]] = []
        if saved is not None:
            model.load_state_dict(saved["state_dict"])
            optimizer.load_state_dict(saved["optimizer"])
            if saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            state.update({k: saved.get(k, state[k]) for k in state})
            rng = saved["rng"]
            _set_rng_state(rng[context.rank] if len(rng) == context.world_size else rng[0])
            history = [r for r in _read_log(self.out / "log.csv") if r["step"] <= state["step"]]
        else:
            # Dropout streams differ between processes; the weights are rank 0's (DDP broadcasts).
            _seed_everything(config.seed * 1_000_003 + context.rank + 1)
        if context.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            _write_log(self.out / "log.csv", history)
        best_metrics = saved.get("best_metrics") if saved is not None else None
        run = _Run(model, optimizer, scaler, state, history, best_metrics)

        dataset = _Samples(train_set, config.preprocess, _augmentation(config), config.seed)
        self._started = time.perf_counter() - state["seconds"]
        last_save = time.perf_counter()
        timing = _StepTimer(steps_per_epoch, total_steps - state["step"])
        finished = False
        net.train()
        with self._stop_on_signals():
            while state["step"] < total_steps:
                epoch = state["epoch"]
                sampler = _EpochSampler(shard, epoch, skip=state["epoch_step"] * config.batch_size)
                loader = DataLoader(
                    dataset,
                    batch_size=config.batch_size,
                    sampler=sampler,
                    num_workers=config.workers,
                    collate_fn=functools.partial(pad_collate, ignore_index=config.ignore_index),
                    generator=torch.Generator().manual_seed(config.seed + epoch),
                    pin_memory=device.type == "cuda",
                )
                steps_here = min(len(loader), total_steps - state["step"])
                bar = tqdm(
                    total=steps_here,
                    desc=f"epoch {epoch + 1}/{config.epochs}",
                    unit="batch",
                    disable=not (config.progress and context.is_main),
                    dynamic_ncols=True,
                )
                epoch_start, images_seen = time.perf_counter(), 0
                for images, labels in loader:
                    lr = self._set_lr(optimizer, self._progress(state["step"], total_steps))
                    try:
                        value = self._train_step(net, optimizer, scaler, images, labels, weight, state)
                    except TrainingDiverged:
                        bar.close()
                        raise
                    state["step"] += 1
                    state["epoch_step"] += 1
                    state["loss_sum"] += value
                    state["loss_count"] += 1
                    images_seen += images.shape[0]
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{value:.4g}",
                        img_s=f"{images_seen * context.world_size / (time.perf_counter() - epoch_start):.1f}",
                        refresh=False,
                    )
                    estimate = timing.tick()
                    if estimate and config.progress and context.is_main:
                        tqdm.write(estimate)
                    end_of_epoch = state["epoch_step"] == steps_per_epoch
                    if end_of_epoch:
                        state["epoch"] += 1
                        state["epoch_step"] = 0
                    out_of_time = self._progress(0, 1) >= 1
                    if out_of_time and context.is_main and state["step"] < total_steps:
                        tqdm.write(f"time limit of {config.time_limit:g} s reached at step {state['step']}")
                    finished = state["step"] >= total_steps or out_of_time
                    due = state["step"] % config.val_every == 0 if config.val_every else end_of_epoch
                    if due or finished:
                        row = self._train_row(state, lr, steps_per_epoch)
                        self._checkpoint(run, val_set, row)
                        last_save = time.perf_counter()
                        bar.set_postfix(loss=f"{value:.4g}", mean_iu=f"{row['mean_iu']:.3f}", refresh=False)
                    if finished:
                        break
                    overdue = (
                        bool(config.checkpoint_every)
                        and time.perf_counter() - last_save >= config.checkpoint_every
                    )
                    stop = self._signal
                    if distributed.any_true(overdue or stop is not None, context):
                        self._save(run)  # no validation: a place to resume from
                        last_save = time.perf_counter()
                        if distributed.any_true(stop is not None, context):
                            bar.close()
                            number = stop if stop is not None else signal.SIGTERM  # another rank's
                            raise TrainingInterrupted(
                                f"stopped by {signal.Signals(number).name} after step {state['step']}; "
                                f"{self.last_path} holds the run: continue it with --resume",
                                number,
                            )
                bar.close()
                if finished:
                    break
        model.to(memory_format=torch.contiguous_format)  # the usual layout for whoever uses it next
        return TrainResult(model.eval(), history, run.best_metrics, self.out, state["step"])

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """The first Ctrl-C or SIGTERM asks the loop to stop after its step, saving ``last.pt`` first;
        a second Ctrl-C stops at once. Handlers can only be set from the main thread."""
        self._signal: int | None = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask_to_stop(signal_number: int, frame: Any) -> None:
            if self._signal is not None and signal_number == signal.SIGINT:
                raise KeyboardInterrupt
            self._signal = signal_number
            if self.config.progress and self.context.is_main:
                tqdm.write("stopping after this step, saving last.pt (Ctrl-C again to stop at once)")

        previous = {number: signal.signal(number, ask_to_stop) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    # ------------------------------------------------------------------ pieces of fit

    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.channels_last else torch.contiguous_format

    def _train_step(self, net, optimizer, scaler, images, labels, weight, state) -> float:
        """One forward/backward/update; returns the loss, or raises on a non-finite one."""
        config, context = self.config, self.context
        device = context.device
        images = images.to(device, non_blocking=True, memory_format=self._memory_format)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, config.amp):
            scores_ = net(images)
        loss = segmentation_loss(
            scores_,
            labels,
            reduction=config.loss,
            ignore_index=config.ignore_index,
            weight=weight,
            keep_prob=config.loss_keep_prob,
            sampling_scope=config.loss_sampling,
            sampling_cell=config.loss_sampling_cell,
            generator=_step_generator(config.seed, context.rank, state["step"]),
        )
        value = loss.item()
        if distributed.any_true(not math.isfinite(value), context):
            kept = (
                f"; the last good checkpoint {self.last_path} is untouched" if self.last_path.exists() else ""
            )
            raise TrainingDiverged(
                f"loss is {value} at step {state['step'] + 1} (epoch {state['epoch'] + 1}): training diverged "
                f"(lower the lr, or use loss = 'mean' with a larger one){kept}"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return value

    def _say(self, line: str) -> None:
        if self.config.progress and self.context.is_main:
            tqdm.write(line)

    def _check_data(self, train_set: Dataset, val_set: Dataset | None) -> None:
        """Read every image/mask pair once, before the first step, and describe the data.

        Rank 0 reads; on a problem every process stops, with rank 0 listing all of them.
        """
        folders = {id(d): d for d in map(_file_dataset, (train_set, val_set)) if d is not None}
        error: DataError | None = None
        if self.context.is_main:
            try:
                counts = [check_pairs(d, progress=self.config.progress) for d in folders.values()]
            except DataError as found:
                error = found
        if distributed.any_true(error is not None, self.context):
            raise error or DataError("rank 0 found image/mask pairs that cannot be used", [])
        if not folders or not self.context.is_main:
            return
        source = _file_dataset(train_set)
        held_out = isinstance(val_set, _Split) and val_set.dataset is source
        val = f"{len(val_set)} validation images" if val_set is not None else "no validation images"
        if held_out:
            val += f" (held out of {source.root} at random; --val-data to give your own)"
        self._say(f"data: {len(train_set)} training and {val}; {train_set.num_classes} classes")
        if getattr(source, "classes_from", None) == "masks":
            self._say(
                f"classes: counted in the masks (ids 0..{source.num_classes - 1}); name them in "
                f"{source.root / 'classes.txt'}, one per line"
            )
        empty = [source.class_names[c] for c in np.flatnonzero(sum(counts) == 0)] if source else []
        if empty:
            self._say(f"warning: no pixel of class {', '.join(empty)} in any mask: it cannot be learned")

    def _initial_weights(self) -> dict[str, Any] | None:
        """The checkpoint to start from (``init``), or None to train from scratch.

        "auto" takes the ImageNet classifier that fits the net when it can be had, and says so
        either way: training a full VGG16 from scratch needs far more data and time.
        """
        config = self.config
        name = config.init
        if name == AUTO:
            name = _IMAGENET.get(config.arch)
            reason = (
                f"narrow widths {config.widths}" if config.widths is not None
                else None if name else f"no ImageNet weights for {config.arch}"
            )  # fmt: skip
            if reason:
                self._say(f"training from scratch ({reason})")
                return None
            try:
                path = resolve(name, config.arch, config.widths, config.progress and self.context.is_main)
            except (OSError, ValueError) as error:
                self._say(
                    f"training from scratch: ImageNet weights ({name}) cannot be had: {error}\n"
                    "  From scratch a full VGG16 needs far more images and time; with network access, "
                    f"`fcnseg weights get {name}` fetches them once for every later run."
                )
                return None
        elif name is None:
            return None
        else:
            path = resolve(name, config.arch, config.widths, config.progress and self.context.is_main)
        initial = read_checkpoint(path)
        initial["source"] = name
        return initial

    def _resolved(self, saved: dict[str, Any] | None, initial: dict[str, Any] | None) -> TrainConfig:
        """The config with "auto" preprocessing settled: the resumed run's, the initial weights', or
        "imagenet" (ImageNet mean and deviation) from scratch."""
        config = self.config
        if config.preprocess != AUTO:
            return config
        if saved is not None:
            preprocess = saved["train_config"]["preprocess"]
        elif initial is not None:
            preprocess = initial.get("meta", {}).get("preprocess", "caffe")
        else:
            preprocess = "imagenet"
        return dataclasses.replace(config, preprocess=preprocess)

    def _build_model(
        self, num_classes: int, class_names: Sequence[str], initial: dict[str, Any] | None
    ) -> FCN:
        config = self.config
        model = build_model(
            config.arch, num_classes, widths=config.widths, frozen_upsampling=config.frozen_upsampling
        )
        if config.weight_init == "kaiming":
            _kaiming_init(model)
        if config.dropout is not None:
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = config.dropout
        if initial is not None:
            expected = initial.get("meta", {}).get("preprocess", config.preprocess)
            if expected != config.preprocess:
                warnings.warn(
                    f"{initial['source']} was made for {expected!r} preprocessing but this run uses "
                    f"{config.preprocess!r}; pass --preprocess {expected} unless that is intended",
                    stacklevel=2,
                )
            copied = copy_matching_layers(model, initial["state_dict"])
            layers = {k.rsplit(".", 1)[0] for k in model.state_dict()}
            fresh = sorted(layers - {k.rsplit(".", 1)[0] for k in copied})
            self._say(f"initialised from {initial['source']}; new layers: {', '.join(fresh) or 'none'}")
        model.meta = {"class_names": list(class_names), "preprocess": config.preprocess}
        return model

    def _class_weights(self, train_set: Dataset, num_classes: int) -> torch.Tensor | None:
        if not self.config.class_balance:
            return None
        labels = (train_set[i][1] for i in range(len(train_set)))
        counts = class_pixel_counts(labels, num_classes, self.config.ignore_index)
        return median_frequency_weights(*counts, power=self.config.class_balance_power)

    def _progress(self, step: int, total_steps: int) -> float:
        """How far the run is, in [0, 1]: by steps, or by time when a time limit comes first.

        The time limit is checked on rank 0's clock and shared, so all processes stop together.
        """
        done = step / total_steps
        if self.config.time_limit is not None:
            elapsed = torch.tensor([(time.perf_counter() - self._started) / self.config.time_limit])
            if self.context.enabled:
                elapsed = elapsed.to(self.context.device)
                torch.distributed.broadcast(elapsed, src=0)
            done = max(done, float(elapsed))
        return min(done, 1.0)

    def _set_lr(self, optimizer: torch.optim.Optimizer, progress: float) -> float:
        factor = (1 - progress) ** 0.9 if self.config.lr_schedule == "poly" else 1.0
        lr = self.config.lr * factor
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        return lr

    def _load_resume_state(self) -> dict[str, Any]:
        saved = read_checkpoint(self.last_path)
        if "optimizer" not in saved:
            raise ValueError(f"{self.last_path} holds weights only, not a training state to resume")
        mine, theirs = self.config.to_dict(), saved.get("train_config", {})
        differ = sorted(k for k in mine if k not in _RESUME_IGNORES and mine[k] not in (AUTO, theirs.get(k)))
        if differ:
            changes = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine[k]!r}" for k in differ)
            raise ValueError(f"cannot resume {self.last_path} with other settings ({changes})")
        return saved

    def _train_row(self, state, lr, steps_per_epoch) -> dict[str, float]:
        """The log row's training half: where the run is, and the mean loss since the last row."""
        totals = distributed.all_reduce_sum(
            torch.tensor(
                [state["loss_sum"], float(state["loss_count"])],
                dtype=torch.float64,
                device=self.context.device,
            ),
            self.context,
        )
        state["loss_sum"], state["loss_count"] = 0.0, 0
        return {
            "step": state["step"],
            "epoch": round(state["step"] / steps_per_epoch, 4),
            "train_loss": float(totals[0] / totals[1]) if totals[1] else math.nan,
            "lr": lr,
        }

    def _checkpoint(self, run: _Run, val_set: Dataset | None, row: dict[str, float]) -> None:
        """Validate, complete and log ``row``, and save ``last.pt`` (and ``best.pt`` when mean IU improved)."""
        config, context, model, state = self.config, self.context, run.model, run.state
        metrics = None
        if val_set is not None and len(val_set):
            confusion = evaluate_confusion(
                model,
                val_set,
                model.num_classes,
                preprocess_mode=config.preprocess,
                batch_size=config.val_batch_size,
                device=context.device,
                amp=config.amp,
                ignore_index=config.ignore_index,
                context=context,
                progress=config.progress and context.is_main,
            )
            metrics = scores(confusion)
        row.update(
            {k: metrics[k] if metrics else math.nan for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")}
        )
        row["seconds"] = round(time.perf_counter() - self._started, 2)
        run.history.append(row)
        improved = metrics is not None and metrics["mean_iu"] > state["best_mean_iu"]
        if improved:
            state["best_mean_iu"] = metrics["mean_iu"]
            run.best_metrics = {**metrics, "step": state["step"]}
        model.meta["metrics"] = metrics
        self._save(run, best=improved)
        if context.is_main:
            _write_log(self.out / "log.csv", run.history)
            plot_curves(run.history, self.out / "curves.png")
        distributed.barrier(context)

    def _save(self, run: _Run, best: bool = False) -> None:
        """Write ``last.pt``, everything needed to resume, and with ``best`` also ``best.pt``, the
        weights alone (a third of the size with Adam's state left out)."""
        context, state = self.context, run.state
        state["seconds"] = time.perf_counter() - self._started
        rng = distributed.all_gather_objects(_rng_state(), context)
        if context.is_main:
            weights = checkpoint_dict(run.model)
            data = {
                **weights,
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
                "rng": rng,
                "train_config": self.config.to_dict(),
                "best_metrics": run.best_metrics,
                **state,
            }
            atomic_save(data, self.last_path)
            if best:
                atomic_save(
                    {**weights, "train_config": self.config.to_dict(), "step": state["step"]}, self.best_path
                )


def train(config: TrainConfig, resume: bool = False, **datasets: Dataset) -> TrainResult:
    """Run ``config`` with a :class:`Trainer`; ``datasets`` may give ``train_set``/``val_set``."""
    return Trainer(config, **datasets).fit(resume=resume)
