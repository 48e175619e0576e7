"""The floor under rcenp's convolutions: each conv layer of a ResNet forward, one thread, timed as
rcenp's ``conv2d``, as PyTorch's ``conv2d`` (when installed; ``torch_us``, the faster of its NCHW
and channels-last layouts for that layer, so PyTorch's best and a conservative floor), and as the
bare OpenBLAS GEMMs that rcenp's algorithm for that layer cannot do without (no gather, no padding,
no Python): the KH batched GEMMs of kernel rows (stride 1) or the one GEMM of im2col
(``rcenp.ops.conv``), on operands of the same shapes, chunk by chunk of images as rcenp splits the
batch, each chunk's operands in cache as rcenp's are just after their gather. Where those GEMMs
alone take longer than PyTorch's whole convolution (oneDNN's direct kernels), no NumPy convolution
on this BLAS can match it: that bounds issue 10's small-batch targets from below. Prints one JSON
object (``--json PATH`` also writes it).

Timings are the best of ``--repeats`` rounds of a loop of about 20 ms, rcenp, GEMMs and PyTorch
taking turns layer by layer, so a busy host slows all three alike. One thread each: NumPy's
OpenBLAS and rcenp's workers (set below, before NumPy loads), ``torch.set_num_threads(1)``.

    python bench/bench_conv_floor.py                                  # ResNet-32, 1x28x28, batch 1, 10, 20, 100
    python bench/bench_conv_floor.py --shape 3x32x32 --batch 128
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # one thread, set before NumPy loads (not when a test imports this module)
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["RCENP_HOST_THREADS"] = "1"

import argparse  # noqa: E402
import collections  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from bench_host import (  # noqa: E402 (this checkout's rcenp on the path)
    emit_report, exit_status, image_shape, resnet_depth, steal_seconds)
from rcenp.argtypes import count  # noqa: E402


def _best_us(fn, repeats: int) -> float:
    """The best per-call wall time in µs over ``repeats`` rounds of a loop of about 20 ms."""
    fn()
    start = time.perf_counter()
    fn()
    loops = max(1, int(0.02 / max(time.perf_counter() - start, 1e-7)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best * 1e6


def conv_layers(depth: int, shape: tuple, batch: int) -> list[tuple]:
    """The conv layers of one ResNet forward at ``batch`` as (x shape, w shape, stride, padding,
    count), in order of first use: every Conv2d.forward call recorded, then grouped."""
    import numpy as np

    from rcenp.autograd import Tensor, no_grad
    from rcenp.models import resnet
    from rcenp.ops.conv import Conv2d

    seen: collections.OrderedDict = collections.OrderedDict()
    original = Conv2d.forward

    def record(self, x, w, *rest):
        key = (x.shape, w.shape, self.stride, self.padding)
        seen[key] = seen.get(key, 0) + 1
        return original(self, x, w, *rest)

    Conv2d.forward = record
    try:
        with no_grad():
            resnet(depth, shape[0], seed=0)(Tensor(np.zeros((batch,) + shape, np.float32)))
    finally:
        Conv2d.forward = original
    return [key + (n,) for key, n in seen.items()]


def time_layer(x_shape, w_shape, stride, padding, repeats, torch) -> dict:
    """Per-call µs of one layer: rcenp's conv2d forward, its GEMMs alone, PyTorch's conv2d."""
    import numpy as np

    from rcenp import functional as F
    from rcenp.autograd import Tensor, no_grad
    from rcenp.ops.conv import _by_rows, _chunk_images

    rng = np.random.default_rng(0)
    n, c, h, w = x_shape
    co, _, kh, kw = w_shape
    oh, ow = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    x = np.ascontiguousarray(rng.standard_normal((n, h, w, c), dtype=np.float32)).transpose(0, 3, 1, 2)
    weight = rng.standard_normal(w_shape, dtype=np.float32)
    xt, wt = Tensor(x), Tensor(weight)

    def rcenp_conv():
        with no_grad():
            F.conv2d(xt, wt, stride=stride, padding=padding)

    by_rows = _by_rows((kh, kw), stride, c)
    chunk = _chunk_images(n, (oh, ow), (kh, kw), stride, c, 4)
    sizes = [min(chunk, n - lo) for lo in range(0, n, chunk)]  # rcenp's chunks, each multiplied in cache
    if by_rows:  # what _correlate_rows multiplies: per image, (OH*OW, KW*C) @ (KW*C, CO), KH times
        rows = rng.standard_normal((chunk, oh * ow, kw * c), dtype=np.float32)
        block = rng.standard_normal((kw * c, co), dtype=np.float32)
        out = np.empty((chunk, oh * ow, co), np.float32)

        def gemms():
            for b in sizes:
                for _ in range(kh):
                    np.matmul(rows[:b], block, out=out[:b])
    else:  # im2col: (b*OH*OW, KH*KW*C) @ (KH*KW*C, CO) per chunk of b images
        col = rng.standard_normal((chunk * oh * ow, kh * kw * c), dtype=np.float32)
        w_mat = rng.standard_normal((kh * kw * c, co), dtype=np.float32)
        out = np.empty((chunk * oh * ow, co), np.float32)

        def gemms():
            for b in sizes:
                np.matmul(col[:b * oh * ow], w_mat, out=out[:b * oh * ow])

    entry = {"layer": f"{c}->{co} {kh}x{kw} stride {stride[0]} on {h}x{w}", "chunk_images": chunk, "algorithm": "kernel rows" if by_rows
             else "im2col", "gflop": 2e-9 * n * oh * ow * kh * kw * c * co}
    timed = [("rcenp_us", rcenp_conv), ("gemms_us", gemms)]
    if torch is not None:
        tx, tw = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(weight)
        tx_last = tx.contiguous(memory_format=torch.channels_last)
        timed += [("torch_nchw_us", lambda: torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding)),
                  ("torch_channels_last_us", lambda: torch.nn.functional.conv2d(tx_last, tw, stride=stride,
                                                                                padding=padding))]
    best = {name: float("inf") for name, _ in timed}
    for _ in range(repeats):  # the implementations take turns
        for name, fn in timed:
            best[name] = min(best[name], _best_us(fn, 1))
    entry.update({name: round(us, 1) for name, us in best.items()})
    if torch is not None:
        entry["torch_us"] = min(entry.pop("torch_nchw_us"), entry.pop("torch_channels_last_us"))
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=resnet_depth, default=32, help="ResNet depth, 6n+2")
    parser.add_argument("--shape", type=image_shape, default=(1, 28, 28), help="image shape CxHxW")
    parser.add_argument("--batch", default="1,10,20,100", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=count, default=7)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    try:
        batches = [count(b) for b in args.batch.split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument --batch: {exc}")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    steal_before = steal_seconds()
    results = []
    for batch in batches:
        layers = []
        for x_shape, w_shape, stride, padding, calls in conv_layers(args.depth, args.shape, batch):
            entry = time_layer(x_shape, w_shape, stride, padding, args.repeats, torch)
            layers.append(dict(entry, calls=calls))
        totals = {key: round(sum(e[key] * e["calls"] for e in layers) / 1000, 3)
                  for key in ("rcenp_us", "gemms_us", "torch_us") if key in layers[0]}
        totals = {key.replace("_us", "_ms"): value for key, value in totals.items()}
        summary = {"batch": batch, "totals": totals, "layers": layers}
        if torch is not None:
            summary["gemms_over_torch"] = round(totals["gemms_ms"] / totals["torch_ms"], 3)
            summary["rcenp_over_torch"] = round(totals["rcenp_ms"] / totals["torch_ms"], 3)
        summary["rcenp_over_gemms"] = round(totals["rcenp_ms"] / totals["gemms_ms"], 3)
        results.append(summary)
    steal_after = steal_seconds()
    report = {"benchmark": f"conv layers of a ResNet-{args.depth} forward, {'x'.join(map(str, args.shape))}",
              "threads": 1, "torch": None if torch is None else torch.__version__,
              "torch_skipped": None if torch is not None else "PyTorch is not installed: rcenp and its GEMMs only",
              "host_steal_seconds": None if steal_before is None or steal_after is None
              else round(steal_after - steal_before, 2), "results": results}
    emit_report(report, args.json, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
