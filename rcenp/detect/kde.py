"""Kernel density of penultimate features (paper §3.3, protocol §3.1), computed in log space.

    KD(z) = (1/M) Σ_k exp(−‖z − z_k‖² / σ²),     log KD(z) = logsumexp_k(a_k) − log M,
    a_k = −‖z − z_k‖² / σ²,

where z_k are the M kernel points of the class that scores z (at detection time: the *predicted*
label of the input). The Gaussian is unnormalised and σ² divides the squared distance directly
(σ²_CE = 1/0.26, σ²_RCE = 0.1/0.26; sklearn's equivalent bandwidth would be h = sqrt(σ²/2)).
In log space the result stays finite and exact where every exponential underflows: a plain mean
of exp(a_k) is 0 once every a_k < ln 2⁻¹⁵⁰ ≈ −103.97 in float32 (ln 2⁻¹⁰⁷⁵ ≈ −745.13 in
float64), which RCE's small σ² makes far likelier for inputs far from a class's kernel points,
and where its gradient vanishes (``rcenp.attacks.cw_wb``).

Notation: Q queries z (Q, D); L classes; kernel points (L, M, D); B queries per block.

NumPy algorithm (also CuPy's fallback when the fused kernel of ``kde_cuda`` does not apply):
queries are grouped by class, and for each block of B same-class queries

    h = (2/σ²) z̃ z̃_kᵀ − ‖z̃_k‖²/σ²   (one GEMM, B × M),   a_k = h_k − ‖z̃‖²/σ²,

with z̃ = z − μ_c, z̃_k = z_k − μ_c centred on the class mean μ_c (distances are translation
invariant; centring shrinks the norms that cancel below). Then log KD = max h − ‖z̃‖²/σ² +
log Σ_k exp(h_k − max h) − log M: the ‖z̃‖² term is constant along a row, so it drops out of the
log-sum-exp. A computed a_k > 0 (i.e. d² < 0, pure rounding) is clamped to 0. On the host the
blocks run on the worker pool of ``rcenp.ops.layout`` (one block per worker, single-threaded BLAS
each); peak extra memory is W·B·M + L·M·D + O(Q·D) elements for W workers, whatever Q·M is; the
default B is ``BLOCK_ELEMENTS // M``.

Error bound (unit roundoff u = 2⁻²⁴ in float32, 2⁻⁵³ in float64; first order in u). With
r = ‖z̃‖ + max_k ‖z̃_k‖, every exponent obeys |Δa_k| ≤ 2(D + 4)·u·r²/σ² (dot products of length
D have error ≤ D·u·‖x‖‖y‖; the rest is a few roundings of terms no larger than r²/σ²). Log-sum-exp
is 1-Lipschitz in the max norm, so

    |Δ log KD| ≤ 2(D + 4)·u·r²/σ² + (log₂ M + 10)·u·(1 + |log KD| + log M),

the second term covering exp (a few ulp), the pairwise sum of M terms and the final additions.

The expansion cancels when z is near a z_k (d² ≪ r²): the *relative* error of a small d² can be
large, but its absolute error, which is what log KD feels, stays within the bound. The tests check
this bound against the float64 brute force ``log_kernel_density_reference``. The CUDA kernel forms
d² from explicit differences and meets the tighter |Δa_k| ≤ (D + 2)·u·|a_k|.
"""
from __future__ import annotations

import math
import threading

import numpy as np
from scipy.special import logsumexp

from rcenp.autograd import Function, Tensor
from rcenp.backend import as_numpy, device_of, get_array_module, make_rng, to_device
from rcenp.checks import check_labels, check_positive, check_steps
from rcenp.detect import kde_cuda
from rcenp.ops.layout import map_chunks

DEFAULT_SIGMA2 = {"ce": 1 / 0.26, "rce": 0.1 / 0.26}
BLOCK_ELEMENTS = 1 << 20  # default block: B = max(1, BLOCK_ELEMENTS // M) queries (4 MiB float32)


def kernel_point_indices(labels, per_class=1000, seed=0, num_classes=10) -> np.ndarray:
    """The training images whose features are the kernel points, grouped by TRUE label:
    (num_classes, M) indices into ``labels`` (N,), M = per_class.

    Each class's points are drawn uniformly without replacement by one ``numpy.random.Generator``
    seeded with ``seed``, classes in order 0, 1, ... (the authors' ``select_kernel.m`` draws 1,000
    per class with an unseeded ``randsample``). ``per_class=None`` keeps every image in its input
    order and requires equal class counts (raises otherwise; pass ``per_class=min count`` to
    subsample). The draw depends on the labels alone, so only the chosen images' features need
    computing (``Detector.fit``). Raises ValueError for non-integer or out-of-range labels, a
    ``per_class`` that is not a positive integer or None (``rcenp.checks``), and classes with
    fewer than ``per_class``.
    """
    labels = as_numpy(labels)
    if labels.ndim != 1:
        raise ValueError(f"expected labels (N,), got shape {labels.shape}")
    labels = check_labels("labels", labels, len(labels), num_classes)
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
    counts = [len(m) for m in members]
    if per_class is None:
        if len(set(counts)) != 1 or counts[0] == 0:
            raise ValueError(f"per_class=None (--per-class 0: every training image) needs equal, non-zero class "
                             f"counts, got {counts}; pass per_class={min(counts)} (--per-class {min(counts)}) to "
                             "subsample every class")
        return np.stack(members)
    per_class = check_steps("per_class", per_class)
    short = [c for c, n in enumerate(counts) if n < per_class]
    if short:
        raise ValueError(f"classes {short} have fewer than per_class={per_class} points "
                         f"(counts {counts}); pass per_class={min(counts)} (--per-class {min(counts)}), the "
                         "smallest class's count, to take as many from every class")
    rng = make_rng(seed)
    return np.stack([rng.choice(m, size=per_class, replace=False) for m in members])


def select_kernel_points(features, labels, per_class=1000, seed=0, num_classes=10):
    """Kernel points grouped by TRUE label: (num_classes, M, D), M = per_class, the features (N, D)
    of ``kernel_point_indices(labels, ...)`` (its rules and errors). ``features`` may be a NumPy or
    CuPy array; the result lives beside it.
    """
    features = features.data if isinstance(features, Tensor) else features
    labels = as_numpy(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"expected features (N, D) and labels (N,), got {features.shape} and "
                         f"{labels.shape}")
    index = kernel_point_indices(labels, per_class, seed, num_classes)
    xp = get_array_module(features)
    return features[xp.asarray(index)]


def log_kernel_density(z, kernel_points, classes, sigma2, block=None):
    """log KD(z_q) under the kernel points of class ``classes[q]`` → (Q,).

    Args:
        z: (Q, D) queries: a NumPy/CuPy array, or an rcenp ``Tensor`` (then the result is a
            Tensor and differentiable with respect to z).
        kernel_points: (L, M, D) constants, e.g. from ``select_kernel_points``.
        classes: (Q,) integers in [0, L), the class whose kernel points score each query.
        sigma2: σ² > 0 (see ``DEFAULT_SIGMA2``).
        block: queries per block on the blocked path (default ``BLOCK_ELEMENTS // M``).

    float64 queries compute in float64, anything else in float32. CuPy inputs with D ≤
    ``kde_cuda.MAX_FUSED_DIM`` use the fused CUDA kernel, other CuPy inputs the blocked path.
    """
    if isinstance(z, Tensor):
        return LogKernelDensity(kernel_points, classes, sigma2, block)(z)
    return _forward(*_validated(z, kernel_points, classes, sigma2), block)


def log_kernel_density_reference(z, kernel_points, classes, sigma2):
    """Float64 brute force for tests: explicit differences, one query at a time, logsumexp."""
    z = np.asarray(as_numpy(z), dtype=np.float64)
    kernel_points = np.asarray(as_numpy(kernel_points), dtype=np.float64)
    classes = as_numpy(classes)
    out = np.empty(len(z))
    for q in range(len(z)):
        diff = z[q] - kernel_points[classes[q]]                 # (M, D)
        out[q] = logsumexp(-(diff * diff).sum(axis=1) / sigma2) - math.log(diff.shape[0])
    return out


class LogKernelDensity(Function):
    """log KD as a Function of z; kernel points, classes and σ² are constants.

    ∂ log KD/∂z = Σ_k w_k · (−2/σ²)(z − z_k) with w = softmax_k(a_k), recomputed block by block
    in backward (nothing of size Q × M is kept between forward and backward).
    """

    def __init__(self, kernel_points, classes, sigma2, block=None):
        self.kernel_points, self.classes, self.sigma2, self.block = (
            kernel_points, classes, sigma2, block)

    def forward(self, z):
        args = _validated(z, self.kernel_points, self.classes, self.sigma2)
        self.save_for_backward(*args)
        return _forward(*args, self.block)

    def backward(self, gy):
        if not self.needs_input_grad[0]:
            return None
        z, kernel_points, classes, sigma2 = self.saved
        return _backward(z, kernel_points, classes, sigma2, gy.astype(z.dtype, copy=False),
                         self.block)


def _validated(z, kernel_points, classes, sigma2):
    """Checked, C-contiguous (z, kernel_points, classes, σ²) in the compute dtype, all on z's device
    (kernel points fitted on the GPU and a model moved back to the host, or the reverse)."""
    z = z.data if isinstance(z, Tensor) else z
    kernel_points = kernel_points.data if isinstance(kernel_points, Tensor) else kernel_points
    classes = classes.data if isinstance(classes, Tensor) else classes
    xp = get_array_module(z)
    dtype = np.float64 if z.dtype == np.float64 else np.float32
    z = xp.ascontiguousarray(z, dtype=dtype)
    kernel_points = xp.ascontiguousarray(to_device(kernel_points, device_of(z)), dtype=dtype)
    classes = to_device(classes, device_of(z))
    if z.ndim != 2 or kernel_points.ndim != 3 or kernel_points.shape[2] != z.shape[1]:
        raise ValueError(f"expected z (Q, D) and kernel_points (L, M, D), got {z.shape} and "
                         f"{kernel_points.shape}")
    if kernel_points.shape[0] < 1 or kernel_points.shape[1] < 1:
        raise ValueError(f"kernel_points needs L >= 1 classes and M >= 1 points, got "
                         f"{kernel_points.shape}")
    classes = check_labels("classes", classes, z.shape[0], kernel_points.shape[0])
    return z, kernel_points, classes, check_positive("sigma2", sigma2)


def _forward(z, kernel_points, classes, sigma2, block):
    if kde_cuda.supports(z):
        return kde_cuda.log_kd_forward(z, kernel_points, classes, sigma2)
    return _blocked_forward(z, kernel_points, classes, sigma2, block)


def _blocked_forward(z, kernel_points, classes, sigma2, block):
    xp = get_array_module(z)
    out = xp.empty(len(z), dtype=z.dtype)
    log_m = math.log(kernel_points.shape[1])

    def run(task, buffer):
        rows, _, e, a_max = _exp_block(z, task, sigma2, buffer)
        out[rows] = a_max + xp.log(e.sum(axis=1)) - log_m

    _run_blocks(run, _block_tasks(z, kernel_points, classes, sigma2, block), z, kernel_points)
    return out


def _backward(z, kernel_points, classes, sigma2, gy, block):
    if kde_cuda.supports(z):
        return kde_cuda.log_kd_backward(z, kernel_points, classes, sigma2, gy)
    xp = get_array_module(z)
    gz = xp.empty_like(z)

    def run(task, buffer):
        rows, zc, e, _ = _exp_block(z, task, sigma2, buffer)
        e /= e.sum(axis=1, keepdims=True)                      # softmax weights w_k
        scale = gy[rows] * (-2.0 / sigma2)
        gz[rows] = scale[:, None] * (zc - e @ task.class_points.get()[1])  # Σ_k w_k (z̃ − z̃_k)

    _run_blocks(run, _block_tasks(z, kernel_points, classes, sigma2, block), z, kernel_points)
    return gz


class _ClassPoints:
    """One class's kernel points prepared for the blocks that use them: the class mean μ_c,
    z̃_k = z_k − μ_c (M, D) and ‖z̃_k‖²/σ² (M,). Computed on first use by whichever worker needs
    them first (on the host the classes are thus prepared in parallel), then shared."""

    __slots__ = ("_source", "_sigma2", "_lock", "_value")

    def __init__(self, source, sigma2):
        self._source, self._sigma2, self._lock, self._value = source, sigma2, threading.Lock(), None

    def get(self):
        with self._lock:
            if self._value is None:
                xp = get_array_module(self._source)
                centre = self._source.mean(axis=0)
                points = self._source - centre
                self._value = (centre, points, xp.einsum("md,md->m", points, points) / self._sigma2)
        return self._value


class _Block:
    """One block of same-class queries: rows (B,) into z and their class's ``_ClassPoints``."""

    __slots__ = ("rows", "class_points")

    def __init__(self, rows, class_points):
        self.rows, self.class_points = rows, class_points


def _block_tasks(z, kernel_points, classes, sigma2, block):
    """The blocks of at most ``block`` same-class queries, class by class."""
    xp = get_array_module(z)
    num_classes, m, _ = kernel_points.shape
    size = int(block) if block is not None else max(1, BLOCK_ELEMENTS // m)
    if size < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    order = kde_cuda.stable_argsort(xp, classes)
    counts = as_numpy(xp.bincount(classes, minlength=num_classes))
    ends = np.cumsum(counts)
    tasks = []
    for c in np.flatnonzero(counts):
        class_points = _ClassPoints(kernel_points[c], sigma2)
        for start in range(ends[c] - counts[c], ends[c], size):
            tasks.append(_Block(order[start:min(start + size, ends[c])], class_points))
    return tasks


def _run_blocks(run, tasks, z, kernel_points):
    """run(task, buffer) for every block; NumPy blocks go to the host worker pool.

    Each worker reuses one (B, M) scratch buffer, so peak extra memory is (workers · B · M)
    elements, whatever Q is. Blocks write disjoint rows, so results do not depend on the order.
    """
    xp = get_array_module(z)
    longest = max((len(t.rows) for t in tasks), default=0)
    shape = (longest, kernel_points.shape[1])
    if xp is not np or not tasks:
        buffer = xp.empty(shape, dtype=z.dtype)
        for task in tasks:
            run(task, buffer)
        return
    scratch = threading.local()

    def run_on_worker(index, _):
        if getattr(scratch, "buffer", None) is None:
            scratch.buffer = np.empty(shape, dtype=z.dtype)
        run(tasks[index], scratch.buffer)

    map_chunks(run_on_worker, len(tasks), 1)


def _exp_block(z, task, sigma2, buffer):
    """(rows, z̃, e, a_max) of one block: z̃ (B, D) centred queries; e (B, M) = exp(a_k − a_max)
    in (0, 1], written into ``buffer`` (scratch the caller may overwrite); a_max (B,) = max_k a_k.
    """
    xp = get_array_module(z)
    rows = task.rows
    centre, points, kk = task.class_points.get()
    zc = z[rows] - centre                                      # z̃, (B, D)
    zz = xp.einsum("bd,bd->b", zc, zc) / sigma2                # ‖z̃‖²/σ²
    h = xp.matmul(zc * (2.0 / sigma2), points.T, out=buffer[:len(rows)])  # the GEMM
    h -= kk                                                    # h_k = a_k + ‖z̃‖²/σ²
    h_max = h.max(axis=1)
    if (h_max > zz).any():                                     # a rounded d² < 0: clamp d² ≥ 0
        xp.minimum(h, zz[:, None], out=h)
        h_max = xp.minimum(h_max, zz)
    h -= h_max[:, None]
    xp.exp(h, out=h)
    return rows, zc, h, h_max - zz
