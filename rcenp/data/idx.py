"""The IDX file format of MNIST and Fashion-MNIST (gzip-compressed or plain).

An IDX file is a big-endian header followed by raw values: two zero bytes, a type code
(``0x08`` = unsigned byte), the number of dimensions d, then d uint32 sizes, then the values in
row-major order. Image files are ``0x00000803`` with dims (N, H, W); label files are ``0x00000801``
with dims (N,). The names the files go by are in :mod:`rcenp.data.names`.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .checksums import file_key, sha256_of
from .errors import DataError

UBYTE = 0x08


def magic_number(ndim: int) -> int:
    """The magic number of an unsigned-byte IDX file with ``ndim`` dimensions."""
    return (UBYTE << 8) | ndim


GZIP_MAGIC = b"\x1f\x8b"


def read_content(path: Path, gzipped: bool | None = None) -> bytes:
    """The uncompressed bytes of ``path``, gunzipped if ``gzipped``.

    By default (None) the content decides, whatever the name: gzip data starts with the bytes
    1f 8b, an IDX file with two zero bytes. So a plain file named ``*.gz`` (a browser that undid
    the server's compression) and a compressed one without the suffix both read correctly.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not (raw[:2] == GZIP_MAGIC if gzipped is None else gzipped):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def parse(content: bytes, ndim: int, path: Path) -> np.ndarray:
    """The uint8 array held by IDX ``content`` (a read-only view, no copy).

    Raises DataError naming ``path`` when the magic number is not that of an unsigned-byte file
    with ``ndim`` dimensions, or when the header's sizes disagree with the length of the content.
    """
    header = 4 + 4 * ndim
    if len(content) < 4:
        raise DataError(f"{path}: {len(content)} bytes, too short for an IDX header")
    magic = int.from_bytes(content[:4], "big")
    expected = magic_number(ndim)
    if magic != expected:
        page = " (it looks like a web page: a failed download?)" if content.lstrip()[:1] == b"<" else ""
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x} "
            f"(expected 0x{expected:08x}, unsigned bytes in {ndim} dimension(s)){page}"
        )
    if len(content) < header:
        raise DataError(f"{path}: {len(content)} bytes, too short for its {header}-byte IDX header")
    dims = struct.unpack(f">{ndim}I", content[4:header])
    size = header + math.prod(dims)
    if len(content) != size:
        shape = "x".join(str(d) for d in dims)
        raise DataError(
            f"{path}: header says {shape} values ({size:,} bytes with the header) "
            f"but the file holds {len(content):,} bytes"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def read(path: Path, ndim: int) -> tuple[np.ndarray, str]:
    """Read an unsigned-byte IDX file: (its uint8 array, SHA-256 of its uncompressed bytes)."""
    try:
        key = file_key(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    content = read_content(path)
    return parse(content, ndim, path), sha256_of(key, content)


def encode(array: np.ndarray) -> bytes:
    """The uncompressed IDX bytes of a uint8 ``array`` (the inverse of :func:`parse`)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX encoding needs a uint8 array with 1..255 dims, got {array.dtype} {array.shape}")
    header = struct.pack(f">I{array.ndim}I", magic_number(array.ndim), *array.shape)
    return header + array.tobytes()
