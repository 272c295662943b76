"""Copy weights into a model: strictly (every layer filled, every array used, shapes checked) when
loading a file made for the net, or the layers that match when starting from another net."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fcnseg.errors import FcnsegError


class WeightsMismatchError(FcnsegError):
    """A weight file does not fit the net: missing, extra or mis-shaped layers."""


CONTAINERS = ("backbone", "extras", "heads")
"""Modules that only group layers: the trunk, and SSD's extra layers and heads. Caffe has no such
level, so a layer's Caffe name starts below them."""


def caffe_name(path: str) -> str:
    """A module's Caffe layer name: its path below a container (:data:`CONTAINERS`), ``/`` for ``.``.

    ``backbone.conv1_1`` -> ``conv1_1``, ``score_fr`` -> ``score_fr``, ``heads.fc7_mbox_loc`` ->
    ``fc7_mbox_loc`` (SSD), ``backbone.inception_3a.3x3_reduce`` -> ``inception_3a/3x3_reduce``
    (GoogLeNet).
    """
    first, _, rest = path.partition(".")
    return (rest if first in CONTAINERS and rest else path).replace(".", "/")


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers that hold weights, by their Caffe name (``conv1_1``, ``fc6``, ``score_fr``, ...)."""
    layers = {}
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        ):
            layers[caffe_name(name)] = module
    return layers


def _tensors_of(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Weight then bias, as Caffe stores a layer's blobs."""
    tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return sorted(tensors, key=lambda item: item[0] != "weight")


def _strip_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _reshape_allowed(shape: torch.Size, target: torch.Size, mode: str) -> bool:
    if mode == "numel":
        return shape.numel() == target.numel()
    if mode == "legacy":
        return _strip_leading_ones(shape) == _strip_leading_ones(target)
    return False


def copy_into(
    model: nn.Module,
    arrays: Mapping[str, list[np.ndarray | torch.Tensor]],
    source: str,
    reshape: str = "exact",
) -> None:
    """Fill ``model``'s layers from ``{layer name: [weight, bias]}``; all or nothing.

    ``reshape="legacy"`` also accepts shapes that differ only by leading ones
    (legacy Caffe files store a bias as 1x1x1xN); ``"numel"`` accepts any shape
    with the same number of elements, for fully connected weights that become
    convolutions.
    """
    layers = named_layers(model)
    problems = []
    missing = sorted(set(layers) - set(arrays))
    extra = sorted(set(arrays) - set(layers))
    if missing:
        problems.append(f"layers missing from the file: {', '.join(missing)}")
    if extra:
        problems.append(f"layers in the file that the net does not have: {', '.join(extra)}")
    staged = []
    for name in sorted(set(layers) & set(arrays)):
        targets = _tensors_of(layers[name])
        blobs = arrays[name]
        if len(blobs) != len(targets):
            problems.append(
                f"layer {name}: the file has {len(blobs)} arrays, the net expects "
                f"{len(targets)} ({', '.join(n for n, _ in targets)})"
            )
            continue
        for (kind, target), blob in zip(targets, blobs, strict=True):
            value = torch.as_tensor(np.asarray(blob), dtype=target.dtype)
            if value.shape != target.shape:
                if not _reshape_allowed(value.shape, target.shape, reshape):
                    problems.append(
                        f"layer {name} {kind}: expected shape {tuple(target.shape)}, "
                        f"file has {tuple(value.shape)}"
                    )
                    continue
                value = value.reshape(target.shape)
            staged.append((target, value))
    if problems:
        raise WeightsMismatchError(f"{source} does not fit this net:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for target, value in staged:
            target.copy_(value)


def copy_matching_layers(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of ``state_dict`` whose name and shape match ``model``'s; return their names.

    This is staged training's surgery: FCN-16s takes backbone, ``score_fr`` from
    FCN-32s; FCN-8s also takes ``upscore2`` and ``score_pool4`` from FCN-16s. Layers
    that are new (or shaped differently, e.g. another number of classes) keep their
    initialisation. Copying nothing at all is an error.
    """
    own = model.state_dict()
    copied = [k for k, v in state_dict.items() if k in own and own[k].shape == v.shape]
    if not copied:
        raise WeightsMismatchError(
            "the initial checkpoint shares no layer (same name and shape) with this net"
        )
    with torch.no_grad():
        for key in copied:
            own[key].copy_(state_dict[key])
    return copied
