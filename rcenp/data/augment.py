"""Training-time augmentation and a deterministic, resumable stream of mini-batch indices.

Both are pure functions of (seed, step): a run resumed at step k draws exactly the batches and
augmentations it would have drawn without the interruption, with no saved RNG state.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PAD = 2  # the authors' cifar_input.py: resize_image_with_crop_or_pad to image_size + 4 = 36, centred
PAD_VALUE = -0.5  # a raw 0 pixel after x/255 - 0.5: the pad is zero in raw pixel space


def augment_cifar(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random-crop and flip a batch, as the CIFAR-10 training input of the reference code.

    Each image of the batch (N, C, H, W) is padded with 2 pixels of -0.5 on every side (zero in raw pixel
    space), cropped back to H x W at an offset (dy, dx) drawn uniformly from {0, ..., 4}^2, and
    flipped left-right with probability 0.5. Draws, in this order: ``rng.integers(0, 5, (N, 2))``
    for the offsets (columns dy, dx), then ``rng.random(N)`` for the flips (flip where < 0.5).
    Returns a new array of the same shape and dtype; MNIST is trained without augmentation.

    The reference's ``cifar_input.py`` pads the raw image to ``image_size + 4`` = 36 x 36 with
    ``tf.image.resize_image_with_crop_or_pad`` (2 pixels a side) before ``tf.random_crop``;
    protocol.md's "40x40" is wrong.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {images.shape}")
    n, _, h, w = images.shape
    offsets = rng.integers(0, 2 * PAD + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    padded = np.pad(images, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)), constant_values=PAD_VALUE)
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2*PAD+1, 2*PAD+1, H, W)
    out = windows[np.arange(n), :, offsets[:, 0], offsets[:, 1]]  # (N, C, H, W), a copy
    out[flips] = out[flips, :, :, ::-1]
    return out


class BatchStream:
    """Mini-batch indices into a data set of ``n`` examples, as a pure function of the step.

    Epoch e is the permutation ``np.random.default_rng([seed, e]).permutation(n)``. The stream is
    the concatenation of epochs 0, 1, 2, ...; step s takes its positions
    ``s * batch_size ... (s + 1) * batch_size - 1``. Nothing is dropped: a batch that straddles
    an epoch boundary ends one epoch and starts the next (so it may hold an index twice when
    ``n`` is not a multiple of ``batch_size``), and every epoch visits each index exactly once.
    """

    __slots__ = ("n", "batch_size", "seed", "_cache")

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1 or batch_size < 1 or seed < 0:
            raise ValueError(f"BatchStream needs n >= 1, batch_size >= 1, seed >= 0; got {n}, {batch_size}, {seed}")
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._cache: dict[int, np.ndarray] = {}  # the last two permutations used

    def epoch(self, step: int) -> int:
        """The epoch of the first example of ``step``."""
        return step * self.batch_size // self.n

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch ``epoch``: int64 (n,), read-only."""
        perm = self._cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            perm.setflags(write=False)
            if len(self._cache) >= 2:
                del self._cache[min(self._cache)]
            self._cache[epoch] = perm
        return perm

    def indices(self, step: int) -> np.ndarray:
        """The example indices of batch ``step`` (step >= 0): int64 (batch_size,)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        start = step * self.batch_size
        stop = start + self.batch_size
        parts = []
        for e in range(start // self.n, (stop - 1) // self.n + 1):
            lo = max(start, e * self.n) - e * self.n
            hi = min(stop, (e + 1) * self.n) - e * self.n
            parts.append(self.permutation(e)[lo:hi])
        return np.concatenate(parts).astype(np.int64, copy=False)

    def augment_rng(self, step: int) -> np.random.Generator:
        """The generator for the augmentation of batch ``step``: ``default_rng([seed, step, 1])``."""
        return np.random.default_rng([self.seed, step, 1])
