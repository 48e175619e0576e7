"""Image files: reading every Pillow mode at its full precision, the 16-bit PNG codec, write_png16."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from rcenp.data import datasets, load_sample, png
from rcenp.data.images import STEP16, quantize16, read_image, to_uint16, write_png16


@pytest.fixture(scope="module")
def digit():
    """A test digit of the embedded sample: (uint8 (28, 28) values v, float32 (1, 28, 28) v/255 - 0.5)."""
    x = load_sample().images[0]
    v = np.rint((x[0] + 0.5) * 255).astype(np.uint8)
    assert np.array_equal(datasets.scale(v)[None], x) and len(np.unique(v)) > 50
    return v, x


def pil_bytes(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def saved(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def grey_palette(v: np.ndarray, transparent: bool) -> Image.Image:
    """v as a palette image whose entry i is the grey (255 - i): indices differ from the values."""
    img = Image.fromarray((255 - v).astype(np.uint8), "P")
    img.putpalette([c for i in range(256) for c in (255 - i,) * 3])
    if transparent:
        img.info["transparency"] = int(255 - v[0, 0])  # the background's index
    return img


def rgba(v: np.ndarray) -> np.ndarray:
    alpha = (np.arange(v.size) % 256).astype(np.uint8).reshape(v.shape)  # every opacity, 0 included
    return np.stack([v, v, v, alpha], axis=-1)


def same_digit_files(v: np.ndarray) -> dict[str, bytes]:
    """The digit v stored losslessly in every mode and format read here, each holding v exactly."""
    w16 = v.astype(np.uint16) * 257  # v/255 == (257 v)/65535
    return {
        "png16-grey.png": png.encode(w16),
        "png16-grey-pillow.png": pil_bytes(Image.fromarray(w16), "PNG"),  # Pillow mode I;16
        "png16-grey-alpha.png": png.encode(np.stack([w16, w16[::-1]], axis=-1)),
        "png16-rgb.png": png.encode(np.stack([w16] * 3, axis=-1)),
        "png16-rgba.png": png.encode(np.stack([w16] * 3 + [w16.T], axis=-1)),
        "png8-L.png": pil_bytes(Image.fromarray(v), "PNG"),
        "png8-LA.png": pil_bytes(Image.fromarray(rgba(v)[..., [0, 3]], "LA"), "PNG"),
        "png8-RGB.png": pil_bytes(Image.fromarray(np.stack([v] * 3, axis=-1)), "PNG"),
        "png8-RGBA.png": pil_bytes(Image.fromarray(rgba(v)), "PNG"),
        "palette.png": pil_bytes(grey_palette(v, False), "PNG"),
        "palette-transparent.png": pil_bytes(grey_palette(v, True), "PNG"),
        "palette.gif": pil_bytes(grey_palette(v, False), "GIF"),
        "PA.tiff": pil_bytes(grey_palette(v, False).convert("PA"), "TIFF"),
        "L.bmp": pil_bytes(Image.fromarray(v), "BMP"),
        "I16-little.tiff": pil_bytes(Image.fromarray(w16), "TIFF"),
        "I16-big.tiff": pil_bytes(Image.frombytes("I;16B", (28, 28), w16.astype(">u2").tobytes()), "TIFF"),
        "I-16bit.pgm": pil_bytes(Image.fromarray(w16), "PPM"),  # Pillow reads it back as mode I
        "I.tiff": pil_bytes(Image.fromarray(w16.astype(np.int32)), "TIFF"),
        "F.tiff": pil_bytes(Image.fromarray(v.astype(np.float32) / np.float32(255)), "TIFF"),
        "CMYK.tiff": pil_bytes(Image.fromarray(np.stack([v] * 3, axis=-1)).convert("CMYK"), "TIFF"),
        "webp-lossless.webp": pil_bytes(Image.fromarray(np.stack([v] * 3, axis=-1)), "WEBP", lossless=True),
    }


def test_same_digit_in_every_format_reads_the_same_pixels(tmp_path, digit):
    """8-bit and 16-bit, grey, colour, palette, with alpha or not: the exact pixels of the data set."""
    v, x = digit
    files = same_digit_files(v)
    modes = {name: Image.open(io.BytesIO(content)).mode for name, content in files.items()}
    assert {"I;16", "I;16B", "I", "F", "P", "PA", "LA", "RGBA", "CMYK", "L", "RGB"} <= set(modes.values())
    for name, content in files.items():
        path = saved(tmp_path, name, content)
        grey, colour = read_image(path, 1, (28, 28)), read_image(path, 3, (28, 28))
        assert grey.dtype == colour.dtype == np.float32 and colour.shape == (3, 28, 28)
        np.testing.assert_array_equal(grey, x, err_msg=f"{name} (Pillow mode {modes[name]})")
        np.testing.assert_array_equal(colour, np.repeat(x, 3, axis=0), err_msg=name)


def test_ycbcr_reads_as_pillow_converts_it(tmp_path, digit):
    """YCbCr is not lossless in 8 bits (Pillow's RGB -> YCbCr -> RGB moves some pixels by a level)."""
    v, x = digit
    img = Image.fromarray(np.stack([v] * 3, axis=-1)).convert("YCbCr")
    path = saved(tmp_path, "ycbcr.tiff", pil_bytes(img, "TIFF"))
    rgb = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(read_image(path, 3), datasets.scale(rgb))
    assert np.abs(read_image(path, 1) - x).max() <= 1 / 255 + 1e-7


@pytest.mark.parametrize("quality,max_levels,mean_levels", [(95, 9, 0.6), (100, 2, 0.04)])
def test_jpeg_digits_within_the_measured_bound(tmp_path, quality, max_levels, mean_levels):
    """Grey JPEGs of the first 100 sample digits, in 8-bit levels (1/255).

    The bounds are the worst error and the mean error measured over all 1,000 sample digits with
    Pillow's libjpeg-turbo (max 9 levels at quality 95 and 2 at 100; mean 0.56 and 0.034): JPEG
    quantises each of the 64 DCT coefficients of an 8x8 block to a step Q (1 to 12 at quality 95,
    1 at 100), which can move a pixel by up to sum(Q/2)/4 levels, 46 at quality 95 and 8 at 100;
    digits' smooth strokes stay far below that. A mis-scaled or binarised reading is off by far more.
    """
    sample = load_sample().images[:100]
    errors = []
    for i, x in enumerate(sample):
        v = np.rint((x[0] + 0.5) * 255).astype(np.uint8)
        path = saved(tmp_path, f"{i}.jpg", pil_bytes(Image.fromarray(v), "JPEG", quality=quality))
        errors.append(np.abs(read_image(path, 1, (28, 28)) - x) * 255)
    errors = np.stack(errors)
    assert errors.max() <= max_levels + 1e-3 and errors.mean() <= mean_levels


def test_16bit_png_keeps_every_level(tmp_path):
    """784 distinct 16-bit levels (Pillow's convert("L") used to leave two) all come back."""
    levels = np.linspace(0, 65535, 28 * 28).round().astype(np.uint16).reshape(28, 28)
    for name, content in [("grey.png", pil_bytes(Image.fromarray(levels), "PNG")),
                          ("rgb.png", png.encode(np.stack([levels] * 3, axis=-1)))]:
        x = read_image(saved(tmp_path, name, content), 1)
        assert len(np.unique(x)) == 28 * 28
        expected = levels.astype(np.float32) / np.float32(65535) - np.float32(0.5)
        np.testing.assert_array_equal(x[0], expected)


def test_detect_reads_images_through_read_image(tmp_path):
    from rcenp.detect.cli import read_images

    levels = (np.arange(28 * 28, dtype=np.uint16) * 83).reshape(28, 28)
    path = saved(tmp_path, "digit.png", png.encode(levels))
    x = read_images(path, (1, 28, 28))
    assert x.shape == (1, 1, 28, 28)
    np.testing.assert_array_equal(x[0], read_image(path, 1))
    assert len(np.unique(x)) == 28 * 28


images = st.tuples(st.sampled_from([1, 3]), st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-0.5, 0.5, width=32)))


@given(images)
def test_write_png16_round_trips_to_the_16bit_grid(tmp_path_factory, image):
    path = write_png16(tmp_path_factory.mktemp("png") / "x.png", image)
    back = read_image(path, image.shape[0])
    np.testing.assert_array_equal(back, quantize16(image))
    np.testing.assert_array_equal(to_uint16(back), to_uint16(image))  # the grid is a fixed point
    # Exact rounding, in levels (float64 holds (x + 0.5) * 65535 exactly for a float32 x) ...
    assert np.abs(to_uint16(image) - (image.astype(np.float64) + 0.5) * 65535).max() <= 0.5
    # ... and in pixels, plus float32's rounding of k/65535 (then - 0.5 is exact or rounds less).
    assert np.abs(back.astype(np.float64) - image).max() <= STEP16 / 2 + 2**-25


def test_pillow_reads_write_png16_files(tmp_path, digit):
    """An independent decoder: Pillow reads the grey files in full, the RGB ones cut to the high byte."""
    rng = np.random.default_rng(0)
    image = rng.uniform(-0.5, 0.5, (3, 5, 7)).astype(np.float32)
    samples = to_uint16(image)
    write_png16(tmp_path / "grey.png", image[:1])
    write_png16(tmp_path / "rgb.png", image)
    with Image.open(tmp_path / "grey.png") as grey, Image.open(tmp_path / "rgb.png") as rgb:
        assert grey.mode == "I;16" and rgb.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(grey), samples[0])
        np.testing.assert_array_equal(np.asarray(rgb), (samples >> 8).transpose(1, 2, 0))


def test_write_png16_is_atomic_and_checks_its_input(tmp_path):
    image = np.zeros((1, 4, 4), np.float32)
    path = write_png16(tmp_path / "a.png", image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"] and path.stat().st_mode & 0o777 == 0o644
    for bad, words in [(image + 0.51, r"\[-0.5, 0.5\]"), (image * np.nan, "finite"), (image[0], "shape"),
                       (np.zeros((2, 4, 4)), "C = 1 or 3"), (np.zeros((1, 0, 4)), "shape")]:
        with pytest.raises(ValueError, match=words):
            write_png16(tmp_path / "b.png", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@given(st.integers(1, 4).flatmap(lambda k: hnp.arrays(np.uint16, (3, 4, k))), st.sampled_from([1, 3]))
def test_16bit_png_of_any_colour_type_reads_in_full(tmp_path_factory, samples, channels):
    """Grey, grey+alpha, RGB, RGBA: alpha dropped, colour to grey by ITU-R 601-2 luma, in full."""
    path = tmp_path_factory.mktemp("png") / "x.png"
    path.write_bytes(png.encode(samples))
    colour = samples[..., :3] if samples.shape[2] >= 3 else samples[..., :1]
    if channels == 1 and colour.shape[2] == 3:
        colour = (colour.astype(np.float64) @ [0.299, 0.587, 0.114])[..., None]
    expected = np.broadcast_to(colour, (3, 4, channels)).transpose(2, 0, 1) / 65535 - 0.5
    # float32 rounds Y, then Y/65535, then (below 0.25) the - 0.5: at most 2**-24 in all.
    np.testing.assert_allclose(read_image(path, channels), expected, rtol=0, atol=2**-24 + 1e-12)


@given(hnp.arrays(np.uint8, (5, 6, 3)))
def test_luma_is_pillows_L_at_full_precision(tmp_path_factory, rgb):
    path = tmp_path_factory.mktemp("png") / "x.png"
    path.write_bytes(pil_bytes(Image.fromarray(rgb), "PNG"))
    pillow_l = np.asarray(Image.fromarray(rgb).convert("L")).astype(np.float64) / 255 - 0.5
    # Pillow rounds Y to an integer level with 16-bit fixed-point weights (19595, 38470, 7471)/65536.
    assert np.abs(read_image(path, 1)[0] - pillow_l).max() <= (0.5 + 0.01) / 255


def test_bilevel_and_range_rules(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], bool)
    path = saved(tmp_path, "bits.png", pil_bytes(Image.fromarray(bits), "PNG"))
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(read_image(path, 1)[0], np.where(bits, 0.5, -0.5))
    for name, array, words in [("big.tiff", np.array([[0, 70000]], np.int32), "0..65535"),
                               ("negative.tiff", np.array([[-1, 5]], np.int32), "0..65535"),
                               ("wide.tiff", np.array([[0.0, 1.5]], np.float32), r"\[0, 1\]"),
                               ("nan.tiff", np.array([[0.0, np.nan]], np.float32), r"\[0, 1\]")]:
        path = saved(tmp_path, name, pil_bytes(Image.fromarray(array), "TIFF"))
        with pytest.raises(ValueError, match=words) as info:
            read_image(path, 1)
        assert name in str(info.value)


def test_bad_files_are_one_clear_error_naming_the_file(tmp_path, digit):
    v, _ = digit
    good16 = png.encode(v.astype(np.uint16) * 257)
    frames = [Image.fromarray(v), Image.fromarray(255 - v)]
    cases = {
        "small.png": (pil_bytes(Image.fromarray(v[:10, :12]), "PNG"), "12x10 pixels"),
        "small16.png": (png.encode(np.zeros((10, 12), np.uint16)), "12x10 pixels"),
        "text.png": (b"not an image", "not a readable image (not in an image format Pillow knows)"),
        "truncated.png": (pil_bytes(Image.fromarray(v), "PNG")[:100], "not a readable image"),
        "truncated16.png": (good16[:-30], "truncated"),
        "crc16.png": (good16[:40] + bytes([good16[40] ^ 1]) + good16[41:], "CRC"),
        "animated.gif": (pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]), "2 frames"),
        "lab.tiff": (pil_bytes(Image.new("LAB", (28, 28)), "TIFF"), "mode 'LAB'"),
    }
    for name, (content, words) in cases.items():
        path = saved(tmp_path, name, content)
        with pytest.raises(ValueError) as info:
            read_image(path, 1, (28, 28))
        message = str(info.value)
        assert str(path) in message and words in message and "\n" not in message, message
        assert " at 0x" not in message and "BytesIO" not in message, message  # no Python object reprs
    with pytest.raises(ValueError, match="cannot read"):
        read_image(tmp_path / "absent.png", 1)


# ---- the PNG codec against independent encoders and decoders ----

def filtered_png(samples: np.ndarray, kinds, idat_parts: int = 3) -> bytes:
    """PNG bytes of ``samples`` (H, W, K) whose row y uses filter ``kinds[y % len(kinds)]``, the
    filters computed here from the unfiltered neighbours, the stream split over several IDATs."""
    h, w, k = samples.shape
    depth = 8 * samples.dtype.itemsize
    raw = samples.astype(samples.dtype.newbyteorder(">")).reshape(h, -1).view(np.uint8).astype(np.int64)
    bpp = k * samples.dtype.itemsize
    lines, prior = [], np.zeros(raw.shape[1], np.int64)
    for y in range(h):
        cur, kind = raw[y], kinds[y % len(kinds)]
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
        p = left + prior - upper_left
        pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - upper_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upper_left))
        predictor = [0 * cur, left, prior, (left + prior) // 2, paeth][kind]
        lines.append(bytes([kind]) + ((cur - predictor) % 256).astype(np.uint8).tobytes())
        prior = cur
    stream = zlib.compress(b"".join(lines))
    cuts = np.linspace(0, len(stream), idat_parts + 1).astype(int)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[k]
    return (png.SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))
            + chunk(b"tEXt", b"Comment\0ancillary chunks are skipped")
            + b"".join(chunk(b"IDAT", stream[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))
            + chunk(b"IEND", b""))


@given(st.sampled_from([np.uint8, np.uint16]), st.integers(1, 4), st.integers(1, 7), st.integers(1, 7),
       st.lists(st.integers(0, 4), min_size=1, max_size=5), st.integers(0, 2**32 - 1))
def test_decode_undoes_every_filter(dtype, k, h, w, kinds, seed):
    samples = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, (h, w, k)).astype(dtype)
    decoded, colour_type = png.decode(filtered_png(samples, kinds))
    assert decoded.dtype == dtype and colour_type == {1: 0, 2: 4, 3: 2, 4: 6}[k]
    np.testing.assert_array_equal(decoded, samples)


def test_decode_matches_pillow_on_its_adaptively_filtered_files(digit):
    v, _ = digit
    rng = np.random.default_rng(1)
    noisy = np.clip(v.astype(int) + rng.integers(-3, 4, v.shape), 0, 255).astype(np.uint8)
    for array in [noisy, np.stack([noisy, noisy.T, 255 - noisy], -1), rgba(noisy), noisy.astype(np.uint16) * 251]:
        decoded, _ = png.decode(pil_bytes(Image.fromarray(array), "PNG"))
        np.testing.assert_array_equal(decoded, array.reshape(28, 28, -1))


def test_pillow_files_use_the_filters_tested_above(digit):
    """Pillow filters rows adaptively, so the comparison above covers Sub, Up and Paeth."""
    v, _ = digit
    content = pil_bytes(Image.fromarray(np.stack([v, v.T, 255 - v], -1)), "PNG")
    idat_start = content.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", content[idat_start - 8:idat_start - 4])
    rows = np.frombuffer(zlib.decompress(content[idat_start:idat_start + length]), np.uint8).reshape(28, -1)
    assert {1, 2, 4} <= set(rows[:, 0].tolist())


def test_decode_refuses_what_it_does_not_read():
    base = filtered_png(np.zeros((2, 2, 1), np.uint8), [0])
    for patch, words in [((24, 4), "bit depth 4"), ((25, 3), "colour type 3"), ((28, 1), "interlace 1")]:
        content = bytearray(base)
        content[patch[0]] = patch[1]
        content[29:33] = struct.pack(">I", zlib.crc32(bytes(content[12:29])))
        with pytest.raises(ValueError, match=words):
            png.decode(bytes(content), "f.png")
    with pytest.raises(ValueError, match="not a PNG"):
        png.decode(b"GIF89a" + base[6:], "f.png")
    with pytest.raises(ValueError, match="filter type 7"):
        png.unfilter(np.array([[7, 1, 2]], np.uint8), 1, "f.png")
    with pytest.raises(ValueError, match="uint8 or uint16"):
        png.encode(np.zeros((2, 2), np.int32))
