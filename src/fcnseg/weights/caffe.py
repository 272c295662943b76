"""Original Caffe FCN, HED, FSDS and SSD models (``.caffemodel``) into our nets, by layer name, without Caffe."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fcnseg.detection.priors import SSD300_PRIORS
from fcnseg.models.alexnet import ALEXNET_CONVS
from fcnseg.models.fcn import FCN
from fcnseg.models.googlenet import GOOGLENET_CONVS
from fcnseg.models.registry import SIDE_OUTPUT_ARCHS, build_model, trunk_family
from fcnseg.models.sides import FSDS, HED
from fcnseg.models.ssd import SSD
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
    """Which net (an FCN, HED, FSDS or SSD300) a Caffe model holds, from the names of its learned layers."""
    if "conv4_3_norm_mbox_conf" in blobs:
        return "ssd300"
    if "conv1_1" in blobs and "score-dsn1" in blobs:
        return "hed"
    if "conv1_1" in blobs and "score-dsn-2" in blobs:
        return "fsds"
    if "conv1_1" in blobs and "score_fr" not in blobs:
        hint = (
            " (an ImageNet classifier? `fcnseg convert imagenet` builds an FCN on it)"
            if "fc8" in blobs
            else ""
        )
        raise WeightsMismatchError(
            f"{source}: a VGG16 trunk with none of the score layers of an FCN (score_fr), HED (score-dsn1), "
            "FSDS (score-dsn-2) or SSD300 (conv4_3_norm_mbox_conf); its learned layers besides conv*: "
            f"{', '.join(name for name in blobs if not name.startswith('conv')) or 'none'}{hint}"
        )
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


def load_caffe(path: str | os.PathLike, arch: str | None = None, **build_options) -> FCN | HED | FSDS | SSD:
    """The net a Caffe model holds (an FCN, HED, FSDS, or SSD300 as ``VGG_VOC0712_SSD_300x300``), with its weights;
    see :func:`load_caffe_fcn` and :func:`load_caffe_ssd`."""
    path = Path(path)
    blobs = learned_blobs(read_caffemodel(path))
    if infer_arch(blobs, str(path)) == "ssd300":
        return _ssd_from_blobs(blobs, path, arch)
    return _fcn_from_blobs(blobs, path, arch, **build_options)


_SSD_SOURCES = ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")


def load_caffe_ssd(path: str | os.PathLike, arch: str | None = None) -> SSD:
    """SSD300 with the weights of a Caffe SSD model (weiliu89/caffe's ssd_pascal.py layout).

    The layers are matched by their prototxt names: conv1_1 .. fc7, conv6_1 .. conv9_2,
    ``conv4_3_norm`` (its one blob is the per-channel scale) and the heads
    ``<source>_mbox_loc`` / ``<source>_mbox_conf``; the Permute, Flatten, PriorBox and Concat
    layers carry no weights, and the net's forward reproduces their layout. Widths and the
    class count are read off the blobs; every learned layer must fit. Preprocessing "ssd":
    BGR, 0-255, minus the mean pixel (104, 117, 123).
    """
    path = Path(path)
    return _ssd_from_blobs(learned_blobs(read_caffemodel(path)), path, arch)


def _ssd_from_blobs(blobs: dict[str, list[np.ndarray]], path: Path, arch: str | None) -> SSD:
    if arch is not None and arch != "ssd300":
        raise WeightsMismatchError(f"{path}: --arch {arch} given, but the file holds an ssd300 model")
    needed = [*VGG16_STAGE_FIRSTS, "fc7", *(f"{s}_mbox_conf" for s in _SSD_SOURCES)]
    missing = [name for name in needed if name not in blobs]
    if missing:
        raise WeightsMismatchError(f"{path}: ssd300 needs layers that the file lacks: {', '.join(missing)}")
    widths = [int(blobs[name][0].shape[0]) for name in (*VGG16_STAGE_FIRSTS, "fc7")]
    per_location = SSD300_PRIORS.per_location[0]
    classes, rest = divmod(int(blobs["conv4_3_norm_mbox_conf"][0].shape[0]), per_location)
    if rest or classes < 2:
        raise WeightsMismatchError(
            f"{path}: conv4_3_norm_mbox_conf has {blobs['conv4_3_norm_mbox_conf'][0].shape[0]} outputs, "
            f"not {per_location} priors times a class count"
        )
    args = {
        "arch": "ssd300",
        "num_classes": classes,
        "widths": widths,
        "in_channels": int(blobs["conv1_1"][0].shape[1]),
    }
    with torch.device("meta"):  # check the fit before allocating: a corrupt file may describe an enormous net
        copy_into(build_model(**args), blobs, source=str(path), reshape="legacy")
    model = build_model(**args)
    copy_into(model, blobs, source=str(path), reshape="legacy")
    model.meta = {"preprocess": "ssd", "source": path.name, "task": "detection"}
    return model.eval()


def load_caffe_fcn(path: str | os.PathLike, arch: str | None = None, **build_options) -> FCN | HED | FSDS:
    """An FCN (or HED, FSDS) with the weights of a Caffe model; the net's shape comes from the file.

    The architecture, the widths and the class count are read off the blob shapes
    (``arch`` is checked against the file when given). Every learned layer must
    match: a missing, extra or mis-shaped layer raises ``WeightsMismatchError``
    naming the file, the layer and both shapes. The result uses Caffe's
    preprocessing ("caffe": BGR, 0-255, mean subtracted).
    """
    path = Path(path)
    return _fcn_from_blobs(learned_blobs(read_caffemodel(path)), path, arch, **build_options)


def _fcn_from_blobs(
    blobs: dict[str, list[np.ndarray]], path: Path, arch: str | None, **build_options
) -> FCN | HED | FSDS:
    found = infer_arch(blobs, str(path))
    if found == "ssd300":
        raise WeightsMismatchError(f"{path} holds an ssd300 model, not an FCN: load it with load_caffe")
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
