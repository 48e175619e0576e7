"""Argument checks shared by the library's public calls (losses, models, attacks, detector).

Each returns the checked value in a canonical type, or raises ValueError whose message starts with
the argument's name ("eps must be ..."): a wrong type (None, a string, an array, a bool where a
number belongs) and a wrong value are one error, as the attacks have answered since issue 14, never
a TypeError, an OverflowError or ``int()``'s message. True is not 1.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from rcenp.backend import get_array_module


def check_real(name: str, value, allow_infinite: bool = False) -> float:
    """``value`` as a float: a real number (int, float, ``numbers.Real``, NumPy scalar) that is not
    a bool, not NaN, and finite unless ``allow_infinite``. Raises ValueError naming ``name``
    otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number (not a bool), got {value!r} of type {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError:  # an int (or Fraction) beyond the float range
        result = math.inf if value > 0 else -math.inf
    if math.isnan(result):
        raise ValueError(f"{name} must be a number, got nan")
    if math.isinf(result) and not allow_infinite:
        raise ValueError(f"{name} must be finite, got {result}")
    return result


def check_positive(name: str, value, upper: float | None = None) -> float:
    """``value`` as a float in (0, upper] (upper = ∞ when None, and ∞ itself refused), checked by
    ``check_real``. Raises ValueError naming ``name`` otherwise."""
    result = check_real(name, value)
    if result <= 0 or (upper is not None and result > upper):
        bound = f" and at most {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be positive{bound}, got {result}")
    return result


def check_steps(name: str, value) -> int:
    """``value`` as an int ≥ 1 (a count: steps, iterations, a batch size): a real number (not a
    bool, see ``check_real``) with an integral value, so 3, np.int64(3) and 3.0 pass and 2.5 does
    not. Raises ValueError naming ``name`` otherwise."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        result = int(value)
    else:
        real = check_real(name, value)
        if not real.is_integer():
            raise ValueError(f"{name} must be a positive integer, got {value}")
        result = int(real)
    if result < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return result


INT64_MAX = 2 ** 63 - 1  # the largest count: NumPy counts and indexes in int64, and no budget needs more


def check_count(name: str, value) -> int:
    """``value`` as an int from 1 to ``INT64_MAX`` (``check_steps``, bounded): a count beyond an
    int64 names no budget a run could reach, and NumPy would fail on it halfway through (an
    OverflowError, or an array of that many entries: C&W's iteration counters and batch numbers
    are int64). Raises ValueError naming ``name`` otherwise."""
    result = check_steps(name, value)
    if result > INT64_MAX:
        raise ValueError(f"{name} must be at most {INT64_MAX} (an int64), got {value}")
    return result


def check_labels(name: str, labels, n: int, num_classes: int):
    """``labels`` as an (n,) int64 array of classes in [0, num_classes - 1], on the array's own
    device (a host or device array). Raises ValueError naming ``name`` for another shape, a
    non-integer dtype, or a label out of range (which would match no class and silently drop out of
    a loss or an attack's objective)."""
    xp = get_array_module(labels)
    labels = xp.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
    if n:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                             f"got values from {low} to {high}")
    return labels.astype(xp.int64, copy=False)
