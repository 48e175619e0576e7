"""Reverse-mode automatic differentiation: ``Tensor``, ``Function``, ``backward`` and ``grad``.

A ``Function`` works on raw arrays (NumPy or CuPy): ``forward(*arrays) -> array`` and
``backward(grad_output) -> one gradient (or None) per input``. Its ``needs_input_grad`` tuple tells
backward which input gradients are wanted, so a convolution inside an attack never computes the
weight gradient. Calling a Function records it as the creator of its output only when gradients are
enabled and some input requires one.

Backward runs in decreasing ``rank`` order from a heap (rank = 1 + the largest rank among the
inputs), never by recursion, so ResNet-56-deep graphs are fine. Each node's output gradient is
dropped as soon as it has been consumed, and each Function lets go of its inputs and saved arrays
once its backward has run (unless ``retain_graph=True``), keeping only the graph's structure (the
Functions behind it, weak references to its input Tensors). A later ``backward``, or a ``grad``
whose inputs lie behind a released Function, raises RuntimeError; a ``grad`` that needs only live
parts of the graph (a probe on features whose own history was released) goes ahead.
"""
from __future__ import annotations

import heapq
import itertools
import weakref

import numpy as np

from rcenp.backend import DEFAULT_DTYPE, cupy_ndarray, device_of, get_array_module, to_device
from rcenp.grad_mode import enable_grad, is_grad_enabled, no_grad
from rcenp.ops.layout import add_arrays

# the public API; the grad mode (no_grad, ...) lives in rcenp.grad_mode and is importable here too
__all__ = ["Tensor", "Function", "grad", "as_array", "no_grad", "enable_grad", "is_grad_enabled"]

_ARRAY_TYPES = (np.ndarray, cupy_ndarray)


def as_array(value, like=None):
    """An array for ``value``: arrays pass through; Python scalars take ``like``'s dtype/module."""
    if isinstance(value, _ARRAY_TYPES):
        return value
    if isinstance(value, Tensor):
        return value.data
    if like is not None:
        xp = get_array_module(like)
        return xp.asarray(value, dtype=like.dtype)
    array = np.asarray(value)
    if array.dtype.kind == "f" and array.dtype != DEFAULT_DTYPE and not isinstance(value, np.generic):
        array = array.astype(DEFAULT_DTYPE)  # Python floats and lists become float32
    return array


class Tensor:
    """An array with an optional gradient and the Function that created it.

    ``data`` is a NumPy or CuPy array; ``grad`` is ``None`` or an array of the same shape, filled by
    ``backward()``. Python floats become float32; arrays keep their dtype (float64 gradient checks).
    Integer and bool Tensors (labels, indices) are fine, but only a floating-point Tensor can
    require a gradient: ``requires_grad=True`` with any other dtype raises ValueError.

    ``float(t)`` works for a one-element Tensor and ``np.asarray(t)`` gives the data of a host
    Tensor that does not require a gradient (see ``__array__``); ``numpy()`` always gives a copy
    on the host.
    """

    __slots__ = ("data", "grad", "requires_grad", "creator", "name", "__weakref__")
    __array_priority__ = 200  # ndarray (op) Tensor dispatches to Tensor's reflected operator

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        self.data = as_array(data)
        if requires_grad and self.data.dtype.kind != "f":
            raise ValueError(f"only floating-point Tensors can require gradients, got dtype {self.data.dtype} "
                             "(its gradient would be truncated to integers); cast the data first, e.g. "
                             "Tensor(x.astype(np.float32), requires_grad=True)")
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator: Function | None = None
        self.name = name

    # ---- array-like facts -------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    T = property(lambda self: _ops.transpose(self))

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{extra})"

    def numpy(self) -> np.ndarray:
        from rcenp.backend import as_numpy

        return as_numpy(self.data)

    def item(self) -> float:
        return self.data.item()

    def __float__(self) -> float:
        """``float(t)`` for a one-element Tensor; TypeError for any other size."""
        if self.data.size != 1:
            raise TypeError(f"float() needs a one-element Tensor, got shape {self.data.shape}")
        return float(self.data.item())

    def __array__(self, dtype=None, copy=None):
        """The data, for ``np.asarray(t)`` and other NumPy functions given a Tensor.

        Raises TypeError for a Tensor that requires a gradient: a NumPy function (``np.exp``,
        ``np.where``, ...) would silently cut it from the graph, so ask for the values explicitly
        with ``t.numpy()`` or ``t.detach()``. Raises TypeError for GPU data too (use
        ``t.numpy()``), as CuPy refuses implicit copies to the host. Operators between NumPy
        arrays and Tensors do not come here: ``ndarray * Tensor`` is a Tensor (``__array_priority__``).
        """
        if self.requires_grad:
            raise TypeError("a Tensor that requires a gradient cannot become a NumPy array implicitly "
                            "(a NumPy function would drop it from the graph): use the rcenp.functional "
                            "ops to keep the gradient, or t.numpy() / t.detach() for the values")
        if not isinstance(self.data, np.ndarray):
            raise TypeError("this Tensor's data is on the GPU: use t.numpy() for a host copy")
        return np.array(self.data, dtype=dtype, copy=copy)

    def detach(self) -> "Tensor":
        """The same array, cut from the graph."""
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    # ---- differentiation --------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires a gradient.

        ``grad`` (the shape of ``self``) defaults to ones (so a scalar loss needs none). The graph
        is released afterwards unless ``retain_graph``.

        Raises ValueError when ``grad`` has another shape, and RuntimeError, before touching any
        ``.grad``, when ``self`` does not require a gradient (computed under ``no_grad()`` or
        from inputs that need none: there is nothing to backpropagate to) or the graph was
        already released by an earlier ``backward`` or ``rcenp.grad`` (call that one with
        ``retain_graph=True`` to backpropagate twice).
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this Tensor does not require a gradient (computed under no_grad(), "
                               "or from inputs of which none requires one), so no .grad would change")
        if grad is None:
            grad = get_array_module(self.data).ones_like(self.data)
        grad = _checked_grad_output(grad, self, "backward: grad")
        if self.creator is None:
            self.grad = grad if self.grad is None else self.grad + grad
            return
        if any(fn.released for fn in _graph_functions(self)):  # before accumulating anything
            raise _released_error("backward")
        _backprop(self, grad, targets=None, retain_graph=retain_graph)

    # ---- operators (the Functions of rcenp.functional) ----------------------------------
    def __add__(self, other): return _ops.add(self, other)
    def __radd__(self, other): return _ops.add(other, self)
    def __sub__(self, other): return _ops.sub(self, other)
    def __rsub__(self, other): return _ops.sub(other, self)
    def __mul__(self, other): return _ops.mul(self, other)
    def __rmul__(self, other): return _ops.mul(other, self)
    def __truediv__(self, other): return _ops.div(self, other)
    def __rtruediv__(self, other): return _ops.div(other, self)
    def __neg__(self): return _ops.neg(self)
    def __pow__(self, exponent): return _ops.power(self, exponent)
    def __matmul__(self, other): return _ops.matmul(self, other)
    def __rmatmul__(self, other): return _ops.matmul(other, self)
    def __getitem__(self, index): return _ops.getitem(self, index)

    def reshape(self, *shape): return _ops.reshape(self, shape[0] if len(shape) == 1 else shape)
    def transpose(self, *axes): return _ops.transpose(self, axes or None)
    def sum(self, axis=None, keepdims=False): return _ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _ops.max(self, axis, keepdims)
    def exp(self): return _ops.exp(self)
    def log(self): return _ops.log(self)


class Function:
    """One differentiable operation with a single output.

    Subclasses implement ``forward(*arrays)`` and ``backward(grad_output)``; parameters that are
    not differentiable go to ``__init__``. In forward, keep what backward needs as attributes (or
    through ``save_for_backward``); ``needs_input_grad[i]`` says whether input i wants a gradient.
    """

    rank = 0
    inputs: tuple = ()
    needs_input_grad: tuple = ()
    released = False  # set once a backward pass (without retain_graph) has run it and let go
    released_parents: tuple = ()  # after the release: the Functions that made its inputs
    released_inputs: tuple = ()   # after the release: weak references to its input Tensors

    def __call__(self, *inputs) -> Tensor:
        tensors = tuple(x if isinstance(x, Tensor) else Tensor(as_array(x, _first_array(inputs)))
                        for x in inputs)
        needs = tuple(t.requires_grad for t in tensors)
        self.needs_input_grad = needs
        output = Tensor(self.forward(*(t.data for t in tensors)))
        if is_grad_enabled() and any(needs):
            output.requires_grad = True
            output.creator = self
            self.inputs = tensors
            self.rank = 1 + max((t.creator.rank if t.creator else 0) for t in tensors)
        else:
            self.release()
        return output

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, gy):
        raise NotImplementedError

    def save_for_backward(self, *arrays) -> None:
        self.saved = arrays

    def release_after_backward(self) -> None:
        """``release``, keeping the structure ``grad`` needs to tell whether a later pass would
        go through this Function: its parents and weak references to its inputs."""
        parents = tuple(t.creator for t in self.inputs if t.creator is not None)
        inputs = tuple(weakref.ref(t) for t in self.inputs)
        self.release()
        self.released, self.released_parents, self.released_inputs = True, parents, inputs

    def release(self) -> None:
        """Drop references to inputs and saved arrays (after backward, or when nothing is recorded)."""
        self.inputs = ()
        self.__dict__.pop("saved", None)
        for key in [k for k, v in self.__dict__.items() if isinstance(v, _ARRAY_TYPES)]:
            del self.__dict__[key]


def _first_array(inputs):
    for x in inputs:
        if isinstance(x, Tensor):
            return x.data
        if isinstance(x, _ARRAY_TYPES):
            return x
    return None


def _checked_grad_output(grad_output, output: Tensor, what: str):
    """``grad_output`` as an array like ``output``'s, on its device (a host array for a GPU graph is
    copied there, as the reverse); ValueError unless it has ``output``'s shape."""
    grad_output = to_device(as_array(grad_output, like=output.data), device_of(output.data))
    if grad_output.shape != output.shape:
        raise ValueError(f"{what} must have the output's shape {tuple(output.shape)}, "
                         f"got {tuple(grad_output.shape)}")
    return grad_output


def _parents(fn: Function) -> tuple:
    """The Functions that made ``fn``'s inputs (kept through a release)."""
    if fn.released:
        return fn.released_parents
    return tuple(t.creator for t in fn.inputs if t.creator is not None)


def _input_tensors(fn: Function) -> tuple:
    """``fn``'s inputs; after a release, those still alive (only they can be asked for)."""
    if fn.released:
        return tuple(t for t in (ref() for ref in fn.released_inputs) if t is not None)
    return fn.inputs


def _graph_functions(root: Tensor) -> list:
    """Every Function ``root`` was computed through, each once, released ones included."""
    if root.creator is None:
        return []
    order, stack, seen = [], [root.creator], {id(root.creator)}
    while stack:
        fn = stack.pop()
        order.append(fn)
        for parent in _parents(fn):
            if id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    return order


def _released_error(caller: str) -> RuntimeError:
    return RuntimeError(
        f"{caller}: this graph was already used by a backward pass (backward() or rcenp.grad()), which "
        "released its saved arrays; pass retain_graph=True to the earlier call to backpropagate through it "
        "again, recompute the forward pass, or detach() what you do not differentiate through")


def _needed_functions(root: Tensor, targets: dict):
    """(ids of the Functions lying on a path from some target to ``root``, the only ones grad()
    must run; ids of the targets ``root`` was computed from, ``root`` itself included).
    RuntimeError when one of the needed Functions was released by an earlier backward pass: its
    saved arrays are gone, so going on would silently give wrong or no gradients."""
    order = _graph_functions(root)
    reached = {id(root)} & targets.keys()
    needed = set()
    for fn in sorted(order, key=lambda f: f.rank):  # inputs before consumers
        hit = {id(t) for t in _input_tensors(fn)} & targets.keys()
        reached |= hit
        if hit or any(id(p) in needed for p in _parents(fn)):
            needed.add(id(fn))
    if any(fn.released and id(fn) in needed for fn in order):
        raise _released_error("rcenp.grad")
    return needed, reached


def _backprop(root: Tensor, root_grad, targets: dict | None, retain_graph: bool, needed: set | None = None):
    """Push ``root_grad`` through the graph. With ``targets`` (id -> Tensor) and ``needed`` (from
    ``_needed_functions``), return their grads (dict id -> array) and touch no ``.grad``;
    otherwise accumulate into leaf ``.grad``."""
    results = {}
    counter = itertools.count()
    pending = {id(root.creator): root_grad}
    heap = [(-root.creator.rank, next(counter), root.creator)]
    while heap:
        _, _, fn = heapq.heappop(heap)
        gy = pending.pop(id(fn))
        inputs = fn.inputs
        if needed is None:
            wants = tuple(t.requires_grad for t in inputs)
        else:
            wants = tuple(id(t) in targets or (t.creator is not None and id(t.creator) in needed)
                          for t in inputs)
        fn.needs_input_grad = wants
        gxs = fn.backward(gy)
        if not isinstance(gxs, tuple):
            gxs = (gxs,)
        del gy
        for t, want, gx in zip(inputs, wants, gxs):
            if not want or gx is None:
                continue
            if targets is not None and id(t) in targets:
                results[id(t)] = gx if id(t) not in results else results[id(t)] + gx
                if t.creator is None or id(t.creator) not in needed:
                    continue
            if t.creator is None:
                if targets is None:
                    t.grad = gx if t.grad is None else t.grad + gx
                continue
            key = id(t.creator)
            if key in pending:
                pending[key] = add_arrays(pending[key], gx)  # pooled on the host
            else:
                pending[key] = gx
                heapq.heappush(heap, (-t.creator.rank, next(counter), t.creator))
        if not retain_graph:
            fn.release_after_backward()
    return results


def grad(output: Tensor, inputs, grad_output=None, retain_graph: bool = False, allow_unused: bool = False):
    """d(output)/d(inputs): one array per input (a single array for a single Tensor), leaving every
    ``.grad`` untouched.

    Only the part of the graph that connects ``inputs`` to ``output`` is differentiated (frozen
    weights cost nothing). ``grad_output`` (shape of ``output``) defaults to ones.

    Raises ValueError for an input that does not require a gradient, and for one that ``output``
    was not computed from: an attack whose gradient is silently zero never moves. With
    ``allow_unused=True`` an unused input gets a zero array of its shape instead (zeros rather
    than ``None``, so that arithmetic on the result needs no special case; its derivative is 0).
    Raises ValueError for a ``grad_output`` of another shape, TypeError when ``output`` is not a
    Tensor, and RuntimeError when the path from ``output`` to ``inputs`` goes through a part of
    the graph that an earlier ``backward`` or ``grad`` released (call that one with
    ``retain_graph=True`` to differentiate through it again); released parts off that path do not
    matter.
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"rcenp.grad: output must be a Tensor, got {type(output).__name__}")
    single = isinstance(inputs, (Tensor, *_ARRAY_TYPES))
    inputs = [inputs] if single else list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor) or not t.requires_grad:
            raise ValueError(f"rcenp.grad: input {i} does not require a gradient "
                             "(make it with Tensor(x, requires_grad=True))")
    xp = get_array_module(output.data)
    if grad_output is None:
        grad_output = xp.ones_like(output.data)
    grad_output = _checked_grad_output(grad_output, output, "rcenp.grad: grad_output")
    targets = {id(t): t for t in inputs}
    needed, reached = _needed_functions(output, targets)
    unused = [i for i, t in enumerate(inputs) if id(t) not in reached]
    if unused and not allow_unused:
        raise ValueError(f"rcenp.grad: input(s) {unused} not used in the graph of the output (computed "
                         "under no_grad(), or from a detached copy?); allow_unused=True gives zeros for them")
    results = _backprop(output, grad_output, targets, retain_graph, needed) if needed else {}
    if id(output) in targets:
        results[id(output)] = grad_output
    grads = [results[id(t)] if id(t) in results else xp.zeros_like(t.data) for t in inputs]
    return grads[0] if single else grads


from rcenp import functional as _ops  # noqa: E402 - the operator Functions need Tensor defined first
