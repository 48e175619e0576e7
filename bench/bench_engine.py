"""ResNet-32 speed and memory: one SGD training step, one eval forward, and one eval-mode input
gradient (forward + backward of the CE loss to the images: one iteration of a gradient attack
such as BIM or C&W), rcenp against PyTorch.

Each framework runs in its own subprocess per (batch, shape), so peak memory (ru_maxrss) is its
own: ``peak_rss_mb`` includes each library's import (PyTorch's is large), so compare
``ratio_rcenp_over_torch.peak_rss_above_baseline`` for what the steps use: each child's peak minus
its resident set just before the first step (``/proc/self/statm``; where that file is missing,
ru_maxrss then, a high-water mark, so the difference is a lower bound: ``rss_before_steps_source``
says which), MB, null where not positive. Both run on the device ``RCENP_DEVICE`` names, read as
rcenp reads it (``rcenp.backend.default_device()``); PyTorch on CUDA needs a CUDA build, and where
the two records' devices still differ the ratios are left out and the script exits 1. On CUDA,
PyTorch's TF32 is switched off (``tf32`` in its record) so that both compute in float32. rcenp
runs as a library user's script does (``import rcenp``, no allocator tuning) unless
``--tune-allocator``. Minor page faults per training step are reported too (the cost of memory
returned to the OS and faulted back in), and the median process CPU seconds beside the wall
times: on a machine shared with other jobs, PyTorch's spinning OpenMP threads lose far more wall
time than rcenp's workers, and ``--threads 1`` with the CPU times compares the work itself.
Each time is the median of ``--repeats`` timed calls (``statistics.median``: the mean of the two
middle ones for an even count), beside the least of them (``*_best_s``); ``--rounds K`` runs the
two K times in turns (rcenp first in the 1st, 3rd, ... round, PyTorch first in the others) and
keeps each time's least over the rounds (``per_round`` holds every round's record). Prints one
JSON object; ``--json PATH`` also writes it; the exit status is 1 where a child process failed
(its record holds ``error``) or the devices differ. PyTorch is optional: without it only rcenp
is timed.

    python bench/bench_engine.py                                  # CPU, batch 128, 3x32x32
    python bench/bench_engine.py --batch 1,10,100,128 --shape 3x32x32,1x28x28
    python bench/bench_engine.py --threads 1                      # one thread each
    RCENP_DEVICE=cuda python bench/bench_engine.py                # GPU (CuPy; PyTorch on CUDA too)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SCRIPT = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(SCRIPT))  # bench_host, whether run or imported

from bench_host import (  # noqa: E402 (this checkout's rcenp on the path)
    emit_report, exit_status, image_shape, resnet_depth, steal_seconds)
from rcenp.argtypes import count  # noqa: E402


def _rss_mb() -> float:
    """This process's peak resident set so far, MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def _current_rss_mb(statm="/proc/self/statm"):
    """(this process's resident set now, MB, "statm"), or, where ``statm`` cannot be read,
    (its peak so far, ``_rss_mb()``, "ru_maxrss")."""
    try:
        with open(statm) as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0), "statm"
    except (OSError, IndexError, ValueError):
        return _rss_mb(), "ru_maxrss"


def _timeit(fn, sync, repeats, warmup):
    """Median and least wall seconds, and the median process CPU seconds (all threads), of
    ``repeats`` calls after ``warmup`` untimed ones."""
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
    return statistics.median(times), min(times), statistics.median(cpu)


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _measure(train_step, forward, input_grad, sync, repeats, rss_before):
    """Median and least seconds of a training step, an eval forward and an eval input gradient,
    their median CPU seconds, minor page faults per training step (after warm-up), the peak RSS
    and what it rose above ``rss_before`` ((MB, its source) from ``_current_rss_mb``), MB."""
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
            **_rss_fields(_rss_mb(), *rss_before)}


def _rss_fields(peak, before, source):
    """The RSS entries of one child's record, MB: the peak, the RSS before the steps and where it
    was read, and the rise between them (None where not positive)."""
    return {"peak_rss_mb": peak, "rss_before_steps_mb": before, "rss_before_steps_source": source,
            "peak_rss_above_baseline_mb": peak - before if peak > before else None}


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
    base = _current_rss_mb()

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

    # rcenp's device as the parent read it (rcenp.backend is not imported here: CuPy would join PyTorch's RSS)
    device = "cuda" if args.device == "cuda" and torch.cuda.is_available() else "cpu"
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
    base = _current_rss_mb()

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
           "--repeats", str(args.repeats), "--shape", "x".join(map(str, shape)), "--child-device", args.device]
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
        lines = proc.stderr.strip().splitlines()
        return {"framework": framework, "error": lines[-1] if lines else f"exit status {proc.returncode}"}
    record = json.loads(proc.stdout)
    if steal is not None:  # the whole child process: imports, warm-up and timed steps
        record["host_steal_s"] = steal_seconds() - steal
    return record


def _listed(convert):
    return lambda text: [convert(v) for v in text.split(",")]


_PER_ROUND = ("rss_before_steps_mb", "rss_before_steps_source", "host_steal_s")  # only in per_round
_TIMED = ("train_step_s", "train_step_best_s", "forward_s", "forward_best_s", "input_grad_s", "input_grad_best_s",
          "train_step_cpu_s", "forward_cpu_s", "input_grad_cpu_s")


def _best_of(rounds):
    """One framework's rounds merged, each field from one round or an aggregate over all: every
    time the least over the rounds; ``peak_rss_mb`` and ``train_step_minor_faults`` the most;
    ``peak_rss_above_baseline_mb`` the most of each round's own rise (None where no round's is
    positive); ``host_steal_s`` the sum (where every round has it); what describes the run
    (framework, device, versions, threads) the first round's; every round's whole record in
    ``per_round``. The first failed round instead, where one failed."""
    for r in rounds:
        if "error" in r:
            return r
    best = {key: value for key, value in rounds[0].items() if key not in _PER_ROUND}
    best["rounds"] = len(rounds)
    for key in _TIMED:
        best[key] = min(r[key] for r in rounds)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    best["train_step_minor_faults"] = max(r["train_step_minor_faults"] for r in rounds)
    rises = [r["peak_rss_above_baseline_mb"] for r in rounds if r.get("peak_rss_above_baseline_mb") is not None]
    best["peak_rss_above_baseline_mb"] = max(rises) if rises else None
    if all("host_steal_s" in r for r in rounds):
        best["host_steal_s"] = sum(r["host_steal_s"] for r in rounds)
    best["per_round"] = list(rounds)
    return best


def _has_torch() -> bool:
    """Whether PyTorch is installed (not imported here: the children import their framework)."""
    try:
        import importlib.util
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _compare(args, batch, shape, has_torch):
    """One (batch, shape): rcenp and PyTorch in subprocesses taking turns (``--rounds`` pairs,
    rcenp first in the 1st, 3rd, ... round, PyTorch first in the others), the least of each time
    over the rounds, and their ratios where both ran on the same device (else ``device_mismatch``
    says why there are none)."""
    c, h, w = shape
    torch_too = has_torch and not args.no_torch
    runs = {"rcenp": [], "torch": []}
    order = ("rcenp", "torch") if torch_too else ("rcenp",)
    for round_ in range(args.rounds):
        for fw in order if round_ % 2 == 0 else order[::-1]:
            runs[fw].append(_child(fw, args, batch, shape))
    report = {"benchmark": f"ResNet-{args.depth} batch {batch} {c}x{h}x{w}", "batch": batch,
              "shape": list(shape), "rcenp": _best_of(runs["rcenp"])}
    if torch_too:
        report["torch"] = _best_of(runs["torch"])
        r, t = report["rcenp"], report["torch"]
        if "error" not in r and "error" not in t and r["device"] != t["device"]:
            report["device_mismatch"] = (f"rcenp ran on {r['device']} and PyTorch on {t['device']}: no ratios "
                                         f"(RCENP_DEVICE={os.environ.get('RCENP_DEVICE', '')!r})")
        elif "error" not in r and "error" not in t:
            r_rise, t_rise = r["peak_rss_above_baseline_mb"], t["peak_rss_above_baseline_mb"]
            report["ratio_rcenp_over_torch"] = {
                "train_step": r["train_step_s"] / t["train_step_s"],
                "forward": r["forward_s"] / t["forward_s"],
                "input_grad": r["input_grad_s"] / t["input_grad_s"],
                "cpu_train_step": r["train_step_cpu_s"] / t["train_step_cpu_s"],
                "cpu_forward": r["forward_cpu_s"] / t["forward_cpu_s"],
                "cpu_input_grad": r["input_grad_cpu_s"] / t["input_grad_cpu_s"],
                "peak_rss": r["peak_rss_mb"] / t["peak_rss_mb"],
                "peak_rss_above_baseline": r_rise / t_rise if r_rise is not None and t_rise is not None else None,
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
    parser.add_argument("--child-device", dest="device", choices=["cpu", "cuda"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.batch, (args.channels, *args.hw) = args.batch[0], args.shape[0]
        result = run_rcenp(args) if args.child == "rcenp" else run_torch(args)
        print(json.dumps(result))
        return 0
    from rcenp.backend import default_device

    args.device = default_device()  # DeviceError (one line, status 2) for a bad RCENP_DEVICE
    has_torch = _has_torch()
    load_before = os.getloadavg()
    runs = [_compare(args, batch, shape, has_torch) for shape in args.shape for batch in args.batch]
    report = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]]},
              "device": args.device, "allocator_tuned": args.tune_allocator, "threads": args.threads, "runs": runs}
    emit_report(report, args.json)
    return _status(runs)


def _status(runs) -> int:
    """1, after one line on stderr, where a child process failed or the two ran on different
    devices (the JSON printed says which); else 0."""
    failed = [f"{run['benchmark']} {fw}" for run in runs for fw in ("rcenp", "torch")
              if isinstance(run.get(fw), dict) and "error" in run[fw]]
    mismatched = [run["benchmark"] for run in runs if "device_mismatch" in run]
    if not failed and not mismatched:
        return 0
    said = [f"{len(failed)} child process(es) failed ({'; '.join(failed)}: see 'error')"] if failed else []
    said += [f"rcenp and PyTorch ran on different devices ({mismatched[0]}: see 'device_mismatch')"] if mismatched else []
    sys.stderr.write(f"{os.path.basename(SCRIPT)}: error: {'; '.join(said)}\n")
    return 1


if __name__ == "__main__":
    sys.exit(exit_status(main))
