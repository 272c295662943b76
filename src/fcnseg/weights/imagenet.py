"""ImageNet classifiers into FCN backbones: how training starts, as in the paper.

Two sources: torchvision-format state dicts (VGG16 and AlexNet: ``features.N.weight``,
``classifier.N.weight``; ResNet: ``conv1.weight``, ``layer1.0.conv1.weight``, ...) and the Caffe
classifiers the paper started from (VGG_ILSVRC_16_layers, bvlc_alexnet, bvlc_googlenet). fc6 and
fc7 are fully connected there and become convolutions here by reshaping their weights
(convolutionalization); the ImageNet classifiers (fc8; ResNet's fc; GoogLeNet's loss1/*, loss2/*
and loss3/classifier) are dropped, and the score layers start at zero.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from fcnseg.models.alexnet import ALEXNET_CONVS
from fcnseg.models.fcn import FCN
from fcnseg.models.registry import build_model, trunk_family
from fcnseg.models.ssd import SSD, reduce_vgg16
from fcnseg.models.vgg import VGG16_CONVS
from fcnseg.weights.caffe import infer_build_args, learned_blobs
from fcnseg.weights.caffe_format import read_caffemodel
from fcnseg.weights.checkpoint import safe_load
from fcnseg.weights.torchvision import load_strictly, resnet_layout
from fcnseg.weights.transfer import WeightsMismatchError, copy_into


def _conv_names(arch: str) -> tuple[str, ...]:
    return ALEXNET_CONVS if arch == "fcn-alexnet" else VGG16_CONVS


def _convolutionalize_fc(arrays: dict[str, list], model: FCN, source: str) -> None:
    """Reshape fc6/fc7 (out, in) weights into the (out, C, k, k) convolutions of ``model``'s trunk."""
    for name in ("fc6", "fc7"):
        if name not in arrays or name not in model.backbone.taps:
            continue  # GoogLeNet has none; a missing one is named when the weights are copied
        conv = getattr(model.backbone, name)
        weight = np.asarray(arrays[name][0])
        if weight.ndim != 2 or weight.shape[1] != conv.weight[0].numel():
            raise WeightsMismatchError(
                f"{source}: layer {name} has weight {tuple(weight.shape)}; a fully connected layer "
                f"over {tuple(conv.weight.shape[1:])} needs ({conv.out_channels}, {conv.weight[0].numel()})"
            )
        arrays[name] = [weight.reshape(conv.weight.shape), *arrays[name][1:]]


def torchvision_layers(state_dict: dict[str, torch.Tensor], arch: str, source: str) -> dict[str, list]:
    """Rename a torchvision VGG16/AlexNet state dict to Caffe layer names (fc8 dropped)."""
    if trunk_family(arch) == "googlenet":
        raise WeightsMismatchError(
            f"{source}: torchvision's GoogLeNet (batch-normalised, 3x3 for 5x5) is not Caffe's bvlc_googlenet, "
            "which fcnseg builds; use the Caffe classifier (googlenet-caffe)"
        )
    if any("running_mean" in key for key in state_dict):
        raise WeightsMismatchError(f"{source}: batch-normalised VGG is not an FCN backbone; use plain VGG16")
    pattern = re.compile(r"^(features|classifier)\.(\d+)\.(weight|bias)$")
    unexpected = [k for k in state_dict if not pattern.match(k)]
    if unexpected:
        raise WeightsMismatchError(
            f"{source}: unexpected keys for a torchvision classifier: {', '.join(unexpected[:10])}"
        )
    groups: dict[tuple[str, int], list] = {}
    for key in sorted(state_dict, key=lambda k: (k.split(".")[0], int(k.split(".")[1]), k.endswith("bias"))):
        part, index, _ = pattern.match(key).groups()
        groups.setdefault((part, int(index)), []).append(state_dict[key])
    convs = [v for (part, _), v in groups.items() if part == "features"]
    linears = [v for (part, _), v in groups.items() if part == "classifier"]
    names = _conv_names(arch)
    if len(convs) != len(names) or len(linears) not in (2, 3):
        raise WeightsMismatchError(
            f"{source}: expected {len(names)} convolutions and 3 linear layers for {arch}, "
            f"found {len(convs)} and {len(linears)}"
        )
    return dict(zip((*names, "fc6", "fc7"), convs + linears[:2], strict=True))


def caffe_trunk_blobs(blobs: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """A Caffe classifier's learned layers without its classifiers (fc8; GoogLeNet's loss1/*, loss2/*,
    loss3/classifier), fc6 and fc7 as (out, in) matrices where legacy files store them 1x1xoutxin."""
    arrays = {name: list(b) for name, b in blobs.items() if name != "fc8" and not name.startswith("loss")}
    for name in ("fc6", "fc7"):
        if name in arrays and arrays[name][0].ndim == 4 and arrays[name][0].shape[:2] == (1, 1):
            arrays[name][0] = arrays[name][0].reshape(arrays[name][0].shape[2:])
    return arrays


def fcn_from_imagenet(
    arch: str,
    weights: str | os.PathLike | dict[str, torch.Tensor],
    num_classes: int = 21,
    **options,
) -> FCN:
    """An FCN whose backbone holds ImageNet classifier weights, ready for training.

    ``weights`` is a torchvision-format state dict (or a file holding one, such as torchvision's
    ``resnet50-0676ba61.pth`` for ``fcn8s-resnet50``) or a Caffe ``.caffemodel`` classifier. The
    backbone widths are read off the weights; torchvision's AlexNet is single-tower without LRN,
    so the FCN-AlexNet built for it is too. ``model.meta["preprocess"]`` records the matching
    input preprocessing: "imagenet" for torchvision, "caffe" for Caffe.
    """
    source = str(weights) if not isinstance(weights, dict) else "state dict"
    if trunk_family(arch).startswith("resnet"):
        state = weights if isinstance(weights, dict) else _read_state_dict(Path(weights))
        return _resnet_fcn(arch, state, source, num_classes, options)
    is_caffe = not isinstance(weights, dict) and Path(weights).suffix == ".caffemodel"
    if is_caffe:
        arrays = caffe_trunk_blobs(learned_blobs(read_caffemodel(weights)))
        preprocess = "caffe"
    else:
        state = weights if isinstance(weights, dict) else _read_state_dict(Path(weights))
        arrays = torchvision_layers(state, arch, source)
        preprocess = "imagenet"
    args = infer_build_args(arrays, arch, source)
    if arch == "fcn-alexnet":
        options.setdefault("lrn", is_caffe)
    model = build_model(**args, num_classes=num_classes, **options)
    _convolutionalize_fc(arrays, model, source)
    copy_into(model.backbone, arrays, source=source, reshape="legacy")
    model.meta = {"preprocess": preprocess, "source": Path(source).name}
    return model


def _resnet_fcn(arch: str, state: dict[str, torch.Tensor], source: str, num_classes: int, options) -> FCN:
    """A net on ResNet (an FCN, torchvision's FCN) whose trunk is a torchvision ImageNet ResNet: every
    tensor but ``fc``'s copied in, or a WeightsMismatchError naming what does not fit."""
    layout = resnet_layout(state, source)
    wanted = trunk_family(arch)
    if f"resnet{layout['depth']}" != wanted:
        raise WeightsMismatchError(f"{source}: holds ResNet-{layout['depth']}; {arch} is built on {wanted}")
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model = build_model(
        arch, num_classes, widths=layout["widths"], in_channels=layout["in_channels"], **options
    )
    load_strictly(model.backbone, trunk, source)
    model.meta = {"preprocess": "imagenet", "source": Path(source).name}
    return model


def ssd_from_imagenet(
    weights: str | os.PathLike | dict[str, torch.Tensor], num_classes: int = 21, arch: str = "ssd300"
) -> SSD:
    """An SSD (``arch``: ssd300, ssd512) whose trunk is an ImageNet VGG16 reduced as the reference's
    VGG_ILSVRC_16_layers_fc_reduced (:func:`fcnseg.models.ssd.reduce_vgg16`): the classifier is
    convolutionalized as for FCN-32s, rarefied at pool5, and fc6/fc7 subsampled. ``weights`` as
    :func:`fcn_from_imagenet` takes them; the extra layers and heads start fresh."""
    fcn = fcn_from_imagenet("fcn32s", weights)
    trunk = reduce_vgg16(fcn.backbone)
    widths = [*fcn.config["widths"][:5], trunk.fc7.out_channels]
    model = build_model(arch, num_classes, widths=widths, in_channels=fcn.in_channels)
    model.backbone.load_state_dict(trunk.state_dict())
    model.meta = dict(fcn.meta)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = safe_load(path, "cpu", "torch state dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{path}: expected a state dict of tensors")
    return state
