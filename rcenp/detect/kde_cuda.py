"""Fused CUDA kernels for log KD and its gradient (the maths is in ``rcenp.detect.kde``).

One thread block takes a *tile* of up to TQ queries that share a class c; one thread takes one
query, whose D features live in registers (D is a template constant). The block streams the M
kernel points of class c through shared memory, TK at a time, and every thread keeps an online
log-sum-exp of a_k = −‖z − z_k‖²/σ²: a running max m and s = Σ exp(a_k − m), rescaled by
exp(m_old − m_new) whenever the max grows (about ln M times per query). Nothing of size Q × M
is ever written. Distances come from
explicit differences (no GEMM expansion, so no cancellation): |Δa_k| ≤ (D + 2)·u·|a_k|. The
sum over k is sequential, so the bound of ``kde`` holds with M + 10 in place of log₂ M + 10.

The gradient kernel runs the same loop and also accumulates g = Σ_k exp(a_k − m)(z − z_k) with
the same rescaling, then writes gy · (−2/σ²) · g / s = gy · Σ_k w_k (−2/σ²)(z − z_k).

Cost per query–kernel pair: D subtractions + D FMAs (+ one exp); the gradient doubles the
D-loops. Queries are grouped by class on the device (a stable argsort) and tiles are laid out on
the host from the L class counts (one small device-to-host copy per call).

Tested on an NVIDIA H200 (CuPy 14.2, 2026-11-30; README): the CuPy cases of
``tests/test_detect_kde.py`` compare it with the NumPy path and the float64 reference wherever
CuPy and a device exist, and skip elsewhere.
"""
from __future__ import annotations

import math

import numpy as np

from rcenp.backend import HAS_CUPY, as_numpy, cuda_kernel, cupy_ndarray, get_array_module

TQ = 128             # queries (= threads) per block
# Widest D for the fused kernels, wider takes the blocked GEMM path. A thread keeps zq[D] (and g[D]
# for the gradient): 2·D 32-bit registers in float32, 4·D in float64, against 255 a thread, so the
# gradient spills to local memory (slower, still exact) from about D = 120 in float32 and D = 60 in
# float64. ResNet's D = 64 spills only in the float64 gradient; the bound was not tuned on a GPU.
MAX_FUSED_DIM = 128
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

_SOURCE = r"""
template <typename T> struct Math;
template <> struct Math<float> {
    static __device__ __forceinline__ float exp(float x) { return expf(x); }
    static __device__ __forceinline__ float log(float x) { return logf(x); }
    static __device__ __forceinline__ float fma(float a, float b, float c) {
        return fmaf(a, b, c);
    }
    static __device__ __forceinline__ float max(float a, float b) { return fmaxf(a, b); }
    static __device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }
};
template <> struct Math<double> {
    static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
    static __device__ __forceinline__ double log(double x) { return ::log(x); }
    static __device__ __forceinline__ double fma(double a, double b, double c) {
        return ::fma(a, b, c);
    }
    static __device__ __forceinline__ double max(double a, double b) { return ::fmax(a, b); }
    static __device__ __forceinline__ double neg_inf() {
        return -__longlong_as_double(0x7ff0000000000000LL);
    }
};

// GRAD = false: out[q] = log KD(z_q) (shape Q).
// GRAD = true:  out[q, :] = gy[q] * d log KD(z_q) / d z_q (shape Q x D); log_m is unused.
template <typename T, int D, int TQ, int TK, bool GRAD>
__global__ void __launch_bounds__(TQ) log_kd_tile(
        const T* __restrict__ z,               // (Q, D)
        const T* __restrict__ kp,              // (L, M, D)
        const long long* __restrict__ order,   // (Q,) query indices sorted by class
        const int* __restrict__ tile_class,    // per tile: its class
        const long long* __restrict__ tile_begin,  // per tile: first position in `order`
        const int* __restrict__ tile_count,    // per tile: number of queries (<= TQ)
        const int M, const T neg_inv_sigma2, const T log_m,
        const T* __restrict__ gy,              // (Q,) when GRAD, else unused
        T* __restrict__ out) {
    typedef Math<T> F;
    __shared__ T sk[TK * D];
    const int t = threadIdx.x;
    const bool active = t < tile_count[blockIdx.x];
    const long long q = active ? order[tile_begin[blockIdx.x] + t] : 0;
    const T* kc = kp + (long long)tile_class[blockIdx.x] * M * D;

    T zq[D], g[D];                             // g is dead code (and no registers) unless GRAD
#pragma unroll
    for (int j = 0; j < D; ++j) {
        zq[j] = active ? z[q * D + j] : T(0);
        g[j] = T(0);
    }

    T m = F::neg_inf(), s = T(0);
    for (int k0 = 0; k0 < M; k0 += TK) {
        const int nk = min(TK, M - k0);
        __syncthreads();                       // the previous tile is consumed by every thread
        for (int i = t; i < nk * D; i += TQ) sk[i] = kc[(long long)k0 * D + i];
        __syncthreads();
#pragma unroll 1
        for (int i = 0; i < nk; ++i) {
            const T* p = sk + i * D;           // the same address in every thread: a broadcast
            T part[4] = {T(0), T(0), T(0), T(0)};  // four independent FMA chains
#pragma unroll
            for (int j = 0; j < D; ++j) {
                const T diff = zq[j] - p[j];
                part[j % 4] = F::fma(diff, diff, part[j % 4]);
            }
            const T a = ((part[0] + part[1]) + (part[2] + part[3])) * neg_inv_sigma2;
            if (a > m) {                       // a new running max: rescale what is summed so far
                const T rescale = F::exp(m - a);   // 0 at the first point (m = -inf)
                s *= rescale;
                if constexpr (GRAD) {
#pragma unroll
                    for (int j = 0; j < D; ++j) g[j] *= rescale;
                }
                m = a;
            }
            const T e = (a == F::neg_inf()) ? T(0) : F::exp(a - m);  // exp(-inf - -inf) would be NaN
            s += e;
            if constexpr (GRAD) {
#pragma unroll
                for (int j = 0; j < D; ++j) g[j] = F::fma(e, zq[j] - p[j], g[j]);
            }
        }
    }
    if (!active) return;
    if constexpr (GRAD) {
        const T scale = T(2) * neg_inv_sigma2 * gy[q] / s;
#pragma unroll
        for (int j = 0; j < D; ++j) out[q * D + j] = scale * g[j];
    } else {
        out[q] = m + F::log(s) - log_m;
    }
}
"""


def _tile_points(dim: int) -> int:
    """Kernel points per shared-memory tile: 32 for D = 64 (the tile is ≤ 16 KiB in double)."""
    return max(1, min(64, 2048 // dim))


def _name(ctype: str, dim: int, grad: bool) -> str:
    return f"log_kd_tile<{ctype}, {dim}, {TQ}, {_tile_points(dim)}, {'true' if grad else 'false'}>"


@cuda_kernel
def _kernel(cupy, ctype, dim, grad):
    """The compiled ``log_kd_tile`` instance for (dtype, D, forward/gradient), one per device."""
    name = _name(ctype, dim, grad)
    module = cupy.RawModule(code=_SOURCE, options=("-std=c++17",), name_expressions=(name,))
    return module.get_function(name)


def supports(z) -> bool:
    """True when ``z`` is a CuPy array the fused kernels take (float32/64, D ≤ MAX_FUSED_DIM)."""
    return (HAS_CUPY and isinstance(z, cupy_ndarray) and z.dtype in _CTYPES
            and z.ndim == 2 and 1 <= z.shape[1] <= MAX_FUSED_DIM)


def stable_argsort(xp, a):
    """``argsort`` keeping equal keys in index order (CuPy's always does, NumPy's on request)."""
    return xp.argsort(a, kind="stable") if xp is np else xp.argsort(a)


def tiles(xp, classes, num_classes: int, tile: int = TQ):
    """Group queries by class into tiles of at most ``tile`` same-class queries.

    Returns (order, tile_class, tile_begin, tile_count): ``order`` (Q,) int64 sorts the queries by
    class (stable); tile i covers ``order[tile_begin[i] : tile_begin[i] + tile_count[i]]``, all of
    class ``tile_class[i]``. Works with NumPy too (the tests check it on the CPU). Raises
    ValueError for a class outside 0 .. num_classes - 1 (the kernel would read past its points).
    """
    order = stable_argsort(xp, classes).astype(np.int64)
    counts = as_numpy(xp.bincount(classes, minlength=num_classes)).astype(np.int64)
    if len(counts) > num_classes:
        raise ValueError(f"classes must be below num_classes = {num_classes}, got {len(counts) - 1}")
    per_class = -(-counts // tile)                                   # ceil(count / tile)
    class_begin = np.cumsum(counts) - counts
    first_tile = np.cumsum(per_class) - per_class
    within = np.arange(per_class.sum()) - np.repeat(first_tile, per_class)
    tile_begin = np.repeat(class_begin, per_class) + within * tile
    tile_count = np.minimum(tile, np.repeat(counts, per_class) - within * tile)
    tile_class = np.repeat(np.arange(num_classes), per_class)
    return (order, xp.asarray(tile_class, dtype=np.int32), xp.asarray(tile_begin, dtype=np.int64),
            xp.asarray(tile_count, dtype=np.int32))


def _launch(z, kernel_points, classes, sigma2, gy):
    """Run the forward (gy None) or gradient kernel on validated, C-contiguous CuPy arrays."""
    cupy = get_array_module(z)
    (q, dim), (num_classes, m, _) = z.shape, kernel_points.shape
    grad = gy is not None
    if grad and (gy.dtype != z.dtype or gy.shape != (q,)):  # the kernel reads Q entries of z's type
        raise ValueError(f"gy must be ({q},) {z.dtype}, got {gy.shape} {gy.dtype}")
    out = cupy.empty((q, dim) if grad else (q,), dtype=z.dtype)
    if q == 0:
        return out
    order, tile_class, tile_begin, tile_count = tiles(cupy, classes, num_classes)
    scalar = z.dtype.type
    kernel = _kernel(_CTYPES[z.dtype], dim, grad)
    kernel((len(tile_class),), (TQ,),
           (z, kernel_points, order, tile_class, tile_begin, tile_count, np.int32(m),
            scalar(-1.0 / sigma2), scalar(math.log(m)),
            cupy.ascontiguousarray(gy) if grad else z,  # z stands in for the unused pointer
            out))
    return out


def log_kd_forward(z, kernel_points, classes, sigma2):
    """log KD (Q,) by the fused kernel; arguments as returned by ``kde._validated``."""
    return _launch(z, kernel_points, classes, sigma2, None)


def log_kd_backward(z, kernel_points, classes, sigma2, gy):
    """gy[q] · ∂ log KD(z_q)/∂z_q (Q, D) by the fused kernel."""
    return _launch(z, kernel_points, classes, sigma2, gy)
