"""The settings of a training run: one :class:`TrainConfig` holds a whole experiment (a recipe file
is one in TOML), starting from a named recipe."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fcnseg.data.preprocess import get_preprocessing
from fcnseg.data.registry import DATASETS, MODALITY_CHANNELS
from fcnseg.errors import ConfigError
from fcnseg.infer.edge_outputs import EDGE_OUTPUTS
from fcnseg.models.registry import FUSION_STREAMS
from fcnseg.tasks import get_task
from fcnseg.tasks.losses import REDUCTIONS, SAMPLING_SCOPES

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, from PyPI
    import tomli as tomllib

__all__ = ["AUTO", "NO_SPLIT", "RECIPES", "TrainConfig", "load_recipe", "parse_every"]

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

NO_SPLIT = "none"
"""``val_split``: validate on nothing; best.pt is the final snapshot, as the original solvers keep it."""

AUTO = "auto"
"""``init``: ImageNet weights where the net can take them and they can be had, else from scratch.
``preprocess``: the initial weights' preprocessing, else "imagenet"."""


_SECONDS = {"": 1, "s": 1, "sec": 1, "min": 60, "h": 3600}
_STEPS = ("step", "steps")
_EVERY = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_every(value: float | str) -> float | str:
    """``checkpoint_every`` in its one form: seconds as a number, or steps as ``"<n>steps"``.

    A number, or a string of one with ``s``, ``min`` or ``h`` (``600``, ``"10min"``, ``"1.5h"``), is
    a time; ``"50steps"`` (``"1step"``) a number of steps, which makes the checkpoints fall at the
    same steps in every run; 0 means only at validations. Raises :class:`ConfigError`.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _EVERY.fullmatch(value) if isinstance(value, str) else None
        unit = match.group(2).lower() if match else ""
        if not match or unit not in (*_SECONDS, *_STEPS):
            raise ConfigError(
                f"checkpoint_every must be seconds (600, 10min, 1.5h) or steps (50steps), got {value!r}"
            )
        amount = float(match.group(1))
        if unit in _STEPS:
            if not amount.is_integer():
                raise ConfigError(f"checkpoint_every counts whole steps, got {value!r}")
            return f"{int(amount)}step" + ("" if amount == 1 else "s")
        seconds = amount * _SECONDS[unit]
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"checkpoint_every must be >= 0 seconds, got {value!r}")
    return seconds


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


@dataclass
class TrainConfig:
    """One experiment. The defaults learn on one's own data with no tuning: ImageNet weights when
    they can be had, a per-pixel mean loss with Adam at lr 1e-4 and a poly schedule, one image of
    any size per step. The paper's solver is the recipe "paper" (:data:`RECIPES`,
    :meth:`from_dict`)."""

    task: str = "segmentation"  # what to train: a name of fcnseg.tasks.TASKS
    # Net
    arch: str | None = (
        None  # None: the task's net (fcn8s; hed for edges, fsds for skeletons, ssd300 for detection)
    )
    widths: tuple[int, ...] | None = None
    # "all": every upsampling stays bilinear (the original repository); "final": the 2x ones learn
    # (the paper's text); "none"
    frozen_upsampling: str = "all"
    reset_upsampling: bool = True  # upsamplings restart bilinear after init, as the repository's solve.py
    # A checkpoint, a published name (weights.hub.resolve; "imagenet"), "auto" or None (from scratch).
    init: str | None = AUTO
    # A late-fusion net's streams, each from its own checkpoint: {color = "...", hha = "..."}
    init_streams: dict[str, str] | None = None
    weight_init: str = "kaiming"  # of the backbone before any init is copied in; "default": PyTorch's
    dropout: float | None = None  # overrides fc6/fc7 dropout (VGG's 0.5); 0 learns faster from scratch
    # Data
    dataset: str | None = None  # None: "folder" when data names a folder, else "synthetic"
    data: str | None = None
    # folder data set: a second folder, else val_fraction of data; hed-bsds: the BSDS500 folder to validate on
    val_data: str | None = None
    val_fraction: float = 0.1
    train_split: str | None = None
    # Where best.pt is picked: data held out of training and of what the run reports; "none": nowhere,
    # best.pt is the final snapshot
    val_split: str | None = None
    # What the run reports: scored once, after the last step, on best.pt's weights (test.json)
    test_split: str | None = None
    test_data: str | None = None  # the test split's folder, where it is not data (HED: BSDS500's)
    # NYUD's input: rgb, hha, depth, rgbd or rgbhha (None: rgb); its preprocessing must take as many
    # channels, which are the net's input channels
    modality: str | None = None
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
    # True: biases learn at twice the lr, without weight decay, as in the Caffe nets; HED and FSDS take
    # their prototxts' per-layer lr and decay multipliers
    caffe_bias: bool = False
    # ... the backbone's too; None: as the arch's original net (FCN-AlexNet's backbone has no multipliers)
    caffe_bias_backbone: bool | None = None
    # or "fixed"; Caffe's "step": lr x lr_gamma every lr_step_size steps; Caffe's "multistep": lr x lr_gamma
    # at each of lr_steps
    lr_schedule: str = "poly"
    lr_step_size: int = 10000
    lr_steps: tuple[int, ...] | None = None
    lr_gamma: float = 0.1
    batch_size: int = 1
    iter_size: int = 1  # batches whose mean gradient makes one step (Caffe's iter_size)
    epochs: int = 20
    max_steps: int | None = None
    time_limit: float | None = None  # seconds; stops early (and makes "poly" anneal by time) when reached
    amp: str = "off"
    # NHWC activations (on CPU the trunk picks each convolution's layout itself: it changes
    # little there). Same math, but dropout masks are drawn in memory order: not the default layout's.
    channels_last: bool = False
    # the speed layer (fcnseg.accel): the net on the images' reach, the same loss and gradients, where
    # that is exact; False runs model(x) as written
    accel: bool = True
    # Scoring: which map of an edge net validation scores ("fuse", or HED's "merge" of fused and side outputs)
    edge_output: str = "fuse"
    # Running
    seed: int = 0
    val_every: int = 0  # steps between validations; 0 = once per epoch
    # last.pt is also written this often between validations: seconds (600, "10min") or steps ("50steps")
    checkpoint_every: float | str = 600.0
    val_batch_size: int = 1
    workers: int = 0
    device: str | None = None  # a torch device (cpu, cuda, cuda:1, mps, xpu); None or "auto": CUDA if there
    out: str = "runs/fcn"
    # TensorBoard event files in out (the tensorboard extra): each step's loss and lr, each
    # validation's metrics and pictures of a few predictions
    tensorboard: bool = False
    # progress bars (on a terminal only); how this invocation shows itself, not a setting of the
    # run: config.toml leaves it out
    progress: bool = True
    notes: str = ""  # what the experiment is, kept with the run

    def __post_init__(self) -> None:
        if self.arch is None:
            self.arch = get_task(self.task).arch
        if self.dataset is None:
            self.dataset = "folder" if self.data else "synthetic"
        if self.init is not None and self.init.lower() == "none":  # TOML and flags cannot say None
            self.init = None
        if self.widths is not None:
            self.widths = tuple(int(w) for w in self.widths)
        if self.lr_steps is not None:
            self.lr_steps = tuple(int(s) for s in self.lr_steps)
        self.image_size = tuple(int(s) for s in self.image_size)
        if self.scale_range is not None:
            self.scale_range = tuple(float(s) for s in self.scale_range)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the setting that is out of range; put checkpoint_every in its one form."""
        choices = {
            "dataset": DATASETS,
            "loss": REDUCTIONS,
            "loss_sampling": SAMPLING_SCOPES,
            "optimizer": ("sgd", "adam"),
            "lr_schedule": ("fixed", "poly", "step", "multistep"),
            "amp": ("off", "bf16", "fp16"),
            "weight_init": ("default", "kaiming"),
            "frozen_upsampling": ("all", "final", "none"),
            "edge_output": EDGE_OUTPUTS,
        }
        get_task(self.task)  # an unknown name raises, listing the known ones
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.init_streams is not None:
            if self.arch != "fcn32s-late-fusion":
                raise ConfigError(
                    f"init_streams is for a late-fusion net (fcn32s-late-fusion), not {self.arch}"
                )
            unknown = sorted(set(self.init_streams) - set(FUSION_STREAMS))
            if unknown or self.init not in (None, AUTO):
                raise ConfigError(
                    f"init_streams takes the streams {', '.join(FUSION_STREAMS)} (got {', '.join(self.init_streams)}) "
                    f"and replaces init (got {self.init!r})"
                )
        if self.modality is not None and self.modality not in MODALITY_CHANNELS:
            raise ConfigError(
                f"modality must be one of {', '.join(MODALITY_CHANNELS)}; got {self.modality!r}"
            )
        if self.preprocess != AUTO:
            channels = get_preprocessing(self.preprocess).channels
            wanted = MODALITY_CHANNELS[self.modality or "rgb"]
            if channels != wanted:
                raise ConfigError(
                    f"preprocess {self.preprocess!r} takes {channels} channels but modality "
                    f"{self.modality or 'rgb'!r} gives {wanted}"
                )
        if self.test_split is not None and self.validates and self.val_split == self.test_split:
            raise ConfigError(
                f"val_split and test_split are both {self.test_split!r}: best.pt would be picked on the split "
                f"the run reports; validate on a held-out split, or on none (val_split = {NO_SPLIT!r})"
            )
        if self.edge_output == "merge" and self.arch != "hed":
            raise ConfigError(f"edge_output merge is HED's (its fused and side outputs), not {self.arch}'s")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"num_classes must be positive, got {self.num_classes}")
        self.checkpoint_every = parse_every(self.checkpoint_every)  # in its one form, as the run reads it
        positive = (
            "lr",
            "lr_step_size",
            "lr_gamma",
            "batch_size",
            "iter_size",
            "epochs",
            "val_batch_size",
            "loss_sampling_cell",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        steps = list(self.lr_steps or ())
        if steps != sorted(set(steps)) or any(s < 1 for s in steps):
            raise ConfigError(f"lr_steps must be increasing positive step numbers, got {steps}")
        if self.lr_schedule == "multistep" and not self.lr_steps:
            raise ConfigError("lr_schedule multistep needs lr_steps, e.g. lr_steps = [80000, 100000]")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
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

    @property
    def validates(self) -> bool:
        """Whether the run validates (``val_split`` is not "none")."""
        return self.val_split != NO_SPLIT

    @property
    def checkpoint_steps(self) -> int | None:
        """Steps between checkpoints, when ``checkpoint_every`` counts steps (0: none between validations)."""
        every = self.checkpoint_every  # in parse_every's form since validate
        return int(every.removesuffix("s").removesuffix("step")) if isinstance(every, str) else None

    @property
    def checkpoint_seconds(self) -> float | None:
        """Seconds between checkpoints, when ``checkpoint_every`` is a time (0: none between validations)."""
        every = self.checkpoint_every
        return None if isinstance(every, str) else every

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a plain dict (a parsed recipe file); unknown keys are an error.

        ``recipe`` names a starting point in :data:`RECIPES` ("paper"); the other keys override it.
        """
        values = dict(values)
        recipe = values.pop("recipe", "fcnseg")
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
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

    def to_toml(self) -> str:
        """The settings as a recipe file that reads back (:func:`load_recipe`, then :meth:`from_dict`)
        to an equal config, ``progress`` aside, which is the invocation's: None is a key left out
        (every field that may be None defaults to it, but ``init``, which is written "none")."""
        lines: list[str] = []
        for field in dataclasses.fields(self):
            if field.name in _SECTIONS:
                lines += ["", f"[{_SECTIONS[field.name]}]"]
            if field.name == "progress":
                continue
            value = getattr(self, field.name)
            if value is None and field.default is None:
                continue
            lines.append(f"{field.name} = {_toml_value('none' if value is None else value)}")
        return "\n".join(lines).lstrip("\n") + "\n"


_SECTIONS = {"task": "model", "dataset": "data", "loss": "loss", "optimizer": "optim", "edge_output": "run"}
"""The tables of :meth:`TrainConfig.to_toml`, each from the field named here to the next one's, as the
recipe files group their settings (a reader's grouping: :func:`load_recipe` flattens it)."""


def _toml_value(value: Any) -> str:
    """A TOML value: a string, a boolean, a number (floats as repr, which reads back to the same
    float), an array or an inline table of them."""
    if isinstance(value, str):
        # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML value for {type(value).__name__} {value!r}")


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file's settings (or a run's ``config.toml``) as one flat dict; tables only group keys
    for the reader."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error
    flat: dict[str, Any] = {}
    for key, value in data.items():
        for name, item in value.items() if isinstance(value, dict) else [(key, value)]:
            if name in flat:
                raise ConfigError(f"{path}: setting {name!r} appears twice")
            flat[name] = item
    return flat
