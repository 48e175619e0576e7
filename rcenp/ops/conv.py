"""2-D convolution (cross-correlation, as every deep-learning framework defines it).

Notation: x (N, C, H, W), w (CO, C, KH, KW), y (N, CO, OH, OW), stride S, padding P,
OH = (H + 2P - KH) // S + 1.

Layout. Activations are stored channels-last in memory (N, H, W, C) but shown as (N, C, H, W)
arrays: ``y`` is a transposed view of an (N, OH, OW, CO) buffer. NumPy's elementwise operations
keep that layout, reductions over (0, 2, 3) read it efficiently, and the convolution becomes
im2col + one GEMM with no transposes: each row of ``col`` is one output pixel's receptive field
(KH, KW, C), copied in a single strided pass, and ``y = col @ w_mat`` with w_mat (KH*KW*C, CO).

Backward:
- dw = colᵀ @ dy, with ``col`` rebuilt from x rather than stored (storing it costs about 9x the
  activation memory).
- dx is itself a convolution (no col2im scatter). dy is dilated by S, padded, and correlated with
  the kernel flipped in KH and KW and transposed in (CO, C).
"""
from __future__ import annotations

import collections

import numpy as np

from rcenp.autograd import Function, Tensor
from rcenp.backend import get_array_module
from rcenp.ops.layout import copy_into

_WORKSPACE_SLOTS = 12
_workspace: collections.OrderedDict = collections.OrderedDict()


def _buffer(xp, key, shape, dtype, zero: bool):
    """A reusable host buffer (large NumPy allocations cost page faults on every call).

    A zeroed buffer is only ever written in the same region for the same key, so its zero
    border survives reuse. On the GPU CuPy's memory pool already recycles, so we allocate.
    """
    if xp is not np:
        return xp.zeros(shape, dtype) if zero else xp.empty(shape, dtype)
    key = (key, shape, np.dtype(dtype).str)
    buf = _workspace.pop(key, None)
    if buf is None:
        buf = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        while len(_workspace) >= _WORKSPACE_SLOTS:
            _workspace.popitem(last=False)
    _workspace[key] = buf
    return buf


def clear_workspace() -> None:
    """Free the cached im2col and padding buffers."""
    _workspace.clear()


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _as_strided(xp, array, shape, strides):
    if xp is np:
        return np.lib.stride_tricks.as_strided(array, shape, strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(array, shape, strides)


def _span(offset, count, step, size):
    """Source and destination slices of the i in [0, count) with 0 <= offset + i*step < size."""
    lo = max(0, -(offset // step))
    hi = min(count - 1, (size - 1 - offset) // step)
    if hi < lo:
        return None, None
    return slice(lo, hi + 1), slice(offset + lo * step, offset + hi * step + 1, step)


def _place(xp, nhwc, top, left, bottom, right, stride, key):
    """Write ``nhwc`` (N, H, W, C), dilated by ``stride``, into a zero (N, HP, WP, C) buffer.

    Pixel (i, j) lands at (top + i*SH, left + j*SW); HP = top + (H-1)*SH + 1 + bottom. Negative
    paddings crop.
    """
    n, h, w, c = nhwc.shape
    sh, sw = stride
    if (top, left, bottom, right, sh, sw) == (0, 0, 0, 0, 1, 1):
        return xp.ascontiguousarray(nhwc)
    hp = top + (h - 1) * sh + 1 + bottom
    wp = left + (w - 1) * sw + 1 + right
    buf = _buffer(xp, key + (top, left, bottom, right, sh, sw), (n, hp, wp, c), nhwc.dtype, zero=True)
    src_r, dst_r = _span(top, h, sh, hp)
    src_c, dst_c = _span(left, w, sw, wp)
    if src_r is not None and src_c is not None:
        copy_into(buf[:, dst_r, dst_c], nhwc[:, src_r, src_c])
    return buf


def _im2col(xp, padded, kh, kw, stride, out_hw, key):
    """(N, HP, WP, C) padded input → col (N*OH*OW, KH*KW*C), one strided copy."""
    n, _, _, c = padded.shape
    oh, ow = out_hw
    sn, sh_, sw_, sc = padded.strides
    if (kh, kw, stride) == (1, 1, (1, 1)):
        return padded.reshape(n * oh * ow, c)
    view = _as_strided(xp, padded, (n, oh, ow, kh, kw, c),
                       (sn, sh_ * stride[0], sw_ * stride[1], sh_, sw_, sc))
    col = _buffer(xp, key, (n, oh, ow, kh, kw, c), padded.dtype, zero=False)
    copy_into(col, view)
    return col.reshape(n * oh * ow, kh * kw * c)


def _correlate(xp, nhwc_padded, w_mat, kh, kw, stride, out_hw, key):
    """Valid cross-correlation of a padded (N, HP, WP, C) input → (N, OH, OW, CO), channels-last."""
    n = nhwc_padded.shape[0]
    col = _im2col(xp, nhwc_padded, kh, kw, stride, out_hw, key)
    out = col @ w_mat
    return out.reshape(n, out_hw[0], out_hw[1], w_mat.shape[1])


def _weight_matrix(w):
    """w (CO, C, KH, KW) → (KH*KW*C, CO), matching the col row order (KH, KW, C)."""
    co = w.shape[0]
    return w.transpose(2, 3, 1, 0).reshape(-1, co)


class Conv2d(Function):
    def __init__(self, stride=1, padding=0):
        self.stride = _pair(stride)
        self.padding = _pair(padding)

    def forward(self, x, w, b=None):
        xp = get_array_module(x, w)
        n, c, h, wd = x.shape
        co, c_w, kh, kw = w.shape
        if c != c_w:
            raise ValueError(f"conv2d: input has {c} channels but the weight expects {c_w}")
        (sh, sw), (ph, pw) = self.stride, self.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        if oh <= 0 or ow <= 0:
            raise ValueError(f"conv2d: kernel {kh}x{kw} does not fit input {h}x{wd} with padding {ph},{pw}")
        self.x, self.w, self.has_bias = x, w, b is not None
        self.out_hw = (oh, ow)
        padded = _place(xp, x.transpose(0, 2, 3, 1), ph, pw, ph, pw, (1, 1), ("x",))
        y = _correlate(xp, padded, _weight_matrix(w), kh, kw, self.stride, (oh, ow), ("col",))
        if b is not None:
            y += b
        return y.transpose(0, 3, 1, 2)

    def backward(self, gy):
        xp = get_array_module(gy)
        x, w = self.x, self.w
        n, c, h, wd = x.shape
        co, _, kh, kw = w.shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        oh, ow = self.out_hw
        gy_nhwc = gy.transpose(0, 2, 3, 1)
        if gy_nhwc.flags.c_contiguous:
            gy_mat = gy_nhwc.reshape(-1, co)
        else:
            gy_mat = _buffer(xp, ("gy_mat",), gy_nhwc.shape, gy.dtype, zero=False)
            copy_into(gy_mat, gy_nhwc)
            gy_mat = gy_mat.reshape(-1, co)
        gx = gw = gb = None
        if self.needs_input_grad[1]:
            padded = _place(xp, x.transpose(0, 2, 3, 1), ph, pw, ph, pw, (1, 1), ("x",))
            col = _im2col(xp, padded, kh, kw, self.stride, (oh, ow), ("col",))
            gw = (col.T @ gy_mat).reshape(kh, kw, c, co).transpose(3, 2, 0, 1)
        if self.has_bias and self.needs_input_grad[2]:
            gb = gy_mat.sum(axis=0)
        if self.needs_input_grad[0]:
            # dx[i] = sum over taps of dy at the output positions that read input row i. Rows of
            # the padded input past the last window ((OH-1)*S + KH) get no gradient.
            top, left = kh - 1 - ph, kw - 1 - pw
            bottom = h + kh - 1 - top - ((oh - 1) * sh + 1)
            right = wd + kw - 1 - left - ((ow - 1) * sw + 1)
            placed = _place(xp, gy_nhwc, top, left, bottom, right, (sh, sw), ("gy",))
            w_flip = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(-1, c)  # (KH*KW*CO, C)
            gx = _correlate(xp, placed, xp.ascontiguousarray(w_flip), kh, kw, (1, 1), (h, wd),
                            ("col",)).transpose(0, 3, 1, 2)
        if self.has_bias:
            return gx, gw, gb
        return gx, gw


def conv2d(x, w, b=None, stride=1, padding=0) -> Tensor:
    """Cross-correlate x (N, C, H, W) with w (CO, C, KH, KW) (+ b (CO,)) → (N, CO, OH, OW).

    ``stride`` and ``padding`` are ints or (H, W) pairs; zero padding on every side.
    """
    inputs = (x, w) if b is None else (x, w, b)
    return Conv2d(stride, padding)(*inputs)
