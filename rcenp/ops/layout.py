"""Host memory layout and parallelism for NumPy.

Conv outputs are (N, C, H, W) views of channels-last buffers (see ``rcenp.ops.conv``). NumPy's
elementwise operations keep that layout, but fresh allocations (``zeros``, ``pad``, ``copy``)
would silently switch to C order and cost a transposing copy at the next convolution.

``map_chunks`` runs a function over slices of the batch on one worker per core: the calling
thread and a pool of helpers (``RCENP_HOST_THREADS`` to change the count). NumPy releases the
GIL in copies and BLAS calls, so the workers run in parallel, each with single-threaded
OpenBLAS. A worker's im2col chunk then stays in its core's cache between the gather and the
GEMM, which is 2-3x faster here than one whole-batch gather followed by a multi-threaded GEMM on
skinny matrices. Where that control is unavailable (another BLAS, an older OpenBLAS), the chunks
run one after another in the calling thread.

``openblas_set_num_threads_local`` is thread-local only in OpenMP builds of OpenBLAS; in the
pthreads builds NumPy's wheels ship it sets the process-wide count. So OpenBLAS has one thread
while any dispatch runs, and the count from before comes back when the last one has finished:
BLAS calls outside rcenp's chunks keep all their threads (a per-worker setting made once would
leave every later GEMM of the process single-threaded, 2x slower here). A pass too small to
split (one chunk, a small batch) also runs with one BLAS thread (``serial``).

Wherever the chunking can change a result (partial sums, an im2col GEMM whose row count is the
chunk's), chunks depend only on array sizes, never on the number of workers, and partial results
are combined in chunk order; passes computed image by image are split evenly over the workers.
Results are therefore bit-identical for any ``RCENP_HOST_THREADS``, which a resumed training run
relies on (with ``RCENP_HOST_THREADS=1`` rcenp leaves BLAS's thread count alone, and threaded
OpenBLAS GEMMs round differently: set ``OPENBLAS_NUM_THREADS=1`` too).
"""
from __future__ import annotations

import ctypes
import glob
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from rcenp.backend import get_array_module
from rcenp.ops import memory

_pool: ThreadPoolExecutor | None = None
_pool_ready = False
_helpers = 0  # the pool's thread count
_pool_lock = threading.Lock()
_blas_local = None  # ctypes function: int openblas_set_num_threads_local(int)
_BLAS_COUNT_GETTERS = ("openblas_get_num_threads", "openblas_get_num_threads64_",
                       "scipy_openblas_get_num_threads64_")
_BLAS_CORE_GETTERS = ("openblas_get_corename", "openblas_get_corename64_", "scipy_openblas_get_corename64_")


def _like(x, shape, allocate):
    """allocate(shape in x's memory order, dtype), transposed back to ``shape``."""
    order = sorted(range(x.ndim), key=lambda a: -abs(x.strides[a]))  # outermost axis first
    buf = allocate(tuple(shape[a] for a in order), x.dtype)
    inverse = [0] * x.ndim
    for position, axis in enumerate(order):
        inverse[axis] = position
    return buf.transpose(inverse)


def alloc_like(x, shape, zero=True):
    """A new array of ``shape`` and x's dtype whose memory order follows x's strides (on the
    host, from the buffer pool of ``rcenp.ops.memory``)."""
    xp = get_array_module(x)
    buf = _like(x, shape, xp.empty if xp is not np else memory.empty)
    if zero:
        buf.fill(0)
    return buf


def scratch_like(x, name: str):
    """An uninitialised working array shaped and laid out like x: the calling thread's scratch
    buffer ``name`` (``rcenp.ops.memory.scratch``), valid until the thread next asks for it."""
    xp = get_array_module(x)
    return _like(x, x.shape, lambda shape, dtype: memory.scratch(xp, name, shape, dtype))


def _numpy_openblas():
    """The ctypes handles of the OpenBLAS libraries bundled with NumPy's wheel."""
    folder = os.path.dirname(np.__file__)
    for path in glob.glob(os.path.join(folder + ".libs", "*openblas*.so*")) + \
            glob.glob(os.path.join(folder, ".dylibs", "*openblas*.dylib")):
        try:
            yield ctypes.CDLL(path)
        except OSError:
            continue


def _find_blas_thread_control():
    """``openblas_set_num_threads_local`` from the OpenBLAS NumPy loaded, or None."""
    if os.environ.get("RCENP_HOST_THREADS") == "1":
        return None
    fn = _openblas_getter(("openblas_set_num_threads_local",), ctypes.c_int)
    if fn is not None:
        fn.argtypes = [ctypes.c_int]
    return fn


def _openblas_getter(names, restype):
    """The first function of ``names`` in the OpenBLAS NumPy loaded, returning ``restype``; None if
    there is none."""
    for lib in _numpy_openblas():
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = restype
                return fn
    return None


def blas_thread_count():
    """OpenBLAS's current thread count as seen by the calling thread, or None if unknown."""
    fn = _openblas_getter(_BLAS_COUNT_GETTERS, ctypes.c_int)
    return None if fn is None else int(fn())


def blas_core() -> str | None:
    """The CPU kernel set NumPy's OpenBLAS chose at load time (its DYNAMIC_ARCH core, e.g.
    "SkylakeX", "Haswell", "Zen"), or None if unknown. GEMMs of different kernels round
    differently, so float32 results can differ in the last bits between hosts."""
    fn = _openblas_getter(_BLAS_CORE_GETTERS, ctypes.c_char_p)
    core = None if fn is None else fn()
    return core.decode(errors="replace").strip() if core else None


def workers() -> int:
    """Host worker threads: ``RCENP_HOST_THREADS`` or the number of cores."""
    value = os.environ.get("RCENP_HOST_THREADS")
    return max(1, int(value)) if value else (os.cpu_count() or 1)


def _pool_with_blas_control():
    """The pool of helper threads (``workers() - 1``: the calling thread is the other worker),
    or None where there is one worker or BLAS threads cannot be limited per worker."""
    global _blas_local, _helpers, _pool, _pool_ready
    if not _pool_ready:
        with _pool_lock:
            if not _pool_ready:
                _blas_local = _find_blas_thread_control()
                if _blas_local is not None and workers() > 1:
                    _helpers = workers() - 1
                    _pool = ThreadPoolExecutor(max_workers=_helpers, thread_name_prefix="rcenp-host")
                _pool_ready = True
    return _pool


def chunk_workers() -> int:
    """How many workers ``map_chunks`` runs on: the caller and the pool's helpers (1 without)."""
    return 1 if _pool_with_blas_control() is None else _helpers + 1


def parallel_available() -> bool:
    """True when chunks run on more than one worker, each with single-threaded BLAS."""
    return _pool_with_blas_control() is not None


_dispatch_lock = threading.Lock()
_dispatches = 0            # map_chunks calls in flight, from any thread
_blas_outside = None       # the BLAS thread count to restore when the last one ends


def _enter_dispatch():
    """Single-threaded BLAS while any dispatch runs (process-wide in pthreads OpenBLAS builds)."""
    global _dispatches, _blas_outside
    with _dispatch_lock:
        previous = _blas_local(1)
        if _dispatches == 0:
            _blas_outside = previous
        _dispatches += 1


def _leave_dispatch():
    global _dispatches
    with _dispatch_lock:
        _dispatches -= 1
        if _dispatches == 0:
            _blas_local(_blas_outside)


def serial(work):
    """work() in the calling thread with single-threaded BLAS where that can be set, for a pass
    too small to split: its results then do not depend on BLAS's thread count (OpenBLAS rounds
    threaded GEMMs differently), and it never waits on BLAS threads. Those spin while waiting:
    on an idle machine they make a batch-10 ResNet pass 10-15% faster, but on this 2-core
    machine shared with other jobs a batch-1 3x3 conv of 16 channels took 30-150 ms with
    OpenBLAS's two threads and 0.3 ms with one."""
    _pool_with_blas_control()
    if _blas_local is None:
        return work()
    _enter_dispatch()
    try:
        return work()
    finally:
        _leave_dispatch()


def map_chunks(fn, n: int, chunk: int):
    """[fn(lo, hi) for each slice of range(n) of length ``chunk``], in order.

    The calling thread and the pool's helpers each claim the next unprocessed chunk until none
    is left: one pool task per helper and call rather than one per chunk.
    """
    pool = _pool_with_blas_control()
    starts = range(0, n, chunk)
    if pool is None or len(starts) <= 1:
        return serial(lambda: [fn(lo, min(lo + chunk, n)) for lo in starts])
    results = [None] * len(starts)
    claim = itertools.count().__next__  # atomic under the GIL

    def drain():
        _blas_local(1)  # per thread in OpenMP builds; pthreads builds already have 1 (below)
        while (i := claim()) < len(starts):
            results[i] = fn(starts[i], min(starts[i] + chunk, n))

    _enter_dispatch()
    helpers = []
    try:
        helpers = [pool.submit(drain) for _ in range(min(_helpers, len(starts) - 1))]
        drain()
    finally:
        wait(helpers)  # every chunk has finished before the caller's BLAS threads come back
        _leave_dispatch()
    for helper in helpers:
        helper.result()  # a helper's exception
    return results


def balanced_chunk(n: int, largest: int) -> int:
    """Items per chunk, at most ``largest``, such that a pass of several chunks has a multiple of
    ``chunk_workers()`` of them, so that no worker idles at the end (100 images at 34 per chunk:
    4 x 25, not 3 x 34; at 20 per chunk on 2 workers: 6 chunks of at most 17, not 5 x 20, where
    one worker would take 3 chunks and the other wait a whole chunk). A pass of one chunk stays
    whole: waking a helper costs more than it saves there (a batch-10 forward took 35% longer
    split in two). Only for passes whose results do not depend on the chunks (elementwise work,
    GEMMs image by image), since these chunks depend on the number of workers."""
    count, w = -(-n // max(1, largest)), chunk_workers()
    if count == 1:
        return n
    count = min(n, -(-count // w) * w)
    size = -(-n // count)
    if -(-n // size) < min(n, w):  # the rounded-up size merged chunks below one per worker (4 items, 3 workers)
        size = n // min(n, w)
    return size


def for_each_chunk(fn, array, chunk_bytes: int = 1 << 20, balanced: bool = False):
    """``map_chunks`` over axis 0 of a host array in cache-sized chunks (about ``chunk_bytes``).

    For memory-bound elementwise work: each worker applies all of its passes to one chunk while
    the chunk is still in its core's cache. Returns the per-chunk results in order. ``balanced``
    (only where fn's results do not depend on the chunking): as many chunks per worker
    (``balanced_chunk``); otherwise the chunks depend on the array's size alone.
    """
    n = array.shape[0]
    per_item = max(1, array.nbytes // max(n, 1))
    largest = max(1, min(n, chunk_bytes // per_item))
    return map_chunks(fn, n, balanced_chunk(n, largest) if balanced else largest)


def over_chunks(x, job, balanced: bool = False):
    """job(lo, hi) over cache-sized chunks of axis 0 on the host pool, or once over everything
    (small inputs, GPU); the partial results added in chunk order (None when job returns None).
    ``balanced`` for elementwise jobs, whose results do not depend on the chunking (see
    ``for_each_chunk``); jobs returning partial sums keep chunks that depend on sizes alone, so
    that their sums do not depend on the number of workers."""
    if host_chunked(x):
        parts = for_each_chunk(job, x, balanced=balanced)
    elif isinstance(x, np.ndarray):
        parts = [serial(lambda: job(0, x.shape[0]))]
    else:
        parts = [job(0, x.shape[0])]
    if parts[0] is None:
        return None
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def add_arrays(a, b):
    """a + b. Two host arrays of one shape and dtype are added into a pooled array in a's memory
    order (chunk by chunk on the pool when large): NumPy's bits, without a fresh allocation.
    Residual sums and gradients reaching a tensor from two consumers both come here."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape \
            or a.dtype != b.dtype or a.ndim == 0:
        return a + b
    y = alloc_like(a, a.shape, zero=False)

    def job(lo, hi):
        np.add(a[lo:hi], b[lo:hi], out=y[lo:hi])

    over_chunks(y, job, balanced=True)
    return y


def host_chunked(*arrays) -> bool:
    """True for NumPy arrays large enough to process in chunks (whatever the number of workers)."""
    return all(isinstance(a, np.ndarray) for a in arrays) and arrays[0].ndim >= 2 and arrays[0].nbytes >= (2 << 20)
