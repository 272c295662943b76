"""Original Caffe FCN, HED and FSDS models (``.caffemodel``) into our nets, by layer name, without Caffe."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fcnseg.models.alexnet import ALEXNET_CONVS
from fcnseg.models.fcn import FCN
from fcnseg.models.googlenet import GOOGLENET_CONVS
from fcnseg.models.registry import SIDE_OUTPUT_ARCHS, build_model, trunk_family
from fcnseg.models.sides import FSDS, HED
from fcnseg.models.vgg import VGG16_CONVS
from fcnseg.weights.caffe_format import CaffeLayer, read_caffemodel
from fcnseg.weights.transfer import WeightsMismatchError, copy_into

VGG16_STAGE_FIRSTS = tuple(name for name in VGG16_CONVS if name.endswith("_1"))
WIDTH_LAYERS = {
    "vgg16": (*VGG16_STAGE_FIRSTS, "fc6"),
    "alexnet": (*ALEXNET_CONVS, "fc6"),
    "googlenet": GOOGLENET_CONVS,
}
"""Per trunk, the layers whose output channels are ``build_model``'s widths."""


def learned_blobs(layers: list[CaffeLayer]) -> dict[str, list[np.ndarray]]:
    """``{layer name: blobs}`` for the layers that carry weights."""
    return {layer.name: layer.blobs for layer in layers if layer.blobs}


def infer_arch(blobs: dict[str, list[np.ndarray]], source: str) -> str:
    """Which net a Caffe model holds, from the names of its learned layers."""
    if "conv1_1" in blobs and "score-dsn1" in blobs:
        return "hed"
    if "conv1_1" in blobs and "score-dsn-2" in blobs:
        return "fsds"
    if "conv1_1" in blobs:
        if "score_pool3" in blobs:
            return "fcn8s-atonce" if "scale_pool3" in blobs else "fcn8s"
        return "fcn16s" if "score_pool4" in blobs else "fcn32s"
    if "conv1" in blobs and "score_fr" in blobs:
        return "fcn-alexnet"
    if "conv1/7x7_s2" in blobs and "score_fr" in blobs:
        return "fcn32s-googlenet"
    raise WeightsMismatchError(
        f"{source}: not an FCN, HED or FSDS model: found layers {', '.join(list(blobs)[:12])}; "
        "expected conv1_1 (VGG16), conv1 (AlexNet) or conv1/7x7_s2 (GoogLeNet) and score_fr, "
        "score-dsn1 (HED) or score-dsn-2 (FSDS)"
    )


def _is_weight(weight: np.ndarray) -> bool:
    """A filter (out, in, kh, kw) or a matrix (out, in) with no empty dimension."""
    return weight.ndim >= 2 and min(weight.shape) > 0


def infer_build_args(blobs: dict[str, list[np.ndarray]], arch: str, source: str) -> dict:
    """Widths, classes, input channels and groups of the net the blobs were made for."""
    # HED and FSDS end at conv5_3
    sized = VGG16_STAGE_FIRSTS if arch in SIDE_OUTPUT_ARCHS else WIDTH_LAYERS[trunk_family(arch)]
    needed = [*sized] + (["score_fr"] if "score_fr" in blobs else [])
    missing = [name for name in needed if name not in blobs]
    if missing:
        raise WeightsMismatchError(f"{source}: {arch} needs layers that the file lacks: {', '.join(missing)}")
    odd = [f"{name} {tuple(blobs[name][0].shape)}" for name in needed if not _is_weight(blobs[name][0])]
    if odd:
        raise WeightsMismatchError(
            f"{source}: these weights should be filters (out, in, height, width) or matrices (out, in) "
            f"with no empty dimension: {', '.join(odd)}"
        )
    widths = [int(blobs[name][0].shape[0]) for name in sized]
    args: dict = {"arch": arch, "widths": widths, "in_channels": int(blobs[sized[0]][0].shape[1])}
    if "score_fr" in blobs:
        args["num_classes"] = int(blobs["score_fr"][0].shape[0])
    if arch == "fcn-alexnet":
        args["groups"] = widths[0] // int(blobs["conv2"][0].shape[1])
    return args


def load_caffe_fcn(path: str | os.PathLike, arch: str | None = None, **build_options) -> FCN | HED | FSDS:
    """An FCN (or HED, FSDS) with the weights of a Caffe model; the net's shape comes from the file.

    The architecture, the widths and the class count are read off the blob shapes
    (``arch`` is checked against the file when given). Every learned layer must
    match: a missing, extra or mis-shaped layer raises ``WeightsMismatchError``
    naming the file, the layer and both shapes. The result uses Caffe's
    preprocessing ("caffe": BGR, 0-255, mean subtracted).
    """
    path = Path(path)
    blobs = learned_blobs(read_caffemodel(path))
    found = infer_arch(blobs, str(path))
    if arch is not None and arch != found and not (arch == "fcn32s-fixed" and found == "fcn32s"):
        raise WeightsMismatchError(f"{path}: --arch {arch} given, but the file holds an {found} model")
    args = infer_build_args(blobs, arch or found, str(path))
    try:  # the fit is checked first on the meta device: a corrupt file may describe an enormous net
        with torch.device("meta"):
            probe = build_model(**args, **build_options)
    except (ValueError, RuntimeError) as error:
        raise WeightsMismatchError(
            f"{path}: its layer shapes describe no {args['arch']} net: {error}"
        ) from error
    copy_into(probe, blobs, source=str(path), reshape="legacy")
    model = build_model(**args, **build_options)
    copy_into(model, blobs, source=str(path), reshape="legacy")
    model.meta = {"preprocess": "caffe", "source": path.name}
    if model.config["arch"] in SIDE_OUTPUT_ARCHS:
        model.meta["task"] = model.task
    return model.eval()


def load_caffe_weights(model: FCN, path: str | os.PathLike) -> FCN:
    """Fill a net you built yourself from a Caffe model; all layers must fit, or nothing changes."""
    copy_into(model, learned_blobs(read_caffemodel(path)), source=str(path), reshape="legacy")
    return model
