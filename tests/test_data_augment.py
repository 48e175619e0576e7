"""Augmentation (pad/crop/flip) and the deterministic batch stream."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcenp.data import BatchStream, augment_cifar
from rcenp.data.augment import PAD

FAST = settings(max_examples=40, deadline=None)


def reference_augment(images: np.ndarray, seed: int) -> np.ndarray:
    """A per-image loop that follows the documented draws literally."""
    rng = np.random.default_rng(seed)
    n, c, h, w = images.shape
    offsets = rng.integers(0, 2 * PAD + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    out = np.empty_like(images)
    for i in range(n):
        padded = np.full((c, h + 2 * PAD, w + 2 * PAD), -0.5, images.dtype)
        padded[:, PAD:PAD + h, PAD:PAD + w] = images[i]
        crop = padded[:, offsets[i, 0]:offsets[i, 0] + h, offsets[i, 1]:offsets[i, 1] + w]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


@FAST
@given(
    n=st.integers(1, 9),
    c=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_augment_matches_reference(n, c, h, w, seed):
    images = np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32) - 0.5
    out = augment_cifar(images, np.random.default_rng(seed))
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out, reference_augment(images, seed))


def test_augment_deterministic_and_does_not_touch_input():
    images = np.random.default_rng(0).random((128, 3, 32, 32), dtype=np.float32) - 0.5
    before = images.copy()
    a = augment_cifar(images, np.random.default_rng(5))
    b = augment_cifar(images, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(images, before)
    assert not np.array_equal(a, augment_cifar(images, np.random.default_rng(6)))


def test_pad_value_and_offsets_cover_all_five_positions_of_the_authors_36_pixel_canvas():
    """cifar_input.py pads 32 x 32 to image_size + 4 = 36 x 36: shifts 0..4 of the padded canvas."""
    assert PAD == 2
    images = np.full((4000, 1, 32, 32), 0.25, np.float32)  # never -0.5, so pads are visible
    out = augment_cifar(images, np.random.default_rng(0))
    assert set(np.unique(out)) == {np.float32(-0.5), np.float32(0.25)}
    rows = (out[:, 0, :, 16] == 0.25)  # which rows of the middle column come from the image
    top_pad = rows.argmax(axis=1)  # first image row
    bottom_pad = 32 - rows.sum(axis=1) - top_pad
    shift = np.where(top_pad > 0, PAD - top_pad, PAD + bottom_pad)  # the drawn row offset
    assert set(shift.tolist()) == set(range(2 * PAD + 1))
    counts = np.bincount(shift, minlength=5)
    assert len(counts) == 5 and counts.min() > 700  # uniform over 0..4: 4000 / 5 = 800 each


def test_flip_probability_half_and_flip_is_left_right():
    image = np.tile(np.arange(32, dtype=np.float32) / 64, (1, 1, 32, 1))  # increasing along width
    images = np.repeat(image, 2000, axis=0)
    out = augment_cifar(images, np.random.default_rng(1))
    centre = out[:, 0, 16, 12:20]  # inside the image for every offset
    increasing = np.all(np.diff(centre, axis=1) > 0, axis=1)
    decreasing = np.all(np.diff(centre, axis=1) < 0, axis=1)
    assert np.all(increasing ^ decreasing)
    assert 900 < decreasing.sum() < 1100


def test_augment_rejects_wrong_rank():
    with pytest.raises(ValueError):
        augment_cifar(np.zeros((3, 32, 32), np.float32), np.random.default_rng(0))


@FAST
@given(n=st.integers(1, 60), batch_size=st.integers(1, 70), seed=st.integers(0, 2**63), epochs=st.integers(1, 3))
def test_stream_epochs_are_permutations(n, batch_size, seed, epochs):
    stream = BatchStream(n, batch_size, seed)
    steps = -(-epochs * n // batch_size)  # enough steps to cover the epochs
    flat = np.concatenate([stream.indices(s) for s in range(steps)])
    assert flat.dtype == np.int64
    for e in range(epochs):
        chunk = flat[e * n:(e + 1) * n]
        np.testing.assert_array_equal(chunk, np.random.default_rng([seed, e]).permutation(n))
        np.testing.assert_array_equal(np.sort(chunk), np.arange(n))


@FAST
@given(n=st.integers(1, 500), batch_size=st.integers(1, 64), seed=st.integers(0, 1000),
       steps=st.lists(st.integers(0, 400), min_size=1, max_size=8))
def test_stream_is_a_pure_function_of_the_step(n, batch_size, seed, steps):
    fresh = [BatchStream(n, batch_size, seed).indices(s) for s in steps]  # no shared cache
    used = BatchStream(n, batch_size, seed)
    for s in range(0, max(steps) + 1, 7):  # warm the cache with other epochs first
        used.indices(s)
    for s, expected in zip(steps, fresh, strict=True):
        got = used.indices(s)
        assert len(got) == batch_size
        np.testing.assert_array_equal(got, expected)
        assert used.epoch(s) == s * batch_size // n


def test_stream_straddles_epochs():
    stream = BatchStream(10, 4, 3)
    first, second = np.random.default_rng([3, 0]).permutation(10), np.random.default_rng([3, 1]).permutation(10)
    np.testing.assert_array_equal(stream.indices(2), np.concatenate([first[8:], second[:2]]))
    np.testing.assert_array_equal(BatchStream(3, 7, 3).indices(0)[:3], np.random.default_rng([3, 0]).permutation(3))


def test_indices_are_fresh_arrays_and_permutations_read_only():
    stream = BatchStream(50, 10, 0)
    batch = stream.indices(0)
    batch[:] = -1
    assert stream.indices(0).min() >= 0
    with pytest.raises(ValueError):
        stream.permutation(0)[0] = 1


def test_augment_rng_is_a_pure_function_of_the_step():
    stream = BatchStream(50, 10, 7)
    a = stream.augment_rng(3).random(5)
    np.testing.assert_array_equal(a, np.random.default_rng([7, 3, 1]).random(5))
    np.testing.assert_array_equal(a, BatchStream(50, 10, 7).augment_rng(3).random(5))
    assert not np.array_equal(a, stream.augment_rng(4).random(5))


@pytest.mark.parametrize("args", [(0, 1, 0), (1, 0, 0), (1, 1, -1)])
def test_stream_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        BatchStream(*args)
    with pytest.raises(ValueError):
        BatchStream(5, 2, 0).indices(-1)
