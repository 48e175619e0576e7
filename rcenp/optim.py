"""SGD with heavy-ball momentum and the authors' piecewise-constant schedules (protocol §1.3).

Update (TensorFlow's MomentumOptimizer, non-Nesterov): v <- m*v + g; w <- w - lr*v, where
g = dL/dw + wd*w for conv and linear kernels (``Parameter.decay``) and g = dL/dw for BN
parameters and biases.
"""
from __future__ import annotations

import bisect

from rcenp.backend import as_numpy, get_array_module


class PiecewiseConstant:
    """lr(step) = values[i] where i = number of boundaries <= step."""

    def __init__(self, boundaries, values):
        if len(values) != len(boundaries) + 1 or list(boundaries) != sorted(boundaries):
            raise ValueError("need sorted boundaries and one more value than boundaries")
        self.boundaries, self.values = list(boundaries), list(values)

    def __call__(self, step: int) -> float:
        return self.values[bisect.bisect_right(self.boundaries, step)]

    def to_json(self):
        return {"boundaries": self.boundaries, "values": self.values}


SCHEDULES = {
    # MNIST: 0.1 below 10k steps, 0.01 below 15k, 0.001 below 20k, then 0.0001 (20,000 steps).
    "mnist": PiecewiseConstant([10_000, 15_000, 20_000], [0.1, 0.01, 0.001, 0.0001]),
    # CIFAR-10: 0.1 below 40k, 0.01 below 60k, 0.001 below 80k, then 0.0001 (90,000 steps).
    "cifar10": PiecewiseConstant([40_000, 60_000, 80_000], [0.1, 0.01, 0.001, 0.0001]),
}


class SGD:
    def __init__(self, params, lr, momentum=0.9, weight_decay=2e-4):
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One update from the current ``.grad`` (parameters without a gradient are skipped)."""
        lr, m = self.lr, self.momentum
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if self.weight_decay and getattr(p, "decay", False):
                g = g + self.weight_decay * p.data
            v = self.velocity[i]
            if v is None:
                v = self.velocity[i] = get_array_module(g).zeros_like(p.data)
            v *= m
            v += g
            p.data -= lr * v

    def state_dict(self):
        """Momentum buffers as host arrays (``velocity.<index>``; absent before their first step)."""
        return {f"velocity.{i}": as_numpy(v).copy() for i, v in enumerate(self.velocity) if v is not None}

    def load_state_dict(self, state) -> None:
        for i, p in enumerate(self.params):
            key = f"velocity.{i}"
            if key in state:
                xp = get_array_module(p.data)
                self.velocity[i] = xp.asarray(state[key], dtype=p.data.dtype).copy()
            else:
                self.velocity[i] = None
