"""rcenp: reverse cross-entropy training and adversarial-example detection on NumPy or CuPy."""
from rcenp.autograd import Function, Tensor, enable_grad, grad, is_grad_enabled, no_grad
from rcenp.backend import as_numpy, get_array_module, to_device
from rcenp.ops.memory import release_host_memory, tune_host_allocator

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "grad", "no_grad", "enable_grad", "is_grad_enabled",
           "get_array_module", "as_numpy", "to_device", "release_host_memory", "tune_host_allocator", "__version__"]
