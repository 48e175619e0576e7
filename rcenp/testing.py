"""Gradient checking in float64 by central finite differences (used by the test suite)."""
from __future__ import annotations

import numpy as np

from rcenp.autograd import Tensor, grad
from rcenp.backend import as_numpy, get_array_module


def numerical_grads(fn, arrays, seed_grad, eps=1e-6):
    """Central differences of <seed_grad, fn(*arrays)> with respect to every element of each array."""
    xp = get_array_module(*arrays)
    grads = []
    for a in arrays:
        g = xp.zeros(a.shape, a.dtype)
        for i in np.ndindex(*a.shape):  # indexing, not a flat view: works for any memory layout
            old = a[i].item()
            a[i] = old + eps
            up = float((fn(*arrays) * seed_grad).sum())
            a[i] = old - eps
            down = float((fn(*arrays) * seed_grad).sum())
            a[i] = old
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def check_gradients(op, arrays, wrt=None, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0):
    """Compare ``rcenp.grad`` of a random projection of ``op(*tensors)`` with finite differences.

    ``op`` maps Tensors to a Tensor; ``arrays`` are float64 arrays (copied); ``wrt`` lists the
    indices to differentiate (default: all). Raises AssertionError with the worst element, or
    when ``op``'s output or any analytic gradient is not float64 (then the check would not be a
    float64 one: a backward computed in float32 is off by ~1e-7 relative, well inside ``rtol``).
    """
    arrays = [a.astype(np.float64, copy=True) if a.dtype.kind == "f" else a for a in arrays]
    wrt = list(range(len(arrays))) if wrt is None else list(wrt)
    xp = get_array_module(*arrays)
    tensors = [Tensor(a, requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
    out = op(*tensors)
    if out.dtype != np.float64:
        raise AssertionError(f"op returned {out.dtype} from float64 inputs; a float64 check needs float64 throughout")
    rng = np.random.default_rng(seed)
    seed_grad = xp.asarray(rng.standard_normal(out.shape))
    analytic = grad(out, [tensors[i] for i in wrt], grad_output=seed_grad)
    for i, ga in zip(wrt, analytic):
        if getattr(ga, "dtype", None) != np.float64:
            raise AssertionError(f"input {i}: analytic gradient of dtype {getattr(ga, 'dtype', type(ga).__name__)} "
                                 "from float64 inputs; the backward must stay in float64 (a float32 one "
                                 "passes the tolerance)")

    def value(*diff_arrays):
        full = list(arrays)
        for i, a in zip(wrt, diff_arrays):
            full[i] = a
        return op(*[Tensor(a) for a in full]).data

    numeric = numerical_grads(value, [arrays[i] for i in wrt], seed_grad, eps)
    for i, ga, gn in zip(wrt, analytic, numeric):
        ga, gn = as_numpy(ga), as_numpy(gn)
        assert ga.shape == gn.shape, f"input {i}: gradient shape {ga.shape} != {gn.shape}"
        err = np.abs(ga - gn) - (atol + rtol * np.abs(gn))
        if err.size and err.max() > 0:
            k = np.unravel_index(np.argmax(err), err.shape)
            raise AssertionError(f"input {i}: analytic {ga[k]:.10g} vs numeric {gn[k]:.10g} at {k}")


def check_directional(loss_fn, tensors, eps=1e-6, rtol=1e-6, atol=1e-9, seed=0):
    """Check ∇loss along a random unit direction over all ``tensors`` (float64 Tensors).

    Compares <∇loss, v> from ``rcenp.grad`` with (loss(θ+εv) - loss(θ-εv)) / 2ε, for models far
    too large for an element-wise check. ``loss_fn()`` reads the tensors' current ``.data``.
    Raises AssertionError when a tensor or the loss is not float64 (cast a model with
    ``model.astype(np.float64)``; its forward then refuses any other input dtype).
    """
    dtypes = {str(t.dtype) for t in tensors}
    if dtypes != {"float64"}:
        raise AssertionError(f"tensors of dtype {sorted(dtypes)}; a float64 check needs float64 tensors")
    rng = np.random.default_rng(seed)
    xp = get_array_module(tensors[0].data)
    directions = [xp.asarray(rng.standard_normal(t.shape)) for t in tensors]
    norm = np.sqrt(sum(float((d * d).sum()) for d in directions))
    directions = [d / norm for d in directions]
    loss = loss_fn()
    if loss.dtype != np.float64:
        raise AssertionError(f"loss of dtype {loss.dtype}; a float64 check needs float64 throughout")
    grads = grad(loss, tensors)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions))
    originals = [t.data.copy() for t in tensors]

    def shifted(sign):
        for t, o, d in zip(tensors, originals, directions):
            t.data = o + sign * eps * d
        return float(loss_fn().data)

    numeric = (shifted(+1) - shifted(-1)) / (2 * eps)
    for t, o in zip(tensors, originals):
        t.data = o
    if abs(analytic - numeric) > atol + rtol * abs(numeric):
        raise AssertionError(f"directional derivative: analytic {analytic:.12g} vs numeric {numeric:.12g}")
    return analytic, numeric
