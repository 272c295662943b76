"""Read and write Caffe ``.caffemodel`` files (binary ``caffe.NetParameter``) without Caffe.

The FCN reference weights only exist as Caffe models, so we decode them with plain ``protobuf``.
The schema below is the subset of BVLC ``caffe.proto`` that matters for loading nets, built at
import time with the real field numbers and wire types, in a private descriptor pool so that it
cannot clash with a ``caffe_pb2`` module that may also be loaded. Every field it does not declare
is skipped by the parser. Enum fields are declared as ``int32``: the wire encoding is the same.

Both layouts Caffe has used are read:

* V2 (``NetParameter.layer``, ``LayerParameter`` with string types): what current Caffe writes,
  and the format of the FCN models.
* legacy V1 (``NetParameter.layers``, ``V1LayerParameter`` with enum types): older Model Zoo files,
  such as the VGG16 ILSVRC weights that FCN is initialised from. The types are mapped to the V2
  names the way Caffe's ``UpgradeV1LayerType`` maps them. The even older V0 format is not read.

Blobs follow ``Blob::FromProto``: the legacy 4-D ``num/channels/height/width`` dims take precedence
if any of them is set, otherwise ``shape.dim`` is used, and ``double_data`` takes precedence over
``data`` if it is not empty. Both packed and unpacked repeated floats are accepted.

Size limits: Python protobuf (the upb backend of the wheels, and the older ``cpp`` one) puts no
cap on the total size of a message parsed from bytes; the 64 MB default of C++
``CodedInputStream``, which Caffe lifts with ``SetTotalBytesLimit``, does not apply. Its
``SetAllowOversizeProtos`` switch only lifts the nesting-depth limit of 100, and a NetParameter is
four levels deep. Caffe reads at most 2 GiB - 1 byte, which is also the limit of the wire format.
In a test, a 604 MB file with one blob of 151M floats was read in 2 to 4 s, with a peak memory of
about four times the file size: the file bytes, the parsed message and the numpy arrays.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from fcnseg.errors import FcnsegError

__all__ = ["CaffeFormatError", "CaffeLayer", "read_caffemodel", "write_caffemodel"]


class CaffeFormatError(FcnsegError):
    """A file that is not a usable Caffe model, or layers that cannot be written as one."""


@dataclass
class CaffeLayer:
    """One layer of a Caffe net with its learned blobs and the settings needed to rebuild it."""

    name: str
    type: str  # V2 type string, e.g. "Convolution", "Deconvolution", "InnerProduct"
    blobs: list[np.ndarray]  # float32, in Caffe layout (conv weight: out, in/group, kH, kW)
    params: dict  # e.g. {"num_output", "kernel_size", "stride", "pad", "group", ...}; {} when none


# Subset of caffe.proto: message -> (name, number, type, flags, default); flags "r" repeated,
# "p" packed. Types that are not scalars name a message of this schema.
_SCHEMA: dict[str, list[tuple]] = {
    "BlobShape": [("dim", 1, "int64", "rp")],
    "BlobProto": [
        ("num", 1, "int32"),
        ("channels", 2, "int32"),
        ("height", 3, "int32"),
        ("width", 4, "int32"),
        ("data", 5, "float", "rp"),
        ("diff", 6, "float", "rp"),
        ("shape", 7, "BlobShape"),
        ("double_data", 8, "double", "rp"),
    ],
    "ConvolutionParameter": [
        ("num_output", 1, "uint32"),
        ("bias_term", 2, "bool", "", "true"),
        ("pad", 3, "uint32", "r"),
        ("kernel_size", 4, "uint32", "r"),
        ("group", 5, "uint32", "", "1"),
        ("stride", 6, "uint32", "r"),
        ("pad_h", 9, "uint32"),
        ("pad_w", 10, "uint32"),
        ("kernel_h", 11, "uint32"),
        ("kernel_w", 12, "uint32"),
        ("stride_h", 13, "uint32"),
        ("stride_w", 14, "uint32"),
        ("dilation", 18, "uint32", "r"),
    ],
    "PoolingParameter": [
        ("pool", 1, "int32"),  # enum PoolMethod
        ("kernel_size", 2, "uint32"),
        ("stride", 3, "uint32", "", "1"),
        ("pad", 4, "uint32"),
        ("kernel_h", 5, "uint32"),
        ("kernel_w", 6, "uint32"),
        ("stride_h", 7, "uint32"),
        ("stride_w", 8, "uint32"),
        ("pad_h", 9, "uint32"),
        ("pad_w", 10, "uint32"),
    ],
    "InnerProductParameter": [("num_output", 1, "uint32"), ("bias_term", 2, "bool", "", "true")],
    "LRNParameter": [
        ("local_size", 1, "uint32", "", "5"),
        ("alpha", 2, "float", "", "1"),
        ("beta", 3, "float", "", "0.75"),
        ("norm_region", 4, "int32"),  # enum NormRegion
        ("k", 5, "float", "", "1"),
    ],
    "CropParameter": [("axis", 1, "int32", "", "2"), ("offset", 2, "uint32", "r")],
    "EltwiseParameter": [("operation", 1, "int32", "", "1"), ("coeff", 2, "float", "r")],
    "ScaleParameter": [
        ("axis", 1, "int32", "", "1"),
        ("num_axes", 2, "int32", "", "1"),
        ("bias_term", 4, "bool"),
    ],
    "LayerParameter": [
        ("name", 1, "string"),
        ("type", 2, "string"),
        ("bottom", 3, "string", "r"),
        ("top", 4, "string", "r"),
        ("blobs", 7, "BlobProto", "r"),
        ("convolution_param", 106, "ConvolutionParameter"),
        ("eltwise_param", 110, "EltwiseParameter"),
        ("inner_product_param", 117, "InnerProductParameter"),
        ("lrn_param", 118, "LRNParameter"),
        ("pooling_param", 121, "PoolingParameter"),
        ("scale_param", 142, "ScaleParameter"),
        ("crop_param", 144, "CropParameter"),
    ],
    "V1LayerParameter": [
        ("bottom", 2, "string", "r"),
        ("top", 3, "string", "r"),
        ("name", 4, "string"),
        ("type", 5, "int32"),  # enum LayerType
        ("blobs", 6, "BlobProto", "r"),
        ("convolution_param", 10, "ConvolutionParameter"),
        ("inner_product_param", 17, "InnerProductParameter"),
        ("lrn_param", 18, "LRNParameter"),
        ("pooling_param", 19, "PoolingParameter"),
        ("eltwise_param", 24, "EltwiseParameter"),
    ],
    "NetParameter": [
        ("name", 1, "string"),
        ("layers", 2, "V1LayerParameter", "r"),
        ("input", 3, "string", "r"),
        ("input_dim", 4, "int32", "r"),
        ("input_shape", 8, "BlobShape", "r"),
        ("layer", 100, "LayerParameter", "r"),
    ],
}


def _build_schema() -> dict[str, type]:
    """Message classes for `_SCHEMA`, so no generated ``caffe_pb2`` or ``protoc`` is needed."""
    fdp = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="fcnseg_caffe_subset.proto", package="caffe", syntax="proto2"
    )
    for message, fields in _SCHEMA.items():
        msg = file.message_type.add(name=message)
        for name, number, kind, flags, *default in (f + ("",) * (4 - len(f)) for f in fields):
            field = msg.field.add(name=name, number=number)
            field.label = fdp.LABEL_REPEATED if "r" in flags else fdp.LABEL_OPTIONAL
            if kind in _SCHEMA:
                field.type, field.type_name = fdp.TYPE_MESSAGE, f".caffe.{kind}"
            else:
                field.type = getattr(fdp, f"TYPE_{kind.upper()}")
            if "p" in flags:
                field.options.packed = True
            if default:
                field.default_value = default[0]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {m: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{m}")) for m in _SCHEMA}


_MESSAGES = _build_schema()
_NetParameter = _MESSAGES["NetParameter"]

# V1LayerParameter.LayerType -> V2 type string, as in Caffe's UpgradeV1LayerType.
_V1_TYPES = {
    0: "", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout",
    7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col",
    12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid", 20: "Softmax",
    21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData", 25: "Eltwise", 26: "Power",
    27: "SigmoidCrossEntropyLoss", 28: "HingeLoss", 29: "MemoryData", 30: "ArgMax",
    31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN", 35: "AbsVal", 36: "Silence",
    37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}  # fmt: skip
_V1_CODES = {name: code for code, name in _V1_TYPES.items()}

# Enum value names, indexed by value.
_ENUMS = {
    "pool": ("MAX", "AVE", "STOCHASTIC"),
    "operation": ("PROD", "SUM", "MAX"),
    "norm_region": ("ACROSS_CHANNELS", "WITHIN_CHANNEL"),
}
_SPATIAL = ("kernel_size", "stride", "pad", "dilation")


def _enum(kind: str, value: int) -> str:
    """The name of an enum value; IndexError for a value this module does not know (negative too)."""
    if not 0 <= value < len(_ENUMS[kind]):
        raise IndexError(f"{kind} {value}")
    return _ENUMS[kind][value]


def _axes(values, default: int) -> tuple[int, ...]:
    """Caffe's per-axis values: none means the default, one value applies to both axes."""
    values = tuple(values) or (default,)
    return values * 2 if len(values) == 1 else values


def _spatial(p, prefix: str, values, default: int) -> tuple[int, ...]:
    """Like `_axes`, but explicit ``<prefix>_h``/``<prefix>_w`` fields win, as in Caffe."""
    if p.HasField(f"{prefix}_h") or p.HasField(f"{prefix}_w"):
        return (getattr(p, f"{prefix}_h"), getattr(p, f"{prefix}_w"))
    return _axes(values, default)


def _conv(p) -> dict:
    return {
        "num_output": p.num_output,
        "kernel_size": _spatial(p, "kernel", p.kernel_size, 0),
        "stride": _spatial(p, "stride", p.stride, 1),
        "pad": _spatial(p, "pad", p.pad, 0),
        "dilation": _axes(p.dilation, 1),
        "group": p.group,
        "bias_term": p.bias_term,
    }


def _pool(p) -> dict:
    return {
        "pool": _enum("pool", p.pool),
        "kernel_size": _spatial(p, "kernel", [p.kernel_size], 0),
        "stride": _spatial(p, "stride", [p.stride], 1),
        "pad": _spatial(p, "pad", [p.pad], 0),
    }


def _lrn(p) -> dict:
    return {
        "local_size": p.local_size,
        "alpha": p.alpha,
        "beta": p.beta,
        "k": p.k,
        "norm_region": _enum("norm_region", p.norm_region),
    }


# V2 type -> (parameter field, reader). Caffe's defaults apply where a field is unset.
_PARAMS = {
    "Convolution": ("convolution_param", _conv),
    "Deconvolution": ("convolution_param", _conv),
    "Pooling": ("pooling_param", _pool),
    "InnerProduct": (
        "inner_product_param",
        lambda p: {"num_output": p.num_output, "bias_term": p.bias_term},
    ),
    "LRN": ("lrn_param", _lrn),
    "Eltwise": (
        "eltwise_param",
        lambda p: {"operation": _enum("operation", p.operation), "coeff": tuple(p.coeff)},
    ),
    "Crop": ("crop_param", lambda p: {"axis": p.axis, "offset": tuple(p.offset)}),
    "Scale": (
        "scale_param",
        lambda p: {"axis": p.axis, "num_axes": p.num_axes, "bias_term": p.bias_term},
    ),
}


def _blob_array(blob, path: Path, layer: str, index: int) -> np.ndarray:
    legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    shape = (blob.num, blob.channels, blob.height, blob.width) if legacy else tuple(blob.shape.dim)
    if any(d < 0 for d in shape):
        raise CaffeFormatError(f"{path}: layer {layer!r} blob {index} has a negative dimension: {shape}")
    array = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    expected = math.prod(shape)  # Python's integers: no overflow whatever the dimensions
    if array.size != expected:
        raise CaffeFormatError(
            f"{path}: layer {layer!r} blob {index} has shape {shape}, which needs {expected} "
            f"values, but it holds {array.size}"
        )
    return array.reshape(shape)


def _text(value: str | bytes) -> str:
    """A string field as text: protobuf returns proto2 strings that are not UTF-8 as bytes."""
    return value if isinstance(value, str) else value.decode("utf-8", errors="backslashreplace")


def _read_layer(lp, path: Path) -> CaffeLayer:
    name = _text(lp.name)
    if isinstance(lp, _MESSAGES["V1LayerParameter"]):
        if lp.type not in _V1_TYPES:
            raise CaffeFormatError(f"{path}: layer {name!r} has unknown V1 type {lp.type}")
        type_ = _V1_TYPES[lp.type]
    else:
        type_ = _text(lp.type)
    blobs = [_blob_array(b, path, name, i) for i, b in enumerate(lp.blobs)]
    field, reader = _PARAMS.get(type_, (None, None))
    try:
        params = reader(getattr(lp, field)) if reader else {}
    except IndexError as e:  # an enum value this module does not know
        raise CaffeFormatError(f"{path}: layer {name!r} has an unknown {field} enum") from e
    return CaffeLayer(name=name, type=type_, blobs=blobs, params=params)


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
    """All layers of a binary Caffe NetParameter (current `layer` or legacy V1 `layers`), in file order.

    Raises `CaffeFormatError` for a missing, unreadable, truncated or corrupt file, a net without
    layers, one with both `layer` and `layers` (Caffe refuses to upgrade such a net), or a blob
    whose value count does not match its shape.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CaffeFormatError(f"{path}: cannot read the Caffe model: {e}") from e
    if not data:
        raise CaffeFormatError(f"{path} is empty (0 bytes): not a Caffe model")
    try:
        net = _NetParameter.FromString(data)
    except DecodeError as e:
        raise CaffeFormatError(f"{path}: not a binary Caffe NetParameter (truncated or corrupt?): {e}") from e
    if len(net.layer) and len(net.layers):
        raise CaffeFormatError(
            f"{path}: holds both V2 'layer' ({len(net.layer)}) and V1 'layers' ({len(net.layers)}) "
            "fields; Caffe refuses to load such a net"
        )
    if not (len(net.layer) or len(net.layers)):
        raise CaffeFormatError(f"{path}: the net has no layers")
    return [_read_layer(lp, path) for lp in (net.layer if len(net.layer) else net.layers)]


def _put_params(p, params: dict, layer: str) -> None:
    """Inverse of the readers in `_PARAMS`; keys left out keep Caffe's defaults."""
    for key, value in params.items():
        if key not in p.DESCRIPTOR.fields_by_name:
            raise CaffeFormatError(f"layer {layer!r}: {p.DESCRIPTOR.name} has no field {key!r}")
        if key in _ENUMS:
            value = _ENUMS[key].index(value)
        if key in _SPATIAL:
            value = tuple(np.atleast_1d(value).tolist())
            value = value[:1] if len(set(value)) == 1 else value
        if hasattr(getattr(p, key), "extend"):  # a repeated field
            getattr(p, key).extend(value)
        elif isinstance(value, tuple) and len(value) == 1:
            setattr(p, key, value[0])
        elif isinstance(value, tuple):  # non-square pooling: only *_h/*_w can say it
            prefix = key.removesuffix("_size")
            setattr(p, f"{prefix}_h", value[0])
            setattr(p, f"{prefix}_w", value[1])
        else:
            setattr(p, key, value)


def _packed_floats(array: np.ndarray) -> bytes:
    """``BlobProto.data`` as one packed field, built by numpy: ``data.extend`` boxes every float."""
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    n, head = len(raw), bytearray(b"\x2a")  # field 5, wire type 2 (length-delimited)
    while n > 0x7F:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + raw


def write_caffemodel(
    path: str | os.PathLike,
    layers: list[CaffeLayer],
    *,
    legacy_v1: bool = False,
    name: str = "net",
) -> None:
    """Encode layers as a binary NetParameter; small nets for tests and for exporting back to Caffe.

    Only names, types, blobs and params are written, no bottoms or tops: Caffe copies weights into
    a net defined by a prototxt by layer name. With `legacy_v1` the layers use the V1 `layers`
    field and enum types, and blobs use the legacy 4-D dims (shorter shapes padded with leading 1s,
    as Caffe did for biases).
    """
    net = _NetParameter(name=name)
    for layer in layers:
        lp = net.layers.add() if legacy_v1 else net.layer.add()
        lp.name = layer.name
        if legacy_v1:
            if layer.type not in _V1_CODES:
                raise CaffeFormatError(f"layer {layer.name!r}: type {layer.type!r} has no V1 code")
            lp.type = _V1_CODES[layer.type]
        else:
            lp.type = layer.type
        for array in layer.blobs:
            array = np.asarray(array, dtype=np.float32)
            blob = lp.blobs.add()
            if legacy_v1:
                if array.ndim > 4:
                    raise CaffeFormatError(f"layer {layer.name!r}: a V1 blob has at most 4 dims")
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
            else:
                blob.shape.dim.extend(array.shape)
            if array.size:
                blob.MergeFromString(_packed_floats(array))
        if layer.params:
            if layer.type not in _PARAMS:
                raise CaffeFormatError(f"layer {layer.name!r}: no params known for type {layer.type!r}")
            _put_params(getattr(lp, _PARAMS[layer.type][0]), layer.params, layer.name)
    Path(path).write_bytes(net.SerializeToString())
