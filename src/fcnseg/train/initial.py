"""The weights a run starts from: ImageNet ("auto"), a published name or a checkpoint (staged
training), or He initialisation from scratch; and the preprocessing they expect."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from fcnseg.data.preprocess import DEFAULT_PREPROCESS
from fcnseg.models.registry import BUILDERS
from fcnseg.train.config import AUTO
from fcnseg.weights.checkpoint import read_checkpoint
from fcnseg.weights.hub import resolve
from fcnseg.weights.transfer import copy_matching_layers

if TYPE_CHECKING:
    from fcnseg.train.config import TrainConfig

__all__ = ["IMAGENET", "initial_weights", "initialise", "kaiming_init", "settle_preprocess"]

IMAGENET = {arch: "imagenet" for arch in BUILDERS if arch != "fcn-alexnet"} | {
    "fcn-alexnet": "imagenet-caffe"
}
"""The ImageNet weights that "auto" starts each net from (SSD300: VGG16 reduced as the reference's
fc_reduced; torchvision's VGG16 has no AlexNet twin:
torchvision's AlexNet is single-tower, without LRN, so FCN-AlexNet takes the Caffe one)."""


def initial_weights(
    config: TrainConfig, say: Callable[[str], None], progress: bool = False
) -> dict[str, Any] | None:
    """The checkpoint to start from (``config.init``), or None to train from scratch.

    "auto" takes the ImageNet classifier that fits the net when it can be had, and says so
    either way: training a full VGG16 from scratch needs far more data and time.
    """
    name = config.init
    if name == AUTO:
        name = IMAGENET.get(config.arch)
        reason = (
            f"narrow widths {config.widths}" if config.widths is not None
            else None if name else f"no ImageNet weights for {config.arch}"
        )  # fmt: skip
        if reason:
            say(f"training from scratch ({reason})")
            return None
        try:
            path = resolve(name, config.arch, config.widths, progress)
        except (OSError, ValueError) as error:
            say(
                f"training from scratch: ImageNet weights ({name}) cannot be had: {error}\n"
                "  From scratch a full VGG16 needs far more images and time; with network access, "
                f"`fcnseg weights get {name}` fetches them once for every later run."
            )
            return None
    elif name is None:
        return None
    else:
        path = resolve(name, config.arch, config.widths, progress)
    initial = read_checkpoint(path)
    initial["source"] = name
    return initial


def settle_preprocess(
    config: TrainConfig, saved: dict[str, Any] | None, initial: dict[str, Any] | None
) -> TrainConfig:
    """The config with "auto" preprocessing settled: the resumed run's, the initial weights', or
    "imagenet" (ImageNet mean and deviation) from scratch."""
    if config.preprocess != AUTO:
        return config
    if saved is not None:
        preprocess = saved["train_config"]["preprocess"]
    elif initial is not None:
        preprocess = initial.get("meta", {}).get("preprocess", DEFAULT_PREPROCESS)
    else:
        preprocess = "imagenet"
    return dataclasses.replace(config, preprocess=preprocess)


def kaiming_init(model: nn.Module) -> None:
    """He initialisation of the backbone: a deep plain VGG trains from scratch only with it."""
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)


def initialise(
    model: nn.Module, config: TrainConfig, initial: dict[str, Any] | None, say: Callable[[str], None]
) -> None:
    """Apply ``weight_init`` and ``dropout`` to a fresh ``model``, then copy in the layers of
    ``initial`` that fit, saying which layers are new."""
    if config.weight_init == "kaiming":
        kaiming_init(model)
    if config.dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = config.dropout
    if initial is None:
        return
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
    say(f"initialised from {initial['source']}; new layers: {', '.join(fresh) or 'none'}")
