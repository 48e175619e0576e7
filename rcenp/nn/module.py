"""``Module``: an ordered container of parameters, buffers and sub-modules.

Entries are kept in the order they are assigned, which every layer here makes the forward order,
so ``parameters()``, ``state_dict()`` and optimiser state are deterministic.
"""
from __future__ import annotations

import collections
import contextlib

import numpy as np

from rcenp.autograd import Tensor, as_array
from rcenp.backend import as_numpy, device_of, get_array_module, to_device


PIXEL_BOX = (-0.5, 0.5)  # images are x/255 − 0.5 (rcenp.data)


class Parameter(Tensor):
    """A trainable Tensor. ``decay`` marks weights that take weight decay (conv and linear kernels)."""

    __slots__ = ("decay",)

    def __init__(self, data, decay: bool = False, name: str | None = None):
        super().__init__(data, requires_grad=True, name=name)
        self.decay = decay


class Module:
    """Base class of layers and networks: an ordered container of Parameters, buffers and
    sub-Modules with a ``forward``.

    A subclass calls ``super().__init__()``, assigns its Parameters and sub-Modules as attributes
    (registered in assignment order, which every layer here makes the forward order), registers
    non-trained state arrays with ``register_buffer``, and defines ``forward``; ``module(*args)``
    calls ``forward(*args)``. ``training`` (True after construction) selects batch or running
    statistics in BatchNorm2d; ``train``/``eval`` set it for the whole tree.
    """

    def __init__(self):
        object.__setattr__(self, "_entries", collections.OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if isinstance(value, (Parameter, Module)):
            self._entries[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array) -> None:
        """A state array that is saved and moved with the module but not trained (running stats)."""
        self._entries[name] = _Buffer()
        object.__setattr__(self, name, array)

    def __call__(self, *args, **kwargs):
        """``self.forward(*args, **kwargs)``."""
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        """The computation, defined by each subclass; the base class raises NotImplementedError."""
        raise NotImplementedError

    # ---- traversal ---------------------------------------------------------------------------
    def named_entries(self, prefix=""):
        """(dotted name, Parameter | array) in forward order, buffers included."""
        for name, entry in self._entries.items():
            if isinstance(entry, Module):
                yield from entry.named_entries(prefix + name + ".")
            else:
                yield prefix + name, getattr(self, name)

    def named_parameters(self):
        """[(dotted name, Parameter)] in forward order, buffers left out (e.g. ``"fc.weight"``)."""
        return [(n, v) for n, v in self.named_entries() if isinstance(v, Parameter)]

    def parameters(self):
        """[Parameter] in forward order, the Tensors themselves (not copies): what ``SGD`` takes."""
        return [v for _, v in self.named_parameters()]

    def modules(self):
        """This module, then every sub-module depth first in assignment order (a generator)."""
        yield self
        for entry in self._entries.values():
            if isinstance(entry, Module):
                yield from entry.modules()

    # ---- modes and devices -------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Set ``training`` to ``mode`` on this module and every sub-module; returns self.

        True: BatchNorm2d normalises with batch statistics and updates its running averages;
        False (``eval``): it uses the running averages.
        """
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """``train(False)``: inference mode for every sub-module; returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None."""
        for p in self.parameters():
            p.grad = None

    def to(self, device: str):
        """Move every parameter and buffer to ``device`` ('cpu' or 'cuda'; None: ``RCENP_DEVICE``,
        default 'cpu') in place, clearing gradients; returns self.

        Raises ``rcenp.backend.DeviceError`` (a RuntimeError) for another name, or for 'cuda'
        without a usable CuPy and GPU.
        """
        for m in self.modules():
            for name, entry in m._entries.items():
                if isinstance(entry, Parameter):
                    entry.data = to_device(entry.data, device)
                    entry.grad = None
                elif isinstance(entry, _Buffer):
                    object.__setattr__(m, name, to_device(getattr(m, name), device))
        return self

    def astype(self, dtype):
        """Cast every parameter and buffer to ``dtype`` in place (float64 for gradient checks),
        clearing gradients; returns self.

        Raises ValueError for a dtype other than float32 and float64: an integer cast would
        truncate the weights, and no kernel is written or tested for float16.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"a model computes in float32 or float64, not {dtype}: model.astype(np.float32) "
                             "or model.astype(np.float64)")
        for m in self.modules():
            for name, entry in m._entries.items():
                if isinstance(entry, Parameter):
                    entry.data = entry.data.astype(dtype)
                    entry.grad = None
                elif isinstance(entry, _Buffer):
                    object.__setattr__(m, name, getattr(m, name).astype(dtype))
        return self

    @property
    def device(self) -> str:
        """'cpu' or 'cuda': where the first parameter or buffer lives ('cpu' for an empty module)."""
        first = next(iter(self.named_entries()), None)
        return device_of(first[1]) if first else "cpu"

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self):
        """Ordered {dotted name: host NumPy array} (a copy), parameters and buffers in forward order."""
        return collections.OrderedDict(
            (n, as_numpy(v.data if isinstance(v, Tensor) else v).copy()) for n, v in self.named_entries())

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy arrays from ``state`` into this module (on its device), checking names, shapes and
        dtypes.

        Raises KeyError for missing or unexpected names (``strict``), ValueError for a shape or a
        dtype that differs from the module's: a float64 state is never silently rounded into a
        float32 module (cast one of them first, e.g. ``module.astype(np.float64)``).
        """
        own = dict(self.named_entries())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, current in own.items():
            if name not in state:
                continue
            array = current.data if isinstance(current, Tensor) else current
            value = state[name]
            if tuple(value.shape) != tuple(array.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} does not match {tuple(array.shape)}")
            if value.dtype != array.dtype:
                hint = f" (or the module: module.astype(np.{value.dtype}))" if value.dtype.kind == "f" else ""
                raise ValueError(f"{name}: dtype {value.dtype} does not match the module's {array.dtype}; "
                                 f"cast the state first{hint}")
        for name, current in own.items():
            if name in state:
                array = current.data if isinstance(current, Tensor) else current
                array[...] = get_array_module(array).asarray(state[name])


def check_model(model) -> None:
    """Raise TypeError unless ``model`` is a ``Classifier`` (a network with its objective); the
    (model, manifest) pair that ``rcenp.models.load`` returns gets a hint."""
    if not (hasattr(model, "network") and hasattr(model, "objective")):
        hint = ": rcenp.models.load returns (model, manifest)" if isinstance(model, tuple) else ""
        raise TypeError(f"model must be an rcenp Classifier (rcenp.models.load(name)[0]), got "
                         f"{type(model).__name__}{hint}")


def check_images(model, x):
    """``x`` as an (N, C, H, W) array for ``model`` (a ``Classifier``) after checking shape, the
    channel count, (C, H, W) where the model has an ``image_shape``, dtype (the model's: no silent
    casts), finiteness and the [-0.5, 0.5] pixel box (``PIXEL_BOX``). Raises ValueError naming what
    is wrong, with the usual fix where one is evident (a single image, channels-last, 0-255
    pixels), and TypeError when ``model`` is not a ``Classifier`` (say the (model, manifest) pair
    that ``rcenp.models.load`` returns)."""
    check_model(model)
    xp = get_array_module(x)
    x = xp.asarray(x.data if isinstance(x, Tensor) else x)
    channels = getattr(model.network, "in_channels", None)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}{_shape_hint(x.shape, channels)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"images have {x.shape[1]} channel{'s' * (x.shape[1] != 1)}; this model takes {channels}"
                         f"{_shape_hint(x.shape, channels)}")
    if getattr(model, "image_shape", None) is not None:
        model._checked(x)
    check_input_dtype(x, model.network.parameters()[0].data)
    if x.size and not bool(xp.isfinite(x).all()):
        raise ValueError("images contain NaN or infinity")
    if x.size and (float(x.min()) < PIXEL_BOX[0] or float(x.max()) > PIXEL_BOX[1]):
        low, high = float(x.min()), float(x.max())
        hint = ""
        if low >= 0:  # unshifted pixels
            hint = "; pixels in 0-255: x / 255 - 0.5" if high > 1 else "; pixels in [0, 1]: x - 0.5"
        raise ValueError(f"images must lie in the box [{PIXEL_BOX[0]}, {PIXEL_BOX[1]}], got range "
                         f"[{low:.9g}, {high:.9g}]{hint}")  # 9 digits: a float32 just past the edge shows
    return x


def _shape_hint(shape, channels) -> str:
    """The usual fix for images of ``shape`` that are not (N, C, H, W) for a ``channels``-channel
    model, as "; ..." (empty when none is evident)."""
    if len(shape) == 4 and shape[3] == channels != shape[1]:
        return "; channels-last (N, H, W, C) images: x.transpose(0, 3, 1, 2)"
    if len(shape) == 3 and channels in (None, shape[0]):
        return "; one image (C, H, W): x[None]"
    if len(shape) == 3 and shape[2] == channels:
        return "; one channels-last image (H, W, C): x.transpose(2, 0, 1)[None]"
    if len(shape) == 3 and channels == 1:
        return "; grey images (N, H, W): x[:, None]"
    if len(shape) == 2 and channels in (None, 1):
        return "; one grey image (H, W): x[None, None]"
    return ""


@contextlib.contextmanager
def eval_mode(model):
    """Run the block with every module of ``model`` in eval mode (inference BN), then give each
    module back its own ``training`` flag, also when the block raises. Nests."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            object.__setattr__(module, "training", training)  # per module, as ``Module.train`` sets it


def check_input_dtype(x, parameter) -> None:
    """Raise ValueError unless input ``x`` (array or Tensor) has ``parameter``'s dtype.

    A float64 input to a float32 network would compute with float32 weights and statistics while
    returning float64, so a "float64" gradient check would silently be a float32 one; integer
    pixels are unscaled.
    A model's first layer calls this once per forward (no per-op cost).
    """
    dtype, expected = as_array(x).dtype, parameter.dtype
    if dtype == expected:
        return
    if dtype in (np.float32, np.float64):
        raise ValueError(f"input dtype {dtype} does not match the model's {expected} parameters: cast the input "
                         f"with np.asarray(x, np.{expected}), or the model (in place, for every user of it) with "
                         f"model.astype(np.{dtype})")
    if dtype.kind == "f":  # float16, longdouble: no model computes in them
        raise ValueError(f"input dtype {dtype} is not the model's {expected}: cast the input with "
                         f"np.asarray(x, np.{expected})")
    raise ValueError(f"input dtype {dtype} is not the model's {expected}: images are floats in [-0.5, 0.5] "
                     "(x / 255 - 0.5, as rcenp.data scales them)")


class _Buffer:
    """Marker for a buffer entry (the array itself lives in the module's attribute)."""
