"""Test-side writer of tiny MATLAB v5 MAT-files (plain or zlib-compressed), so tests need no scipy."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MI = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 9, "i8": 12, "u8": 13}
_MX = {"f8": 6, "f4": 7, "i1": 8, "u1": 9, "i2": 10, "u2": 11, "i4": 12, "u4": 13, "i8": 14, "u8": 15}
_LOGICAL, _COMPLEX = 0x0200, 0x0800


@dataclass
class Stored:
    """An array written with a smaller storage type than its class, as MATLAB does for doubles."""

    array: np.ndarray
    storage: str


@dataclass
class Sparse:
    """A dense array written as a MATLAB sparse matrix."""

    array: np.ndarray


def every_kind(seg: np.ndarray) -> dict[str, Any]:
    """Variables of every kind the reader knows, around a label map ``seg``: a struct of labels and a
    cell of sparse boundaries (SBD's layout), a double stored as uint8, complex numbers, a cell of
    strings, a sparse matrix: the file the fuzz tests damage."""
    return {
        "GTcls": {"Segmentation": seg, "Boundaries": [Sparse(seg == 1), None], "Name": "cat"},
        "S": Stored(np.array([[0.0, 1.0, 33.0], [2.0, 5.0, 0.0]]), "u1"),
        "z": np.array([[1 + 2j, -3j]]),
        "names": ["sky", "tree", None],
        "weights": Sparse(np.array([[0.0, 2.5], [0.0, 0.0], [-1.0, 0.0]])),
    }


def write_mat(path: Path, variables: dict[str, Any], compress: bool = False, endian: str = "<"):
    head = b"MATLAB 5.0 MAT-file, written by the fcnseg tests".ljust(116, b" ") + b"\0" * 8
    head += struct.pack(endian + "H", 0x0100) + (b"IM" if endian == "<" else b"MI")
    body = b""
    for name, value in variables.items():
        element = _matrix(value, name, endian)
        if compress:
            packed = zlib.compress(element)
            body += struct.pack(endian + "II", 15, len(packed)) + packed
        else:
            body += element
    Path(path).write_bytes(head + body)


def _element(mtype: int, payload: bytes, e: str) -> bytes:
    if 0 < len(payload) <= 4:  # the small data element format
        return struct.pack(e + "I", (len(payload) << 16) | mtype) + payload.ljust(4, b"\0")
    pad = -len(payload) % 8
    return struct.pack(e + "II", mtype, len(payload)) + payload + b"\0" * pad


def _numbers(array: np.ndarray, e: str) -> bytes:
    flat = np.asarray(array).flatten(order="F")
    return _element(_MI[flat.dtype.str[1:]], flat.astype(e + flat.dtype.str[1:]).tobytes(), e)


def _matrix(value: Any, name: str, e: str) -> bytes:
    if value is None:  # MATLAB's empty []
        return struct.pack(e + "II", 14, 0)
    nzmax, parts = 0, []
    if isinstance(value, str):
        cls, flags, dims = 4, 0, (1, len(value))
        parts.append(_numbers(np.array([ord(c) for c in value], dtype=np.uint16), e))
    elif isinstance(value, dict):
        cls, flags, dims = 2, 0, (1, 1)
        parts.append(_numbers(np.array([32], dtype=np.int32), e))
        parts.append(_element(1, b"".join(f.encode().ljust(32, b"\0") for f in value), e))
        parts += [_matrix(v, "", e) for v in value.values()]
    elif isinstance(value, list):
        cls, flags, dims = 1, 0, (1, len(value))
        parts += [_matrix(v, "", e) for v in value]
    elif isinstance(value, Sparse):
        dense = np.asarray(value.array)
        cls, dims = 5, dense.shape
        flags = _LOGICAL if dense.dtype == bool else 0
        rows, cols = np.nonzero(dense.T)[::-1]  # column-major order of the nonzeros
        nzmax = max(len(rows), 1)
        col_starts = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=dims[1]))])
        values = dense[rows, cols].astype(np.uint8 if flags else np.float64)
        parts += [_numbers(rows.astype(np.int32), e), _numbers(col_starts.astype(np.int32), e)]
        parts.append(_numbers(values, e))
    else:
        stored = value if isinstance(value, Stored) else Stored(np.asarray(value), "")
        array = np.atleast_2d(stored.array)
        dims, flags = array.shape, 0
        if array.dtype == bool:
            cls, flags, array = 9, _LOGICAL, array.astype(np.uint8)
        elif np.iscomplexobj(array):
            cls, flags = _MX[array.real.dtype.str[1:]], _COMPLEX
        else:
            cls = _MX[array.dtype.str[1:]]
        storage = stored.storage or array.real.dtype.str[1:]
        parts.append(_numbers(array.real.astype(storage), e))
        if flags & _COMPLEX:
            parts.append(_numbers(array.imag.astype(storage), e))
    header = _numbers(np.array([cls | flags, nzmax], dtype=np.uint32), e)
    header += _numbers(np.array(dims, dtype=np.int32), e) + _element(1, name.encode(), e)
    payload = header + b"".join(parts)
    return struct.pack(e + "II", 14, len(payload)) + payload
