"""The Caffe reference models, kept small: Caffe's own files with the blob values taken out.

The fixture nets hold seeded random weights (``tests/fixtures/caffe/README.md``), so the
values need not be stored: :func:`restore` draws them again from the seed, writes them back
into the file Caffe wrote, and checks that the result is byte for byte that file (SHA-256).
Only the protobuf wire format is touched, so every other byte is Caffe's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).parent / "fixtures" / "caffe"
SEEDS = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8, "fcn_alexnet": 100, "fcn8s_v1layers": 8}
"""Model file -> seed of the ``np.random.RandomState`` its values were drawn from."""
INPUTS = {"500x375": 500375, "97x131": 97131}
"""Input (height x width) -> seed of its values, uniform in [-128, 128)."""

# Field numbers of caffe.proto. V2: NetParameter.layer, LayerParameter.{type, blobs,
# convolution_param}; V1: NetParameter.layers, V1LayerParameter.{type, blobs, convolution_param}.
_V2 = {"layers": 100, "type": 2, "blobs": 7, "conv": 106}
_V1 = {"layers": 2, "type": 5, "blobs": 6, "conv": 10}
_V1_DECONVOLUTION = 39
_BLOB_DATA, _BLOB_SHAPE, _SHAPE_DIM, _CONV_STRIDE = 5, 7, 1, 6
_LEGACY_DIMS = (1, 2, 3, 4)  # num, channels, height, width


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, int, bytes, bytes | int]]:
    """(number, wire type, raw bytes of the whole field, payload) for each field of a message."""
    fields, i = [], 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            payload, i = _varint(buf, i)
        elif wire == 2:
            length, i = _varint(buf, i)
            payload, i = buf[i : i + length], i + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            payload, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"unexpected wire type {wire}")
        fields.append((number, wire, buf[start:i], payload))
    return fields


def _delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _map_blobs(model: bytes, change) -> bytes:
    """Rewrite every blob of every layer with ``change(layer_fields, index, blob_bytes, numbers)``."""
    numbers = _V2 if any(n == _V2["layers"] for n, *_ in _fields(model)) else _V1
    out = bytearray()
    for number, _, raw, payload in _fields(model):
        if number != numbers["layers"]:
            out += raw
            continue
        layer_fields = _fields(payload)
        layer, index = bytearray(), 0
        for n, _, raw_field, blob in layer_fields:
            if n == numbers["blobs"]:
                raw_field = _delimited(n, change(layer_fields, index, blob, numbers))
                index += 1
            layer += raw_field
        out += _delimited(number, bytes(layer))
    return bytes(out)


def strip(model: bytes) -> bytes:
    """The model with every blob's values replaced by an empty list (shapes and all else kept)."""

    def empty(layer_fields, index, blob, numbers):
        return b"".join(_delimited(n, b"") if n == _BLOB_DATA else raw for n, wire, raw, _ in _fields(blob))

    return _map_blobs(model, empty)


def _shape(blob: bytes) -> tuple[int, ...]:
    fields = _fields(blob)
    legacy = {n: v for n, w, _, v in fields if n in _LEGACY_DIMS and w == 0}
    if legacy:
        return tuple(legacy.get(n, 1) for n in _LEGACY_DIMS)
    for n, _, _, payload in fields:
        if n == _BLOB_SHAPE:
            dims, i = [], 0
            for dn, dw, _, dv in _fields(payload):
                assert dn == _SHAPE_DIM and dw == 2, "expected packed dims"
                while i < len(dv):
                    value, i = _varint(dv, i)
                    dims.append(value)
            return tuple(dims)
    raise ValueError("blob without a shape")


def _is_deconvolution(layer_fields, numbers) -> bool:
    kind = next(v for n, _, _, v in layer_fields if n == numbers["type"])
    return kind == (_V1_DECONVOLUTION if numbers is _V1 else b"Deconvolution")


def _stride(layer_fields, numbers) -> int:
    conv = next(v for n, _, _, v in layer_fields if n == numbers["conv"])
    strides = [v for n, w, _, v in _fields(conv) if n == _CONV_STRIDE and w == 0]
    return strides[0] if strides else 1


def restore(stripped: bytes, seed: int) -> bytes:
    """Draw the values again, in layer order, weight before bias, as the fixtures were made."""
    rng = np.random.RandomState(seed)

    def refill(layer_fields, index, blob, numbers):
        shape = _shape(blob)
        if _is_deconvolution(layer_fields, numbers):  # (in, out, k, k): N(0, sqrt(1 / (in (k/s)^2)))
            ratio = shape[2] / _stride(layer_fields, numbers)
            values = rng.normal(0, np.sqrt(1 / (shape[0] * ratio**2)), size=shape)
        elif index == 0:  # convolution weight: N(0, sqrt(2 / fan_in))
            values = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), size=shape)
        else:  # bias: U(-0.1, 0.1)
            values = rng.uniform(-0.1, 0.1, size=shape)
        data = values.astype("<f4").tobytes()
        return b"".join(_delimited(n, data) if n == _BLOB_DATA else raw for n, _, raw, _ in _fields(blob))

    return _map_blobs(stripped, refill)


def expected_sha256() -> dict[str, str]:
    """File name -> SHA-256 of the file Caffe wrote, from ``SHA256SUMS``."""
    lines = (FOLDER / "SHA256SUMS").read_text().split("\n")
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def _checked(data: bytes, name: str, sums: dict[str, str]) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sums[name]:
        raise AssertionError(f"restored {name} has SHA-256 {digest}, the original has {sums[name]}")
    return data


def restore_all(dest: Path) -> Path:
    """Write every reference model and input, restored and checked, into ``dest``, with the blob files."""
    sums = expected_sha256()
    for name, seed in SEEDS.items():
        data = restore((FOLDER / f"{name}.caffemodel.stripped").read_bytes(), seed)
        (dest / f"{name}.caffemodel").write_bytes(_checked(data, f"{name}.caffemodel", sums))
    for size, seed in INPUTS.items():
        shape = (1, 3, *(int(s) for s in size.split("x")))
        data = np.random.RandomState(seed).uniform(-128, 128, size=shape).astype("<f4")
        _checked(data.tobytes(), f"input_{size}.data", sums)
        np.savez(dest / f"input_{size}.npz", data=data, seed=seed)
    for path in FOLDER.glob("*.npz"):
        (dest / path.name).symlink_to(path)
    return dest
