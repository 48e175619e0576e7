"""K-density speed and accuracy: rcenp against the usual ways of computing it. Prints JSON.

Data: D = 64, 10 classes x 5,000 kernel points, RCE's sigma^2 = 0.1/0.26, float32; three quarters
of the queries lie among their class's points, a quarter 4 units further out (adversarial-like).

CPU (``--queries``, default 1,000):
- rcenp's blocked NumPy path (``log_kernel_density``), with its peak extra memory (tracemalloc);
- per-class ``sklearn.neighbors.KernelDensity(bandwidth=sqrt(sigma^2/2)).score_samples`` when
  scikit-learn is installed (a benchmark-only extra, never a dependency of rcenp), twice: as
  usually called (Feinman et al., LID), with its tree defaults, which at D = 64 prune nothing
  useful and return wrong densities (scikit-learn issues #7492, #27186); and exact, with
  ``leaf_size`` = M so that each class is one leaf, scored brute force. The fair ratio is against
  the exact mode (``speedup_rcenp_over_sklearn_exact``). scikit-learn scores on one thread: for a
  per-core ratio run with ``RCENP_HOST_THREADS=1 OPENBLAS_NUM_THREADS=1`` (``rcenp_host_workers``
  in the JSON says how many workers rcenp used);
- an unblocked NumPy version (full Q_c x M distance matrix, ``scipy.special.logsumexp``);
- the bare GEMMs alone, the FLOP floor of any GEMM formulation (2·Q·M·D FLOPs);
- ``torch.cdist`` + ``logsumexp`` per class when PyTorch is importable, on as many threads as rcenp
  has workers (``torch_cpu_threads``).
Times are the best (least) of ``--repeats`` calls after a warm-up call, for every method on either
device (rcenp's median beside it); the VM this was written on varies up to 2x between runs. Every
score is checked against the float64 brute force (sklearn's log density is shifted by
(D/2)·log(pi·sigma^2) to the unnormalised kernel first).

GPU (when ``rcenp.backend.cuda_available()``; ``--gpu-queries``, default 100,000): the fused CUDA
kernel (forward and gradient) and the blocked cuBLAS path, each call between its own pair of CUDA
events, the best of ``--repeats`` as on the CPU (the fused forward's median beside it); queries/s
and the fraction of float32 peak (``--peak-tflops``, default 67 = H100 SXM) counting 2·D + 1 FLOPs
per query-kernel pair; ``torch.cdist`` + ``logsumexp`` per class on the GPU when PyTorch has CUDA,
timed the same way.

    python bench/bench_kd.py [--queries 1000] [--gpu-queries 100000] [--json PATH]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import tracemalloc

import numpy as np
from scipy.special import logsumexp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_host import emit_report, exit_status  # noqa: E402
from rcenp.argtypes import count, integer, nonnegative, positive, real  # noqa: E402
from rcenp.backend import cuda_available, xp_for  # noqa: E402
from rcenp.detect import kde, kde_cuda  # noqa: E402
from rcenp.ops.layout import workers  # noqa: E402


def make_data(seed, num_classes, m, dim, q):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim)) * 3.0
    kernel_points = (means[:, None] + rng.normal(size=(num_classes, m, dim))).astype(np.float32)
    classes = rng.integers(0, num_classes, q)
    z = means[classes] + rng.normal(size=(q, dim)) * 1.2
    far = rng.random(q) < 0.25
    direction = rng.normal(size=(q, dim))
    z[far] += 4.0 * direction[far] / np.linalg.norm(direction[far], axis=1, keepdims=True)
    return z.astype(np.float32), kernel_points, classes


def times_of(fn, repeats):
    """Wall times of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_time(fn, repeats):
    return min(times_of(fn, repeats))


def event_times(fn, repeats, new_event, elapsed_ms):
    """GPU seconds of ``repeats`` calls after one warm-up call, each call between its own pair of
    CUDA events: ``new_event()`` makes one (CuPy's or PyTorch's), ``elapsed_ms(start, end)`` reads
    the milliseconds between two once ``end`` has completed."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = new_event(), new_event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(elapsed_ms(start, end) / 1e3)
    return times


def peak_extra_bytes(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return result, peak


def max_error(out, reference):
    return float(np.max(np.abs(np.asarray(out, np.float64) - reference)))


def plain_mean_zero_fractions(z, kernel_points, classes, sigma2):
    """How often the plain mean of exp(−d²/σ²) (no log space) underflows to exactly 0."""
    zero = {"float32": 0, "float64": 0}
    for q in range(len(z)):
        diff = np.float64(z[q]) - kernel_points[classes[q]]
        a = -np.einsum("md,md->m", diff, diff) / sigma2
        zero["float32"] += np.exp(a.astype(np.float32)).mean() == 0
        zero["float64"] += np.exp(a).mean() == 0
    return {k: v / len(z) for k, v in zero.items()}


def naive_numpy(z, kernel_points, classes, sigma2):
    """The unblocked GEMM formulation: one Q_c x M matrix per class, then logsumexp."""
    out = np.empty(len(z), z.dtype)
    for c in range(len(kernel_points)):
        rows = np.flatnonzero(classes == c)
        zc, points = z[rows], kernel_points[c]
        d2 = (zc * zc).sum(1)[:, None] + (points * points).sum(1)[None] - 2 * zc @ points.T
        out[rows] = logsumexp(-np.maximum(d2, 0) / sigma2, axis=1) - math.log(len(points))
    return out


def sklearn_fit(kernel_points, sigma2, exact=False):
    """One KernelDensity per class, as in Feinman et al. and LID: exp(−d²/(2h²)) = exp(−d²/σ²).
    ``exact``: leaf_size = M, one leaf per class, so every query is scored against every point."""
    from sklearn.neighbors import KernelDensity

    options = {"leaf_size": kernel_points.shape[1]} if exact else {}
    return [KernelDensity(bandwidth=math.sqrt(sigma2 / 2), **options).fit(p) for p in kernel_points]


def sklearn_kd(models, z, classes, sigma2):
    """score_samples under each query's class, shifted from sklearn's normalised Gaussian
    ((2πh²)^(−D/2) = (πσ²)^(−D/2)) to the log of the paper's unnormalised KD."""
    out = np.empty(len(z))
    for c, model in enumerate(models):
        rows = np.flatnonzero(classes == c)
        if len(rows):
            out[rows] = model.score_samples(z[rows])
    return out + z.shape[1] / 2 * math.log(math.pi * sigma2)


def torch_kd(torch, z, kernel_points, classes, sigma2):
    """torch.cdist + logsumexp per class; z, kernel_points, classes are torch tensors."""
    out = torch.empty(len(z), dtype=z.dtype, device=z.device)
    for c in range(len(kernel_points)):
        rows = torch.nonzero(classes == c).flatten()
        d2 = torch.cdist(z[rows], kernel_points[c]).square()
        out[rows] = torch.logsumexp(-d2 / sigma2, dim=1) - math.log(kernel_points.shape[1])
    return out


def cpu_section(args, sigma2):
    z, kernel_points, classes = make_data(args.seed, args.classes, args.per_class, args.dim,
                                          args.queries)
    q, (num_classes, m, dim) = len(z), kernel_points.shape
    reference = kde.log_kernel_density_reference(z, kernel_points, classes, sigma2)
    block = max(1, kde.BLOCK_ELEMENTS // m)
    out, rcenp_peak = peak_extra_bytes(lambda: kde.log_kernel_density(z, kernel_points, classes,
                                                                      sigma2))
    rcenp_times = times_of(lambda: kde.log_kernel_density(z, kernel_points, classes, sigma2),
                           args.repeats)
    rcenp_s = min(rcenp_times)
    naive, naive_peak = peak_extra_bytes(lambda: naive_numpy(z, kernel_points, classes, sigma2))
    naive_s = best_time(lambda: naive_numpy(z, kernel_points, classes, sigma2), args.repeats)
    groups = [(z[classes == c], kernel_points[c]) for c in range(num_classes)]
    gemm_s = best_time(lambda: [a @ b.T for a, b in groups], args.repeats)
    flops = 2.0 * q * m * dim
    result = {
        "queries": q, "classes": num_classes, "kernel_points_per_class": m, "dim": dim,
        "sigma2": sigma2, "dtype": "float32",
        "plain_mean_is_zero_fraction": plain_mean_zero_fractions(z, kernel_points, classes,
                                                                 sigma2),
        "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS",
                                           os.environ.get("OMP_NUM_THREADS")),
        "rcenp_host_workers": workers(),
        "repeats": args.repeats,
        "rcenp_numpy_s": rcenp_s,
        "rcenp_numpy_median_s": float(np.median(rcenp_times)),
        "rcenp_queries_per_s": q / rcenp_s,
        "rcenp_max_abs_error_vs_float64": max_error(out, reference),
        "rcenp_block_queries": block,
        "rcenp_peak_extra_bytes_tracemalloc": rcenp_peak,
        "rcenp_block_bytes_by_construction": (block * m + m * dim + 3 * block * dim) * 4,
        "naive_gemm_logsumexp_s": naive_s,
        "naive_max_abs_error_vs_float64": max_error(naive, reference),
        "naive_peak_extra_bytes_tracemalloc": naive_peak,
        "gemm_floor_s": gemm_s,
        "gemm_floor_gflops": flops / gemm_s / 1e9,
        "rcenp_over_gemm_floor": rcenp_s / gemm_s,
    }
    try:
        import sklearn
    except ImportError:
        result["sklearn"] = "not installed (pip install scikit-learn to compare)"
    else:
        result.update({"sklearn_version": sklearn.__version__, "sklearn_threads": 1})
        for mode, exact in (("default", False), ("exact", True)):
            start = time.perf_counter()
            models = sklearn_fit(kernel_points, sigma2, exact)
            fit_s = time.perf_counter() - start
            score_s = best_time(lambda: sklearn_kd(models, z, classes, sigma2), args.repeats)
            scores = sklearn_kd(models, z, classes, sigma2)
            result.update({
                f"sklearn_{mode}_fit_s": fit_s,
                f"sklearn_{mode}_score_samples_s": score_s,
                f"speedup_rcenp_over_sklearn_{mode}": score_s / rcenp_s,
                f"sklearn_{mode}_max_abs_error_vs_float64": max_error(scores, reference),
                f"sklearn_{mode}_queries_off_by_more_than_1_nat": int(np.sum(np.abs(scores - reference) > 1)),
            })
    try:
        import torch
    except ImportError:
        result["torch_cpu"] = "not installed"
    else:
        torch.set_num_threads(workers())  # as many threads as rcenp's workers
        tz, tk = torch.from_numpy(z), torch.from_numpy(kernel_points)
        tc = torch.from_numpy(classes)
        with torch.no_grad():
            torch_s = best_time(lambda: torch_kd(torch, tz, tk, tc, sigma2), args.repeats)
            scores = torch_kd(torch, tz, tk, tc, sigma2).numpy()
        result.update({"torch_version": torch.__version__, "torch_cpu_threads": torch.get_num_threads(),
                       "torch_cpu_cdist_logsumexp_s": torch_s,
                       "torch_cpu_max_abs_error_vs_float64": max_error(scores, reference)})
    return result


def gpu_section(args, sigma2):
    cupy = xp_for("cuda")
    z, kernel_points, classes = make_data(args.seed + 1, args.classes, args.per_class, args.dim,
                                          args.gpu_queries)
    q, (_, m, dim) = len(z), kernel_points.shape
    zg, kg, cg = cupy.asarray(z), cupy.asarray(kernel_points), cupy.asarray(classes)
    gy = cupy.ones(q, dtype=cupy.float32)

    def cuda_times(fn):
        return event_times(fn, args.repeats, cupy.cuda.Event, cupy.cuda.get_elapsed_time)

    fused_times = cuda_times(lambda: kde_cuda.log_kd_forward(zg, kg, cg, sigma2))
    fused_s = min(fused_times)
    grad_s = min(cuda_times(lambda: kde_cuda.log_kd_backward(zg, kg, cg, sigma2, gy)))
    blocked_s = min(cuda_times(lambda: kde._blocked_forward(zg, kg, cg, sigma2, None)))
    check = min(q, 2000)
    reference = kde.log_kernel_density_reference(z[:check], kernel_points, classes[:check], sigma2)
    fused = cupy.asnumpy(kde_cuda.log_kd_forward(zg, kg, cg, sigma2))[:check]
    flops = q * m * (2.0 * dim + 1)
    result = {
        "device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
        "queries": q, "kernel_points_per_class": m, "dim": dim, "repeats": args.repeats,
        "fused_forward_s": fused_s, "fused_forward_median_s": float(np.median(fused_times)),
        "fused_queries_per_s": q / fused_s,
        "fused_tflops": flops / fused_s / 1e12,
        "fused_fraction_of_fp32_peak": flops / fused_s / (args.peak_tflops * 1e12),
        "peak_tflops_assumed": args.peak_tflops,
        "fused_gradient_s": grad_s,
        "blocked_cublas_forward_s": blocked_s,
        "fused_max_abs_error_vs_float64": max_error(fused, reference),
    }
    try:
        import torch
    except ImportError:
        result["torch_cuda"] = "not installed"
        return result
    if not torch.cuda.is_available():
        result["torch_cuda"] = "PyTorch has no CUDA device"
        return result
    tz, tk = torch.from_numpy(z).cuda(), torch.from_numpy(kernel_points).cuda()
    tc = torch.from_numpy(classes).cuda()
    with torch.no_grad():
        torch_s = min(event_times(lambda: torch_kd(torch, tz, tk, tc, sigma2), args.repeats,
                                  lambda: torch.cuda.Event(enable_timing=True), lambda a, b: a.elapsed_time(b)))
        scores = torch_kd(torch, tz, tk, tc, sigma2)[:check].cpu().numpy()
    result.update({"torch_version": torch.__version__, "torch_cdist_logsumexp_s": torch_s,
                   "speedup_fused_over_torch": torch_s / fused_s,
                   "torch_max_abs_error_vs_float64": max_error(scores, reference)})
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=count, default=1000, help="CPU queries")
    parser.add_argument("--gpu-queries", type=count, default=100_000)
    parser.add_argument("--dim", type=count, default=64)
    parser.add_argument("--classes", type=count, default=10)
    parser.add_argument("--per-class", type=count, default=5000)
    parser.add_argument("--sigma2", type=positive(real), default=kde.DEFAULT_SIGMA2["rce"])
    parser.add_argument("--repeats", type=count, default=20,
                        help="timed calls after a warm-up, for every method on either device; the best (least) is "
                             "reported")
    parser.add_argument("--peak-tflops", type=positive(real), default=67.0,
                        help="float32 peak of the GPU (H100 SXM: 67)")
    parser.add_argument("--seed", type=nonnegative(integer), default=0)
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)
    report = {"platform": platform.platform(), "python": platform.python_version(),
              "numpy": np.__version__, "cpu_count": os.cpu_count(),
              "cpu": cpu_section(args, args.sigma2)}
    report["gpu"] = gpu_section(args, args.sigma2) if cuda_available() else "no CUDA device"
    emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
