"""PNG files of 8 or 16 bits per sample, written and read without Pillow.

Pillow reads a 16-bit grey PNG at full precision (mode ``I;16``) but cuts 16-bit RGB, grey+alpha and
RGBA PNGs down to 8 bits per sample, and it writes no 16-bit colour PNG. Attacks write images on the
16-bit grid (steps of 1/65,535), so rcenp encodes and decodes those files itself, following the PNG
specification (W3C, 2nd edition, 2003; ISO/IEC 15948): colour types 0 (grey), 2 (RGB), 4 (grey +
alpha) and 6 (RGBA) at bit depth 8 or 16, without interlacing. Palettes, bit depths below 8 and
Adam7 interlacing are left to Pillow (at 8 bits they lose nothing); :func:`decode` refuses them.

A PNG file is an 8-byte signature and a list of chunks (big-endian length, 4-letter type, data,
CRC-32 of type and data): IHDR (width, height, bit depth, colour type, compression, filter,
interlace), one or more IDAT whose concatenation is a zlib stream, and IEND. The stream holds each
row as a filter-type byte followed by the row's filtered bytes; samples are big-endian.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
COLOUR_TYPE = {c: t for t, c in CHANNELS.items()}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode(samples: np.ndarray) -> bytes:
    """The PNG bytes of ``samples``: uint8 or uint16, (H, W) grey or (H, W, K) with K = 1 (grey),
    2 (grey + alpha), 3 (RGB) or 4 (RGBA); bit depth 8 or 16 from the dtype. Rows are stored
    unfiltered (filter type 0), the stream compressed at zlib level 9.

    Raises ValueError for another dtype or shape.
    """
    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples[:, :, None]
    if samples.dtype not in (np.uint8, np.uint16) or samples.ndim != 3 or samples.shape[2] not in COLOUR_TYPE:
        raise ValueError(f"PNG samples must be uint8 or uint16 of shape (H, W) or (H, W, 1|2|3|4), "
                         f"got {samples.dtype} {samples.shape}")
    height, width, k = samples.shape
    if not (0 < height < 2**31 and 0 < width < 2**31):
        raise ValueError(f"PNG images need 1 to 2**31 - 1 rows and columns, got {height}x{width}")
    depth = 8 * samples.dtype.itemsize
    rows = np.ascontiguousarray(samples, dtype=samples.dtype.newbyteorder(">")).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, COLOUR_TYPE[k], 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def header(data: bytes, where: object = "PNG") -> tuple[int, int, int, int, int]:
    """(width, height, bit depth, colour type, interlace method) from the IHDR chunk of ``data``.

    Raises ValueError naming ``where`` if ``data`` does not start like a PNG file.
    """
    if data[:8] != SIGNATURE or data[8:16] != b"\0\0\0\x0dIHDR" or len(data) < 33:
        raise ValueError(f"{where}: not a PNG file")
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, depth, colour_type, interlace


def decode(data: bytes, where: object = "PNG") -> tuple[np.ndarray, int]:
    """(samples, colour type) of the PNG file ``data``: samples (H, W, K) uint8 or uint16 (bit
    depth 8 or 16), K = :data:`CHANNELS` [colour type]; ancillary chunks (gamma, tRNS, ...) are
    ignored. Every chunk's CRC is checked.

    Raises ValueError naming ``where`` for a file that is damaged or outside what this module reads
    (palette, bit depth < 8, interlaced). Rows filtered with Average or Paeth are reconstructed one
    byte at a time in Python: meant for images of the size of rcenp's inputs.
    """
    width, height, depth, colour_type, interlace = header(data, where)
    if depth not in (8, 16) or colour_type not in CHANNELS or interlace != 0 or data[26:28] != b"\0\0":
        raise ValueError(f"{where}: PNG of bit depth {depth}, colour type {colour_type}, interlace {interlace}: "
                         "only non-interlaced grey, grey+alpha, RGB or RGBA of 8 or 16 bits are read here")
    if width == 0 or height == 0:
        raise ValueError(f"{where}: PNG of {width}x{height} pixels")
    idat = []
    pos = 8
    while True:
        if pos + 12 > len(data):
            raise ValueError(f"{where}: PNG truncated (no IEND chunk)")
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(crc) != 4:
            raise ValueError(f"{where}: PNG truncated in its {kind!r} chunk")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            raise ValueError(f"{where}: PNG {kind.decode('latin-1')} chunk fails its CRC (a damaged file)")
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            idat.append(body)
        elif kind[:1].isupper() and kind not in (b"IHDR", b"PLTE"):
            raise ValueError(f"{where}: PNG has an unknown critical chunk {kind.decode('latin-1')}")
        pos += 12 + length
    k = CHANNELS[colour_type]
    bpp = k * depth // 8  # bytes per pixel, the filters' left-neighbour distance
    stride = width * bpp
    expected = height * (stride + 1)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), expected + 1)
    except zlib.error as exc:
        raise ValueError(f"{where}: PNG image data is not a valid zlib stream ({exc})") from None
    if len(raw) != expected:
        raise ValueError(f"{where}: PNG image data holds {len(raw):,} bytes, expected {expected:,} "
                         f"for {width}x{height} pixels of {bpp} bytes")
    rows = unfilter(np.frombuffer(raw, np.uint8).reshape(height, stride + 1), bpp, where)
    if depth == 16:
        return rows.view(">u2").astype(np.uint16).reshape(height, width, k), colour_type
    return rows.reshape(height, width, k), colour_type


def unfilter(filtered: np.ndarray, bpp: int, where: object = "PNG") -> np.ndarray:
    """Undo PNG row filters: ``filtered`` (H, 1 + stride) uint8, each row its filter type then its
    bytes; ``bpp`` bytes per pixel. Returns the reconstructed bytes (H, stride) uint8.

    Filter types (PNG spec, section 9): 0 None, 1 Sub (add the byte ``bpp`` to the left), 2 Up (add
    the byte above), 3 Average (add floor((left + above) / 2)), 4 Paeth (add whichever of left, above
    and upper-left is nearest to left + above - upper-left); all modulo 256, missing neighbours 0.
    """
    height, stride = filtered.shape[0], filtered.shape[1] - 1
    out = np.empty((height, stride), np.uint8)
    prior = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = int(filtered[y, 0]), filtered[y, 1:]
        if kind == 0:
            out[y] = line
        elif kind == 1:
            out[y] = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).ravel()  # uint8 wraps mod 256
        elif kind == 2:
            out[y] = line + prior
        elif kind in (3, 4):
            out[y] = np.frombuffer(_average_or_paeth(line.tobytes(), prior.tobytes(), bpp, kind == 4), np.uint8)
        else:
            raise ValueError(f"{where}: PNG row {y} has unknown filter type {kind}")
        prior = out[y]
    return out


def _average_or_paeth(line: bytes, prior: bytes, bpp: int, paeth: bool) -> bytes:
    cur = bytearray(len(line))
    for i, value in enumerate(line):
        a = cur[i - bpp] if i >= bpp else 0
        b = prior[i]
        if paeth:
            c = prior[i - bpp] if i >= bpp else 0
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)  # |p - a|, |p - b|, |p - c|, p = a + b - c
            predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
        else:
            predictor = (a + b) >> 1
        cur[i] = (value + predictor) & 0xFF
    return bytes(cur)
