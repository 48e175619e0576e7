"""Host memory reuse: a caching pool for activations and gradients, per-thread scratch buffers,
and an opt-in glibc setting.

A ResNet training step allocates and frees a few hundred arrays of 0.1-10 MB. glibc serves the
large ones with fresh ``mmap`` regions and gives freed heap tops back to the OS, so without reuse
each step page-faults its whole working set in again: 42,000 minor faults per ResNet-32 step at
batch 128 here, a quarter of the step's time. Frameworks keep such buffers for reuse; so does
rcenp, without changing the process's allocator settings.

The pool. ``empty(shape, dtype)`` returns a view of a cached block of exactly that many bytes. A
block is idle when nothing but the pool references it: every NumPy view (and view of a view, a
reshape, an ``as_strided`` window) keeps a reference to the array owning the memory, so
``sys.getrefcount`` tells whether a Tensor, a Function's saved array or a user's slice still
points into a block. No finalizers are needed, a block still viewed anywhere is never handed out
again, and blocks come back as soon as the graph holding them is freed. Only blocks of at least
_MIN_BYTES are pooled (glibc serves smaller ones from its heap cheaply).

The pool holds at most the largest number of pooled bytes that were in use at once, plus a
quarter (different sizes peak at different moments of a step): a request that does not fit drops
idle blocks, least recently handed out first. ``release_host_memory()`` empties the pool and the
scratch buffers, and ``RCENP_HOST_POOL=0`` turns the pool off (NumPy allocates every array). On
the GPU CuPy's own memory pool does all this, so these helpers allocate.
"""
from __future__ import annotations

import ctypes
import itertools
import math
import os
import sys
import threading
import weakref

import numpy as np

_MIN_BYTES = 128 << 10       # glibc's default mmap threshold
_SLACK = 1.5                 # pool bytes allowed per byte of the in-use high-water mark
_blocks: dict[int, list] = {}    # nbytes -> [[last hand-out tick, uint8 block], ...]
_held = 0                    # bytes in all blocks
_high_water = 0              # the most pooled bytes in use at once (at a miss)
_tick = itertools.count()
_lock = threading.Lock()
_enabled = os.environ.get("RCENP_HOST_POOL", "1") != "0"


def _refs(entries, i):
    return sys.getrefcount(entries[i][1])


_IDLE_REFS = _refs([[0, np.empty(1, np.uint8)]], 0)  # an entry's block referenced by nothing else


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-order host array, a view of a pooled block when it is large enough."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _MIN_BYTES or not _enabled:
        return np.empty(shape, dtype)
    with _lock:
        entries = _blocks.setdefault(nbytes, [])
        for i in range(len(entries)):
            if _refs(entries, i) == _IDLE_REFS:
                entry = entries[i]
                break
        else:
            entry = _new_block(nbytes)
            entries.append(entry)
        entry[0] = next(_tick)
        return entry[1].view(dtype).reshape(shape)


def _new_block(nbytes):
    """A fresh [tick, block], after dropping idle blocks (oldest first) that would take the pool
    past _SLACK times the in-use high-water mark."""
    global _held, _high_water
    idle = [(entries[i][0], size, entries[i]) for size, entries in _blocks.items()
            for i in range(len(entries)) if _refs(entries, i) == _IDLE_REFS]
    in_use = _held - sum(size for _, size, _ in idle) + nbytes
    _high_water = max(_high_water, in_use)
    idle.sort(key=lambda item: item[0])
    for _, size, entry in idle:
        if _held + nbytes <= _SLACK * _high_water:
            break
        _blocks[size].remove(entry)
        _held -= size
    _held += nbytes
    return [0, np.empty(nbytes, np.uint8)]


def pool_stats() -> dict:
    """Pooled blocks, bytes held, bytes in use now, and the in-use high-water mark."""
    with _lock:
        busy = sum(size for size, entries in _blocks.items()
                   for i in range(len(entries)) if _refs(entries, i) != _IDLE_REFS)
        return {"blocks": sum(len(e) for e in _blocks.values()), "held_bytes": _held,
                "in_use_bytes": busy, "high_water_bytes": _high_water}


class _Scratch:
    """One thread's scratch blocks, by name."""

    __slots__ = ("blocks", "__weakref__")

    def __init__(self):
        self.blocks = {}


_thread_scratch = threading.local()
_all_scratch: weakref.WeakSet = weakref.WeakSet()  # every live thread's, for release_host_memory
_scratch_lock = threading.Lock()


def _own_scratch() -> dict:
    own = getattr(_thread_scratch, "own", None)
    if own is None:
        own = _thread_scratch.own = _Scratch()
        with _scratch_lock:
            _all_scratch.add(own)
    return own.blocks


def scratch(xp, name: str, shape, dtype):
    """An uninitialised working buffer of the calling thread, valid until that thread next asks
    for ``name``: one block per name and thread grows to the largest request and is viewed at
    each request's shape; a thread's blocks go with the thread. No lock is taken. On the GPU a
    fresh array (CuPy's memory pool recycles)."""
    if xp is not np:
        return xp.empty(shape, dtype)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    blocks = _own_scratch()
    block = blocks.get(name)
    if block is None or block.nbytes < nbytes:
        blocks[name] = None  # the smaller block is freed before the larger one is allocated
        block = blocks[name] = np.empty(nbytes, np.uint8)
    return block[:nbytes].view(dtype).reshape(shape)


def release_host_memory() -> None:
    """Let go of every cached host buffer: idle pool blocks (blocks still in use are forgotten
    by the pool and freed with their last view) and the scratch buffers."""
    global _held, _high_water
    with _lock:
        _blocks.clear()
        _held = _high_water = 0
    with _scratch_lock:
        for own in list(_all_scratch):
            own.blocks.clear()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20   # glibc's ceiling for this parameter on 64-bit
_TRIM_THRESHOLD = 1 << 30


def tune_host_allocator() -> bool:
    """Opt-in: make glibc keep freed memory for reuse instead of returning it to the OS.

    Serves blocks below 32 MiB from the heap and trims only above 1 GiB. This changes
    process-wide allocator settings, for every library in the process, so rcenp never calls it:
    rcenp's own arrays already reuse memory through the pool above. It may still help programs
    whose other libraries churn through large temporary arrays. A no-op returning False where
    ``mallopt`` is missing (not glibc) or the user set ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_``.
    """
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.restype, mallopt.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) & bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
