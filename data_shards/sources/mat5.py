"""A minimal reader for MATLAB 5 MAT-files: the numeric arrays of what MATLAB's `save` writes (v6, and v7's default
with zlib-compressed `miCOMPRESSED` elements), in either byte order.

Enough for the oxford_flowers102 release (imagelabels.mat: `labels` 1×8189; setid.mat: `trnid`, `valid`, `tstid`),
without scipy. MATLAB stores a double array of whole numbers in the smallest type that holds them (uint8, uint16);
the values come back in the array's own class (double stays float64). Cells, structs, char, sparse and complex
arrays, and v7.3 files (HDF5), are refused with a SourceError naming the file and the variable.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from data_shards.records import SourceError

HEADER_BYTES = 128
MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
STORAGE_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
CLASS_TYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
CLASS_NAMES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse"}
COMPLEX_FLAG = 0x0800


class _Element:
    """One data element: its type, its bytes, and where the next one starts."""

    def __init__(self, data: bytes, position: int, order: str, pad: bool, where: str):
        if position + 8 > len(data):
            raise SourceError(f"{where}: truncated element tag at byte {position}")
        first = struct.unpack_from(order + "I", data, position)[0]
        if first >> 16:  # small element: type and size share the first 4 bytes, the data the next 4
            self.kind, size = first & 0xFFFF, first >> 16
            self.body, self.next = data[position + 4 : position + 4 + size], position + 8
            return
        self.kind = first
        size = struct.unpack_from(order + "I", data, position + 4)[0]
        if position + 8 + size > len(data):
            raise SourceError(f"{where}: element at byte {position} needs {size} bytes, the data ends first")
        self.body = data[position + 8 : position + 8 + size]
        self.next = position + 8 + (size + 7) // 8 * 8 if pad else position + 8 + size


def read_mat(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a MAT 5 file, each shaped as MATLAB has it (column-major dims)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    order = _byte_order(data, path)
    variables: dict[str, np.ndarray] = {}
    position = HEADER_BYTES
    while position < len(data):
        element = _Element(data, position, order, pad=False, where=str(path))
        position = element.next
        if element.kind == MI_COMPRESSED:
            try:
                inner = zlib.decompress(element.body)
            except zlib.error as error:
                raise SourceError(f"{path}: a compressed element does not inflate ({error})") from None
            element = _Element(inner, 0, order, pad=False, where=f"{path} (compressed element)")
        if element.kind != MI_MATRIX:
            raise SourceError(f"{path}: top-level element of type {element.kind}, expected a matrix (14)")
        name, array = _matrix(element.body, order, path)
        variables[name] = array
    return variables


def _byte_order(data: bytes, path: Path) -> str:
    if data[:4] == b"\x89HDF" or data[:10] == b"MATLAB 7.3":
        raise SourceError(f"{path}: a MAT v7.3 (HDF5) file; save it with -v7 or -v6 to read it here")
    if len(data) < HEADER_BYTES or not data.startswith(b"MATLAB 5.0 MAT-file"):
        raise SourceError(f"{path}: not a MATLAB 5 MAT-file (no 'MATLAB 5.0 MAT-file' header)")
    marker = data[126:128]
    if marker not in (b"IM", b"MI"):
        raise SourceError(f"{path}: unknown byte-order marker {marker!r} in the header")
    return "<" if marker == b"IM" else ">"


def _matrix(body: bytes, order: str, path: Path) -> tuple[str, np.ndarray]:
    where = f"{path} (matrix)"
    flags = _Element(body, 0, order, pad=True, where=where)
    dims = _Element(body, flags.next, order, pad=True, where=where)
    name_element = _Element(body, dims.next, order, pad=True, where=where)
    name = name_element.body.decode("ascii", "replace")
    where = f"{path}: variable {name!r}"
    if flags.kind != MI_UINT32 or dims.kind != MI_INT32 or name_element.kind != MI_INT8:
        raise SourceError(f"{where}: malformed header (flags, dimensions and name elements expected)")
    flag_word = struct.unpack_from(order + "I", flags.body)[0]
    array_class = flag_word & 0xFF
    if array_class not in CLASS_TYPES:
        kind = CLASS_NAMES.get(array_class, f"class {array_class}")
        raise SourceError(f"{where} is a {kind} array; only numeric arrays are read")
    if flag_word & COMPLEX_FLAG:
        raise SourceError(f"{where} is complex; only real arrays are read")
    shape = tuple(int(d) for d in np.frombuffer(dims.body, dtype=order + "i4"))
    real = _Element(body, name_element.next, order, pad=True, where=where)
    if real.kind not in STORAGE_TYPES:
        raise SourceError(f"{where}: values stored as type {real.kind}, not a numeric type")
    values = np.frombuffer(real.body, dtype=order + STORAGE_TYPES[real.kind])
    if values.size != int(np.prod(shape)):
        raise SourceError(f"{where}: {values.size} values for dimensions {'x'.join(map(str, shape))}")
    return name, values.astype(CLASS_TYPES[array_class]).reshape(shape, order="F")


def read_vector(path: Path, name: str) -> np.ndarray:
    """Variable `name` of a MAT file as a flat vector; an error names the file when it is missing or not 1×N."""
    variables = read_mat(path)
    if name not in variables:
        raise SourceError(f"{path}: no variable {name!r} (it holds {sorted(variables)})")
    array = variables[name]
    if array.ndim > 2 or (array.ndim == 2 and min(array.shape) > 1):
        raise SourceError(f"{path}: variable {name!r} is {'x'.join(map(str, array.shape))}, expected a vector")
    return array.ravel(order="F")
