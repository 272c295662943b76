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
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from fcnseg.errors import FcnsegError

__all__ = ["CaffeFormatError", "CaffeLayer", "read_blob_shapes", "read_caffemodel", "write_caffemodel"]


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


# Wire-format field numbers of caffe.proto, for reading shapes without decoding the weights.
_NET_LAYER, _NET_LAYERS = 100, 2  # NetParameter.layer (V2), .layers (V1)
_LAYER_FIELDS = {_NET_LAYER: (1, 7), _NET_LAYERS: (4, 6)}  # (name, blobs) of LayerParameter, V1LayerParameter
_BLOB_LEGACY, _BLOB_SHAPE, _SHAPE_DIM = (1, 2, 3, 4), 7, 1  # BlobProto num..width, shape; BlobShape.dim


def _varint(data, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise IndexError("varint runs past its message")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data, pos: int, end: int):
    """``(field number, wire type, value)`` of one message in ``data[pos:end]``: a varint's value, or a
    length-delimited field's ``(start, end)``; fixed-width fields (the floats of an unpacked blob) are
    stepped over."""
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _varint(data, pos, end)
        elif kind == 2:
            length, pos = _varint(data, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif kind in (1, 5):
            value, pos = None, pos + (8 if kind == 1 else 4)
        else:
            raise IndexError(f"wire type {kind} (field {number}) is no part of a Caffe model")
        if pos > end:
            raise IndexError(f"field {number} runs past its message")
        yield number, kind, value


def _signed(value: int) -> int:
    """An int32 or int64 varint as its signed value (negative ones are ten bytes of two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _blob_shape(data, start: int, end: int) -> tuple[int, ...]:
    """A BlobProto's shape as ``Blob::FromProto`` takes it: the legacy num/channels/height/width when
    any of them is set, else ``shape.dim``."""
    legacy: dict[int, int] = {}
    dims: list[int] = []
    for number, kind, value in _fields(data, start, end):
        if number in _BLOB_LEGACY and kind == 0:
            legacy[number] = _signed(value)
        elif number == _BLOB_SHAPE and kind == 2:
            for dim_number, dim_kind, dim in _fields(data, *value):
                if dim_number != _SHAPE_DIM:
                    continue
                if dim_kind == 0:  # unpacked
                    dims.append(_signed(dim))
                elif dim_kind == 2:  # packed
                    pos, stop = dim
                    while pos < stop:
                        packed, pos = _varint(data, pos, stop)
                        dims.append(_signed(packed))
    if legacy:
        return tuple(legacy.get(number, 0) for number in _BLOB_LEGACY)
    return tuple(dims)


def read_blob_shapes(path: str | os.PathLike, data: bytes | None = None) -> dict[str, list[tuple[int, ...]]]:
    """``{layer name: blob shapes}`` of a Caffe model's layers that carry blobs, read from the wire
    format without decoding a weight: the file is mapped, not read, and its float data skipped, so
    that a 500 MB model is described in milliseconds. ``data``: the model's bytes where they are at
    hand already (an archive's member; ``path`` then only names it). What a model holds beyond the
    shapes is checked by :func:`read_caffemodel` alone; one that is no binary NetParameter raises
    `CaffeFormatError`.
    """
    path = Path(path)
    try:
        if data is not None:
            return _layer_shapes(memoryview(data), path)
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size == 0:  # no mapping of an empty file
                return _layer_shapes(b"", path)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return _layer_shapes(mapped, path)
    except OSError as e:
        raise CaffeFormatError(f"{path}: cannot read the Caffe model: {e}") from e
    except IndexError as e:
        raise CaffeFormatError(f"{path}: not a binary Caffe NetParameter (truncated or corrupt?): {e}") from e


def _layer_shapes(data, path: Path) -> dict[str, list[tuple[int, ...]]]:
    if not len(data):
        raise CaffeFormatError(f"{path} is empty (0 bytes): not a Caffe model")
    layers = [
        (number, value)
        for number, kind, value in _fields(data, 0, len(data))
        if kind == 2 and number in _LAYER_FIELDS
    ]
    if len({number for number, _ in layers}) > 1:
        raise CaffeFormatError(
            f"{path}: holds both V2 'layer' and V1 'layers' fields; Caffe refuses to load such a net"
        )
    if not layers:
        raise CaffeFormatError(f"{path}: the net has no layers")
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for number, (start, end) in layers:
        name_field, blobs_field = _LAYER_FIELDS[number]
        name, blobs = "", []
        for field, kind, value in _fields(data, start, end):
            if kind != 2:
                continue
            if field == name_field:
                name = _text(bytes(data[value[0] : value[1]]))
            elif field == blobs_field:
                blobs.append(_blob_shape(data, *value))
        if any(d < 0 for shape in blobs for d in shape):
            raise CaffeFormatError(f"{path}: layer {name!r} has a blob of negative dimension: {blobs}")
        if blobs:
            shapes[name] = blobs
    return shapes


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
