"""The host chunk dispatcher (rcenp.ops.layout.map_chunks) and the chunked elementwise ops."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rcenp.autograd import Tensor
from rcenp.ops import layout

ROOT = Path(__file__).resolve().parent.parent


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), chunk=st.integers(1, 50))
def test_map_chunks_calls_every_chunk_once_and_keeps_their_order(n, chunk):
    calls, lock = [], threading.Lock()

    def fn(lo, hi):
        with lock:
            calls.append((lo, hi))
        return lo, hi

    expected = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    assert layout.map_chunks(fn, n, chunk) == expected
    assert sorted(calls) == expected


def test_map_chunks_finishes_every_chunk_before_raising_a_chunks_error():
    done, lock = [], threading.Lock()
    before = layout.blas_thread_count()

    def fn(lo, hi):
        if lo == 3:
            raise RuntimeError("chunk 3 failed")
        with lock:
            done.append(lo)

    with pytest.raises(RuntimeError, match="chunk 3 failed"):
        layout.map_chunks(fn, 40, 1)
    if layout.parallel_available():
        assert sorted(done) == [lo for lo in range(40) if lo != 3]  # nothing left running behind
    else:  # one worker (RCENP_HOST_THREADS=1): the chunks run in order and the error stops them
        assert done == [0, 1, 2]
    assert layout.blas_thread_count() == before


@pytest.mark.parametrize("n, largest, workers, size", [
    (100, 34, 2, 25),   # 4 x 25, not 3 x 34 (one worker would wait a whole chunk)
    (100, 20, 2, 17),   # 6 chunks, not 5 x 20: the batch norm of 100 MNIST images of 16 channels
    (100, 20, 3, 17),   # 6 chunks, 2 per worker
    (100, 20, 1, 20),   # one worker: the chunks depend on the size alone
    (10, 10, 2, 10),    # a pass of one chunk stays whole
])
def test_balanced_chunks_give_every_worker_as_many(monkeypatch, n, largest, workers, size):
    monkeypatch.setattr(layout, "chunk_workers", lambda: workers)
    assert layout.balanced_chunk(n, largest) == size


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), largest=st.integers(1, 300), workers=st.integers(1, 4))
def test_balanced_chunks_are_never_larger_and_never_fewer_than_the_workers(n, largest, workers):
    largest = min(largest, n)
    original = layout.chunk_workers
    layout.chunk_workers = lambda: workers
    try:
        size = layout.balanced_chunk(n, largest)
    finally:
        layout.chunk_workers = original
    chunks = -(-n // size)
    assert 1 <= size <= largest
    if -(-n // largest) > 1:  # several chunks: at least one per worker, sizes as equal as they can be
        assert chunks >= min(n, workers) and chunks >= -(-n // largest)
        assert n - (chunks - 1) * size <= size


def test_elementwise_ops_chunk_for_the_workers_and_sums_for_the_size_alone(monkeypatch):
    # the batch norm of 100 MNIST images of 16 channels (50 KiB each): 5 chunks by size; its
    # elementwise passes take 6 on 2 workers, its training sums keep 5 whatever the workers
    monkeypatch.setattr(layout, "chunk_workers", lambda: 2)
    seen = []
    real = layout.map_chunks
    monkeypatch.setattr(layout, "map_chunks", lambda fn, n, chunk: seen.append(-(-n // chunk)) or real(fn, n, chunk))
    x = np.zeros((100, 28, 28, 16), np.float32).transpose(0, 3, 1, 2)
    layout.over_chunks(x, lambda lo, hi: None, balanced=True)
    layout.over_chunks(x, lambda lo, hi: x[lo:hi].sum())
    assert seen == [6, 5]


def test_residual_add_runs_in_chunks_with_numpys_bits_and_the_first_operands_layout():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 32, 32, 16)).astype(np.float32).transpose(0, 3, 1, 2)  # 2 MiB
    b = np.ascontiguousarray(rng.standard_normal(a.shape).astype(np.float32))         # C order
    assert layout.host_chunked(a, b)
    y = (Tensor(a) + Tensor(b)).data
    np.testing.assert_array_equal(y, a + b)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous


def test_avg_pool_runs_in_chunks_with_the_single_pass_bits():
    from rcenp import functional as F
    from rcenp.autograd import grad

    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 32, 32, 16)).astype(np.float32).transpose(0, 3, 1, 2)  # 2 MiB
    gy = rng.standard_normal((32, 16, 16, 16)).astype(np.float32)
    assert layout.host_chunked(x)
    xt = Tensor(x, requires_grad=True)
    y = F.avg_pool2d(xt, 2)
    windows = [(i, j) for i in range(2) for j in range(2)]
    expected = x[:, :, 0::2, 0::2].copy()
    for i, j in windows[1:]:
        expected += x[:, :, i::2, j::2]
    expected *= 0.25
    np.testing.assert_array_equal(y.data, expected)
    assert y.data.transpose(0, 2, 3, 1).flags.c_contiguous
    expected_gx = np.zeros_like(x)
    for i, j in windows:
        expected_gx[:, :, i::2, j::2] += gy * 0.25
    np.testing.assert_array_equal(grad(y, xt, grad_output=gy), expected_gx)


BLAS_THREADS_PROBE = """
import threading, time
from rcenp.ops import layout
before = layout.blas_thread_count()
inside = layout.map_chunks(lambda lo, hi: layout.blas_thread_count(), 4, 1)
after = layout.blas_thread_count()

def overlapping_dispatches():   # two callers whose dispatches start and end interleaved
    for _ in range(20):
        layout.map_chunks(lambda lo, hi: time.sleep(0.001 * (lo % 3)), 6, 1)

callers = [threading.Thread(target=overlapping_dispatches) for _ in range(2)]
for t in callers: t.start()
for t in callers: t.join()
print(layout.parallel_available(), before, after, layout.blas_thread_count(), *inside)
"""


def test_chunk_workers_leave_the_callers_blas_threads_alone():
    # NumPy's OpenBLAS (pthreads build) makes openblas_set_num_threads_local process-wide
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="2", RCENP_HOST_THREADS="2")
    out = subprocess.run([sys.executable, "-c", BLAS_THREADS_PROBE], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    parallel, before, after, after_concurrent, *inside = out.stdout.split()
    if parallel != "True" or before in ("None", "1"):
        pytest.skip("no per-worker OpenBLAS thread control or only one BLAS thread here")
    assert inside == ["1"] * 4          # each chunk runs single-threaded BLAS
    assert after == before              # and the caller gets its threads back
    assert after_concurrent == before   # also after dispatches from two threads overlapped


WORKERS_PROBE = """
import hashlib, sys
import numpy as np
import rcenp
from rcenp.models import resnet
from rcenp.objectives import Classifier
from rcenp.optim import SGD

digest = hashlib.sha256()
for shape, batch in (((3, 32, 32), 40), ((1, 28, 28), 33)):
    model = Classifier(resnet(8, shape[0]), "rce")
    opt = SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    y = rng.integers(0, 10, batch)
    opt.zero_grad()
    model.loss(x, y).backward()
    opt.step()
    model.eval()
    images = rcenp.Tensor(x, requires_grad=True)
    for array in [rcenp.grad(model.loss(images, y), images)] + [p.data for p in model.parameters()]:
        digest.update(np.ascontiguousarray(array).tobytes())
print(digest.hexdigest())
"""


def test_results_are_bit_identical_for_any_number_of_host_workers():
    # chunking for the workers (balanced kernel-row passes) must never change a bit. One worker
    # leaves BLAS's threads alone, and OpenBLAS's threaded GEMMs round differently: one thread.
    digests = set()
    for workers in ("1", "2", "3"):
        env = dict(os.environ, PYTHONPATH=str(ROOT), RCENP_HOST_THREADS=workers)
        env.pop("OPENBLAS_NUM_THREADS", None)
        if workers == "1":
            env["OPENBLAS_NUM_THREADS"] = "1"
        out = subprocess.run([sys.executable, "-c", WORKERS_PROBE], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_checkpoints_record_the_cpu_and_the_blas_kernel():
    """A resumed run is bit-identical on the same CPU and BLAS kernel only, so both are recorded."""
    from rcenp import checkpoint
    from rcenp.ops.layout import blas_core, blas_thread_count

    env = checkpoint.environment()
    assert {"cpu", "blas_core"} <= set(env) and env["blas_core"] == blas_core()
    if blas_thread_count() is not None:  # NumPy's OpenBLAS is there to ask
        assert isinstance(env["blas_core"], str) and env["blas_core"] and "\x00" not in env["blas_core"]
