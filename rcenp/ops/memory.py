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

The pool holds at most 1.5 times the most pooled bytes that were in use at once (different sizes
peak at different moments of a step: a ResNet step holds 1.1-1.4 times its peak), so a request
that does not fit drops idle blocks, least recently handed out first. ``release_host_memory()``
empties the pool and the scratch buffers, and ``RCENP_HOST_POOL=0`` turns the pool off (NumPy
allocates every array). On the GPU CuPy's own memory pool does all this, so these helpers
allocate.
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
_enabled = os.environ.get("RCENP_HOST_POOL", "1") != "0"


class _Block:
    """A pooled uint8 array and when it was last handed out."""

    __slots__ = ("array", "tick")

    def __init__(self, nbytes):
        self.array, self.tick = np.empty(nbytes, np.uint8), 0


def _refs(block):
    return sys.getrefcount(block.array)


_IDLE_REFS = _refs(_Block(1))  # a block's array referenced by nothing but the block
_blocks: dict[int, list] = {}  # nbytes -> [_Block, ...]
_held = 0                      # bytes in all blocks
_high_water = 0                # the most pooled bytes in use at once (at a miss)
_tick = itertools.count()
_lock = threading.Lock()


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-order host array, a view of a pooled block when it is large enough."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _MIN_BYTES or not _enabled:
        return np.empty(shape, dtype)
    with _lock:
        blocks = _blocks.setdefault(nbytes, [])
        for block in blocks:
            if _refs(block) == _IDLE_REFS:
                break
        else:
            block = _new_block(nbytes)
            blocks.append(block)
        block.tick = next(_tick)
        return block.array.view(dtype).reshape(shape)


def _new_block(nbytes):
    """A fresh block, after dropping idle blocks (least recently handed out first) that would
    take the pool past _SLACK times the in-use high-water mark."""
    global _held, _high_water
    idle = sorted((block for blocks in _blocks.values() for block in blocks if _refs(block) == _IDLE_REFS),
                  key=lambda block: block.tick)
    _high_water = max(_high_water, _held - sum(block.array.nbytes for block in idle) + nbytes)
    for block in idle:
        if _held + nbytes <= _SLACK * _high_water:
            break
        _blocks[block.array.nbytes].remove(block)
        _held -= block.array.nbytes
    _held += nbytes
    return _Block(nbytes)


def pool_stats() -> dict:
    """Pooled blocks, bytes held, bytes in use now, and the in-use high-water mark."""
    with _lock:
        blocks = [block for same_size in _blocks.values() for block in same_size]
        busy = sum(block.array.nbytes for block in blocks if _refs(block) != _IDLE_REFS)
        return {"blocks": len(blocks), "held_bytes": _held, "in_use_bytes": busy, "high_water_bytes": _high_water}


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
