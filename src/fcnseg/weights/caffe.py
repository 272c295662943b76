"""Original Caffe FCN, HED, FSDS and SSD models (``.caffemodel``) into our nets, by layer name, without Caffe."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnseg.data.nyud import NYUD_CLASSES
from fcnseg.data.siftflow import (
    SIFTFLOW_GEOMETRIC_CLASSES,
    SIFTFLOW_HEAD_NAMES,
    SIFTFLOW_HEADS,
    SIFTFLOW_SEMANTIC_CLASSES,
)
from fcnseg.models.alexnet import ALEXNET_CONVS
from fcnseg.models.fcn import FCN
from fcnseg.models.fusion import LateFusionFCN
from fcnseg.models.googlenet import GOOGLENET_CONVS
from fcnseg.models.heads import MultiHeadFCN
from fcnseg.models.layers import bilinear_kernel
from fcnseg.models.registry import DETECTORS, FUSION_STREAMS, SIDE_OUTPUT_ARCHS, build_model, trunk_family
from fcnseg.models.sides import FSDS, HED
from fcnseg.models.ssd import SSD
from fcnseg.models.vgg import VGG16_CONVS, VGG16_LAYERS, compact_widths
from fcnseg.weights.caffe_format import CaffeLayer, read_caffemodel
from fcnseg.weights.transfer import Parts, WeightsMismatchError, caffe_name, copy_into

WIDTH_LAYERS = {
    "vgg16": VGG16_LAYERS,
    "alexnet": (*ALEXNET_CONVS, "fc6", "fc7"),
    "googlenet": GOOGLENET_CONVS,
}
"""Per trunk, the layers whose output channels are ``build_model``'s widths: every learned layer of
the trunk, so a file whose layers have any widths converts (:func:`_compact` shortens the usual ones)."""


_STAGE_FIRSTS = tuple(name for name in VGG16_CONVS if name.endswith("_1"))
_REQUIRED = {
    "vgg16": (*_STAGE_FIRSTS, "fc6"),
    "vgg16-convs": _STAGE_FIRSTS,
    "alexnet": (*ALEXNET_CONVS, "fc6"),
    "googlenet": GOOGLENET_CONVS,
}
"""The layers without which a trunk's widths cannot be read: each stage's first (and fc6)."""


def _compact(family: str, widths: list[int]) -> list[int]:
    """Widths read layer by layer in their short form where the net has it: VGG16's 6 (or HED's 5)
    when each stage is one width and fc6 is fc7's, AlexNet's 6 when fc7 is fc6's."""
    if family == "vgg16":
        return list(compact_widths(widths))
    if family == "vgg16-convs":  # HED and FSDS: conv1_1 .. conv5_3
        short = compact_widths([*widths, 1, 1])
        return list(short[:5]) if len(short) == 6 else widths
    if family == "alexnet" and widths[5] == widths[6]:
        return widths[:6]
    return widths


def learned_blobs(layers: list[CaffeLayer]) -> dict[str, list[np.ndarray]]:
    """``{layer name: blobs}`` for the layers that carry weights."""
    return {layer.name: layer.blobs for layer in layers if layer.blobs}


def infer_arch(blobs: dict[str, list[np.ndarray]], source: str) -> str:
    """Which net (an FCN, HED, FSDS, SSD300 or SSD512) a Caffe model holds, from the names of its learned
    layers."""
    if "conv4_3_norm_mbox_conf" in blobs:
        return "ssd512" if "conv10_2_mbox_conf" in blobs else "ssd300"
    if "conv1_1" in blobs and "score-dsn1" in blobs:
        return "hed"
    if "conv1_1" in blobs and "score-dsn-2" in blobs:
        return "fsds"
    if f"conv1_1{FUSION_STREAMS[0]}" in blobs:  # nyud-fcn32s-color-hha: conv1_1color .. score_frhha
        return "fcn32s-late-fusion"
    sem = SIFTFLOW_HEADS[0]
    if "conv1_1" in blobs and f"score_fr_{sem}" in blobs:  # SIFT Flow: score_fr_sem, score_fr_geo ...
        if f"score_pool3_{sem}" in blobs:
            return "fcn8s"
        return "fcn16s" if f"score_pool4_{sem}" in blobs else "fcn32s"
    if "conv1_1" in blobs and "score_fr" not in blobs:
        hint = (
            f" (an ImageNet classifier? `fcnseg convert imagenet {source} --arch fcn8s --out fcn8s.pt` "
            "builds an FCN-8s on it)"
            if "fc8" in blobs
            else ""
        )
        raise WeightsMismatchError(
            f"{source}: a VGG16 trunk with none of the score layers of an FCN (score_fr, or SIFT Flow's "
            "score_fr_sem), HED (score-dsn1), "
            "FSDS (score-dsn-2) or SSD (conv4_3_norm_mbox_conf); its learned layers besides conv*: "
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


def _layout(blobs: dict[str, list[np.ndarray]]) -> tuple[str, ...]:
    """The suffixes of the file's layers: a late fusion's streams (``conv1_1color``), SIFT Flow's heads
    (``score_fr_sem``), or none."""
    if f"conv1_1{FUSION_STREAMS[0]}" in blobs:
        return FUSION_STREAMS
    if f"score_fr_{SIFTFLOW_HEADS[0]}" in blobs:
        return tuple(f"_{head}" for head in SIFTFLOW_HEADS)
    return ()


def infer_build_args(blobs: dict[str, list[np.ndarray]], arch: str, source: str) -> dict:
    """Widths (every layer's), classes, input channels, groups and heads of the net the blobs were made for."""
    # HED and FSDS end at conv5_3
    family = "vgg16-convs" if arch in SIDE_OUTPUT_ARCHS else trunk_family(arch)
    sized = VGG16_CONVS if arch in SIDE_OUTPUT_ARCHS else WIDTH_LAYERS[family]
    layout = _layout(blobs)
    fusion = layout == FUSION_STREAMS
    streams = layout if fusion else ("",)  # a late fusion's streams are sized alike: by the first
    scores = [f"score_fr{suffix}" for suffix in layout] or (["score_fr"] if "score_fr" in blobs else [])
    # each stage's first layer (and fc6) must be there; a later layer missing takes the one before's
    # width, and the copy then lists it with every other problem of the file
    needed = [f"{name}{stream}" for stream in streams for name in _REQUIRED[family]] + scores
    missing = [name for name in needed if name not in blobs]
    if missing:
        raise WeightsMismatchError(f"{source}: {arch} needs layers that the file lacks: {', '.join(missing)}")
    present = needed + [f"{name}{streams[0]}" for name in sized if f"{name}{streams[0]}" in blobs]
    odd = [f"{name} {tuple(blobs[name][0].shape)}" for name in present if not _is_weight(blobs[name][0])]
    if odd:
        raise WeightsMismatchError(
            f"{source}: these weights should be filters (out, in, height, width) or matrices (out, in) "
            f"with no empty dimension: {', '.join(sorted(set(odd), key=odd.index))}"
        )
    read: list[int] = []
    for name in sized:  # the first stream's: a late fusion's streams are alike
        blob = blobs.get(f"{name}{streams[0]}")
        read.append(int(blob[0].shape[0]) if blob else read[-1])
    widths = _compact(family, read)
    in_channels = sum(int(blobs[f"{sized[0]}{stream}"][0].shape[1]) for stream in streams)
    args: dict = {"arch": arch, "widths": widths, "in_channels": in_channels}
    classes = [int(blobs[name][0].shape[0]) for name in scores]
    if classes:
        args["num_classes"] = classes[0] if fusion else sum(classes)
    if layout and not fusion:
        args["heads"] = classes
    if arch == "fcn-alexnet":
        args["groups"] = widths[0] // int(blobs["conv2"][0].shape[1])
    return args


def load_caffe(path: str | os.PathLike, arch: str | None = None, **build_options) -> FCN | HED | FSDS | SSD:
    """The net a Caffe model holds (an FCN, HED, FSDS, or SSD300/SSD512 as ``VGG_VOC0712_SSD_300x300``
    and ``_512x512``), with its weights; see :func:`load_caffe_fcn` and :func:`load_caffe_ssd`."""
    path = Path(path)
    blobs = learned_blobs(read_caffemodel(path))
    if infer_arch(blobs, str(path)) in DETECTORS:
        return _ssd_from_blobs(blobs, path, arch)
    return _fcn_from_blobs(blobs, path, arch, **build_options)


def load_caffe_ssd(path: str | os.PathLike, arch: str | None = None) -> SSD:
    """SSD300 or SSD512 with the weights of a Caffe SSD model (weiliu89/caffe's ssd_pascal.py layout,
    and ssd_pascal_512.py's with conv10_1, conv10_2 and a seventh source).

    The layers are matched by their prototxt names: conv1_1 .. fc7, the extra layers (conv6_1 ..),
    ``conv4_3_norm`` (its one blob is the per-channel scale) and the heads
    ``<source>_mbox_loc`` / ``<source>_mbox_conf``; the Permute, Flatten, PriorBox and Concat
    layers carry no weights, and the net's forward reproduces their layout. Every layer's width
    and the class count are read off the blobs; every learned layer must fit. Preprocessing
    "ssd": BGR, 0-255, minus the mean pixel (104, 117, 123).
    """
    path = Path(path)
    return _ssd_from_blobs(learned_blobs(read_caffemodel(path)), path, arch)


def _ssd_from_blobs(blobs: dict[str, list[np.ndarray]], path: Path, arch: str | None) -> SSD:
    found = infer_arch(blobs, str(path))
    if arch is not None and arch != found:
        raise WeightsMismatchError(f"{path}: --arch {arch} given, but the file holds an {found} model")
    args = _ssd_build_args(blobs, str(path), found)
    with torch.device("meta"):  # check the fit before allocating: a corrupt file may describe an enormous net
        copy_into(build_model(**args), blobs, source=str(path), reshape="legacy")
    model = build_model(**args)
    copy_into(model, blobs, source=str(path), reshape="legacy")
    model.meta = {"preprocess": "ssd", "source": path.name, "task": "detection"}
    return model.eval()


def _ssd_build_args(blobs: dict[str, list[np.ndarray]], source: str, found: str) -> dict:
    """Widths, classes and input channels of the SSD (``found``: ssd300, ssd512) the blobs were made for."""
    with torch.device("meta"):  # the layer names, as the net has them
        default = build_model(found)
    extras = [name for name, layer in default.extras.named_children() if isinstance(layer, nn.Conv2d)]
    heads = [f"{s}_mbox_{kind}" for s in default.head_inputs for kind in ("loc", "conf")]
    needed = [*VGG16_LAYERS, *extras, *heads]
    missing = [name for name in needed if name not in blobs]
    if missing:
        raise WeightsMismatchError(
            f"{source}: {found} needs layers that the file lacks: {', '.join(missing)}"
        )
    odd = [f"{name} {tuple(blobs[name][0].shape)}" for name in needed if not _is_weight(blobs[name][0])]
    if odd:
        raise WeightsMismatchError(
            f"{source}: these weights should be filters (out, in, height, width) with no empty dimension: "
            f"{', '.join(odd)}"
        )
    widths = list(compact_widths([int(blobs[name][0].shape[0]) for name in VGG16_LAYERS]))
    per_location = default.prior_spec.per_location[0]
    classes, rest = divmod(int(blobs["conv4_3_norm_mbox_conf"][0].shape[0]), per_location)
    if rest or classes < 2:
        raise WeightsMismatchError(
            f"{source}: conv4_3_norm_mbox_conf has {blobs['conv4_3_norm_mbox_conf'][0].shape[0]} outputs, "
            f"not {per_location} priors times a class count"
        )
    args = {
        "arch": found,
        "num_classes": classes,
        "widths": widths,
        "in_channels": int(blobs["conv1_1"][0].shape[1]),
    }
    extra = [int(blobs[name][0].shape[0]) for name in extras]
    with torch.device("meta"):  # the extra layers' widths that these trunk widths give by default
        expected = build_model(**args)
    if extra != [getattr(expected.extras, name).out_channels for name in extras]:
        args["extra_widths"] = extra
    return args


def build_args(blobs: dict[str, list[np.ndarray]], source: str) -> dict:
    """The ``build_model`` arguments of the net a Caffe model's blobs make: its architecture read off
    the layer names (:func:`infer_arch`), its widths, classes and heads off their shapes."""
    found = infer_arch(blobs, source)
    if found in DETECTORS:
        return _ssd_build_args(blobs, source, found)
    return infer_build_args(blobs, found, source)


def shape_stand_ins(shapes: dict[str, list[tuple[int, ...]]]) -> dict[str, list[np.ndarray]]:
    """Arrays of the given shapes that hold no memory (one zero, broadcast), so that the readers of
    blob shapes (:func:`build_args`) run on :func:`~fcnseg.weights.caffe_format.read_blob_shapes`."""
    zero = np.zeros((), np.float32)
    return {name: [np.broadcast_to(zero, shape) for shape in blobs] for name, blobs in shapes.items()}


def load_caffe_fcn(
    path: str | os.PathLike, arch: str | None = None, **build_options
) -> FCN | LateFusionFCN | HED | FSDS:
    """An FCN (or HED, FSDS) with the weights of a Caffe model; the net's shape comes from the file.

    The architecture, the widths and the class count are read off the blob shapes
    (``arch`` is checked against the file when given). Every learned layer must
    match: a missing, extra or mis-shaped layer raises ``WeightsMismatchError``
    naming the file, the layer and both shapes. The result uses Caffe's
    preprocessing ("caffe": BGR, 0-255, mean subtracted). SIFT Flow's two-headed nets
    (``score_fr_sem``, ``score_fr_geo``, ...) load as a ``MultiHeadFCN`` ("siftflow"), and
    nyud-fcn32s-color-hha (``conv1_1color``, ``conv1_1hha``, ...) as ``fcn32s-late-fusion``
    ("nyud-color-hha"), with their class names (:func:`_caffe_parts`).
    """
    path = Path(path)
    return _fcn_from_blobs(learned_blobs(read_caffemodel(path)), path, arch, **build_options)


def _fcn_from_blobs(
    blobs: dict[str, list[np.ndarray]], path: Path, arch: str | None, **build_options
) -> FCN | LateFusionFCN | HED | FSDS:
    found = infer_arch(blobs, str(path))
    if found in DETECTORS:
        raise WeightsMismatchError(f"{path} holds an {found} model, not an FCN: load it with load_caffe")
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
    _copy_caffe(probe, blobs, str(path))
    model = build_model(**args, **build_options)
    _copy_caffe(model, blobs, str(path))
    model.meta = {"preprocess": "caffe", "source": path.name}
    if model.config["arch"] in SIDE_OUTPUT_ARCHS:
        model.meta["task"] = model.task
    if isinstance(model, MultiHeadFCN):
        model.meta.update(
            preprocess="siftflow", heads=list(model.heads), head_names=list(SIFTFLOW_HEAD_NAMES)
        )
        if model.heads == (len(SIFTFLOW_SEMANTIC_CLASSES), len(SIFTFLOW_GEOMETRIC_CLASSES)):
            model.meta["class_names"] = [*SIFTFLOW_SEMANTIC_CLASSES, *SIFTFLOW_GEOMETRIC_CLASSES]
    if isinstance(model, LateFusionFCN):
        model.meta["preprocess"] = "nyud-color-hha"
        if model.num_classes == len(NYUD_CLASSES):
            model.meta["class_names"] = list(NYUD_CLASSES)
    return model.eval()


def _caffe_parts(model: torch.nn.Module) -> Parts:
    """The layers of ``model`` that the original Caffe nets hold under other names (see
    :func:`~fcnseg.weights.transfer.copy_into`).

    SIFT Flow (:class:`MultiHeadFCN`): each head has its own score and upsampling layers, suffixed
    ``_sem`` and ``_geo``; ours hold them side by side, 33 then 3 channels, the upsamplings block
    diagonal. nyud-fcn32s-color-hha (:class:`LateFusionFCN`): the streams' layers are suffixed
    (``conv1_1color``), and one ``upscore`` upsamples the average of their scores; each of our
    streams upsamples its own scores with it, which is the same by linearity.
    """
    if isinstance(model, LateFusionFCN):
        return {
            f"{stream.final_name}{name}": (("upscore", slice(None)),)
            for name, stream in model.streams.items()
        }
    if not isinstance(model, MultiHeadFCN):
        return {}
    if len(model.heads) != len(SIFTFLOW_HEADS):
        raise WeightsMismatchError(
            f"the Caffe layout of several heads is SIFT Flow's ({', '.join(SIFTFLOW_HEADS)}); "
            f"this net has {len(model.heads)} heads"
        )
    bounds = np.cumsum([0, *model.heads]).tolist()
    return {
        name: tuple(
            (f"{name}_{head}", slice(lo, hi))
            for head, lo, hi in zip(SIFTFLOW_HEADS, bounds, bounds[1:], strict=False)
        )
        for name, _ in model.named_children()
        if name != "backbone"
    }


def _copy_caffe(model: torch.nn.Module, blobs: dict[str, list[np.ndarray]], source: str) -> None:
    """``copy_into`` for the Caffe layouts (:func:`_caffe_parts`), all or nothing; SIFT Flow's
    upsamplings must be bilinear, as the net that holds its heads side by side keeps them."""
    parts = _caffe_parts(model)
    if isinstance(model, MultiHeadFCN):
        upsamplings = [
            file_name
            for name, filling in parts.items()
            if isinstance(getattr(model, name), torch.nn.ConvTranspose2d)
            for file_name, _ in filling
        ]
        odd = [name for name in upsamplings if name in blobs and not _is_bilinear(blobs[name][0])]
        if odd:
            raise WeightsMismatchError(
                f"{source}: these upsamplings are not bilinear, class by class: {', '.join(odd)}; fcnseg "
                "holds SIFT Flow's heads side by side in one net, whose upsamplings stay bilinear"
            )
    copy_into(model, blobs, source=source, reshape="legacy", parts=parts)


def _is_bilinear(weight: np.ndarray) -> bool:
    """Whether a (C, C, k, k) deconvolution upsamples each channel bilinearly; other shapes are left to
    the shape check."""
    if weight.ndim != 4 or weight.shape[0] != weight.shape[1] or weight.shape[2] != weight.shape[3]:
        return True
    return np.allclose(weight, bilinear_kernel(weight.shape[0], weight.shape[-1]).numpy(), rtol=0, atol=1e-6)


def load_caffe_trunk(
    path: str | os.PathLike, arch: str, widths: tuple[int, ...] | None = None
) -> HED | FSDS | SSD:
    """A fresh ``arch`` net (HED, FSDS, SSD300 or SSD512) whose trunk holds a published trunk's layers,
    as the reference solvers' ``copy_from`` fills them by name: HED's 5stage-vgg and FSDS's
    vgg16convs (conv1_1 .. conv5_3), SSD's VGG_ILSVRC_16_layers_fc_reduced (also fc6 and fc7). Every
    layer of the trunk must be in the file with its shape; the file's other layers (fc8) are not
    used; the side and head layers keep their initialisation. ``widths``: the trunk's, if not VGG16's."""
    path = Path(path)
    blobs = learned_blobs(read_caffemodel(path))
    model = build_model(arch, widths=widths)
    trunk = {caffe_name(f"backbone.{name}") for name, _ in model.backbone.named_children()}
    copy_into(
        model.backbone, {k: v for k, v in blobs.items() if k in trunk}, source=str(path), reshape="legacy"
    )
    model.meta = {
        "preprocess": "ssd" if arch in DETECTORS else "caffe",
        "source": path.name,
        "task": model.task,
    }
    return model


def load_caffe_weights(model: FCN | LateFusionFCN, path: str | os.PathLike) -> FCN | LateFusionFCN:
    """Fill a net you built yourself from a Caffe model; all layers must fit, or nothing changes."""
    _copy_caffe(model, learned_blobs(read_caffemodel(path)), str(path))
    return model
