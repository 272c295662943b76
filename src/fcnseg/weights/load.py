"""``fcnseg.load``: one call for any weights file fcnseg understands."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fcnseg.errors import FcnsegError
from fcnseg.models.alexnet import ALEXNET_CONVS
from fcnseg.models.fcn import FCN
from fcnseg.weights import hub
from fcnseg.weights.checkpoint import (
    CheckpointError,
    checked_checkpoint,
    is_state_dict,
    model_from_checkpoint,
    safe_load,
    weights_format,
)


def load(
    path: str | os.PathLike,
    arch: str | None = None,
    map_location: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.nn.Module:
    """A ready model (eval mode) from an fcnseg checkpoint, an original Caffe FCN or SSD model, a
    state dict of torchvision's FCN (``fcn_resnet50_coco-1167a1af.pth``, as ``tv-fcn-resnet50``), or
    a published model by name (``"voc-fcn8s"``; ``fcnseg weights list``), downloaded and converted once.

    Caffe models are recognised by their ``.caffemodel`` suffix or their first bytes
    (``weights_format``), torchvision's by their keys; ``arch`` is only needed to check such a
    file against what you expect, since the file itself says which net it holds. ``progress=False``
    is silent: no progress bar, no INFO message (a file that no checksum vouches for is still logged
    as a warning when first downloaded).
    """
    path = Path(path)
    if hub.is_name(path):
        if arch is not None:
            _check_published_arch(str(path), arch)
        path = hub.checkpoint(str(path), progress)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if weights_format(path) == "caffe":
        from fcnseg.weights.caffe import load_caffe  # the protobuf schema, for Caffe files only

        return load_caffe(path, arch)
    data = safe_load(path, map_location, "fcnseg checkpoint")
    if is_state_dict(data):
        from fcnseg.weights.torchvision import torchvision_fcn

        if "classifier.4.weight" not in data:
            fcn = _fcn_for(data)
            raise CheckpointError(
                f"{path} is not an fcnseg checkpoint (a bare state dict, and not of torchvision's FCN); an "
                f"ImageNet classifier starts a net: `fcnseg convert imagenet {path} --arch {fcn} --out {fcn}.pt` "
                "builds one on it (in Python: fcnseg.fcn_from_imagenet)"
            )
        return torchvision_fcn(data, arch, str(path)).eval()
    model = model_from_checkpoint(checked_checkpoint(data, path), str(path)).eval()
    if arch is not None and model.config["arch"] != arch:
        raise ValueError(f"{path} holds an {model.config['arch']} model, not {arch}")
    return model


def _check_published_arch(name: str, arch: str) -> None:
    """Refuse, before anything is downloaded, a published model that is not the ``arch`` asked for
    (``hubconf``'s ``fcn8s(weights="voc-fcn32s")``)."""
    weights = hub.WEIGHTS.get(name)
    if weights is None or weights.starts or weights.arch == arch:
        return  # unknown names, and names that start a net, are refused by hub.checkpoint
    raise FcnsegError(
        f"{name} is an {weights.arch} model, not {arch}: load it as {weights.arch} "
        f"(torch.hub's {weights.arch.replace('-', '_')}), or pick an {arch} model from `fcnseg weights list`"
    )


def _fcn_for(state: dict[str, torch.Tensor]) -> str:
    """The FCN-8s (FCN-AlexNet: it has no skips) that a torchvision classifier's state dict can start:
    ResNet's by its depth, else VGG16's or AlexNet's by their count of convolutions."""
    from fcnseg.weights.torchvision import resnet_layout

    if "conv1.weight" in state:
        return f"fcn8s-resnet{resnet_layout(state, 'state dict')['depth']}"
    convs = sum(key.startswith("features.") and key.endswith(".weight") for key in state)
    return "fcn-alexnet" if convs == len(ALEXNET_CONVS) else "fcn8s"


def segmentation_only(model: torch.nn.Module, source: str | os.PathLike, command: str) -> FCN:
    """``model`` if it segments with one output; a ValueError saying what to do with an edge, skeleton
    or box net, or SIFT Flow's two heads."""
    task = getattr(model, "task", "segmentation")
    if task == "segmentation":
        return model
    raise ValueError(
        f"{source} holds a net of the {task} task ({model.config['arch']}); fcnseg {command} works on "
        "segmentation nets of one output (fcnseg predict and evaluate take every task's)"
    )
