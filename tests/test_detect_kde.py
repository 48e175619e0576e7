"""K-density: the blocked NumPy path, the fused CUDA kernel and the gradient, each against the
float64 brute force ``log_kernel_density_reference`` within the error bound documented in
``rcenp.detect.kde`` (a bound derived there, not a tuned tolerance)."""
from __future__ import annotations

import ctypes
import math
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from rcenp.autograd import Tensor, grad
from rcenp.backend import as_numpy, cuda_available, xp_for
from rcenp.detect import kde_cuda
from rcenp.detect.kde import (
    DEFAULT_SIGMA2,
    kernel_point_indices,
    log_kernel_density,
    log_kernel_density_reference,
    select_kernel_points,
)

SIGMA2 = [DEFAULT_SIGMA2["rce"], DEFAULT_SIGMA2["ce"], 1e-2, 25.0]


def make_data(seed, num_classes, m, dim, q, offset=0.0, spread=3.0, dtype=np.float64):
    """Clustered kernel points, queries near and far from them, classes uniformly at random."""
    rng = np.random.default_rng(seed)
    means = offset + rng.normal(size=(num_classes, 1, dim)) * spread
    kernel_points = (means + rng.normal(size=(num_classes, m, dim))).astype(dtype)
    classes = rng.integers(0, num_classes, q)
    z = (means[classes, 0] + rng.normal(size=(q, dim)) * rng.uniform(0.1, 4.0, (q, 1)))
    return z.astype(dtype), kernel_points, classes


def error_bound(z, kernel_points, classes, sigma2, reference, dtype, sequential_sum=False):
    """The bound of ``rcenp.detect.kde`` for ``dtype``, plus the same bound for the float64
    reference (which is computed differently, so its own rounding counts too)."""
    z, kernel_points = np.float64(z), np.float64(kernel_points)
    m, dim = kernel_points.shape[1:]
    centre = kernel_points.mean(axis=1)
    radius = np.linalg.norm(kernel_points - centre[:, None], axis=2).max(axis=1)
    r = np.linalg.norm(z - centre[classes], axis=1) + radius[classes]
    terms = (m if sequential_sum else math.log2(m)) + 10
    total = 0.0
    for u in (np.finfo(dtype).eps / 2, np.finfo(np.float64).eps / 2):
        total = total + (2 * (dim + 4) * u * r**2 / sigma2
                         + terms * u * (1 + np.abs(reference) + math.log(m)))
    return total


def check_against_reference(out, z, kernel_points, classes, sigma2, dtype, **kw):
    out = as_numpy(out)
    z, kernel_points = as_numpy(z), as_numpy(kernel_points)
    ref = log_kernel_density_reference(z, kernel_points, classes, sigma2)
    assert out.dtype == dtype and out.shape == (len(z),)
    assert np.isfinite(out).all()
    err = np.abs(out - ref)
    bound = error_bound(z, kernel_points, classes, sigma2, ref, dtype, **kw)
    worst = err.argmax() if err.size else 0
    assert (err <= bound).all(), f"worst error {err.max():.3g}, bound there {bound[worst]:.3g}"


# ---- forward --------------------------------------------------------------------------------

@given(seed=st.integers(0, 2**32 - 1), num_classes=st.integers(1, 4), m=st.integers(1, 40),
       dim=st.integers(1, 12), q=st.integers(0, 50), sigma2=st.sampled_from(SIGMA2),
       offset=st.sampled_from([0.0, 30.0, 1000.0]), block=st.sampled_from([None, 1, 3, 7]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_matches_float64_reference(xp, seed, num_classes, m, dim, q, sigma2, offset, block,
                                   dtype):
    z, kernel_points, classes = make_data(seed, num_classes, m, dim, q, offset, dtype=dtype)
    out = log_kernel_density(xp.asarray(z), xp.asarray(kernel_points), xp.asarray(classes),
                             sigma2, block=block)
    check_against_reference(out, z, kernel_points, classes, sigma2, dtype,
                            sequential_sum=xp is not np)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_underflow_regime_is_finite_and_exact(xp, dtype):
    """Far queries at RCE's σ²: every exp(−d²/σ²) is 0 even in float64, log KD is still right."""
    sigma2 = DEFAULT_SIGMA2["rce"]
    z, kernel_points, classes = make_data(1, 3, 25, 16, 40, dtype=dtype)
    z[::2] += 60.0                                           # d² ≳ 16·60² ⇒ d²/σ² ≳ 1.5e5
    diff = np.float64(z)[:, None] - np.float64(kernel_points)[classes]
    plain = np.exp(-(diff**2).sum(axis=2) / sigma2).mean(axis=1)
    assert (plain[::2] == 0).all()                            # the plain mean underflows
    out = log_kernel_density(xp.asarray(z), xp.asarray(kernel_points), xp.asarray(classes),
                             sigma2, block=4)
    assert (as_numpy(out)[::2] < -1e5).all()
    check_against_reference(out, z, kernel_points, classes, sigma2, dtype,
                            sequential_sum=xp is not np)


def test_known_values(xp):
    """M = 1: log KD = −d²/σ²; two points at equal distance: the same; far point: log-mean."""
    kernel_points = xp.asarray([[[0.0, 0.0], [2.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    z = xp.asarray([[1.0, 0.0], [1.0, 4.0], [0.0, 0.0]])
    out = as_numpy(log_kernel_density(z, kernel_points, xp.asarray([0, 1, 0]), 2.0))
    expected = [-0.5, -4.5, np.logaddexp(0.0, -2.0) - np.log(2)]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-14)


def test_kernel_points_and_classes_follow_the_queries_device(xp):
    """Kernel points fitted on one device and queries on the other (a model moved to the host
    after its detector was fitted on the GPU, or the reverse): the result is the same."""
    kernel_points = np.asarray([[[0.0, 0.0], [2.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    z, classes = np.asarray([[1.0, 0.0], [1.0, 4.0], [0.0, 0.0]]), np.asarray([0, 1, 0])
    expected = [-0.5, -4.5, np.logaddexp(0.0, -2.0) - np.log(2)]   # as the test above, by hand
    for queries, points, labels in ((xp.asarray(z), kernel_points, classes),           # host points, device queries
                                    (z, xp.asarray(kernel_points), xp.asarray(classes))):  # the reverse
        out = log_kernel_density(queries, points, labels, 2.0)
        assert type(out) is type(queries)                                # on the queries' device
        np.testing.assert_allclose(as_numpy(out), expected, rtol=0, atol=1e-14)


def test_query_on_a_kernel_point_with_large_offset(xp):
    """z = z_k exactly, features ~1e4 from the origin: the GEMM expansion would cancel ~1e8 in
    float32 without centring; the result must still be within the documented bound."""
    z, kernel_points, classes = make_data(2, 2, 30, 64, 20, offset=1e4, dtype=np.float32)
    z[:10] = kernel_points[classes[:10], 3]
    out = log_kernel_density(xp.asarray(z), xp.asarray(kernel_points), xp.asarray(classes),
                             DEFAULT_SIGMA2["rce"])
    check_against_reference(out, z, kernel_points, classes, DEFAULT_SIGMA2["rce"], np.float32,
                            sequential_sum=xp is not np)


def test_blocks_and_dtypes():
    z, kernel_points, classes = make_data(3, 3, 17, 5, 33)
    full = log_kernel_density(z, kernel_points, classes, 1.0)
    for block in (1, 2, 5, 32, 1000):
        np.testing.assert_allclose(log_kernel_density(z, kernel_points, classes, 1.0, block=block),
                                   full, rtol=1e-13, atol=1e-12)
    single, double = np.float32, np.float64
    assert log_kernel_density(z.astype(single), kernel_points, classes, 1.0).dtype == single
    assert log_kernel_density(z, kernel_points.astype(single), classes, 1.0).dtype == double
    assert log_kernel_density(z[:0], kernel_points, classes[:0], 1.0).shape == (0,)


def test_invalid_arguments():
    z, kernel_points, classes = make_data(4, 3, 5, 4, 6)
    with pytest.raises(ValueError, match="classes must lie"):
        log_kernel_density(z, kernel_points, classes + 3, 1.0)
    with pytest.raises(ValueError, match="sigma2"):
        log_kernel_density(z, kernel_points, classes, 0.0)
    with pytest.raises(ValueError, match="expected z"):
        log_kernel_density(z[:, :3], kernel_points, classes, 1.0)
    with pytest.raises(ValueError, match="classes must be"):
        log_kernel_density(z, kernel_points, classes.astype(float), 1.0)
    with pytest.raises(ValueError, match="block"):
        log_kernel_density(z, kernel_points, classes, 1.0, block=0)


@pytest.mark.parametrize("labels, per_class, match", [
    (np.array([0, 1, 2, 3]), 1, r"labels must lie in \[0, 2\] for 3 classes, got values from 0 to 3"),
    (np.array([0.0, 1.0, 2.0]), 1, "labels must be integers, got dtype float64"),
    (np.array([[0, 1, 2]]), 1, r"expected labels \(N,\), got shape \(1, 3\)"),
    (np.array([0, 1, 2]), 0, "per_class must be a positive integer, got 0"),
    (np.array([0, 1, 2]), True, "per_class must be a real number"),
    (np.array([0, 1, 2]), 2, r"classes \[0, 1, 2\] have fewer than per_class=2"),
    (np.array([0, 0, 1, 1, 1, 2, 2]), None,
     r"per_class=None \(--per-class 0: every training image\) needs equal.*pass per_class=2 \(--per-class 2\)"),
])
def test_kernel_point_selection_refuses_bad_labels_and_counts(labels, per_class, match):
    with pytest.raises(ValueError, match=match):
        kernel_point_indices(labels, per_class=per_class, num_classes=3)


# ---- gradient -------------------------------------------------------------------------------

def central_differences(z, kernel_points, classes, sigma2, gy, eps=1e-6):
    """∂/∂z of Σ_q gy_q · log KD(z_q), by central differences of the float64 reference."""
    g = np.zeros_like(z)
    for q in range(len(z)):
        for d in range(z.shape[1]):
            up, down = z[q:q + 1].copy(), z[q:q + 1].copy()
            up[0, d] += eps
            down[0, d] -= eps
            f = [log_kernel_density_reference(x, kernel_points, classes[q:q + 1], sigma2)[0]
                 for x in (up, down)]
            g[q, d] = gy[q] * (f[0] - f[1]) / (2 * eps)
    return g


@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 12), dim=st.integers(1, 5),
       sigma2=st.sampled_from(SIGMA2), far=st.booleans())
def test_gradient_matches_finite_differences(xp, seed, m, dim, sigma2, far):
    """Tensor.backward and rcenp.grad (float64) against central differences; ``far`` moves every
    other query 20 away from the points, where KD underflows at the small σ² (not at 3.85 or 25),
    and there the gradient must still be finite and right."""
    z, kernel_points, classes = make_data(seed, 3, m, dim, 6)
    if far:
        z[::2] += 20.0
    gy = np.random.default_rng(seed).normal(size=len(z))
    numeric = central_differences(z, kernel_points, classes, sigma2, gy)
    zt = Tensor(xp.asarray(z), requires_grad=True)
    out = log_kernel_density(zt, xp.asarray(kernel_points), xp.asarray(classes), sigma2, block=2)
    assert isinstance(out, Tensor) and out.requires_grad
    (functional,) = grad(out, [zt], grad_output=xp.asarray(gy), retain_graph=True)
    out.backward(xp.asarray(gy))
    scale = np.abs(numeric).max() + 1.0
    for analytic in (as_numpy(zt.grad), as_numpy(functional)):
        # 1e-8: central differences of the float64 reference are good to ~1e-10 here, and a float32
        # step inside the backward (~1e-7) must fail
        np.testing.assert_allclose(analytic, numeric, rtol=1e-8, atol=1e-8 * scale)


def gradient_bound(z, kernel_points, classes, sigma2, dtype):
    """g = (−2/σ²) Σ_k w_k (z − z_k): exponent errors ≤ A move the weights by Σ|Δw| ≤ 4A, so
    |Δg| ≤ (2/σ²)·r·(4A + (D + 4)·u) with r ≥ ‖z − z_k‖ (per query; plus float64's own share)."""
    dim = z.shape[1]
    centre = kernel_points.mean(axis=1)
    radius = np.linalg.norm(kernel_points - centre[:, None], axis=2).max(axis=1)
    r = np.linalg.norm(z - centre[classes], axis=1) + radius[classes]
    total = 0.0
    for u in (np.finfo(dtype).eps / 2, np.finfo(np.float64).eps / 2):
        exponent_error = 2 * (dim + 4) * u * r**2 / sigma2
        total = total + (2 / sigma2) * r * (4 * exponent_error + (dim + 4) * u)
    return total


def test_float32_gradient_close_to_float64(xp):
    sigma2 = DEFAULT_SIGMA2["rce"]
    z, kernel_points, classes = make_data(5, 4, 30, 64, 25)
    z[::3] += 5.0
    grads = {}
    for dtype in (np.float32, np.float64):
        zt = Tensor(xp.asarray(z.astype(dtype)), requires_grad=True)
        log_kernel_density(zt, xp.asarray(kernel_points), xp.asarray(classes), sigma2).sum()\
            .backward()
        grads[dtype] = as_numpy(zt.grad)
    assert grads[np.float32].dtype == np.float32
    err = np.abs(grads[np.float32] - grads[np.float64]).max(axis=1)
    assert (err <= gradient_bound(z, kernel_points, classes, sigma2, np.float32)).all()


def test_no_graph_without_requires_grad():
    z, kernel_points, classes = make_data(6, 2, 4, 3, 5)
    out = log_kernel_density(Tensor(z), kernel_points, classes, 1.0)
    assert isinstance(out, Tensor) and out.creator is None and not out.requires_grad
    assert isinstance(log_kernel_density(z, kernel_points, classes, 1.0), np.ndarray)


# ---- kernel points --------------------------------------------------------------------------

def test_select_kernel_points():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(3), [7, 9, 8]))
    features = np.stack([labels * 100.0 + np.arange(24), np.arange(24.0)], axis=1)
    points = select_kernel_points(features, labels, per_class=5, seed=3, num_classes=3)
    assert points.shape == (3, 5, 2)
    assert (points[:, :, 0] // 100 == np.arange(3)[:, None]).all()        # grouped by label
    assert all(len(set(points[c, :, 1])) == 5 for c in range(3))          # no replacement
    np.testing.assert_array_equal(points, select_kernel_points(features, labels, 5, 3, 3))
    assert not np.array_equal(points, select_kernel_points(features, labels, 5, 4, 3))
    with pytest.raises(ValueError, match="fewer than"):
        select_kernel_points(features, labels, per_class=8, num_classes=3)
    with pytest.raises(ValueError, match="equal"):
        select_kernel_points(features, labels, per_class=None, num_classes=3)
    equal = np.repeat(np.arange(3), 4)
    everything = select_kernel_points(features[:12], equal, per_class=None, num_classes=3)
    np.testing.assert_array_equal(everything, features[:12].reshape(3, 4, 2))


# ---- the CUDA kernel ------------------------------------------------------------------------

def test_tiles_cover_each_class_in_runs_of_at_most_tile():
    classes = np.random.default_rng(0).integers(0, 5, 1000)
    classes[classes == 3] = 4                                   # an empty class
    order, tile_class, tile_begin, tile_count = kde_cuda.tiles(np, classes, 5, tile=64)
    covered = np.concatenate([order[b:b + n] for b, n in zip(tile_begin, tile_count)])
    np.testing.assert_array_equal(np.sort(covered), np.arange(1000))
    assert (tile_count >= 1).all() and (tile_count <= 64).all()
    for c, b, n in zip(tile_class, tile_begin, tile_count):
        assert (classes[order[b:b + n]] == c).all()
    with pytest.raises(ValueError, match="classes must be below num_classes = 4, got 4"):
        kde_cuda.tiles(np, classes, 4)                          # class 4 has no kernel points


def test_the_launch_refuses_a_gradient_of_another_type_or_length(emulated_kernel, monkeypatch):
    """The kernel reads Q entries of z's type from gy: a float32 gy with float64 z would be read
    past its end."""
    monkeypatch.setattr(kde_cuda, "_kernel", lambda ctype, dim, g: _EmulatedKernel(emulated_kernel, ctype, dim, g))
    z, kernel_points, classes = make_data(3, 2, 4, _EMU_DIM, 6, dtype=np.float64)
    for gy in (np.ones(6, np.float32), np.ones(5)):
        with pytest.raises(ValueError, match=r"gy must be \(6,\) float64"):
            kde_cuda.log_kd_backward(z, kernel_points, classes, 2.0, gy)
    assert kde_cuda.log_kd_backward(z, kernel_points, classes, 2.0, np.ones(6)).shape == (6, _EMU_DIM)


_EMULATOR = r"""
// Runs the CUDA source of rcenp.detect.kde_cuda on the CPU: one std::thread per CUDA thread,
// blocks one after another, __shared__ as a static array, __syncthreads as a std::barrier.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __restrict__
#define __shared__ static
struct Index { unsigned x; };
static thread_local Index threadIdx, blockIdx;
static std::barrier<>* block_barrier;
static void __syncthreads() { block_barrier->arrive_and_wait(); }
static float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
static double __longlong_as_double(long long i) {
    double d;
    std::memcpy(&d, &i, sizeof d);
    return d;
}
using std::min;
#include "kernel.cu"

template <typename T, bool GRAD>
static void run(const void* z, const void* kp, const long long* order, const int* tile_class,
                const long long* tile_begin, const int* tile_count, int tiles, int m,
                double neg_inv_sigma2, double log_m, const void* gy, void* out) {
    for (int b = 0; b < tiles; ++b) {
        std::barrier<> barrier(EMU_TQ);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (int t = 0; t < EMU_TQ; ++t)
            threads.emplace_back([=] {
                threadIdx.x = t;
                blockIdx.x = b;
                log_kd_tile<T, EMU_DIM, EMU_TQ, EMU_TK, GRAD>(
                    (const T*)z, (const T*)kp, order, tile_class, tile_begin, tile_count, m,
                    (T)neg_inv_sigma2, (T)log_m, (const T*)gy, (T*)out);
            });
        for (auto& thread : threads) thread.join();
    }
}
#define ENTRY(name, T, GRAD) extern "C" void name(const void* z, const void* kp, \
    const long long* o, const int* c, const long long* b, const int* n, int tiles, int m, \
    double s, double l, const void* gy, void* out) { \
    run<T, GRAD>(z, kp, o, c, b, n, tiles, m, s, l, gy, out); \
}
ENTRY(float_false, float, false)
ENTRY(float_true, float, true)
ENTRY(double_false, double, false)
ENTRY(double_true, double, true)
"""
_EMU_DIM = 5


@pytest.fixture(scope="module")
def emulated_kernel(tmp_path_factory):
    """The fused kernel compiled for the CPU (g++ with C++20), or a skip."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is needed to run the CUDA kernel on the CPU")
    folder = tmp_path_factory.mktemp("kde_cuda_emulator")
    (folder / "kernel.cu").write_text(kde_cuda._SOURCE)
    (folder / "emulator.cpp").write_text(_EMULATOR)
    library = folder / "emulator.so"
    command = [compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
               f"-DEMU_DIM={_EMU_DIM}", f"-DEMU_TQ={kde_cuda.TQ}",
               f"-DEMU_TK={kde_cuda._tile_points(_EMU_DIM)}", "emulator.cpp", "-o", str(library)]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot build the CPU emulator: {result.stderr[-500:]}")
    return ctypes.CDLL(str(library))


class _EmulatedKernel:
    """Stands in for the compiled CuPy function; checks the argument types against the C code."""

    def __init__(self, library, ctype, dim, grad):
        assert dim == _EMU_DIM
        self.entry = getattr(library, f"{ctype}_{'true' if grad else 'false'}")
        self.dtype = np.float32 if ctype == "float" else np.float64

    def __call__(self, grid, block, args):
        z, kp, order, tile_class, tile_begin, tile_count, m, nis, log_m, gy, out = args
        assert block == (kde_cuda.TQ,) and grid == (len(tile_class),)
        expected = [self.dtype, self.dtype, np.int64, np.int32, np.int64, np.int32]
        for array, dtype in zip((z, kp, order, tile_class, tile_begin, tile_count), expected):
            assert array.dtype == dtype and array.flags.c_contiguous
        assert type(m) is np.int32 and type(nis) is self.dtype and type(log_m) is self.dtype
        assert gy.dtype == out.dtype == self.dtype and out.flags.c_contiguous
        pointer = ctypes.c_void_p
        self.entry(*(pointer(a.ctypes.data) for a in args[:6]), ctypes.c_int(grid[0]),
                   ctypes.c_int(int(m)), ctypes.c_double(nis), ctypes.c_double(log_m),
                   pointer(gy.ctypes.data), pointer(out.ctypes.data))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_kernel_emulated_on_cpu(emulated_kernel, monkeypatch, dtype):
    """The CUDA source itself, run by CPU threads through kde_cuda's launch code: several query
    tiles per class (Q_c > TQ), several kernel-point tiles with a partial last one (M > TK)."""
    monkeypatch.setattr(kde_cuda, "supports", lambda z: True)
    monkeypatch.setattr(kde_cuda, "_kernel", lambda ctype, dim, g: _EmulatedKernel(
        emulated_kernel, ctype, dim, g))
    m = 2 * kde_cuda._tile_points(_EMU_DIM) + 7
    sigma2 = DEFAULT_SIGMA2["rce"]
    z, kernel_points, classes = make_data(7, 2, m, _EMU_DIM, 300, offset=10.0, dtype=dtype)
    z[::5] += 30.0                                                  # underflowing queries
    zt = Tensor(z, requires_grad=True)
    out = log_kernel_density(zt, kernel_points, classes, sigma2)
    check_against_reference(out.data, z, kernel_points, classes, sigma2, dtype,
                            sequential_sum=True)
    gy = np.random.default_rng(0).normal(size=len(z))
    out.backward(gy)
    monkeypatch.undo()
    blocked = Tensor(np.float64(z), requires_grad=True)
    log_kernel_density(blocked, kernel_points, classes, sigma2).backward(gy)
    bound = np.abs(gy) * gradient_bound(np.float64(z), np.float64(kernel_points), classes, sigma2,
                                        dtype)
    assert (np.abs(zt.grad - blocked.grad).max(axis=1) <= bound).all()


def test_fused_kernel_skips_a_point_whose_distance_overflows(emulated_kernel, monkeypatch):
    """A first kernel point so far that d² overflows float32 (a = −∞ while the running max is still
    −∞): exp(a − m) was NaN, and the NaN stayed in the sum; the point's kernel value is 0."""
    monkeypatch.setattr(kde_cuda, "supports", lambda z: True)
    monkeypatch.setattr(kde_cuda, "_kernel", lambda ctype, dim, g: _EmulatedKernel(
        emulated_kernel, ctype, dim, g))
    rng = np.random.default_rng(0)
    kernel_points = rng.normal(size=(1, 6, _EMU_DIM)).astype(np.float32)
    kernel_points[0, 0] = 3e19                                       # d² = 5 · 9e38 > float32's 3.4e38
    z = rng.normal(size=(3, _EMU_DIM)).astype(np.float32)
    out = log_kernel_density(z, kernel_points, np.zeros(3, np.int64), 2.0)
    near = -((np.float64(z)[:, None, :] - np.float64(kernel_points[0, 1:])) ** 2).sum(axis=2) / 2.0
    np.testing.assert_allclose(out, logsumexp(near, axis=1) - np.log(6), rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="CuPy or a CUDA device is not available")
def test_cupy_wide_features_use_the_blocked_path():
    """D > MAX_FUSED_DIM runs the xp-generic blocked code on CuPy; it must agree too."""
    cupy = xp_for("cuda")
    z, kernel_points, classes = make_data(8, 2, 9, kde_cuda.MAX_FUSED_DIM + 1, 12)
    assert not kde_cuda.supports(cupy.asarray(z))
    out = log_kernel_density(cupy.asarray(z), cupy.asarray(kernel_points), cupy.asarray(classes),
                             1.0)
    check_against_reference(out, z, kernel_points, classes, 1.0, np.float64)
