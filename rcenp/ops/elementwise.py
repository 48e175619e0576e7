"""Elementwise arithmetic with NumPy broadcasting, and exp, log, tanh, clip, where, maximum."""
from __future__ import annotations

from rcenp.autograd import Function, Tensor, as_array
from rcenp.backend import get_array_module
from rcenp.ops.layout import add_arrays


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: the adjoint of broadcasting ``shape`` up to ``g.shape``."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


class _Binary(Function):
    def forward(self, a, b):
        self.a_shape, self.b_shape = a.shape, b.shape
        return self.compute(a, b)


class Add(_Binary):
    compute = staticmethod(add_arrays)  # residual sums: a's layout, pooled, chunks on the pool

    def backward(self, gy):
        return (unbroadcast(gy, self.a_shape) if self.needs_input_grad[0] else None,
                unbroadcast(gy, self.b_shape) if self.needs_input_grad[1] else None)


class Sub(_Binary):
    compute = staticmethod(lambda a, b: a - b)

    def backward(self, gy):
        return (unbroadcast(gy, self.a_shape) if self.needs_input_grad[0] else None,
                unbroadcast(-gy, self.b_shape) if self.needs_input_grad[1] else None)


class Mul(_Binary):
    def compute(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, gy):
        a, b = self.saved
        return (unbroadcast(gy * b, self.a_shape) if self.needs_input_grad[0] else None,
                unbroadcast(gy * a, self.b_shape) if self.needs_input_grad[1] else None)


class Div(_Binary):
    def compute(self, a, b):
        self.save_for_backward(a, b)
        return a / b

    def backward(self, gy):
        a, b = self.saved
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(gy / b, self.a_shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(-gy * a / (b * b), self.b_shape)
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Power(Function):
    """x ** p for a constant exponent p."""

    def __init__(self, exponent):
        self.exponent = exponent

    def forward(self, x):
        self.x = x
        return x ** self.exponent

    def backward(self, gy):
        p = self.exponent
        return gy * (p * self.x ** (p - 1))


class Exp(Function):
    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gy):
        return gy / self.x


class Tanh(Function):
    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


class Clip(Function):
    """Clip to [lo, hi]; the gradient passes where lo <= x <= hi (both ends inclusive)."""

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def forward(self, x):
        self.x = x
        return get_array_module(x).clip(x, self.lo, self.hi)

    def backward(self, gy):
        x = self.x
        inside = x >= self.lo if self.lo is not None else True
        if self.hi is not None:
            inside = inside & (x <= self.hi)
        return gy * inside


class Where(Function):
    """``where(condition, a, b)``; ``condition`` is a constant boolean array."""

    def __init__(self, condition):
        self.condition = condition

    def forward(self, a, b):
        self.a_shape, self.b_shape = a.shape, b.shape
        xp = get_array_module(a, b)
        self.condition = xp.asarray(self.condition)  # a host mask or list, with device operands
        return xp.where(self.condition, a, b)

    def backward(self, gy):
        xp = get_array_module(gy)
        zero = xp.zeros((), gy.dtype)
        return (unbroadcast(xp.where(self.condition, gy, zero), self.a_shape) if self.needs_input_grad[0] else None,
                unbroadcast(xp.where(self.condition, zero, gy), self.b_shape) if self.needs_input_grad[1] else None)


class Maximum(_Binary):
    """Elementwise maximum; at ties the gradient goes to the first argument."""

    def compute(self, a, b):
        xp = get_array_module(a, b)
        self.first = a >= b
        return xp.maximum(a, b)

    def backward(self, gy):
        xp = get_array_module(gy)
        zero = xp.zeros((), gy.dtype)
        return (unbroadcast(xp.where(self.first, gy, zero), self.a_shape) if self.needs_input_grad[0] else None,
                unbroadcast(xp.where(self.first, zero, gy), self.b_shape) if self.needs_input_grad[1] else None)


def add(a, b) -> Tensor:
    """a + b elementwise, broadcast as in NumPy (a Python scalar takes the other operand's
    dtype). Raises ValueError for shapes that do not broadcast."""
    return Add()(a, b)


def sub(a, b) -> Tensor:
    """a - b elementwise; broadcasting and errors as ``add``."""
    return Sub()(a, b)


def mul(a, b) -> Tensor:
    """a * b elementwise; broadcasting and errors as ``add``."""
    return Mul()(a, b)


def div(a, b) -> Tensor:
    """a / b elementwise; broadcasting and errors as ``add``. b = 0 gives inf or NaN, as in
    NumPy."""
    return Div()(a, b)


def neg(x) -> Tensor:
    """-x, of x's shape."""
    return Neg()(x)


def power(x, exponent) -> Tensor:
    """x ** exponent elementwise, of x's shape; ``exponent`` is a constant (no gradient), and the
    gradient is exponent * x ** (exponent - 1)."""
    return Power(exponent)(x)


def exp(x) -> Tensor:
    """e ** x elementwise, of x's shape (overflows to inf, as in NumPy)."""
    return Exp()(x)


def log(x) -> Tensor:
    """Natural log elementwise, of x's shape; x = 0 gives -inf and x < 0 NaN, as in NumPy."""
    return Log()(x)


def tanh(x) -> Tensor:
    """tanh(x) elementwise, of x's shape."""
    return Tanh()(x)


def maximum(a, b) -> Tensor:
    """max(a, b) elementwise; broadcasting and errors as ``add``. At a tie the gradient goes to
    ``a``."""
    return Maximum()(a, b)


def clip(x, lo=None, hi=None) -> Tensor:
    """Clip ``x`` to [lo, hi] (either bound may be None), of x's shape; the gradient passes where
    lo <= x <= hi, both ends included."""
    return Clip(lo, hi)(x)


def where(condition, a, b) -> Tensor:
    """Elementwise ``a`` where ``condition`` holds, else ``b`` (condition is not differentiated);
    the three broadcast together as NumPy's ``where`` (ValueError when they do not)."""
    return Where(as_array(condition))(a, b)
