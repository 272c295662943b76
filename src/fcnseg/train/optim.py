"""The optimiser of a run and its learning-rate schedule (fixed; Caffe's step and multistep; poly by steps or by time)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from fcnseg.train.config import TrainConfig

__all__ = ["BARE_BACKBONES", "make_optimizer", "set_lr"]

BARE_BACKBONES = ("fcn-alexnet",)
"""Nets whose original definition gives the backbone no lr multipliers: with ``caffe_bias`` only
the score layers' biases learn at twice the lr, the backbone's at the lr, with weight decay."""


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{config.arch} has no trainable parameters")
    if not config.caffe_bias:
        return [{"params": [p for _, p in trainable], "lr_mult": 1.0}]
    if hasattr(model, "lr_mults"):
        return _layer_groups(trainable, model.lr_mults, config.weight_decay)
    backbone_too = config.caffe_bias_backbone
    if backbone_too is None:
        backbone_too = config.arch not in BARE_BACKBONES
    doubled = {
        n for n, _ in trainable if n.endswith("bias") and (backbone_too or ".backbone." not in f".{n}")
    }
    weights = [p for n, p in trainable if n not in doubled]
    biases = [p for n, p in trainable if n in doubled]
    return [
        {"params": weights, "lr_mult": 1.0},
        {"params": biases, "lr_mult": 2.0, "weight_decay": 0.0},
    ]


def _layer_groups(
    trainable: list[tuple[str, nn.Parameter]], mults: dict[str, Any], weight_decay: float
) -> list[dict[str, Any]]:
    """One group per (lr_mult, decay_mult) of a net that declares Caffe's per-layer multipliers
    (``model.lr_mults``: layer name -> ((weight lr, decay), (bias lr, decay))); a layer it leaves
    out learns as a Caffe default layer: weights at 1, biases at 2 without decay."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in trainable:
        layer, kind = name.rsplit(".", 2)[-2:]
        weight, bias = mults.get(layer, ((1, 1), (2, 0)))
        groups.setdefault(tuple(bias if kind == "bias" else weight), []).append(p)
    return [
        {"params": params, "lr_mult": float(lr), "weight_decay": weight_decay * decay}
        for (lr, decay), params in groups.items()
    ]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or Adam over the trainable parameters; with ``caffe_bias`` biases learn at twice the lr,
    without weight decay, as in the Caffe nets (the backbone's too unless ``caffe_bias_backbone``
    is False, or None for a net of :data:`BARE_BACKBONES`), and a net that declares the per-layer
    multipliers of its reference prototxt (``lr_mults``: HED, FSDS) learns with those."""
    groups = _param_groups(model, config)
    # On the CPU one fused kernel updates all parameters: the same step to float rounding, several
    # times faster (VGG16's SGD step 0.35 -> 0.06 s, the demo net's Adam 1.5 -> 0.3 ms).
    fused = True if all(p.device.type == "cpu" for group in groups for p in group["params"]) else None
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=fused
        )
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, progress: float, step: int = 0) -> float:
    """Set the lr for a run ``progress`` (in [0, 1]) of the way through, before update ``step`` (from 0);
    return the base lr. "step" and "multistep" are Caffe's policies: times ``lr_gamma`` every
    ``lr_step_size`` updates, or once ``step`` has reached each of ``lr_steps``."""
    factor = 1.0
    if config.lr_schedule == "poly":  # progress passes 1 when a validation overran the time limit
        factor = (1 - min(progress, 1.0)) ** 0.9
    elif config.lr_schedule == "step":
        factor = config.lr_gamma ** (step // config.lr_step_size)
    elif config.lr_schedule == "multistep":
        factor = config.lr_gamma ** sum(step >= s for s in config.lr_steps or ())
    lr = config.lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr
