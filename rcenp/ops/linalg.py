"""Matrix products: matmul (2-D, batched, broadcast batch axes) and the fully connected layer."""
from __future__ import annotations

from rcenp.autograd import Function, Tensor
from rcenp.backend import get_array_module
from rcenp.ops.elementwise import unbroadcast


class MatMul(Function):
    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError("matmul: both operands need at least 2 dimensions")
        self.a, self.b = a, b
        return get_array_module(a, b).matmul(a, b)

    def backward(self, gy):
        a, b = self.a, self.b
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(gy @ b.swapaxes(-1, -2), a.shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(a.swapaxes(-1, -2) @ gy, b.shape)
        return ga, gb


class Linear(Function):
    """x (N, D) @ w.T + b with w (OUT, D), b (OUT,)."""

    def forward(self, x, w, b=None):
        self.x, self.w, self.has_bias = x, w, b is not None
        y = x @ w.T
        if b is not None:
            y += b
        return y

    def backward(self, gy):
        gx = gy @ self.w if self.needs_input_grad[0] else None
        gw = gy.T @ self.x if self.needs_input_grad[1] else None
        if self.has_bias:
            return gx, gw, gy.sum(axis=0) if self.needs_input_grad[2] else None
        return gx, gw


def matmul(a, b) -> Tensor:
    """a (..., N, D) @ b (..., D, K) → (..., N, K), both at least 2-D: 2-D, batched, and with the
    batch axes broadcast as NumPy's ``matmul`` (the backward sums the gradient over them). Raises
    ValueError for a 1-D operand."""
    return MatMul()(a, b)


def linear(x, w, b=None) -> Tensor:
    """x (N, D), w (OUT, D), b (OUT,) → (N, OUT)."""
    return Linear()(x, w) if b is None else Linear()(x, w, b)
