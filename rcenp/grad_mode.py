"""Whether Functions record graphs: ``no_grad``, ``enable_grad``, ``is_grad_enabled``, per thread.

``rcenp.autograd.Function`` records its output's creator only while the calling thread's mode is
on; these are the switches (also ``rcenp.no_grad`` etc.).
"""
from __future__ import annotations

import contextlib
import threading


class _GradMode(threading.local):
    """Whether graphs are recorded, per thread (as PyTorch's): a ``no_grad`` block in one thread
    neither reaches nor, ending, undoes another thread's mode."""
    enabled = True


_grad_mode = _GradMode()


@contextlib.contextmanager
def _grad_mode_set(enabled: bool):
    previous, _grad_mode.enabled = _grad_mode.enabled, enabled
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def no_grad():
    """Within this block no graph is recorded (inference, attack bookkeeping, metric evaluation), in
    the calling thread."""
    return _grad_mode_set(False)


def enable_grad():
    """Re-enable graph recording inside a ``no_grad`` block, in the calling thread."""
    return _grad_mode_set(True)


def is_grad_enabled() -> bool:
    """Whether the calling thread records graphs."""
    return _grad_mode.enabled
