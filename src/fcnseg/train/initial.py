"""The weights a run starts from: ImageNet ("auto"), a published name or a checkpoint (staged
training), or He initialisation from scratch; and the preprocessing they expect."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fcnseg.data.preprocess import DEFAULT_PREPROCESS, PRESETS, same_colour_coding
from fcnseg.models.layers import bilinear_kernel
from fcnseg.models.registry import BUILDERS
from fcnseg.train.config import AUTO
from fcnseg.weights.checkpoint import (
    checked_checkpoint,
    checkpoint_dict,
    is_state_dict,
    read_checkpoint,
    safe_load,
    weights_format,
)
from fcnseg.weights.hub import WEIGHTS, get_command, resolve
from fcnseg.weights.transfer import copy_matching_layers

if TYPE_CHECKING:
    from fcnseg.train.config import TrainConfig

__all__ = [
    "IMAGENET",
    "initial_weights",
    "initialise",
    "kaiming_init",
    "reset_upsampling",
    "widen_first_conv",
    "settle_preprocess",
]

log = logging.getLogger(__name__)

_CAFFE_ONLY = ("fcn-alexnet", "fcn32s-googlenet")
IMAGENET = {arch: "imagenet" for arch in BUILDERS if arch not in (*_CAFFE_ONLY, "fcn32s-late-fusion")} | {
    arch: "imagenet-caffe" for arch in _CAFFE_ONLY
}
"""The ImageNet weights that "auto" starts each net from (SSD300: VGG16 reduced as the reference's
fc_reduced). torchvision has no twin of Caffe's AlexNet (its AlexNet is single-tower, without LRN)
or GoogLeNet (other layers), so those take the Caffe classifiers. A late-fusion net starts from its
single-modality nets instead (``init_streams``)."""

IMAGENET_DONORS = {"hed": "fcn32s", "fsds": "fcn32s"}
"""Nets whose trunk is an FCN's VGG16 without pool5 and the fc layers: they take that FCN's conversion
of a published name, layer by layer (``backbone.conv1_1`` ...)."""


def initial_weights(config: TrainConfig, progress: bool = False) -> dict[str, Any] | None:
    """The checkpoint to start from (``config.init``), or None to train from scratch.

    "auto" takes the ImageNet classifier that fits the net when it can be had, and says so
    either way: training a full VGG16 from scratch needs far more data and time. A late-fusion
    net's ``init_streams`` make one checkpoint of each stream's (nyud-fcn32s-color-hha's solve.py:
    the colour stream from the colour net, the HHA stream from the HHA net).
    """
    if config.init_streams:
        return _streams_checkpoint(config.init_streams)
    name = config.init
    if name == AUTO:
        name = IMAGENET.get(config.arch)
        reason = (
            f"narrow widths {config.widths}" if config.widths is not None
            else None if name else f"no ImageNet weights for {config.arch}"
        )  # fmt: skip
        if reason:
            log.info(f"training from scratch ({reason})")
            return None
        converted_for = _converted_for(name, config.arch)
        try:
            path = resolve(name, converted_for, config.widths, progress)
        except (OSError, ValueError) as error:
            log.warning(
                f"training from scratch: ImageNet weights ({name}) cannot be had: {error}\n"
                "  From scratch a full-width net needs far more images and time; with network access (or "
                f"FCNSEG_MIRROR), `{get_command(name, converted_for)}` fetches them once for every later run."
            )
            return None
    elif name is None:
        return None
    else:
        path = resolve(name, _converted_for(name, config.arch), config.widths, progress)
    initial = _read_initial(path, config.arch)
    initial["source"] = name
    return initial


def _converted_for(name: str, arch: str) -> str:
    """The net a published name is converted for: a classifier for HED and FSDS as an FCN's trunk
    (:data:`IMAGENET_DONORS`), a published trunk for the net itself."""
    trunk = name in WEIGHTS and WEIGHTS[name].is_trunk
    return arch if trunk else IMAGENET_DONORS.get(arch, arch)


def _read_initial(path: Path, arch: str) -> dict[str, Any]:
    """The checkpoint at ``path``; a torchvision state dict there (an ImageNet ResNet such as
    ``resnet50-0676ba61.pth``, or torchvision's FCN) is converted for ``arch`` first."""
    if not path.is_file() or weights_format(path) != "checkpoint":
        return read_checkpoint(path)  # its error says what the file is
    data = safe_load(path, "cpu", "fcnseg checkpoint")
    if not is_state_dict(data):
        return checked_checkpoint(data, path)
    from fcnseg.weights.imagenet import fcn_from_imagenet
    from fcnseg.weights.torchvision import torchvision_fcn

    tv = "classifier.4.weight" in data
    model = torchvision_fcn(data, arch, str(path)) if tv else fcn_from_imagenet(arch, data)
    model.meta["source"] = path.name
    return checkpoint_dict(model)


def _streams_checkpoint(sources: dict[str, str]) -> dict[str, Any]:
    """One initial checkpoint of several, each one's layers under ``streams.<name>.``."""
    state = {}
    for stream, source in sources.items():
        state |= {f"streams.{stream}.{k}": v for k, v in read_checkpoint(source)["state_dict"].items()}
    return {"state_dict": state, "source": ", ".join(f"{k} from {v}" for k, v in sources.items())}


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
    """He initialisation of every trunk (each net's ``backbone``: FCN, HED, FSDS, SSD): a deep plain
    VGG trains from scratch only with it."""
    trunks = [m.backbone for m in model.modules() if isinstance(getattr(m, "backbone", None), nn.Module)]
    for trunk in trunks:
        for module in trunk.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:  # ResNet's convolutions have none: BatchNorm follows
                    nn.init.zeros_(module.bias)


def reset_upsampling(model: nn.Module) -> list[str]:
    """Set every upsampling (transposed convolution) back to bilinear, as the original solve.py does
    to each ``up*`` layer after copying weights in (surgery.interp); returns their names."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ConvTranspose2d):
            with torch.no_grad():
                module.weight.copy_(bilinear_kernel(module.out_channels, module.kernel_size[0]))
            names.append(name)
    return names


def widen_first_conv(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """nyud-fcn32s-color-d's surgery: a first convolution that reads more channels than the initial
    weights' (colour and depth, from a colour net) takes their filters for the first channels and
    their mean over channels for each extra one. Returns its name, or None when it does not apply."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    given, bias = state_dict.get(f"{name}.weight"), state_dict.get(f"{name}.bias")
    if given is None or given.dim() != 4 or given.shape[1] >= conv.in_channels:
        return None
    if given.shape[0] != conv.out_channels or given.shape[2:] != conv.weight.shape[2:]:
        return None
    with torch.no_grad():
        conv.weight[:, : given.shape[1]] = given
        conv.weight[:, given.shape[1] :] = given.mean(1, keepdim=True)
        if bias is not None and conv.bias is not None and bias.shape == conv.bias.shape:
            conv.bias.copy_(bias)
    return name


def initialise(model: nn.Module, config: TrainConfig, initial: dict[str, Any] | None) -> None:
    """Apply ``weight_init`` and ``dropout`` to a fresh ``model``, then copy in the layers of
    ``initial`` that fit (a wider first convolution too: :func:`widen_first_conv`), saying which
    layers are new; then, with ``reset_upsampling``, every upsampling starts bilinear again,
    whatever the initial weights had learned."""
    if config.weight_init == "kaiming":
        kaiming_init(model)
    if config.dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = config.dropout
    if initial is None:
        return
    expected = initial.get("meta", {}).get("preprocess", config.preprocess)
    # Another modality (HHA, depth) is a deliberate change of input; colour must be coded alike.
    colour_run = (config.modality or "rgb") == "rgb"
    coded_alike = (
        expected in PRESETS
        and config.preprocess in PRESETS
        and same_colour_coding(expected, config.preprocess)
    )
    if colour_run and expected != config.preprocess and not coded_alike:
        log.warning(
            f"{initial['source']} was made for {expected!r} preprocessing but this run uses "
            f"{config.preprocess!r}; pass --preprocess {expected} unless that is intended"
        )
    copied = copy_matching_layers(model, initial["state_dict"])
    widened = widen_first_conv(model, initial["state_dict"])
    layers = {k.rsplit(".", 1)[0] for k in model.state_dict()}
    fresh = sorted(layers - {k.rsplit(".", 1)[0] for k in copied} - {widened})
    log.info(f"initialised from {initial['source']}; new layers: {', '.join(fresh) or 'none'}")
    if widened:
        log.info(f"{widened}: the extra input channels start at the mean of the given filters")
    if config.reset_upsampling:
        reset = reset_upsampling(model)
        if reset:
            log.info(f"upsampling reset to bilinear: {', '.join(reset)}")
