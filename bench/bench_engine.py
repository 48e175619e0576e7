"""ResNet-32 speed and memory: one SGD training step, one eval forward, and one eval-mode input
gradient (forward + backward of the CE loss to the images: one iteration of a gradient attack
such as BIM or C&W), rcenp against PyTorch.

Each framework runs in its own subprocess per (batch, shape), so peak memory (ru_maxrss) is its
own: ``peak_rss_mb`` includes each library's import (PyTorch's is large), so compare
``ratio_rcenp_over_torch.peak_rss_above_baseline`` (peak minus the RSS before the first step) for
what the steps use. On CUDA, PyTorch's TF32 is switched off (``tf32`` in its record) so that both
compute in float32. rcenp runs as a library user's script does (``import rcenp``, no allocator
tuning) unless ``--tune-allocator``. Minor page faults per training step are reported too (the cost of memory
returned to the OS and faulted back in), and the median process CPU seconds beside the wall
times: on a machine shared with other jobs, PyTorch's spinning OpenMP threads lose far more wall
time than rcenp's workers, and ``--threads 1`` with the CPU times compares the work itself.
``--rounds K`` alternates the two K times and keeps each one's least median. Prints one JSON
object; ``--json PATH`` also writes it. PyTorch is optional: without it only rcenp is timed.

    python bench/bench_engine.py                                  # CPU, batch 128, 3x32x32
    python bench/bench_engine.py --batch 1,10,100,128 --shape 3x32x32,1x28x28
    python bench/bench_engine.py --threads 1                      # one thread each
    RCENP_DEVICE=cuda python bench/bench_engine.py                # GPU (CuPy; PyTorch on CUDA when present)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

SCRIPT = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(SCRIPT))  # bench_host, whether run or imported

from bench_host import (  # noqa: E402 (this checkout's rcenp on the path)
    emit_report, exit_status, image_shape, resnet_depth, steal_seconds)
from rcenp.argtypes import count  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timeit(fn, sync, repeats, warmup):
    """Median and best wall seconds, and the median process CPU seconds (all threads)."""
    for _ in range(warmup):
        fn()
    sync()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    times.sort()
    cpu.sort()
    return times[len(times) // 2], times[0], cpu[len(cpu) // 2]


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _measure(train_step, forward, input_grad, sync, repeats, rss_before):
    """Median and best seconds of a training step, an eval forward and an eval input gradient,
    their median CPU seconds, minor page faults per training step (after warm-up), and the
    peak RSS."""
    for _ in range(2):
        train_step()
    faults = _faults()
    train = _timeit(train_step, sync, repeats, 0)
    faults = _faults() - faults
    fwd = _timeit(forward, sync, repeats, 2)
    attack = _timeit(input_grad, sync, repeats, 2)
    return {"train_step_s": train[0], "train_step_best_s": train[1], "forward_s": fwd[0], "forward_best_s": fwd[1],
            "input_grad_s": attack[0], "input_grad_best_s": attack[1],
            "train_step_cpu_s": train[2], "forward_cpu_s": fwd[2], "input_grad_cpu_s": attack[2],
            "train_step_minor_faults": faults // repeats,
            "peak_rss_mb": _rss_mb(), "rss_before_steps_mb": rss_before}


def run_rcenp(args):
    import numpy as np

    import rcenp
    from rcenp.backend import default_device, get_array_module, to_device
    from rcenp.models import resnet
    from rcenp.objectives import Classifier
    from rcenp.ops.memory import tune_host_allocator
    from rcenp.optim import SGD

    tuned = tune_host_allocator() if args.tune_allocator else False
    device = default_device()
    model = Classifier(resnet(args.depth, args.channels), "ce").to(device)
    rng = np.random.default_rng(0)
    x = to_device(rng.standard_normal((args.batch, args.channels, *args.hw)).astype(np.float32), device)
    y = to_device(rng.integers(0, 10, args.batch), device)
    opt = SGD(model.parameters(), lr=0.01)
    xp = get_array_module(x)
    sync = (lambda: xp.cuda.Stream.null.synchronize()) if device == "cuda" else (lambda: None)
    base = _rss_mb()

    def train_step():
        model.train()
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()

    def forward():
        model.eval()
        with rcenp.no_grad():
            model(x)

    def input_grad():
        model.eval()
        images = rcenp.Tensor(x, requires_grad=True)
        rcenp.grad(model.loss(images, y), images)

    from rcenp.ops.layout import blas_thread_count, workers

    return {"framework": "rcenp", "device": device, "numpy": np.__version__, "allocator_tuned": tuned,
            "host_workers": workers(), "blas_threads": blas_thread_count(),
            **_measure(train_step, forward, input_grad, sync, args.repeats, base)}


def run_torch(args):
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, os.path.dirname(SCRIPT))
    from torch_twin import ResNet  # the same network as rcenp's, in torch.nn

    device = "cuda" if os.environ.get("RCENP_DEVICE") == "cuda" and torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    if device == "cuda":  # cuDNN's default TF32 convolutions against CuPy's float32 would not be the same work
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    torch.manual_seed(0)
    model = ResNet(args.depth, args.channels).to(device)
    x = torch.randn(args.batch, args.channels, *args.hw, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    base = _rss_mb()

    def train_step():
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def forward():
        model.eval()
        with torch.no_grad():
            model(x)

    def input_grad():
        model.eval()
        images = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(images), y), images)

    return {"framework": "torch", "version": torch.__version__, "device": device, "threads": torch.get_num_threads(),
            "tf32": bool(device == "cuda" and torch.backends.cudnn.allow_tf32),
            **_measure(train_step, forward, input_grad, sync, args.repeats, base)}


def _child(framework, args, batch, shape):
    cmd = [sys.executable, SCRIPT, "--child", framework, "--batch", str(batch), "--depth", str(args.depth),
           "--repeats", str(args.repeats), "--shape", "x".join(map(str, shape))]
    env = dict(os.environ)
    if args.tune_allocator:
        cmd.append("--tune-allocator")
    if args.threads:  # rcenp's workers and its BLAS outside them, PyTorch's intra-op threads
        cmd += ["--threads", str(args.threads)]
        env["RCENP_HOST_THREADS"] = str(args.threads)
        env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    steal = steal_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"framework": framework, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    record = json.loads(proc.stdout)
    if steal is not None:  # the whole child process: imports, warm-up and timed steps
        record["host_steal_s"] = steal_seconds() - steal
    return record


def _listed(convert):
    return lambda text: [convert(v) for v in text.split(",")]


_TIMED = ("train_step_s", "train_step_best_s", "forward_s", "forward_best_s", "input_grad_s", "input_grad_best_s",
          "train_step_cpu_s", "forward_cpu_s", "input_grad_cpu_s")


def _best_of(rounds):
    """One framework's rounds merged: each time the least over the rounds, the rest of the
    first round (an error if any round failed)."""
    for r in rounds:
        if "error" in r:
            return r
    best = dict(rounds[0], rounds=len(rounds))
    for key in _TIMED:
        best[key] = min(r[key] for r in rounds)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    return best


def _compare(args, batch, shape, has_torch):
    """One (batch, shape): rcenp and PyTorch in alternating subprocesses (``--rounds`` pairs),
    the least of each time over the rounds, and their ratios."""
    c, h, w = shape
    torch_too = has_torch and not args.no_torch
    runs = {"rcenp": [], "torch": []}
    for _ in range(args.rounds):
        for fw in ("rcenp", "torch") if torch_too else ("rcenp",):
            runs[fw].append(_child(fw, args, batch, shape))
    report = {"benchmark": f"ResNet-{args.depth} batch {batch} {c}x{h}x{w}", "batch": batch,
              "shape": list(shape), "rcenp": _best_of(runs["rcenp"])}
    if torch_too:
        report["torch"] = _best_of(runs["torch"])
        r, t = report["rcenp"], report["torch"]
        if "error" not in r and "error" not in t:
            report["ratio_rcenp_over_torch"] = {
                "train_step": r["train_step_s"] / t["train_step_s"],
                "forward": r["forward_s"] / t["forward_s"],
                "input_grad": r["input_grad_s"] / t["input_grad_s"],
                "cpu_train_step": r["train_step_cpu_s"] / t["train_step_cpu_s"],
                "cpu_forward": r["forward_cpu_s"] / t["forward_cpu_s"],
                "cpu_input_grad": r["input_grad_cpu_s"] / t["input_grad_cpu_s"],
                "peak_rss": r["peak_rss_mb"] / t["peak_rss_mb"],
                "peak_rss_above_baseline": (r["peak_rss_mb"] - r["rss_before_steps_mb"]) /
                                           max(t["peak_rss_mb"] - t["rss_before_steps_mb"], 1e-9),
            }
    else:
        report["torch"] = "skipped (--no-torch)" if args.no_torch else "not installed: comparison skipped"
    for fw in ("rcenp", "torch"):
        r = report.get(fw)
        if isinstance(r, dict) and "train_step_s" in r:
            r["train_images_per_s"] = batch / r["train_step_s"]
            r["forward_images_per_s"] = batch / r["forward_s"]
            r["input_grad_images_per_s"] = batch / r["input_grad_s"]
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=_listed(count), default=[128], help="batch sizes, e.g. 1,10,100,128")
    parser.add_argument("--shape", type=_listed(image_shape), default=[(3, 32, 32)],
                        help="image shapes CxHxW, e.g. 3x32x32,1x28x28 (CIFAR-10, MNIST)")
    parser.add_argument("--depth", type=resnet_depth, default=32, help="ResNet depth, 6n+2")
    parser.add_argument("--repeats", type=count, default=7)
    parser.add_argument("--rounds", type=count, default=1,
                        help="alternate rcenp and PyTorch this many times and keep each one's least times "
                             "(on a shared machine)")
    parser.add_argument("--tune-allocator", action="store_true",
                        help="call rcenp.tune_host_allocator() first (as the rcenp command once did)")
    parser.add_argument("--threads", type=count,
                        help="threads for both (RCENP_HOST_THREADS, torch.set_num_threads); default: theirs")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--child", choices=["rcenp", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.batch, (args.channels, *args.hw) = args.batch[0], args.shape[0]
        result = run_rcenp(args) if args.child == "rcenp" else run_torch(args)
        print(json.dumps(result))
        return 0
    try:
        import importlib.util
        has_torch = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        has_torch = False
    load_before = os.getloadavg()
    runs = [_compare(args, batch, shape, has_torch) for shape in args.shape for batch in args.batch]
    report = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]]},
              "allocator_tuned": args.tune_allocator, "threads": args.threads, "runs": runs}
    emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
