"""Average pooling: windowed (VALID, no padding) and global."""
from __future__ import annotations

from rcenp.autograd import Function, Tensor
from rcenp.backend import get_array_module
from rcenp.ops.layout import alloc_like, over_chunks, scratch_like


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class AvgPool2d(Function):
    """Mean over KH x KW windows of x (N, C, H, W) at stride (SH, SW), VALID → (N, C, OH, OW)."""

    def __init__(self, kernel_size, stride=None):
        self.kernel = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel

    def _windows(self, h, w):
        (kh, kw), (sh, sw) = self.kernel, self.stride
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        if oh <= 0 or ow <= 0:
            raise ValueError(f"avg_pool2d: window {kh}x{kw} larger than input {h}x{w}")
        for i in range(kh):
            for j in range(kw):
                yield (slice(i, i + (oh - 1) * sh + 1, sh), slice(j, j + (ow - 1) * sw + 1, sw))

    def forward(self, x):
        self.shape = x.shape
        windows = list(self._windows(x.shape[2], x.shape[3]))
        rows, cols = windows[0]
        y = alloc_like(x, x[:, :, rows, cols].shape, zero=False)
        inv_area = 1.0 / (self.kernel[0] * self.kernel[1])

        def job(lo, hi):  # strided window sums, image chunk by image chunk on the host pool
            out = y[lo:hi]
            out[...] = x[lo:hi, :, rows, cols]
            for r, c in windows[1:]:
                out += x[lo:hi, :, r, c]
            out *= inv_area

        over_chunks(x, job, balanced=True)
        return y

    def backward(self, gy):
        gx = alloc_like(gy, self.shape, zero=False)
        inv_area = 1.0 / (self.kernel[0] * self.kernel[1])
        windows = list(self._windows(self.shape[2], self.shape[3]))

        def job(lo, hi):
            out = gx[lo:hi]
            out[...] = 0
            share = gy[lo:hi]
            share = get_array_module(share).multiply(share, inv_area, out=scratch_like(share, "pool-share"))
            for rows, cols in windows:
                out[:, :, rows, cols] += share

        over_chunks(gx, job, balanced=True)
        return gx


class GlobalAvgPool2d(Function):
    """x (N, C, H, W) → mean over H, W → (N, C)."""

    def forward(self, x):
        self.x_like = x[:1, :1, :1, :1]  # remembers x's memory layout for the gradient
        self.shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, gy):
        n, c, h, w = self.shape
        gx = alloc_like(self.x_like, self.shape, zero=False)
        gx[...] = (gy * (1.0 / (h * w)))[:, :, None, None]
        return gx


def avg_pool2d(x, kernel_size, stride=None) -> Tensor:
    """Average pooling of x (N, C, H, W); stride defaults to the kernel size."""
    return AvgPool2d(kernel_size, stride)(x)


def global_avg_pool2d(x) -> Tensor:
    """Mean over the spatial axes: (N, C, H, W) → (N, C)."""
    return GlobalAvgPool2d()(x)
