"""A small reader for MATLAB v5 MAT-files, enough for the label files of SBD, NYUDv2, SIFT Flow,
PASCAL-Context, BSDS500 and the skeleton sets.

Why not ``scipy.io.loadmat``: a damaged file must be refused with an error naming it, and scipy's
reader (1.17.1) crashes the process instead (a segmentation fault) on 12 or 13 of the 600 mutated files
of ``tests/test_fuzz.py``'s MAT-file cases, taking a training run with it; this reader loads or
refuses every one of them (``benchmarks/mat_readers.py`` counts both readers' outcomes).
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fcnseg.errors import FcnsegError

__all__ = ["MatReadError", "load_label_map", "load_mat"]

# Data element types (the "mi" constants of the MAT-file format).
_MI_DTYPES = {
    1: "i1",  # miINT8
    2: "u1",  # miUINT8
    3: "i2",  # miINT16
    4: "u2",  # miUINT16
    5: "i4",  # miINT32
    6: "u4",  # miUINT32
    7: "f4",  # miSINGLE
    9: "f8",  # miDOUBLE
    12: "i8",  # miINT64
    13: "u8",  # miUINT64
    16: "u1",  # miUTF8
    17: "u2",  # miUTF16
    18: "u4",  # miUTF32
}
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 14, 15, 16

# Array classes (the "mx" constants); numeric classes map to their numpy type.
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_CHAR, _MX_SPARSE = 1, 2, 3, 4, 5
_MX_DTYPES = {
    6: "f8",
    7: "f4",
    8: "i1",
    9: "u1",
    10: "i2",
    11: "u2",
    12: "i4",
    13: "u4",
    14: "i8",
    15: "u8",
}
_FLAG_COMPLEX, _FLAG_LOGICAL = 0x0800, 0x0200

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_ELEMENTS = (1 << 48) - 1
"""MATLAB's largest array (even one with a zero dimension, whose other dimensions multiply to this)."""
_MAX_DENSE = 1 << 28
"""The most elements a sparse matrix may expand to (2 GiB of doubles): label maps are far smaller."""


class MatReadError(FcnsegError):
    """A MAT-file that this reader cannot read; the message names the file."""


def load_mat(path: str | Path, variable_names: Iterable[str] | None = None) -> dict[str, Any]:
    """Read the variables of a MAT v5 file (as written by MATLAB's default ``save``, compressed
    or not).

    Values keep MATLAB's shapes (a scalar is a (1, 1) array; nothing is squeezed) in MATLAB's
    column-major element order:
    numeric -> ndarray of the matching dtype (complex if stored complex), logical -> bool ndarray,
    char -> ``str`` for a single row, else a list of row strings, cell -> object ndarray,
    1x1 struct -> dict of fields, struct array -> object ndarray of dicts,
    sparse -> dense ndarray (float64 or bool).

    ``variable_names`` restricts which variables are decoded; others are skipped unread, so a file
    with a variable of an unsupported class (objects, tables) still yields the ones asked for.
    """
    path = Path(path)
    data = path.read_bytes()
    endian = _check_header(data, path)
    wanted = None if variable_names is None else set(variable_names)
    variables: dict[str, Any] = {}
    pos = 128
    while pos + 8 <= len(data):
        mtype, nbytes, start, pos = _read_tag(data, pos, endian, path)
        if mtype == _MI_COMPRESSED:
            try:  # a decompressor object, unlike zlib.decompress, tolerates a missing checksum
                element = zlib.decompressobj().decompress(data[start : start + nbytes])
            except zlib.error as exc:
                raise MatReadError(f"{path}: corrupt compressed variable: {exc}") from exc
            mtype, nbytes, start, _ = _read_tag(element, 0, endian, path)
        else:
            element = data
        if mtype != _MI_MATRIX:
            raise MatReadError(f"{path}: expected a matrix element, found data type {mtype}")
        reader = _MatrixReader(element[start : start + nbytes], endian, path)
        name = reader.read_header()
        if name and (wanted is None or name in wanted):
            variables[name] = reader.read_body(name)
    return variables


def load_label_map(path: str | Path, name: str, field: str | None = None) -> np.ndarray:
    """The 2-D integer label map a MAT-file holds in variable ``name`` (or its struct field ``field``),
    as int64; anything else is a ``MatReadError`` naming the file and the variable."""
    value = load_mat(path, [name]).get(name)
    where = f"variable {name!r}"
    if field is not None:
        if not isinstance(value, dict) or field not in value:
            raise MatReadError(f"{path}: expected a struct {name} with a field {field}")
        value, where = value[field], f"field {name}.{field}"
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype.kind not in "biuf":
        raise MatReadError(f"{path}: expected {where} to be a 2-D numeric array")
    if value.dtype.kind == "f" and not np.array_equal(value, np.round(value)):  # NaN too
        raise MatReadError(f"{path}: {where} holds values that are not whole numbers (class ids)")
    return value.astype(np.int64)


def _check_header(data: bytes, path: Path) -> str:
    """The byte order of a v5 file, or a clear error for anything else (v7.3 above all)."""
    if data[:10] == b"MATLAB 7.3" or data[512:520] == _HDF5_SIGNATURE:
        raise MatReadError(
            f"{path} is a MATLAB v7.3 (HDF5) MAT-file, which fcnseg cannot read. Re-save it as a "
            f"v7 file, e.g. in MATLAB: s = load('{path.name}'); save('{path.name}', '-struct', "
            "'s', '-v7')"
        )
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
        raise MatReadError(f"{path} is not a MATLAB v5 MAT-file (v4 and other formats are unsupported)")
    endian = "<" if data[126:128] == b"IM" else ">"
    (version,) = struct.unpack(endian + "H", data[124:126])
    if version != 0x0100:
        raise MatReadError(f"{path}: unsupported MAT-file version {version:#06x}")
    return endian


def _read_tag(data: bytes, pos: int, endian: str, path: Path) -> tuple[int, int, int, int]:
    """Parse the data element tag at ``pos``: (type, byte count, data start, next element)."""
    if pos + 8 > len(data):
        raise MatReadError(f"{path}: file ends inside a data element (truncated?)")
    (word,) = struct.unpack_from(endian + "I", data, pos)
    if word >> 16:  # small data element: type and size share one word, data in the next four
        if word >> 16 > 4:
            raise MatReadError(f"{path}: a small data element claims {word >> 16} bytes; it holds at most 4")
        return word & 0xFFFF, word >> 16, pos + 4, pos + 8
    (nbytes,) = struct.unpack_from(endian + "I", data, pos + 4)
    start = pos + 8
    if start + nbytes > len(data):
        raise MatReadError(f"{path}: file ends inside a data element (truncated?)")
    if word == _MI_COMPRESSED:  # compressed elements are not padded
        return word, nbytes, start, start + nbytes
    return word, nbytes, start, start + (nbytes + 7) // 8 * 8


class _MatrixReader:
    """Decodes the sub-elements of one miMATRIX element."""

    def __init__(self, data: bytes, endian: str, path: Path):
        self.data, self.endian, self.path = data, endian, path
        self.pos = 0

    def element(self) -> tuple[int, bytes]:
        mtype, nbytes, start, self.pos = _read_tag(self.data, self.pos, self.endian, self.path)
        return mtype, self.data[start : start + nbytes]

    def numbers(self, at_least: int = 0) -> np.ndarray:
        mtype, raw = self.element()
        if mtype not in _MI_DTYPES:
            raise MatReadError(f"{self.path}: unexpected data type {mtype} in a matrix")
        dtype = np.dtype(self.endian + _MI_DTYPES[mtype])
        if len(raw) % dtype.itemsize:
            raise MatReadError(f"{self.path}: {len(raw)} bytes are not a whole number of {dtype.name} values")
        if len(raw) < at_least * dtype.itemsize:
            raise MatReadError(
                f"{self.path}: a data element has {len(raw)} bytes where {at_least} values are due"
            )
        return np.frombuffer(raw, dtype=dtype)

    def read_header(self) -> str:
        """Read array flags, dimensions and name (returned); the body is read by ``read_body``."""
        self.flags = int(self.numbers(at_least=1)[0])
        self.mx_class = self.flags & 0xFF
        self.dims = tuple(int(d) for d in self.numbers())
        if (
            len(self.dims) < 2
            or min(self.dims) < 0
            or math.prod(max(d, 1) for d in self.dims) > _MAX_ELEMENTS
        ):
            raise MatReadError(f"{self.path}: array dimensions {self.dims} are not a MATLAB array's")
        self.size = math.prod(self.dims)
        return self.element()[1].decode("ascii", errors="replace")

    def _sized(self, values: np.ndarray, what: str) -> np.ndarray:
        """``values`` in MATLAB's shape, checked to be as many as the dimensions need."""
        if values.size != self.size:
            raise MatReadError(
                f"{self.path}: {what} holds {values.size} values; its dimensions {self.dims} need {self.size}"
            )
        return values.reshape(self.dims, order="F")

    def read_body(self, name: str) -> Any:
        dims, cls = self.dims, self.mx_class
        if cls in _MX_DTYPES:
            return self._numeric(dims, _MX_DTYPES[cls])
        if cls == _MX_CHAR:
            return self._char(dims, name)
        if cls == _MX_CELL:
            cells = [self._sub_matrix(name) for _ in range(self.size)]
            return _object_array(cells, dims)
        if cls == _MX_STRUCT:
            return self._struct(dims, name)
        if cls == _MX_SPARSE:
            return self._sparse(dims)
        kind = "an object" if cls == _MX_OBJECT else f"array class {cls}"
        raise MatReadError(f"{self.path}: variable {name!r} is {kind}, which is not supported")

    def _numeric(self, dims: tuple[int, ...], dtype: str) -> np.ndarray:
        # MATLAB may store values in a smaller type than their class (doubles as uint8, say).
        real = self._sized(self.numbers().astype(dtype), "an array")
        if self.flags & _FLAG_COMPLEX:
            real = real + 1j * self._sized(self.numbers().astype(dtype), "the imaginary part of an array")
        if self.flags & _FLAG_LOGICAL:
            real = real.astype(bool)
        return real

    def _char(self, dims: tuple[int, ...], name: str) -> str | list[str]:
        if len(dims) != 2:
            raise MatReadError(f"{self.path}: char variable {name!r} has {len(dims)} dimensions")
        mtype, raw = self.element()
        if mtype == _MI_UTF8:
            try:
                codes = np.array([ord(c) for c in raw.decode("utf-8")], dtype=np.int64)
            except UnicodeDecodeError as exc:
                raise MatReadError(f"{self.path}: char variable {name!r} is not valid UTF-8: {exc}") from exc
        elif mtype in _MI_DTYPES and len(raw) % np.dtype(_MI_DTYPES[mtype]).itemsize == 0:
            codes = np.frombuffer(raw, dtype=self.endian + _MI_DTYPES[mtype]).astype(np.int64)
        else:
            raise MatReadError(
                f"{self.path}: char variable {name!r} has data type {mtype} of {len(raw)} bytes"
            )
        if codes.size and not 0 <= codes.min() <= codes.max() <= sys.maxunicode:
            raise MatReadError(f"{self.path}: char variable {name!r} holds codes that are not characters")
        rows = ["".join(map(chr, row)) for row in self._sized(codes, f"char variable {name!r}")]
        if len(rows) <= 1:
            return rows[0] if rows else ""
        return rows

    def _struct(self, dims: tuple[int, ...], name: str) -> dict[str, Any] | np.ndarray:
        length = int(self.numbers(at_least=1)[0])
        raw = self.element()[1]
        if length < 1:
            raise MatReadError(f"{self.path}: struct {name!r} has field names of length {length}")
        try:
            fields = [
                raw[i : i + length].split(b"\0", 1)[0].decode("ascii") for i in range(0, len(raw), length)
            ]
        except UnicodeDecodeError as exc:
            raise MatReadError(f"{self.path}: struct {name!r} has field names that are not ASCII") from exc
        records = [{f: self._sub_matrix(f"{name}.{f}") for f in fields} for _ in range(self.size)]
        return records[0] if dims == (1, 1) else _object_array(records, dims)

    def _sparse(self, dims: tuple[int, ...]) -> np.ndarray:
        rows, col_starts = self.numbers().astype(np.int64), self.numbers().astype(np.int64)
        values = self.numbers().astype(np.float64)
        if self.flags & _FLAG_COMPLEX:
            imaginary = self.numbers()
            if imaginary.shape != values.shape:
                raise MatReadError(
                    f"{self.path}: a sparse matrix has {len(values)} real and {len(imaginary)} "
                    "imaginary values"
                )
            values = values + 1j * imaginary
        if len(dims) != 2 or self.size > _MAX_DENSE:
            raise MatReadError(f"{self.path}: a sparse matrix of size {dims} cannot be made dense")
        nnz = int(col_starts[-1]) if len(col_starts) else 0
        if (
            len(col_starts) != dims[1] + 1
            or col_starts[0] != 0
            or np.any(np.diff(col_starts) < 0)
            or nnz > min(len(rows), len(values))
            or (nnz and not 0 <= rows[:nnz].min() <= rows[:nnz].max() < dims[0])
        ):
            raise MatReadError(f"{self.path}: a sparse matrix of size {dims} has inconsistent indices")
        dtype = bool if self.flags & _FLAG_LOGICAL else values.dtype
        dense = np.zeros(dims, dtype=dtype)
        cols = np.repeat(np.arange(dims[1]), np.diff(col_starts))
        dense[rows[:nnz], cols] = values[:nnz]
        return dense

    def _sub_matrix(self, name: str) -> Any:
        mtype, raw = self.element()
        if mtype != _MI_MATRIX:
            raise MatReadError(f"{self.path}: {name!r} holds data type {mtype}, not a matrix")
        if not raw:  # MATLAB writes an empty [] as a matrix element with no bytes
            return np.zeros((0, 0))
        sub = _MatrixReader(raw, self.endian, self.path)
        sub.read_header()
        return sub.read_body(name)


def _object_array(items: list[Any], dims: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):  # item by item: numpy would broadcast equal-shaped arrays
        out[i] = item
    return out.reshape(dims, order="F")
