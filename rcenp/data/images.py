"""Image files: :func:`read_image` for the images users send, :func:`write_png16` for attack images,
:func:`read_npz` for a batch of them in an .npz archive.

Pixels are float32 (C, H, W) in [-0.5, 0.5], as :func:`rcenp.data.load` gives them. Reading takes
any single image Pillow opens (PNG, JPEG, BMP, GIF, TIFF, WebP, PGM/PPM, ...); 16-bit PNGs are
decoded by :mod:`rcenp.data.png` (Pillow cuts 16-bit colour PNGs to 8 bits), which refuses the rare
interlaced ones. The rules:

* **Scale.** A sample v of an 8-bit image reads as ``v/255 - 0.5`` (bit for bit what ``load``
  gives a data-set pixel of the same value), of a 16-bit image (PNG; TIFF and PGM as Pillow modes
  ``I;16``, ``I;16B``, ``I;16L``) as ``v/65535 - 0.5``, both in float32 arithmetic. Bilevel images
  (mode ``1``) read as -0.5 and 0.5. Mode ``I`` (32-bit integers; Pillow's mode for 16-bit PGM)
  must hold 0..65535 and reads as 16-bit. Mode ``F`` (32-bit floats) must hold values in [0, 1]
  and reads as ``v - 0.5``.
* **Alpha is dropped**, not composited: the colour samples read as stored, whatever their opacity
  (modes LA, RGBA, PA, palettes with transparency). The stored colour is the image; compositing
  on black would darken every partly transparent pixel. MNIST digits are white on black, so a
  digit drawn on a transparent background reads as one when black is stored there (as most
  drawing tools store it).
* **Colour to grey** (1-channel models): the luma Y = 0.299 R + 0.587 G + 0.114 B of ITU-R
  601-2, the formula of Pillow's ``convert("L")``, kept at full precision (Pillow rounds it to 8
  bits); a grey pixel (R = G = B) keeps its value exactly. **Grey to colour** (3-channel models):
  the grey value in all three channels. Palette images read as their palette colours; CMYK and
  YCbCr as Pillow converts them to RGB.
* Lossy formats (JPEG, lossy WebP) read as Pillow decodes them; EXIF orientation is not applied.
  Files holding several frames (animated GIF or PNG, multi-page TIFF) are refused.

Writing: :func:`write_png16` stores ``round((x + 0.5) * 65535)`` as 16-bit grey (C = 1) or RGB
(C = 3) PNG, so that :func:`read_image` gives back :func:`quantize16` of the image exactly: within
half a step (1/131,070) of it, plus float32 rounding (at most 2**-25).
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import png

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
STEP16 = 1 / 65535  # the 16-bit grid's step in [-0.5, 0.5] pixel units
LUMA_PER_MILLE = (299, 587, 114)  # ITU-R 601-2 weights of R, G, B, in thousandths
CONVERTED = {"P": "RGBA", "PA": "RGBA", "La": "LA", "RGBa": "RGBA", "CMYK": "RGB", "YCbCr": "RGB"}
WORD_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def read_image(path: str | os.PathLike, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """The image in file ``path`` as float32 (C, H, W) in [-0.5, 0.5], C = ``channels`` (1 or 3),
    read by the rules in this module's docstring; ``size`` (H, W), when given, is required.

    Raises ValueError, one line naming the file, for a file that cannot be read, is not one image,
    has another size, or holds values outside its mode's range.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data[:8] == png.SIGNATURE and data[24:25] == b"\x10":  # IHDR bit depth 16
        width, height, *_ = png.header(data, path)
        _check_size(path, width, height, size)
        samples, colour_type = png.decode(data, path)
        return _to_pixels(samples, 65535, colour_type in (4, 6), channels)
    samples, maximum, alpha = _read_with_pillow(data, path, size)
    return _to_pixels(samples, maximum, alpha, channels)


def read_npz(path: str | os.PathLike, keys=("images", "adversarial")) -> np.ndarray:
    """The array of .npz archive ``path`` named by the first of ``keys`` it holds, else its only
    array, as stored (no scaling, no shape check); never unpickles.

    Raises ValueError, one line naming the file: 'not a readable .npz image archive (why)' for a
    file that is not a zip archive (a lone .npy array, say), is damaged, holds Python objects or a
    member that is not a NumPy array; or for an archive with neither key and more than one array.
    """
    path = Path(path)
    unreadable = f"{path}: not a readable .npz image archive"
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
        archive = zipfile.is_zipfile(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not archive:
        what = "a lone .npy array, not an archive" if magic == b"\x93NUMPY" else "not a zip archive, or a truncated one"
        raise ValueError(f"{unreadable} ({what})")
    try:
        with np.load(path, allow_pickle=False) as data:
            named = [k for k in keys if k in data.files]
            key = named[0] if named else (data.files[0] if len(data.files) == 1 else None)
            array = None if key is None else data[key]
            found = ", ".join(data.files) or "nothing"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        text = str(exc)
        why = ("it holds Python objects, not numbers" if "pickle" in text  # numpy's words name allow_pickle
               else f"damaged: {text}" if isinstance(exc, (zipfile.BadZipFile, EOFError)) else text)
        raise ValueError(f"{unreadable} ({why})") from None
    if key is None:
        raise ValueError(f"{path}: expected an array named {' or '.join(repr(k) for k in keys)} (found {found})")
    if not isinstance(array, np.ndarray):  # a member that is not an .npy file comes back as bytes
        raise ValueError(f"{unreadable} (its member {key!r} is not a NumPy array)")
    return array


def _reason(exc: BaseException) -> str:
    """Pillow's complaint for a person: no object reprs (it names the in-memory file as
    '<_io.BytesIO object at 0x...>'), and 'not an image format Pillow knows' for a file of no
    known format."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not in an image format Pillow knows"
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _check_size(path: Path, width: int, height: int, size: tuple[int, int] | None) -> None:
    if size is not None and (height, width) != tuple(size):
        raise ValueError(f"{path}: image is {width}x{height} pixels (width x height), expected {size[1]}x{size[0]}")


def _read_with_pillow(data: bytes, path: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, float, bool]:
    """(samples (H, W, K), the value of full intensity, whether the last of the K is to be dropped:
    alpha, or RGBX's padding)."""
    from PIL import Image

    unreadable = (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError)
    try:
        img = Image.open(io.BytesIO(data))
    except unreadable as exc:
        raise ValueError(f"{path}: not a readable image ({_reason(exc)})") from None
    with img:
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            raise ValueError(f"{path}: holds {frames} frames; pass one image per file")
        _check_size(path, *img.size, size)
        try:
            if img.mode in CONVERTED:
                img = img.convert(CONVERTED[img.mode])
            array = np.asarray(img)
        except unreadable as exc:
            raise ValueError(f"{path}: not a readable image ({_reason(exc)})") from None
    mode = img.mode
    if mode == "1":
        return array[:, :, None].astype(np.uint8), 1, False
    if mode in ("L", "LA", "RGB", "RGBA", "RGBX"):
        return array.reshape(*array.shape[:2], -1), 255, mode in ("LA", "RGBA", "RGBX")
    if mode in WORD_MODES:
        return array.astype(np.uint16)[:, :, None], 65535, False
    if mode == "I":
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"{path}: 32-bit integer image with values {array.min()}..{array.max()}; "
                             "read as 16-bit, they must lie in 0..65535")
        return array[:, :, None], 65535, False
    if mode == "F":
        if not np.isfinite(array).all() or (array.size and (array.min() < 0 or array.max() > 1)):
            raise ValueError(f"{path}: floating-point image with values outside [0, 1] or not finite; "
                             "mode F is read as intensities in [0, 1]")
        return array[:, :, None], 1, False
    raise ValueError(f"{path}: images of Pillow mode {mode!r} are not read "
                     "(save it as 8- or 16-bit grey or RGB)")


def _to_pixels(samples: np.ndarray, maximum: float, alpha: bool, channels: int) -> np.ndarray:
    """(H, W, K) samples of full intensity ``maximum`` -> float32 (channels, H, W) in [-0.5, 0.5]."""
    if alpha:
        samples = samples[:, :, :-1]
    if samples.shape[2] == 3 and channels == 1:
        # Weights in integer thousandths, so that R = G = B = v gives exactly v.
        weighted = samples.astype(np.float64) @ np.array(LUMA_PER_MILLE, np.float64)
        samples = (weighted / 1000)[:, :, None]
    pixels = samples.astype(np.float32).transpose(2, 0, 1)
    if pixels.shape[0] != channels:
        pixels = np.repeat(pixels, channels, axis=0)
    pixels /= np.float32(maximum)
    pixels -= np.float32(0.5)
    return np.ascontiguousarray(pixels)


def to_uint16(image) -> np.ndarray:
    """``round((x + 0.5) * 65535)`` as uint16, same shape, for float pixels x in [-0.5, 0.5]
    (NumPy or CuPy arrays; rounding half to even, in float64).

    Raises ValueError for values outside [-0.5, 0.5] or not finite.
    """
    from rcenp.backend import as_numpy

    x = as_numpy(image).astype(np.float64)
    if not np.isfinite(x).all() or (x.size and (x.min() < -0.5 or x.max() > 0.5)):
        raise ValueError("pixels must be finite and in [-0.5, 0.5] to be stored as 16-bit samples")
    return np.rint((x + 0.5) * 65535).astype(np.uint16)


def quantize16(image) -> np.ndarray:
    """The float32 image that :func:`write_png16` then :func:`read_image` give for ``image``: its
    pixels moved to the nearest of the 65,536 levels ``k/65535 - 0.5`` (same shape, on the host)."""
    pixels = to_uint16(image).astype(np.float32)
    pixels /= np.float32(65535)
    pixels -= np.float32(0.5)
    return pixels


def write_png16(path: str | os.PathLike, image) -> Path:
    """Write ``image``, (C, H, W) float in [-0.5, 0.5] with C = 1 or 3 (NumPy or CuPy), as a 16-bit
    grey (C = 1) or RGB (C = 3, 48 bits per pixel) PNG file: samples :func:`to_uint16`.

    The file is written to a temporary name beside ``path`` and moved into place. Returns ``path``.
    Raises ValueError for another shape or out-of-range values.
    """
    path = Path(path)
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) != 3 or shape[0] not in (1, 3) or 0 in shape:
        raise ValueError(f"{path}: write_png16 takes a (C, H, W) image with C = 1 or 3, got shape {shape}")
    try:
        samples = to_uint16(image)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    data = png.encode(samples.transpose(1, 2, 0))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
