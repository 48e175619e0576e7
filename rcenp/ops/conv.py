"""2-D convolution (cross-correlation, as every deep-learning framework defines it).

Notation: x (N, C, H, W), w (CO, C, KH, KW), y (N, CO, OH, OW), stride S, padding P,
OH = (H + 2P - KH) // S + 1.

Layout. Activations are stored channels-last in memory (N, H, W, C) but shown as (N, C, H, W)
arrays: ``y`` is a transposed view of an (N, OH, OW, CO) buffer. NumPy's elementwise operations
keep that layout, reductions over (0, 2, 3) read it efficiently, and the convolution becomes
im2col + one GEMM with no transposes: each row of ``col`` is one output pixel's receptive field
(KH, KW, C), copied in a single strided pass, and ``y = col @ w_mat`` with w_mat (KH*KW*C, CO)
(on the GPU, and on the host for strided convs; stride-1 host convs use kernel rows, below).

Backward:
- dw = colᵀ @ dy, with ``col`` rebuilt from x rather than stored (storing it costs about 9x the
  activation memory).
- dx at stride 1 is itself a convolution. dy is padded and correlated with the kernel flipped in KH
  and KW and transposed in (CO, C), with no col2im scatter. At stride S > 1 that convolution would
  multiply mostly zeros (dy dilated by S), so dx is col2im of dy @ w_matᵀ. Its KH*KW strided adds
  run per chunk, in cache.

Kernel rows (host, stride 1, KH > 1, KW*C >= 8). Instead of im2col, each padded input row is
gathered once as ``rows`` (HP, OW, KW*C): its KW*C inputs under every horizontal kernel position.
Output row i reads kernel row r's inputs from rows[i + r], so y = Σ_r rows[r:r+OH] @ W_r with W_r
the (KW*C, CO) block of w_mat for kernel row r, and dW_r = Σ rows[r:r+OH]ᵀ @ dy: KH batched GEMMs
on a gather KH times smaller than im2col. Here that makes the ResNet-32 forward 14-17% and the
input gradient 17-21% faster (``bench/bench_engine.py``). The same sums over K are split at
kernel-row boundaries, so float32 results differ from im2col's in the last bits (tested against
each other). ``rows`` is gathered straight from the unpadded activation, with zeros where a
window reaches into the padding, which saves a padded copy per pass (8-17% of the forward's and
input gradient's CPU time here).

On the host, every pass (forward, dw, dx) is split into chunks of images whose gathered block
(kernel rows or im2col) is about 2.5 MB. Each worker thread pads, gathers and multiplies its own
chunk with single-threaded BLAS (``rcenp.ops.layout.map_chunks``), so the block never leaves the
core's cache. Partial sums are added in a fixed order (dw: per image, then per chunk), so results
do not depend on thread timing or count. Kernel-row passes (forward and dx at stride 1) multiply
image by image, so their chunks are also balanced over the workers (100 images: 4 x 25).
"""
from __future__ import annotations

import numpy as np

from rcenp.autograd import Function, Tensor
from rcenp.backend import get_array_module
from rcenp.ops.elementwise import unbroadcast
from rcenp.ops.layout import balanced_chunk, map_chunks
from rcenp.ops.memory import empty, scratch

_CHUNK_BYTES = 5 << 19  # about 2.5 MB of gathered input (kernel rows or im2col) per worker chunk


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


def _place(xp, nhwc, top, left, bottom, right, stride):
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
    buf = scratch(xp, "pad", (n, hp, wp, c), nhwc.dtype)
    src_r, dst_r = _span(top, h, sh, hp)
    src_c, dst_c = _span(left, w, sw, wp)
    if src_r is None or src_c is None or (sh, sw) != (1, 1):
        buf[...] = 0
    else:  # zero the frame around the block written below
        buf[:, :dst_r.start] = 0
        buf[:, dst_r.stop:] = 0
        buf[:, dst_r, :dst_c.start] = 0
        buf[:, dst_r, dst_c.stop:] = 0
    if src_r is not None and src_c is not None:
        buf[:, dst_r, dst_c] = nhwc[:, src_r, src_c]
    return buf


def _im2col(xp, padded, kh, kw, stride, out_hw):
    """(N, HP, WP, C) padded input → col (N*OH*OW, KH*KW*C), one strided copy."""
    n, _, _, c = padded.shape
    oh, ow = out_hw
    sn, sh_, sw_, sc = padded.strides
    if (kh, kw, stride) == (1, 1, (1, 1)):
        return padded.reshape(n * oh * ow, c)
    view = _as_strided(xp, padded, (n, oh, ow, kh, kw, c),
                       (sn, sh_ * stride[0], sw_ * stride[1], sh_, sw_, sc))
    col = scratch(xp, "col", (n, oh, ow, kh, kw, c), padded.dtype)
    col[...] = view
    return col.reshape(n * oh * ow, kh * kw * c)


def _by_rows(kernel, stride, c):
    """Whether the host path uses kernel-row GEMMs: stride 1, more than one kernel row, and at
    least 8 inputs per row block (KW*C; at 3 = MNIST's 3x3 stem, their GEMMs are too thin: that
    conv's forward takes 2.2 ms by rows, 1.3 ms by im2col here)."""
    return tuple(stride) == (1, 1) and kernel[0] > 1 and kernel[1] * c >= 8


def _kernel_rows(x, pads, kw, ow):
    """x (b, H, W, C), zero-padded by ``pads`` (top, left, bottom, right) → rows (b, HP, OW, KW*C):
    rows[:, i, j] = padded[:, i, j:j+KW] flattened, the inputs kernel row r reads for output pixel
    (i - r, j) at stride 1; KH times smaller than im2col.

    Gathered straight from x when x is channels-last and the pads are not negative: one strided
    copy for the columns whose whole window lies inside x, two small ones per border column, and
    zeros; the padded input is never formed. Otherwise x is padded first.
    """
    if min(pads) < 0 or x.strides[3] != x.itemsize or x.strides[2] != x.shape[3] * x.itemsize:
        x, pads = _place(np, x, *pads, (1, 1)), (0, 0, 0, 0)
    b, h, w, c = x.shape
    top, left, bottom, _ = pads
    hp = top + h + bottom
    rows = scratch(np, "rows", (b, hp, ow, kw, c), x.dtype)
    rows[:, :top] = 0
    rows[:, top + h:] = 0
    inner = rows[:, top:top + h]
    lo, hi = min(left, ow), max(min(left + w - kw + 1, ow), min(left, ow))  # windows inside x
    if hi > lo:
        sn, sh_, sw_, sc = x.strides
        inner[:, :, lo:hi] = _as_strided(np, x, (b, h, hi - lo, kw, c), (sn, sh_, sw_, sw_, sc))
    for j in list(range(lo)) + list(range(hi, ow)):  # border columns: part of the window is padding
        first, last = max(0, left - j), min(kw, left + w - j)  # kernel columns that read x
        inner[:, :, j, :first] = 0
        inner[:, :, j, max(first, last):] = 0
        if last > first:
            inner[:, :, j, first:last] = x[:, :, j + first - left:j + last - left]
    return rows.reshape(b, hp, ow, kw * c)


def _correlate_rows(x, pads, w_mat, kernel, out):
    """Stride-1 correlation of one chunk x (b, H, W, C), zero-padded by ``pads``, on the host,
    written into out (b, OH, OW, CO).

    y = Σ over kernel rows r of rows[:, r:r+OH] @ W_r, W_r the (KW*C, CO) block of w_mat: KH
    batched GEMMs over the chunk's images, added in kernel-row order.
    """
    b, oh, ow, co = out.shape
    kh, kw = kernel
    rows = _kernel_rows(x, pads, kw, ow)
    k = rows.shape[3]
    y = out.reshape(b, oh * ow, co)
    np.matmul(rows[:, 0:oh].reshape(b, oh * ow, k), w_mat[0:k], out=y)
    part = scratch(np, "row-part", y.shape, y.dtype)
    for r in range(1, kh):
        np.matmul(rows[:, r:r + oh].reshape(b, oh * ow, k), w_mat[r * k:(r + 1) * k], out=part)
        y += part


def _chunk_size(n, per_image):
    """Images per chunk: at most _CHUNK_BYTES of gathered input (``per_image`` bytes each),
    chunks as equal as possible (a short last chunk would leave a worker idle: 128 images as
    8 x 16, not 7 x 17 + 9)."""
    largest = max(1, min(n, _CHUNK_BYTES // max(per_image, 1)))
    return -(-n // -(-n // largest))


def _chunk_images(n, out_hw, kernel, stride, c, itemsize):
    """Images per chunk for a pass that gathers kernel rows (stride 1: OH + KH - 1 padded rows
    of OW x KW*C) or im2col (OH*OW x KH*KW*C)."""
    (oh, ow), (kh, kw) = out_hw, kernel
    if _by_rows(kernel, stride, c):
        return _chunk_size(n, (oh + kh - 1) * ow * kw * c * itemsize)
    return _chunk_size(n, oh * ow * kh * kw * c * itemsize)


def _correlate(xp, x_nhwc, w_mat, kernel, stride, pads, dilation, out_hw, bias=None, residual=None):
    """Valid cross-correlation of x (N, H, W, C), dilated by ``dilation`` and padded by ``pads``
    (top, left, bottom, right), with w_mat (KH*KW*C, CO) → (N, OH, OW, CO) channels-last; then
    + bias (CO,), then + residual (N, OH, OW, CO), each chunk while it is in cache."""
    n, co = x_nhwc.shape[0], w_mat.shape[1]
    kh, kw = kernel

    def finish(y, lo, hi):
        if bias is not None:
            y += bias
        if residual is not None:
            y += residual if residual.shape[0] == 1 else residual[lo:hi]

    if xp is not np:
        padded = _place(xp, x_nhwc, *pads, dilation)
        col = _im2col(xp, padded, kh, kw, stride, out_hw)
        y = (col @ w_mat).reshape(n, out_hw[0], out_hw[1], co)
        finish(y, 0, n)
        return y
    out = empty((n, out_hw[0], out_hw[1], co), np.result_type(x_nhwc, w_mat))
    by_rows = _by_rows(kernel, stride, x_nhwc.shape[3])

    def job(lo, hi):
        if by_rows and dilation == (1, 1):
            _correlate_rows(x_nhwc[lo:hi], pads, w_mat, kernel, out[lo:hi])
        elif by_rows:
            _correlate_rows(_place(xp, x_nhwc[lo:hi], *pads, dilation), (0, 0, 0, 0), w_mat, kernel, out[lo:hi])
        else:
            col = _im2col(xp, _place(xp, x_nhwc[lo:hi], *pads, dilation), kh, kw, stride, out_hw)
            np.matmul(col, w_mat, out=out[lo:hi].reshape(-1, co))
        finish(out[lo:hi], lo, hi)

    chunk = _chunk_images(n, out_hw, kernel, stride, x_nhwc.shape[3], out.itemsize)
    map_chunks(job, n, balanced_chunk(n, chunk) if by_rows else chunk)
    return out


def _weight_gradient(xp, x_nhwc, gy_nhwc, kernel, stride, pads):
    """dW as a (KH*KW*C, CO) matrix: Σ over images of colᵀ @ dy, summed in chunk order."""
    n, oh, ow, co = gy_nhwc.shape
    kh, kw = kernel
    if xp is not np:
        padded = _place(xp, x_nhwc, *pads, (1, 1))
        col = _im2col(xp, padded, kh, kw, stride, (oh, ow))
        return col.T @ xp.ascontiguousarray(gy_nhwc).reshape(-1, co)
    by_rows = _by_rows(kernel, stride, x_nhwc.shape[3])

    def job(lo, hi):
        gy = np.ascontiguousarray(gy_nhwc[lo:hi]).reshape(-1, co)
        if by_rows:  # dW_r = Σ over the chunk's images of rows[:, r:r+OH]ᵀ @ dy, image by image
            b = hi - lo
            rows = _kernel_rows(x_nhwc[lo:hi], pads, kw, ow)
            k = rows.shape[3]
            gw = np.empty((kh * k, co), gy.dtype)
            per_image = scratch(np, "row-part", (b, k, co), gy.dtype)
            for r in range(kh):
                np.matmul(rows[:, r:r + oh].reshape(b, oh * ow, k).transpose(0, 2, 1),
                          gy.reshape(b, oh * ow, co), out=per_image)
                per_image.sum(axis=0, out=gw[r * k:(r + 1) * k])
            return gw
        col = _im2col(xp, _place(xp, x_nhwc[lo:hi], *pads, (1, 1)), kh, kw, stride, (oh, ow))
        return col.T @ gy

    parts = map_chunks(job, n, _chunk_images(n, (oh, ow), kernel, stride, x_nhwc.shape[3], gy_nhwc.itemsize))
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total


def _col2im_gradient(xp, gy_nhwc, w_mat, kernel, stride, padding, in_hw):
    """dx (N, H, W, C) for a strided conv: col2im of dcol = dy @ w_matᵀ, chunk by chunk."""
    n, oh, ow, co = gy_nhwc.shape
    (kh, kw), (sh, sw), (ph, pw), (h, wd) = kernel, stride, padding, in_hw
    c = w_mat.shape[0] // (kh * kw)
    gx = (empty if xp is np else xp.empty)((n, h, wd, c), gy_nhwc.dtype)

    def job(lo, hi):
        b = hi - lo
        dcol = scratch(xp, "col", (b, oh, ow, kh, kw, c), xp.result_type(gy_nhwc, w_mat))
        xp.matmul(xp.ascontiguousarray(gy_nhwc[lo:hi]).reshape(-1, co), w_mat.T, out=dcol.reshape(-1, kh * kw * c))
        buf = scratch(xp, "col2im", (b, h + 2 * ph, wd + 2 * pw, c), gy_nhwc.dtype)
        buf[...] = 0
        for i in range(kh):
            for j in range(kw):
                buf[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw] += dcol[:, :, :, i, j]
        gx[lo:hi] = buf[:, ph:ph + h, pw:pw + wd]

    if xp is not np:
        job(0, n)
    else:
        map_chunks(job, n, _chunk_size(n, oh * ow * kh * kw * c * gy_nhwc.itemsize))
    return gx


def _weight_matrix(w):
    """w (CO, C, KH, KW) → (KH*KW*C, CO), matching the col row order (KH, KW, C)."""
    co = w.shape[0]
    return w.transpose(2, 3, 1, 0).reshape(-1, co)


class Conv2d(Function):
    """Inputs x, w, then b when ``has_bias``, then the residual when ``has_residual``."""

    def __init__(self, stride=1, padding=0, has_bias=False, has_residual=False):
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.has_bias, self.has_residual = has_bias, has_residual

    def forward(self, x, w, *rest):
        xp = get_array_module(x, w)
        n, c, h, wd = x.shape
        co, c_w, kh, kw = w.shape
        if c != c_w:
            raise ValueError(f"conv2d: input has {c} channels but the weight expects {c_w}")
        (sh, sw), (ph, pw) = self.stride, self.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        if oh <= 0 or ow <= 0:
            raise ValueError(f"conv2d: kernel {kh}x{kw} does not fit input {h}x{wd} with padding {ph},{pw}")
        b = rest[0] if self.has_bias else None
        residual = rest[-1] if self.has_residual else None
        dtype = np.result_type(x.dtype, w.dtype)
        if residual is not None and (residual.ndim != 4 or residual.dtype != dtype or
                                     any(r not in (1, o) for r, o in zip(residual.shape, (n, co, oh, ow)))):
            raise ValueError(f"conv2d: residual must broadcast to {(n, co, oh, ow)} with dtype {dtype}, "
                             f"got {residual.shape} {residual.dtype}")
        self.residual_shape = None if residual is None else residual.shape
        self.x, self.w = x, w
        self.out_hw = (oh, ow)
        y = _correlate(xp, x.transpose(0, 2, 3, 1), _weight_matrix(w), (kh, kw), self.stride,
                       (ph, pw, ph, pw), (1, 1), (oh, ow), bias=b,
                       residual=None if residual is None else residual.transpose(0, 2, 3, 1))
        return y.transpose(0, 3, 1, 2)

    def backward(self, gy):
        xp = get_array_module(gy)
        x, w = self.x, self.w
        n, c, h, wd = x.shape
        co, _, kh, kw = w.shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        oh, ow = self.out_hw
        gy_nhwc = gy.transpose(0, 2, 3, 1)
        gx = gw = gb = None
        if self.needs_input_grad[1]:
            gw_mat = _weight_gradient(xp, x.transpose(0, 2, 3, 1), gy_nhwc, (kh, kw), self.stride, (ph, pw, ph, pw))
            gw = gw_mat.reshape(kh, kw, c, co).transpose(3, 2, 0, 1)
        if self.has_bias and self.needs_input_grad[2]:
            gb = gy_nhwc.sum(axis=(0, 1, 2))
        if self.needs_input_grad[0] and (sh, sw) != (1, 1):
            gx = _col2im_gradient(xp, gy_nhwc, _weight_matrix(w), (kh, kw), (sh, sw), (ph, pw),
                                  (h, wd)).transpose(0, 3, 1, 2)
        elif self.needs_input_grad[0]:
            # dx[i] = sum over taps of dy at the output positions that read input row i. Rows of
            # the padded input past the last window ((OH-1)*S + KH) get no gradient.
            top, left = kh - 1 - ph, kw - 1 - pw
            bottom = h + kh - 1 - top - ((oh - 1) * sh + 1)
            right = wd + kw - 1 - left - ((ow - 1) * sw + 1)
            w_flip = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(-1, c)  # (KH*KW*CO, C)
            gx = _correlate(xp, gy_nhwc, xp.ascontiguousarray(w_flip), (kh, kw), (1, 1),
                            (top, left, bottom, right), (sh, sw), (h, wd)).transpose(0, 3, 1, 2)
        grads = (gx, gw) + ((gb,) if self.has_bias else ())
        if not self.has_residual:
            return grads
        return grads + (unbroadcast(gy, self.residual_shape) if self.needs_input_grad[-1] else None,)


def conv2d(x, w, b=None, stride=1, padding=0, residual=None) -> Tensor:
    """Cross-correlate x (N, C, H, W) with w (CO, C, KH, KW) (+ b (CO,)) → (N, CO, OH, OW).

    ``stride`` and ``padding`` are ints or (H, W) pairs; zero padding on every side.
    ``residual``, of the output's dtype and broadcasting to (N, CO, OH, OW), is added to the output
    (after the bias) chunk by chunk while it is in cache: ``conv2d(x, w, residual=r)`` has the
    bits of ``conv2d(x, w) + r`` without a separate output array (a ResNet unit's sum). Raises
    ValueError on mismatched channels, shapes or dtypes.
    """
    inputs = (x, w) + ((b,) if b is not None else ()) + ((residual,) if residual is not None else ())
    return Conv2d(stride, padding, b is not None, residual is not None)(*inputs)
