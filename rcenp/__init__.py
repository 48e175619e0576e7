"""rcenp: reverse cross-entropy training and adversarial-example detection on NumPy or CuPy.

``import rcenp`` loads the autograd core only; the subpackages below load on first use
(``rcenp.models.load(...)``, ``rcenp.detect.Detector``), as with NumPy and SciPy (PEP 562).
"""
from rcenp.autograd import Function, Tensor, grad
from rcenp.backend import as_numpy, get_array_module, to_device
from rcenp.grad_mode import enable_grad, is_grad_enabled, no_grad
from rcenp.ops.memory import release_host_memory, tune_host_allocator

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "grad", "no_grad", "enable_grad", "is_grad_enabled",
           "get_array_module", "as_numpy", "to_device", "release_host_memory", "tune_host_allocator",
           "__version__"]

SUBMODULES = ("attacks", "checkpoint", "data", "detect", "functional", "metrics", "models", "nn",
              "objectives", "optim", "testing", "train")


def __getattr__(name):
    """``rcenp.<submodule>`` imported on first access; AttributeError for anything else."""
    import importlib  # here, not at the top: ``dir(rcenp)`` shows no standard-library modules

    if name in SUBMODULES:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":  # a dependency inside it is missing: say that
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    """The package's names and the subpackages present on disk (imported or not)."""
    import importlib.util

    present = [n for n in SUBMODULES if importlib.util.find_spec(f"{__name__}.{n}") is not None]
    return sorted(set(globals()) | set(present))
