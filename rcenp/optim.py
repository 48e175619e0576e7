"""SGD with heavy-ball momentum and the authors' piecewise-constant schedules (protocol §1.3).

Update (TensorFlow's MomentumOptimizer, non-Nesterov): v <- m*v + g; w <- w - lr*v, where
g = dL/dw + wd*w for conv and linear kernels (``Parameter.decay``) and g = dL/dw for BN
parameters and biases.
"""
from __future__ import annotations

import bisect

import numpy as np

from rcenp.autograd import Tensor
from rcenp.backend import as_numpy, get_array_module
from rcenp.checks import check_positive, check_real


def _check_momentum(value) -> float:
    result = check_real("momentum", value)
    if not 0.0 <= result < 1.0:  # m >= 1 makes v a growing sum of gradients, m < 0 flips it
        raise ValueError(f"momentum must lie in [0, 1), got {result}")
    return result


def _check_weight_decay(value) -> float:
    result = check_real("weight_decay", value)
    if result < 0:
        raise ValueError(f"weight_decay must be >= 0, got {result}")
    return result


class PiecewiseConstant:
    """Learning-rate schedule lr(step) = values[i], i = the number of boundaries <= step.

    boundaries: non-decreasing step counts; values: one more learning rate than boundaries,
    each finite and positive. Raises ValueError otherwise (a bad value is refused here, at the start
    of a run, not at the step that reaches it).
    """

    def __init__(self, boundaries, values):
        if len(values) != len(boundaries) + 1 or list(boundaries) != sorted(boundaries):
            raise ValueError("need sorted boundaries and one more value than boundaries")
        for i, value in enumerate(values):
            check_positive(f"values[{i}]", value)
        self.boundaries, self.values = list(boundaries), list(values)

    def __call__(self, step: int) -> float:
        """The learning rate for ``step`` (0-based)."""
        return self.values[bisect.bisect_right(self.boundaries, step)]

    def to_json(self):
        """{"boundaries": [...], "values": [...]}, as given."""
        return {"boundaries": self.boundaries, "values": self.values}


SCHEDULES = {
    # MNIST: 0.1 below 10k steps, 0.01 below 15k, 0.001 below 20k, then 0.0001 (never reached in
    # rcenp's 20,000 steps, 0-19,999; the authors' loop takes one step more, at it).
    "mnist": PiecewiseConstant([10_000, 15_000, 20_000], [0.1, 0.01, 0.001, 0.0001]),
    # CIFAR-10: 0.1 below 40k, 0.01 below 60k, 0.001 below 80k, then 0.0001 (90,000 steps).
    "cifar10": PiecewiseConstant([40_000, 60_000, 80_000], [0.1, 0.01, 0.001, 0.0001]),
}


class SGD:
    """Stochastic gradient descent with heavy-ball momentum, TensorFlow's ``MomentumOptimizer``
    convention (the authors' optimiser; protocol §1.3 for their settings and schedule).

    For each parameter w with gradient dL/dw, one ``step`` computes, in place:

        g = dL/dw + weight_decay * w   (w a conv or linear kernel: ``Parameter.decay`` True)
        g = dL/dw                      (BN scale and shift, biases)
        v <- momentum * v + g          (v starts at 0: the first step gives v = g)
        w <- w - lr * v

    Per parameter this is PyTorch's ``torch.optim.SGD`` with ``dampening=0, nesterov=False``; lr
    multiplies v, not g, so a new lr applies to the accumulated velocity at once. Weight decay
    reaches kernels only. There is no Nesterov variant.

    params: an iterable of Tensors that require gradients (``model.parameters()``), at least one,
    none twice; lr: learning rate, finite and > 0; momentum: m in [0, 1); weight_decay: finite
    and >= 0 (default 2e-4 as ``rcenp.train``'s presets; protocol §1.3 on the authors' 0 or 2e-4).
    ``lr``, ``momentum`` and ``weight_decay`` are attributes that may be set between steps
    (``rcenp.train`` sets ``lr`` from its ``PiecewiseConstant`` schedule); a setting is checked as
    in the constructor.

    Raises TypeError when ``params`` is not an iterable of Tensors (a Module instead of
    ``module.parameters()``, a single Tensor instead of ``[tensor]``), ValueError when it is empty,
    repeats a Tensor or holds one that does not require gradients, and ValueError naming the
    argument for an lr, momentum or weight_decay that is not a real number (a bool is not one) or
    is NaN, infinite or out of range.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=2e-4):
        if isinstance(params, Tensor):  # list() would give its rows: new Tensors, never stepped
            raise TypeError("params must be an iterable of Tensors, got a single Tensor: pass [tensor]")
        try:
            params = list(params)
        except TypeError:
            hint = ": pass module.parameters()" if hasattr(params, "parameters") else ""
            raise TypeError(f"params must be an iterable of Tensors, got {type(params).__name__}{hint}") from None
        if not params:
            raise ValueError("params is empty: the optimiser would have nothing to update")
        seen = set()
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"params[{i}] must be a Tensor (a Parameter), got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"params[{i}] does not require gradients, so it would never be updated "
                                 "(a Parameter, or a Tensor made with requires_grad=True)")
            if id(p) in seen:
                raise ValueError(f"params[{i}] appears twice in params: it would be updated twice per step")
            seen.add(id(p))
        self.params = params
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [None] * len(self.params)

    @property
    def lr(self) -> float:
        """The learning rate of the next ``step``: finite and > 0 (ValueError otherwise)."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = check_positive("lr", value)  # refuses 0 too: no caller (rcenp, bench, tests) uses it

    @property
    def momentum(self) -> float:
        """The momentum m in [0, 1) (ValueError otherwise); 0 is plain SGD."""
        return self._momentum

    @momentum.setter
    def momentum(self, value) -> None:
        self._momentum = _check_momentum(value)

    @property
    def weight_decay(self) -> float:
        """The L2 coefficient added to kernels' gradients, finite and >= 0 (ValueError otherwise)."""
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value) -> None:
        self._weight_decay = _check_weight_decay(value)

    def zero_grad(self) -> None:
        """Clear every parameter's ``.grad`` (set it to None)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One update from the current ``.grad``, in place (the rule in the class docstring).

        A parameter whose ``.grad`` is None is skipped: neither its weight nor its velocity changes.
        """
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
        """Momentum buffers as host NumPy arrays (copies), ``{"velocity.<i>": v}`` with i the index
        in ``params`` and v of that parameter's shape; absent before the parameter's first step.
        lr, momentum and weight_decay are not included (a run's configuration holds them)."""
        return {f"velocity.{i}": as_numpy(v).copy() for i, v in enumerate(self.velocity) if v is not None}

    def load_state_dict(self, state) -> None:
        """Replace the momentum buffers with copies of ``state``'s (as ``state_dict`` returns them),
        on each parameter's device and in its dtype; a parameter without an entry starts from
        v = 0 again.

        Raises ValueError for a key that names no parameter (another model's state) and
        for a buffer whose shape is not its parameter's; nothing is changed when either is raised.
        """
        expected = {f"velocity.{i}" for i in range(len(self.params))}
        unexpected = sorted(k for k in state if k not in expected)
        if unexpected:
            raise ValueError(f"optimizer state has keys for no parameter of these {len(self.params)}: "
                             f"{unexpected[:5]}")
        for i, p in enumerate(self.params):
            key = f"velocity.{i}"
            if key in state and tuple(np.shape(state[key])) != tuple(p.data.shape):
                raise ValueError(f"{key}: shape {tuple(np.shape(state[key]))} does not match its parameter's "
                                 f"{tuple(p.data.shape)}")
        for i, p in enumerate(self.params):
            key = f"velocity.{i}"
            if key in state:
                xp = get_array_module(p.data)
                self.velocity[i] = xp.asarray(state[key], dtype=p.data.dtype).copy()
            else:
                self.velocity[i] = None
