"""Batch normalisation over (N, H, W) per channel of x (N, C, H, W), or over N for x (N, C).

As the authors' TensorFlow code (protocol §1.1): batch statistics with the biased variance in
training; running averages r <- decay*r + (1 - decay)*batch_stat with decay 0.9 (TF's zero-debias
correction of the first steps is not reproduced); eps = 1e-3 inside the square root. Eval mode
uses the running statistics, which are then constants: its backward is a per-channel scale.

Per-channel sums are GEMV calls on the (M, C) view of a channels-last array (Σ a·b: of the
product, formed in a per-thread scratch chunk). On the host, large inputs go through cache-sized
chunks on the worker pool (``rcenp.ops.layout``), each chunk making all its elementwise passes
while in cache, with partial sums added in chunk order. An eval-mode backward asked for dx alone
(an attack's input gradient) skips the sums: dx is the activation mask times gy times the scale.

With ``slope`` the leaky ReLU max(y, slope·y) that follows every BN in the pre-activation ResNet is
applied in the same chunk pass, and its gradient mask in the first backward pass: the results are
bit for bit those of ``leaky_relu(batch_norm(...))``, with one pass and one activation-sized array
fewer each way.
"""
from __future__ import annotations

import numpy as np

from rcenp.autograd import Function, Tensor
from rcenp.backend import get_array_module
from rcenp.ops.activation import check_slope, leaky_grad_into, leaky_into
from rcenp.ops.layout import alloc_like, over_chunks, scratch_like
from rcenp.ops.memory import scratch


def _axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _per_channel(v, ndim):
    return v if ndim == 2 else v[:, None, None]


class _Lanes:
    """Per-channel arithmetic in the arrays' own layout.

    When every array is a channels-last NumPy (N, C, H, W), a chunk is viewed as (n·H, W·C) rows
    and per-channel vectors are tiled W times, so NumPy's inner loop runs over W·C elements rather
    than C (2.3x faster at C = 16 here). The operations, and so the results, are the same as with
    (C, 1, 1) broadcasting, which is what any other layout (and CuPy) uses.
    """

    def __init__(self, *arrays):
        x = arrays[0]
        self.nd = x.ndim
        self.on = x.ndim == 4 and all(
            isinstance(a, np.ndarray) and a.transpose(0, 2, 3, 1).flags.c_contiguous for a in arrays)
        self.width = x.shape[3] if x.ndim == 4 else 1

    def __call__(self, a):
        """A chunk a[lo:hi] of one of the arrays, as the view to compute on."""
        if not self.on:
            return a
        n, c, h, w = a.shape
        return a.transpose(0, 2, 3, 1).reshape(n * h, w * c)

    def vector(self, v):
        """A per-channel vector (C,), shaped to broadcast against the views."""
        return v[None].repeat(self.width, 0).ravel() if self.on else _per_channel(v, self.nd)  # = tile(v, W)


def _rows(x):
    """x as a (M, C) matrix view when its memory is channels-last (or x is 2-D), else None."""
    if x.ndim == 2:
        return x if x.flags.c_contiguous else None
    nhwc = x.transpose(0, 2, 3, 1)
    return nhwc.reshape(-1, x.shape[1]) if nhwc.flags.c_contiguous else None


def _channel_sum(x):
    """Σ over (N, H, W) per channel; one GEMV on the (M, C) view when there is one."""
    rows = _rows(x)
    if rows is None:
        return x.sum(axis=_axes(x))
    xp = get_array_module(x)
    return xp.ones(rows.shape[0], x.dtype) @ rows


def _channel_dot(a, b):
    """Σ over (N, H, W) of a*b per channel: the product, then one GEMV on its (M, C) view."""
    ra, rb = _rows(a), _rows(b)
    if ra is None or rb is None:
        return (a * b).sum(axis=_axes(a))
    xp = get_array_module(a)
    if xp is np:
        product = np.multiply(ra, rb, out=scratch(np, "bn-product", ra.shape, np.result_type(ra, rb)))
    else:
        product = ra * rb
    return xp.ones(product.shape[0], product.dtype) @ product


class BatchNorm(Function):
    def __init__(self, running_mean, running_var, training, decay=0.9, eps=1e-3, slope=None):
        if slope is not None:
            check_slope(slope)
        self.running_mean, self.running_var = running_mean, running_var
        self.training, self.decay, self.eps, self.slope = training, decay, eps, slope

    def forward(self, x, gamma, beta):
        xp = get_array_module(x)
        y = alloc_like(x, x.shape, zero=False)
        lanes = _Lanes(x, y)
        if self.training:
            m = x.size // x.shape[1]
            mean = over_chunks(x, lambda lo, hi: _channel_sum(x[lo:hi])) / m
            mean_v = lanes.vector(mean.astype(x.dtype, copy=False))

            def centre(lo, hi):  # y = x - mean, and this chunk's Σ (x - mean)²
                xp.subtract(lanes(x[lo:hi]), mean_v, out=lanes(y[lo:hi]))
                return _channel_dot(y[lo:hi], y[lo:hi])

            var = over_chunks(x, centre) / m  # two-pass: no E[x²] - E[x]² cancellation
            if self.running_mean is not None:
                d = self.decay
                self.running_mean *= d
                self.running_mean += (1 - d) * mean
                self.running_var *= d
                self.running_var += (1 - d) * var
        else:  # copies: a training-mode pass before this graph's backward updates the running mean in place
            mean, var = self.running_mean.copy(), self.running_var
        inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype, copy=False)
        scale = (gamma * inv_std).astype(x.dtype, copy=False)
        self.x, self.mean, self.inv_std, self.scale = x, mean, inv_std, scale
        scale_v = lanes.vector(scale)
        slope = None if self.slope is None else x.dtype.type(self.slope)
        if not self.training:  # y = x * scale + (beta - mean * scale)
            shift_v = lanes.vector((beta - mean * scale).astype(x.dtype, copy=False))

            def affine(lo, hi):
                out = xp.multiply(lanes(x[lo:hi]), scale_v, out=lanes(y[lo:hi]))
                out += shift_v
                if slope is not None:
                    leaky_into(out, slope, out)
        else:  # y holds x - mean
            shift_v = lanes.vector(beta.astype(x.dtype, copy=False))

            def affine(lo, hi):
                out = lanes(y[lo:hi])
                out *= scale_v
                out += shift_v
                if slope is not None:
                    leaky_into(out, slope, out)
        over_chunks(x, affine, balanced=True)
        self.y = y if slope is not None else None  # its sign is the activation's mask
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        x, mean, inv_std, scale = self.x, self.mean, self.inv_std, self.scale
        if self.slope is not None:  # g = gy through the activation, in the buffer that becomes gx
            slope, g = gy.dtype.type(self.slope), alloc_like(gy, gy.shape, zero=False)
        else:
            g = gy
        # the per-channel sums feed dgamma and dbeta, and dx in training mode only (in eval mode,
        # e.g. an attack's input gradient, dx = g·scale needs none of them)
        if not (self.training or self.needs_input_grad[1] or self.needs_input_grad[2]):
            return self._eval_input_gradient(xp, gy, g), None, None

        def sums_job(lo, hi):
            if g is not gy:
                leaky_grad_into(self.y[lo:hi], gy[lo:hi], slope, g[lo:hi])
            return xp.stack([_channel_sum(g[lo:hi]), _channel_dot(g[lo:hi], x[lo:hi])])

        sums = over_chunks(x, sums_job)
        g_beta, gy_x = sums[0], sums[1]
        # Σ g * x_hat with x_hat = (x - mean) * inv_std, without materialising x_hat
        g_gamma = (gy_x - mean * g_beta) * inv_std
        gx = None
        if self.needs_input_grad[0]:
            gx = g if g is not gy else alloc_like(gy, gy.shape, zero=False)
            lanes = _Lanes(x, g, gx)
            scale_v = lanes.vector(scale)
            if self.training:
                m = x.size // x.shape[1]
                # gx = scale * (g - g_beta/m - x_hat * g_gamma/m), written as g*scale + (x*b + c)
                b = (-scale * g_gamma * inv_std / m).astype(x.dtype, copy=False)
                c = (-scale * g_beta / m - b * mean).astype(x.dtype, copy=False)
                b_v, c_v = lanes.vector(b), lanes.vector(c)

                def combine(lo, hi):
                    xl = lanes(x[lo:hi])
                    affine = xp.multiply(xl, b_v, out=scratch_like(xl, "bn-affine"))
                    affine += c_v
                    out = xp.multiply(lanes(g[lo:hi]), scale_v, out=lanes(gx[lo:hi]))
                    out += affine
            else:
                def combine(lo, hi):
                    xp.multiply(lanes(g[lo:hi]), scale_v, out=lanes(gx[lo:hi]))
            over_chunks(gy, combine, balanced=True)
        return (gx,
                g_gamma if self.needs_input_grad[1] else None,
                g_beta if self.needs_input_grad[2] else None)

    def _eval_input_gradient(self, xp, gy, g):
        """Eval mode, dx only: dx = leaky'(y)·gy·scale, one pass per chunk (g: the dx buffer)."""
        if not self.needs_input_grad[0]:
            return None
        gx = g if g is not gy else alloc_like(gy, gy.shape, zero=False)
        lanes = _Lanes(self.x, gy, gx)
        scale_v = lanes.vector(self.scale)
        slope = None if self.slope is None else gy.dtype.type(self.slope)

        def job(lo, hi):
            if slope is not None:
                leaky_grad_into(self.y[lo:hi], gy[lo:hi], slope, gx[lo:hi])
                xp.multiply(lanes(gx[lo:hi]), scale_v, out=lanes(gx[lo:hi]))
            else:
                xp.multiply(lanes(gy[lo:hi]), scale_v, out=lanes(gx[lo:hi]))

        over_chunks(gy, job, balanced=True)
        return gx


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True,
               decay=0.9, eps=1e-3, slope=None) -> Tensor:
    """Normalise x (N, C, H, W) or (N, C) per channel, then scale by gamma and shift by beta (C,).

    Training mode uses batch statistics and updates ``running_mean``/``running_var`` in place
    (when given); eval mode (``training=False``) uses them and needs both. ``slope`` (0 <= slope
    < 1) fuses ``leaky_relu(·, slope)`` onto the output (0 gives ReLU).
    """
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm in eval mode needs running_mean and running_var")
    return BatchNorm(running_mean, running_var, training, decay, eps, slope)(x, gamma, beta)
