"""Shape and indexing: reshape, transpose, getitem, concatenate, pad."""
from __future__ import annotations

import numpy as np

from rcenp.autograd import Function, Tensor
from rcenp.backend import get_array_module, scatter_add
from rcenp.ops.layout import alloc_like


class Reshape(Function):
    def __init__(self, shape):
        self.shape = tuple(shape) if not isinstance(shape, int) else (shape,)

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Transpose(Function):
    def __init__(self, axes=None):
        self.axes = None if axes is None else tuple(axes)

    def forward(self, x):
        xp = get_array_module(x)
        self.resolved = tuple(reversed(range(x.ndim))) if self.axes is None else self.axes
        return xp.transpose(x, self.resolved)

    def backward(self, gy):
        xp = get_array_module(gy)
        inverse = [0] * len(self.resolved)
        for i, a in enumerate(self.resolved):
            inverse[a] = i
        return xp.transpose(gy, inverse)


def _is_basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts)


def check_array_indices(shape, index) -> None:
    """IndexError for an integer-array part of ``index`` outside its axis of ``shape``, as NumPy
    raises it; CuPy wraps such indices around instead (``cupy.ndarray.__getitem__``)."""
    parts = index if isinstance(index, tuple) else (index,)
    consumed = sum(1 if not hasattr(p, "dtype") or p.dtype.kind != "b" else p.ndim
                   for p in parts if p is not None and p is not Ellipsis)
    axis = 0
    for part in parts:
        if part is None:
            continue
        if part is Ellipsis:
            axis += len(shape) - consumed
            continue
        if hasattr(part, "dtype") and part.dtype.kind in "iu" and part.size:
            n = shape[axis]
            low, high = int(part.min()), int(part.max())
            if low < -n or high >= n:
                raise IndexError(f"index {high if high >= n else low} is out of bounds for axis {axis} with size {n}")
        axis += part.ndim if hasattr(part, "dtype") and part.dtype.kind == "b" else 1


class GetItem(Function):
    """``x[index]``; repeated advanced indices accumulate their gradients."""

    def __init__(self, index):
        self.index = index.data if isinstance(index, Tensor) else index

    def forward(self, x):
        self.in_shape, self.dtype = x.shape, x.dtype
        if not isinstance(x, np.ndarray):  # NumPy raises IndexError itself
            check_array_indices(x.shape, self.index)
        return x[self.index]

    def backward(self, gy):
        xp = get_array_module(gy)
        g = xp.zeros(self.in_shape, dtype=gy.dtype)
        if _is_basic_index(self.index):
            g[self.index] = gy
        else:
            scatter_add(xp, g, self.index, gy)
        return g


class Concatenate(Function):
    def __init__(self, axis=0):
        self.axis = axis

    def forward(self, *xs):
        xp = get_array_module(*xs)
        self.sizes = [x.shape[self.axis] for x in xs]
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, gy):
        xp = get_array_module(gy)
        bounds = list(xp.cumsum(xp.asarray(self.sizes))[:-1].tolist()) if len(self.sizes) > 1 else []
        parts = xp.split(gy, bounds, axis=self.axis)
        return tuple(p if need else None for p, need in zip(parts, self.needs_input_grad))


class Pad(Function):
    """Constant padding; ``pad_width`` as in ``numpy.pad`` (one (before, after) pair per axis)."""

    def __init__(self, pad_width, value=0.0):
        self.pad_width = tuple(tuple(p) for p in pad_width)
        self.value = value

    def forward(self, x):
        shape = tuple(n + b + a for n, (b, a) in zip(x.shape, self.pad_width))
        y = alloc_like(x, shape, zero=self.value == 0)
        if self.value != 0:
            y[...] = self.value
        y[self._interior(shape)] = x
        return y

    def _interior(self, shape):
        return tuple(slice(b, shape[i] - a) for i, (b, a) in enumerate(self.pad_width))

    def backward(self, gy):
        return gy[self._interior(gy.shape)]


def reshape(x, shape) -> Tensor:
    """x's elements, in C order, with ``shape`` (an int or a tuple; one -1 is inferred). Raises
    ValueError when the sizes differ."""
    return Reshape(shape)(x)


def transpose(x, axes=None) -> Tensor:
    """x with its axes permuted by ``axes`` (None: reversed), as ``numpy.transpose``. Raises
    ValueError for a tuple that is not a permutation of x's axes."""
    return Transpose(axes)(x)


def getitem(x, index) -> Tensor:
    """x[index], NumPy's basic or advanced indexing (``Tensor.__getitem__``); an index repeated
    by advanced indexing accumulates its gradients. Raises IndexError for an index out of range."""
    return GetItem(index)(x)


def concatenate(xs, axis=0) -> Tensor:
    """The Tensors or arrays ``xs`` joined along ``axis``; every other axis must match. Raises
    ValueError when they do not."""
    return Concatenate(axis)(*xs)


def pad(x, pad_width, value=0.0) -> Tensor:
    """x padded with the constant ``value``; ``pad_width`` is one (before, after) pair of
    non-negative ints per axis, so each axis grows by before + after."""
    return Pad(pad_width, value)(x)
