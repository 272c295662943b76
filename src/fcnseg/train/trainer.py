"""Training FCNs: the paper's recipe and a normalised one, resumable bit for bit, on one or many processes.

One :class:`TrainConfig` holds a whole experiment (a recipe file is one in TOML).
:class:`Trainer` runs it: periodic validation with the paper's four metrics, a
CSV log and a PNG of the curves, ``last.pt`` and ``best.pt`` written atomically.
Every source of randomness is either derived from (seed, epoch, index, step) or
saved in the checkpoint, so a run killed at any moment and resumed ends with the
same weights as one that was never interrupted.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import random
import time
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

from fcnseg.data.preprocess import get_preprocessing, preprocess
from fcnseg.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomScale, pad_collate
from fcnseg.models.fcn import FCN
from fcnseg.models.registry import build_model
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

__all__ = [
    "LOG_COLUMNS",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
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
_RESUME_IGNORES = {"epochs", "out", "workers", "progress", "device", "init", "notes", "channels_last"}


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good one."""


@dataclass
class TrainConfig:
    """One experiment. The defaults are the paper's recipe: FCN-8s, summed loss, SGD with
    lr 1e-10, momentum 0.99, weight decay 5e-4, one image of any size per batch."""

    # Net
    arch: str = "fcn8s"
    widths: tuple[int, ...] | None = None
    frozen_upsampling: str = "final"
    init: str | None = None  # checkpoint to start from (staged training: 16s from 32s, 8s from 16s)
    weight_init: str = "default"  # "kaiming" re-initialises the backbone for training from scratch
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
    preprocess: str = "caffe"
    flip: bool = False
    scale_range: tuple[float, float] | None = None
    crop: int | None = None
    # Loss
    loss: str = "sum"
    ignore_index: int = 255
    class_balance: bool = False
    loss_keep_prob: float = 1.0
    loss_sampling: str = "image"
    loss_sampling_cell: int = 1
    # Optimisation
    optimizer: str = "sgd"
    lr: float = 1e-10
    momentum: float = 0.99
    weight_decay: float = 5e-4
    caffe_bias: bool = True  # biases learn at twice the lr, without weight decay, as in the Caffe nets
    lr_schedule: str = "fixed"
    batch_size: int = 1
    epochs: int = 1
    max_steps: int | None = None
    time_limit: float | None = None  # seconds; stops early (and makes "poly" anneal by time) when reached
    amp: str = "off"
    # NHWC activations (on CPU the trimmed canvas picks each convolution's layout itself: it changes
    # little there). Same math, but dropout masks are drawn in memory order: not the default layout's.
    channels_last: bool = False
    # Running
    seed: int = 0
    val_every: int = 0  # steps between validations; 0 = once per epoch
    val_batch_size: int = 1
    workers: int = 0
    device: str | None = None
    out: str = "runs/fcn"
    progress: bool = True
    notes: str = ""  # what the experiment is, kept with the run

    def __post_init__(self) -> None:
        if self.dataset is None:
            self.dataset = "folder" if self.data else "synthetic"
        if self.widths is not None:
            self.widths = tuple(int(w) for w in self.widths)
        self.image_size = tuple(int(s) for s in self.image_size)
        if self.scale_range is not None:
            self.scale_range = tuple(float(s) for s in self.scale_range)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the setting that is out of range."""
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
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        get_preprocessing(self.preprocess)
        positive = ("lr", "batch_size", "epochs", "val_batch_size", "loss_sampling_cell")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"time_limit must be positive, got {self.time_limit}")
        if not 0 < self.loss_keep_prob <= 1:
            raise ValueError(f"loss_keep_prob must be in (0, 1], got {self.loss_keep_prob}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_every < 0 or self.workers < 0:
            raise ValueError("val_every and workers must be >= 0")
        if self.dataset != "synthetic" and not self.data:
            raise ValueError(f"dataset {self.dataset!r} needs a data folder (data = ...)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a plain dict (a parsed recipe file); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown training settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)

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
        train = open_dataset(name, config.data)
        if config.val_data:
            from fcnseg.data.folder import FolderSegmentation

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
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


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
        ``out`` is an error rather than being overwritten. Raises
        :class:`TrainingDiverged` on a NaN or infinite loss.
        """
        config = self.config
        context = self.context or distributed.init_from_env(config.device)
        self.context = context
        if not resume and self.last_path.exists():
            raise ValueError(
                f"{self.out} already holds a run ({self.last_path}); resume it or pick another out"
            )
        saved = self._load_resume_state() if resume else None

        train_set, val_set = self._train_set, self._val_set
        if train_set is None:
            train_set, built_val = build_datasets(config)
            val_set = val_set if val_set is not None else built_val
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        num_classes = train_set.num_classes

        _seed_everything(config.seed)
        model = self._build_model(num_classes, train_set.class_names, staged=saved is None)
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

        state = {"step": 0, "epoch": 0, "epoch_step": 0, "best_mean_iu": -1.0, "seconds": 0.0}
        history: list[dict[str, float]] = []
        if saved is not None:
            model.load_state_dict(saved["state_dict"])
            optimizer.load_state_dict(saved["optimizer"])
            if saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            state.update({k: saved[k] for k in state})
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
        loss_sum, loss_count = 0.0, 0
        finished = False
        net.train()
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
                loss_sum, loss_count = loss_sum + value, loss_count + 1
                images_seen += images.shape[0]
                bar.update(1)
                bar.set_postfix(
                    loss=f"{value:.4g}",
                    img_s=f"{images_seen * context.world_size / (time.perf_counter() - epoch_start):.1f}",
                    refresh=False,
                )
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
                    row = self._train_row(state, loss_sum, loss_count, lr, steps_per_epoch)
                    self._checkpoint(run, val_set, row)
                    loss_sum, loss_count = 0.0, 0
                    bar.set_postfix(loss=f"{value:.4g}", mean_iu=f"{row['mean_iu']:.3f}", refresh=False)
                if finished:
                    break
            bar.close()
            if finished:
                break
        model.to(memory_format=torch.contiguous_format)  # the usual layout for whoever uses it next
        return TrainResult(model.eval(), history, run.best_metrics, self.out, state["step"])

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

    def _build_model(self, num_classes: int, class_names: Sequence[str], staged: bool) -> FCN:
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
        if config.init and staged:
            initial = read_checkpoint(config.init)
            expected = initial.get("meta", {}).get("preprocess", config.preprocess)
            if expected != config.preprocess:
                warnings.warn(
                    f"{config.init} was made for {expected!r} preprocessing but this run uses "
                    f"{config.preprocess!r}; pass --preprocess {expected} unless that is intended",
                    stacklevel=2,
                )
            copied = copy_matching_layers(model, initial["state_dict"])
            layers = {k.rsplit(".", 1)[0] for k in model.state_dict()}
            fresh = sorted(layers - {k.rsplit(".", 1)[0] for k in copied})
            if config.progress and (self.context is None or self.context.is_main):
                tqdm.write(f"initialised from {config.init}; new layers: {', '.join(fresh) or 'none'}")
        model.meta = {"class_names": list(class_names), "preprocess": config.preprocess}
        return model

    def _class_weights(self, train_set: Dataset, num_classes: int) -> torch.Tensor | None:
        if not self.config.class_balance:
            return None
        labels = (train_set[i][1] for i in range(len(train_set)))
        return median_frequency_weights(*class_pixel_counts(labels, num_classes, self.config.ignore_index))

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
        differ = sorted(k for k in mine if k not in _RESUME_IGNORES and mine[k] != theirs.get(k))
        if differ:
            changes = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine[k]!r}" for k in differ)
            raise ValueError(f"cannot resume {self.last_path} with other settings ({changes})")
        return saved

    def _train_row(self, state, loss_sum, loss_count, lr, steps_per_epoch) -> dict[str, float]:
        """The log row's training half: where the run is, and the mean loss since the last row."""
        totals = distributed.all_reduce_sum(
            torch.tensor([loss_sum, float(loss_count)], dtype=torch.float64, device=self.context.device),
            self.context,
        )
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
        state["seconds"] = time.perf_counter() - self._started
        row["seconds"] = round(state["seconds"], 2)
        run.history.append(row)
        rng = distributed.all_gather_objects(_rng_state(), context)
        improved = metrics is not None and metrics["mean_iu"] > state["best_mean_iu"]
        if improved:
            state["best_mean_iu"] = metrics["mean_iu"]
            run.best_metrics = {**metrics, "step": state["step"]}
        if context.is_main:
            model.meta["metrics"] = metrics
            data = checkpoint_dict(model)
            data.update(
                optimizer=run.optimizer.state_dict(),
                scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
                rng=rng,
                train_config=config.to_dict(),
                best_metrics=run.best_metrics,
                **state,
            )
            atomic_save(data, self.last_path)
            if improved:
                atomic_save(data, self.best_path)
            _write_log(self.out / "log.csv", run.history)
            plot_curves(run.history, self.out / "curves.png")
        distributed.barrier(context)


def train(config: TrainConfig, resume: bool = False, **datasets: Dataset) -> TrainResult:
    """Run ``config`` with a :class:`Trainer`; ``datasets`` may give ``train_set``/``val_set``."""
    return Trainer(config, **datasets).fit(resume=resume)
