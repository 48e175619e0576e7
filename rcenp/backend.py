"""Array backends: NumPy always, CuPy when installed and asked for.

This is the only module of rcenp that imports CuPy. Everything else writes one body over
``xp = get_array_module(...)`` and never names a backend.

The device is chosen by ``RCENP_DEVICE`` (``cpu``, the default, or ``cuda``) or per call through
``to_device``. Random numbers are always drawn on the host from a seeded ``numpy.random.Generator``
and then moved, so a seed means the same numbers on either device.
"""
from __future__ import annotations

import functools
import os

import numpy as np

try:  # CuPy is an optional extra: ``pip install rcenp[gpu]``.
    import cupy as _cupy

    HAS_CUPY = True
    cupy_ndarray = _cupy.ndarray
except ImportError:  # pragma: no cover - depends on the machine
    _cupy = None
    HAS_CUPY = False

    class cupy_ndarray:  # noqa: N801 - a stand-in type so isinstance checks never fail
        """Placeholder for ``cupy.ndarray`` when CuPy is absent (nothing is ever an instance)."""


DEFAULT_DTYPE = np.float32
DEVICES = ("cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device cannot be used on this machine."""


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if not HAS_CUPY:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - a driver error means "no usable device"
        return False


def cuda_missing() -> str:
    """What stands between this machine and ``cuda``, with the fix, for an error message."""
    if not HAS_CUPY:
        return "CuPy is not installed (pip install -e '.[gpu]' in the checkout, or cupy-cuda12x)"
    return "CuPy sees no CUDA device (check the driver and CUDA_VISIBLE_DEVICES)"


DEVICE_HELP = "where to compute: cpu or cuda (default: $RCENP_DEVICE, else cpu)"  # the CLI's --device


def default_device() -> str:
    """The device named by ``RCENP_DEVICE`` (``cpu`` when unset)."""
    name = os.environ.get("RCENP_DEVICE", "cpu").strip().lower() or "cpu"
    if name not in DEVICES:
        raise DeviceError(f"RCENP_DEVICE={name!r}: expected one of {', '.join(DEVICES)}")
    if name == "cuda" and not cuda_available():
        raise DeviceError(f"RCENP_DEVICE=cuda but {cuda_missing()}; unset it to compute on the CPU")
    return name


def _unwrap(x):
    if isinstance(x, (np.ndarray, cupy_ndarray)):
        return x
    return getattr(x, "data", x)  # an rcenp Tensor carries its array in .data


def get_array_module(*xs):
    """``cupy`` if any argument (array or Tensor) lives on the GPU, else ``numpy``."""
    if HAS_CUPY:
        for x in xs:
            if isinstance(_unwrap(x), cupy_ndarray):
                return _cupy
    return np


def xp_for(device: str):
    """The array module of a device name."""
    if device == "cpu":
        return np
    if device == "cuda":
        if not cuda_available():
            raise DeviceError(f"device 'cuda' requested but {cuda_missing()}")
        return _cupy
    raise DeviceError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")


def device_of(x) -> str:
    """``'cuda'`` or ``'cpu'`` for an array or Tensor."""
    return "cuda" if isinstance(_unwrap(x), cupy_ndarray) else "cpu"


def as_numpy(x) -> np.ndarray:
    """A host NumPy array holding ``x`` (array, Tensor or scalar); no copy when already on host."""
    x = _unwrap(x)
    if isinstance(x, cupy_ndarray):
        return x.get()
    return np.asarray(x)


def to_device(x, device: str | None = None):
    """Move an array (or anything ``np.asarray`` takes) to ``device`` (default: ``default_device()``)."""
    device = device or default_device()
    x = _unwrap(x)
    if device == "cpu":
        return as_numpy(x)
    xp = xp_for(device)
    return xp.asarray(x)


def synchronize(device: str) -> None:
    """Wait until the work queued on ``device`` has run (a no-op on the host), so that a wall clock
    read after it times the GPU's work, not its launch."""
    if device == "cuda":
        _cupy.cuda.Device().synchronize()


def device_identity(device: str) -> dict:
    """{"device": "cpu" or "cuda"} and, on the GPU, {"gpu": its name, "cupy": CuPy's version}: what
    a run records beside the host (``rcenp.checkpoint.host``), whose CPU and BLAS kernel decide its
    last bits on the host, as the GPU model does on the device."""
    if device != "cuda":
        return {"device": "cpu"}
    try:  # a record, best effort: CuPy gives the name as bytes
        name = _cupy.cuda.runtime.getDeviceProperties(_cupy.cuda.Device().id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - an unknown name, not a failed run
        name = None
    return {"device": "cuda", "gpu": name, "cupy": _cupy.__version__}


def make_rng(seed) -> np.random.Generator:
    """A host random generator; ``seed`` is an int, a sequence of ints or a ``SeedSequence``."""
    return np.random.default_rng(seed)


def scatter_add(xp, target, indices, values):
    """``target[indices] += values`` with repeated indices accumulated: ``np.add.at`` and its CuPy
    twin ``cupy.add.at`` (CuPy deprecates ``cupyx.scatter_add`` in its favour). On the GPU the
    additions are atomic, so their order, and a float sum's last bits, vary from run to run."""
    xp.add.at(target, indices, values)


def cuda_kernel(factory):
    """Memoise a CuPy kernel factory per device, so nothing compiles at import or twice.

    ``factory(cupy, *args)`` builds an ``ElementwiseKernel``/``RawKernel``; the decorated function
    is called with the same ``*args`` and returns the cached kernel for the current device.
    """

    @functools.wraps(factory)
    def get(*args):
        if not HAS_CUPY:
            raise DeviceError(f"{factory.__name__}: CuPy is not installed")
        key = (_cupy.cuda.get_device_id(),) + args
        cache = get.cache
        if key not in cache:
            cache[key] = factory(_cupy, *args)
        return cache[key]

    get.cache = {}
    return get
