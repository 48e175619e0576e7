"""Activations and the softmax family (all along one axis, stable by max-shifting)."""
from __future__ import annotations

from rcenp.autograd import Function, Tensor
from rcenp.backend import get_array_module
from rcenp.ops.layout import alloc_like, over_chunks, scratch_like


def leaky_into(x, slope, out):
    """out = max(x, slope*x) (``out`` may be x itself); slope a scalar of x's dtype."""
    xp = get_array_module(x)
    scaled = xp.multiply(x, slope, out=None if out is x else out)
    return xp.maximum(scaled, x, out=out)


def leaky_grad_into(sign, gy, slope, out):
    """out = gy where sign > 0, slope*gy elsewhere; ``sign`` is the activation's input or output
    (same sign for 0 <= slope < 1, and both 0 at the kink, where the derivative is ``slope``).
    ``out`` must not overlap ``sign`` or ``gy``."""
    # multiplier m + (1 - m)*slope from the 0/1 mask m: exact in floating point, and ~6x faster
    # than where() with array arguments.
    xp = get_array_module(gy)
    m = xp.greater(sign, 0, out=out)
    rest = xp.subtract(1, m, out=scratch_like(out, "leaky-mask"))
    rest *= slope
    m += rest
    return xp.multiply(m, gy, out=out)


class LeakyReLU(Function):
    """max(x, slope*x) for 0 <= slope < 1; the derivative at 0 is ``slope`` (0 for ReLU)."""

    def __init__(self, slope):
        check_slope(slope)
        self.slope = slope

    def forward(self, x):
        self.scalar = x.ndim == 0
        self.x = x = x.reshape(1) if x.ndim == 0 else x  # chunks are slices of axis 0
        y = alloc_like(x, x.shape, zero=False)
        slope = x.dtype.type(self.slope)

        def job(lo, hi):
            leaky_into(x[lo:hi], slope, y[lo:hi])

        over_chunks(x, job, balanced=True)
        return y.reshape(()) if self.scalar else y

    def backward(self, gy):
        x, slope = self.x, gy.dtype.type(self.slope)
        gy = gy.reshape(1) if gy.ndim == 0 else gy
        gx = alloc_like(gy, gy.shape, zero=False)

        def job(lo, hi):
            leaky_grad_into(x[lo:hi], gy[lo:hi], slope, gx[lo:hi])

        over_chunks(gy, job, balanced=True)
        return gx.reshape(()) if self.scalar else gx


def check_slope(slope):
    if not 0.0 <= slope < 1.0:
        raise ValueError(f"leaky_relu slope must be in [0, 1), got {slope}")


def _log_softmax(xp, x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        self.y = _log_softmax(xp, x, self.axis)
        return self.y

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True)


class Softmax(Function):
    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        self.y = xp.exp(_log_softmax(xp, x, self.axis))
        return self.y

    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSumExp(Function):
    def __init__(self, axis=-1, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        xp = get_array_module(x)
        m = x.max(axis=self.axis, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)  # all -inf stays -inf, no NaN
        y = xp.log(xp.exp(x - m).sum(axis=self.axis, keepdims=True)) + m
        self.x, self.y = x, y
        return y if self.keepdims else y.squeeze(axis=self.axis)

    def backward(self, gy):
        xp = get_array_module(gy)
        if not self.keepdims:
            gy = xp.expand_dims(gy, self.axis)
        return gy * xp.exp(self.x - self.y)


def log_softmax_array(x, axis=-1):
    """Stable log-softmax of a raw array (no graph)."""
    return _log_softmax(get_array_module(x), x, axis)


def relu(x) -> Tensor:
    """max(x, 0) elementwise, of x's shape; the derivative at 0 is 0."""
    return LeakyReLU(0.0)(x)


def leaky_relu(x, slope=0.1) -> Tensor:
    """max(x, slope*x) elementwise, of x's shape; the authors' networks use slope 0.1 (protocol
    §1.1). Raises ValueError unless 0 <= slope < 1."""
    return LeakyReLU(slope)(x)


def log_softmax(x, axis=-1) -> Tensor:
    """x - logsumexp(x) along ``axis`` (an int), of x's shape: for logits s (N, L), log p (N, L).
    Computed with the maximum subtracted first. Raises numpy.exceptions.AxisError (a ValueError)
    for an axis out of range."""
    return LogSoftmax(axis)(x)


def softmax(x, axis=-1) -> Tensor:
    """exp(x) / Σ exp(x) along ``axis`` (an int), of x's shape: for logits s (N, L),
    probabilities p (N, L), computed as exp(log_softmax). Raises numpy.exceptions.AxisError (a
    ValueError) for an axis out of range."""
    return Softmax(axis)(x)


def logsumexp(x, axis=-1, keepdims=False) -> Tensor:
    """log Σ exp(x) along ``axis`` (an int), computed with the maximum subtracted first: (N, L) →
    (N,), or (N, 1) with ``keepdims``. A slice that is all -inf gives -inf, not NaN. Raises
    numpy.exceptions.AxisError (a ValueError) for an axis out of range."""
    return LogSumExp(axis, keepdims)(x)
