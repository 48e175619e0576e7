"""Reductions: sum, mean and max over axes."""
from __future__ import annotations

import math

from rcenp.autograd import Function, Tensor
from rcenp.backend import get_array_module

try:
    from numpy.exceptions import AxisError
except ImportError:  # NumPy < 1.25
    from numpy import AxisError


def _normalise_axes(axis, ndim):
    """Sorted non-negative axes. As NumPy: AxisError (a ValueError and IndexError) for an axis
    outside [-ndim, ndim), ValueError for one given twice (``a % ndim`` alone quietly reduced
    another axis)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise AxisError(a, ndim)
    normal = [a % ndim for a in axes]
    if len(set(normal)) != len(normal):
        raise ValueError(f"duplicate value in 'axis': {axis}")  # NumPy's ValueError
    return tuple(sorted(normal))


def _expand(g, axes, keepdims):
    """Give a reduced gradient back its reduced axes (as length-1) so it broadcasts over the input."""
    if keepdims:
        return g
    xp = get_array_module(g)
    return xp.expand_dims(g, axes) if axes else g


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.shape = x.shape
        self.axes = _normalise_axes(self.axis, x.ndim)
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        xp = get_array_module(gy)
        return xp.broadcast_to(_expand(gy, self.axes, self.keepdims), self.shape)


class Mean(Sum):
    def forward(self, x):
        self.shape = x.shape
        self.axes = _normalise_axes(self.axis, x.ndim)
        y = x.mean(axis=self.axes, keepdims=self.keepdims)
        self.count = x.size // y.size if y.size else 0
        return y

    def backward(self, gy):
        return super().backward(gy / self.count)


class Max(Function):
    """Maximum over axes; the gradient goes to the first maximal element (NumPy's argmax order)."""

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        xp = get_array_module(x)
        self.shape = x.shape
        self.axes = _normalise_axes(self.axis, x.ndim)
        keep = [a for a in range(x.ndim) if a not in self.axes]
        moved = xp.transpose(x, keep + list(self.axes)).reshape(
            tuple(x.shape[a] for a in keep) + (-1,))
        self.first = xp.argmax(moved, axis=-1)
        self.keep = keep
        return x.max(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        xp = get_array_module(gy)
        keep_shape = tuple(self.shape[a] for a in self.keep)
        reduced_shape = tuple(self.shape[a] for a in self.axes)
        positions = xp.arange(math.prod(reduced_shape))
        one_hot = positions == self.first[..., None]
        g = (one_hot * gy.reshape(keep_shape)[..., None]).astype(gy.dtype, copy=False)
        g = g.reshape(keep_shape + reduced_shape)
        order = self.keep + list(self.axes)
        inverse = [order.index(a) for a in range(len(self.shape))]
        return xp.transpose(g, inverse)


def sum(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001 - mirrors numpy.sum
    """Sum of x over ``axis``: None (every axis), an int or a tuple of ints, negative counting
    from the end. The result has x's shape without those axes (length 1 with ``keepdims``).
    Raises numpy.exceptions.AxisError (a ValueError) for an axis out of range, ValueError for one
    given twice."""
    return Sum(axis, keepdims)(x)


def mean(x, axis=None, keepdims=False) -> Tensor:
    """Mean of x over ``axis``, which and with what shape as ``sum``; an empty reduction gives NaN,
    as in NumPy."""
    return Mean(axis, keepdims)(x)


def max(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001 - mirrors numpy.max
    """Maximum of x over ``axis``, which and with what shape as ``sum``; the gradient goes to the
    first maximal element. Raises ValueError for an empty reduction."""
    return Max(axis, keepdims)(x)
