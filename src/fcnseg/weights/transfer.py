"""Copy weights into a model: strictly (every layer filled, every array used, shapes checked) when
loading a file made for the net, or the layers that match when starting from another net."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fcnseg.errors import FcnsegError


class WeightsMismatchError(FcnsegError):
    """A weight file does not fit the net: missing, extra or mis-shaped layers."""


def state_dict_problems(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], optional: Sequence[str] = ()
) -> list[str]:
    """Every way ``state`` does not fit a module whose state dict is ``expected``: missing keys (but
    those ending with one of ``optional``), unexpected keys and shapes that differ, each named."""
    problems = [
        f"missing {k}" for k in expected if k not in state and not any(k.endswith(end) for end in optional)
    ]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: expected shape {tuple(expected[k].shape)}, file has {tuple(v.shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    return problems


CONTAINERS = ("backbone", "extras", "heads")
"""Modules that only group layers: the trunk, and SSD's extra layers and heads. Caffe has no such
level, so a layer's Caffe name starts below them."""


def caffe_name(path: str) -> str:
    """A module's Caffe layer name: its path below a container (:data:`CONTAINERS`), ``/`` for ``.``;
    a late fusion's stream layers carry the stream's name as a suffix.

    ``backbone.conv1_1`` -> ``conv1_1``, ``score_fr`` -> ``score_fr``, ``heads.fc7_mbox_loc`` ->
    ``fc7_mbox_loc`` (SSD), ``backbone.inception_3a.3x3_reduce`` -> ``inception_3a/3x3_reduce``
    (GoogLeNet), ``streams.hha.backbone.conv1_1`` -> ``conv1_1hha`` (nyud-fcn32s-color-hha).
    """
    first, _, rest = path.partition(".")
    stream, _, inner = rest.partition(".")
    if first == "streams" and inner:
        return caffe_name(inner) + stream
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


Parts = Mapping[str, Sequence[tuple[str, slice]]]
"""Where a layer's arrays come from when not from the file's layer of its name: ``{layer: ((file layer,
channels), ...)}``. Each file layer fills those output channels of the layer (and, for a transposed
convolution, the same input channels: an upsampling of several heads is block diagonal, the rest
zero); ``slice(None)`` fills it all, so one file layer may fill several."""


def _region(layer: nn.Module, kind: str, channels: slice) -> tuple[slice, ...]:
    if channels == slice(None):
        return ()
    if isinstance(layer, nn.ConvTranspose2d) and kind == "weight":  # (in, out, kh, kw)
        return (channels, channels)
    if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
        return (channels,)
    raise ValueError(f"cannot fill part of a {type(layer).__name__}")


def copy_into(
    model: nn.Module,
    arrays: Mapping[str, list[np.ndarray | torch.Tensor]],
    source: str,
    reshape: str = "exact",
    parts: Parts | None = None,
) -> None:
    """Fill ``model``'s layers from ``{layer name: [weight, bias]}``; all or nothing.

    ``reshape="legacy"`` also accepts shapes that differ only by leading ones
    (legacy Caffe files store a bias as 1x1x1xN); ``"numel"`` accepts any shape
    with the same number of elements, for fully connected weights that become
    convolutions. ``parts`` fills layers from file layers of other names (:data:`Parts`);
    problems name the file's layers.
    """
    layers = named_layers(model)
    sources = {name: (parts or {}).get(name, ((name, slice(None)),)) for name in layers}
    wanted = {file_name for filling in sources.values() for file_name, _ in filling}
    problems = []
    missing = sorted(wanted - set(arrays))
    extra = sorted(set(arrays) - wanted)
    if missing:
        problems.append(f"layers missing from the file: {', '.join(missing)}")
    if extra:
        problems.append(f"layers in the file that the net does not have: {', '.join(extra)}")
    staged = []
    for name in sorted(layers):
        targets = _tensors_of(layers[name])
        values = {kind: None for kind, _ in targets}
        for file_name, channels in sources[name]:
            if file_name not in arrays:
                continue
            blobs = arrays[file_name]
            if len(blobs) != len(targets):
                problems.append(
                    f"layer {file_name}: the file has {len(blobs)} arrays, the net expects "
                    f"{len(targets)} ({', '.join(n for n, _ in targets)})"
                )
                continue
            for (kind, target), blob in zip(targets, blobs, strict=True):
                region = _region(layers[name], kind, channels)
                shape = target[region].shape
                value = torch.as_tensor(np.asarray(blob), dtype=target.dtype)
                if value.shape != shape:
                    if not _reshape_allowed(value.shape, shape, reshape):
                        problems.append(
                            f"layer {file_name} {kind}: expected shape {tuple(shape)}, file has {tuple(value.shape)}"
                        )
                        continue
                    value = value.reshape(shape)
                if not region:
                    values[kind] = value
                    continue
                if values[kind] is None:
                    values[kind] = torch.zeros_like(target)
                values[kind][region] = value
        staged += [(target, values[kind]) for kind, target in targets if values[kind] is not None]
    if problems:  # a file layer that fills several layers is named once
        raise WeightsMismatchError(
            f"{source} does not fit this net:\n  " + "\n  ".join(dict.fromkeys(problems))
        )
    with torch.no_grad():
        for target, value in staged:
            target.copy_(value)


def copy_matching_layers(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy every layer of ``state_dict`` whose tensors all match ``model``'s by name and shape;
    return the names of the tensors copied.

    This is staged training's surgery: FCN-16s takes backbone, ``score_fr`` from
    FCN-32s; FCN-8s also takes ``upscore2`` and ``score_pool4`` from FCN-16s. Layers
    that are new (or shaped differently, e.g. another number of classes, or an FCN's 7x7
    fc6 where SSD has a 3x3 one) keep their initialisation whole: a bias never arrives
    without its weights. Copying nothing at all is an error.
    """
    own = model.state_dict()
    layers: dict[str, list[str]] = {}
    for key in own:
        layers.setdefault(key.rsplit(".", 1)[0], []).append(key)
    copied = [
        key
        for keys in layers.values()
        if all(k in state_dict and state_dict[k].shape == own[k].shape for k in keys)
        for key in keys
    ]
    if not copied:
        raise WeightsMismatchError(
            "the initial checkpoint shares no layer (same name and shape) with this net"
        )
    with torch.no_grad():
        for key in copied:
            own[key].copy_(state_dict[key])
    return copied
