"""Attack speed and agreement: the paper's BIM and JSMA (pang2018) run on the same weights by rcenp
(``rcenp.attacks``) and by plain PyTorch on the model's twin (``torch_attacks.py`` on
``torch_twin.py``), and, with ``--cw``, C&W-L2 by rcenp and by foolbox 3.3.4.

For each model and attack: seconds per run (median of ``--repeats``, the implementations taking
turns) and images/s on the first N test images, for each implementation; success rate; median
distortion ||x* - x||_2/sqrt(d) on the 0-255 scale (the paper's unit); and how far the two
implementations agree: the share of images whose adversarial prediction (each implementation's own
model on its own x*) is the same, the share of identical x* (to 1e-6), and max
|x*_rcenp - x*_torch|. BIM follows the same spec on both sides (protocol §5.1), so the two should
agree up to float32 rounding and its consequences (a gradient sign near 0). The PyTorch JSMA runs
the protocol's saliency dt*|do| (entry "torch") and, by default, also its reduction argmax d log
F_t/dx (entry "torch_log_target"), which is what ``rcenp.attacks.jsma`` computes; they differ by
float noise in do and where F_t underflows (``torch_attacks.jsma``). C&W runs two different
optimisers and is compared by outcome only. Every implementation attacks all its images in one
batch (rcenp's ``batch_size`` = N, recorded in each attack's ``settings``).

Prints one JSON object; ``--json PATH`` also writes it (atomically). Needs torch: without it the
JSON's ``skipped`` says why, one line on stderr says so too, and the exit status is 0 (likewise
foolbox for ``--cw``: its entry says "foolbox not installed"); the rcenp side reports "rcenp.attacks
not available" when that module is missing.
Background training competes for the cores, so pause it while timing, and always resume it:

    pkill -STOP -f "rcenp train"; python bench/bench_attacks.py --json out.json; pkill -CONT -f "rcenp train"

    python bench/bench_attacks.py --n 100 --eps 0.1                 # both shipped models, BIM and JSMA
    python bench/bench_attacks.py --models mnist-resnet32-rce --cw --cw-n 20 --cw-steps 100
    RCENP_DATA=/work/shared/data python bench/bench_attacks.py --source test --n 1000

On a shared machine, threads that wait for each other at every operation lose most of their time
to whatever else runs (PyTorch at 2 threads here: 2.7 s for an input gradient that takes 0.9 s at
1 thread, while one other process ran). ``--threads N`` gives each side N threads: PyTorch's
intra-op threads, rcenp's host workers, and OpenBLAS/OpenMP (the script restarts itself once
with those variables set, since they must precede NumPy's import). One core each side:

    python bench/bench_attacks.py --threads 1

``--jobs J`` also times ``rcenp attack --jobs J`` on the same images: J one-thread shard processes
side by side and their merge, started fresh each time (imports, model, detector scores and the
run's files included), which on a VM that halts idle CPUs is faster than one process's workers.
It is given every setting of the attack and the data root this script read (``--source test``),
and its clean images must equal this script's:

    python bench/bench_attacks.py --jobs 2 --repeats 3
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's rcenp
sys.path.insert(0, HERE)

from attack_measures import UNAVAILABLE, agreement, host_array, interleaved, rcenp_attack, summary  # noqa: E402
from bench_host import emit_report, exit_status  # noqa: E402
from cw_foolbox import bench_cw  # noqa: E402
from rcenp.argtypes import count, integer, nonnegative, positive, real  # noqa: E402

ATTACKS = ("bim", "jsma")
BIM_STEPS = 10
JSMA_MAX_ITERATIONS, JSMA_VARIANT = 100, "pang2018"


def _eps(text):
    value = real(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1] (box units: 0.1 is 25.5 on 0-255), got {text}")
    return value


def _rcenp_attacks():
    try:
        import rcenp.attacks as attacks
    except ImportError:
        return None
    return attacks


def _load_images(args, dataset):
    from rcenp.data import load, load_sample

    if args.source == "sample":
        if dataset != "mnist":
            raise ValueError(f"the embedded sample is MNIST; use --source test for {dataset}")
        data = load_sample()
    else:
        data = load(dataset, "test", root=args.data_dir)
    if args.n > len(data):
        raise ValueError(f"--n {args.n} but the {args.source} set has {len(data)} images")
    return data.images[:args.n], data.labels[:args.n], data.identity


def _compare(name, x, args, torch_runs, run_rcenp, success_fn, predict_torch, predict_rcenp, rcenp_runs=None):
    """Time and compare one attack. ``torch_runs``: {entry name: function returning x*};
    ``run_rcenp``: a function returning x*, or the string saying why there is none; ``rcenp_runs``:
    {entry name: function returning host x*} of other ways to run rcenp (``--jobs``), compared
    with ``run_rcenp``'s; ``success_fn(adv_pred)``: success per image."""
    entry, outputs = {}, {}
    runs = dict(torch_runs)
    if not isinstance(run_rcenp, str):
        runs["rcenp"] = lambda: host_array(run_rcenp())
        runs.update(rcenp_runs or {})
    timed = interleaved(runs, args.repeats, name, args.warmup)
    for key in torch_runs:
        x_t, seconds = timed[key]
        x_t = x_t.detach().numpy()
        pred = predict_torch(x_t)
        entry[key], outputs[key] = summary(x_t, x, success_fn(pred), seconds), (x_t, pred)
    if isinstance(run_rcenp, str):
        entry["rcenp"] = run_rcenp
        return entry
    x_r, seconds = timed["rcenp"]
    pred_r = predict_rcenp(x_r)
    entry["rcenp"] = summary(x_r, x, success_fn(pred_r), seconds)
    for key, (x_t, pred) in outputs.items():
        entry[f"agreement_rcenp_{key}"] = agreement(x_r, x_t, pred_r, pred)
        entry[f"seconds_rcenp_over_{key}"] = entry["rcenp"]["seconds"] / entry[key]["seconds"]
    for key in rcenp_runs or {}:
        x_j, seconds = timed[key]
        pred_j = predict_rcenp(x_j)
        entry[key] = summary(x_j, x, success_fn(pred_j), seconds)
        entry[f"agreement_{key}_rcenp"] = agreement(x_j, x_r, pred_j, pred_r)
        for torch_key in outputs:
            entry[f"seconds_{key}_over_{torch_key}"] = entry[key]["seconds"] / entry[torch_key]["seconds"]
    return entry


def jobs_command(model_name, attack, args, out):
    """The ``rcenp attack MODEL --jobs J`` command line of the ``--jobs`` entry: the attack's every
    setting given (not left to the command's defaults), J shards of one batch each, and, for
    ``--source test``, the data root this script read, as an absolute path."""
    settings = {"bim": ["--steps", str(BIM_STEPS)],
                "jsma": ["--max-iterations", str(JSMA_MAX_ITERATIONS), "--variant", JSMA_VARIANT]}[attack]
    command = [sys.executable, "-m", "rcenp", "attack", model_name, "--attack", attack, "--eps", repr(args.eps),
               *settings, "--n", str(args.n), "--batch-size", str(-(-args.n // args.jobs)), "--jobs", str(args.jobs),
               "--out", out]
    if args.source == "test":
        from rcenp.data import data_root

        command += ["--data-dir", str(data_root(args.data_dir).absolute())]
    return command


def cli_jobs_run(model_name, attack, args, x):
    """A function returning x* (N, C, H, W) from ``rcenp attack MODEL --jobs J`` on the first N
    images, in fresh processes: J one-thread shards of N/J images each, then their merge, timed
    end to end (imports, the model, detector scores and the run's files included). ValueError,
    one line, where the command fails or attacked other clean images than ``x``."""
    what = f"`rcenp attack {model_name} --attack {attack} --jobs {args.jobs}`"
    env = dict(os.environ)
    if args.source == "sample":  # no data root: the command reads the embedded sample, or MNIST's own first N
        env.pop("RCENP_DATA", None)

    def run():
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "run")
            done = subprocess.run(jobs_command(model_name, attack, args, out), capture_output=True, text=True,
                                  cwd=os.path.dirname(HERE), env=env)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                raise ValueError(f"{what} failed: {lines[-1] if lines else f'exit status {done.returncode}'}")
            with np.load(os.path.join(out, "adversarial.npz")) as files:
                clean, adversarial = files["clean"], np.asarray(files["adversarial"], dtype=np.float32)
            if clean.shape != x.shape or not np.array_equal(clean, x):
                raise ValueError(f"{what} attacked other images than this script read ({args.source} images)")
            return adversarial
    return run


def bench_model(name, args, attacks_module):
    import torch

    from torch_attacks import SALIENCIES, bim, jsma
    from torch_twin import load_twin

    model, twin, manifest = load_twin(name)
    twin.requires_grad_(False)  # attacks differentiate with respect to the images only
    x, labels, identity = _load_images(args, manifest["config"]["dataset"])
    xt = torch.from_numpy(x)
    if args.channels_last:  # oneDNN's preferred layout on CPU; x* keeps it through the attacks
        twin.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)

    def predict_torch(images):
        with torch.no_grad():
            return twin(torch.from_numpy(images)).argmax(1).numpy()

    def predict_rcenp(images):
        return np.asarray(model.predict(images)).astype(np.int64)

    with torch.no_grad():
        logits_t = twin(xt).numpy()
    logits_r = np.asarray(model.predict_logits(x))
    clean = logits_r.argmax(1)
    report = {"data": identity, "n": len(x), "clean_error": float((clean != labels).mean()),
              "twin": {"max_logit_difference_relative": float(np.abs(logits_r - logits_t).max() / np.abs(logits_r).max()),
                       "prediction_agreement": float((logits_t.argmax(1) == clean).mean())}}
    least_likely = logits_r.argmin(1)

    def jobs_runs(attack):
        return {f"rcenp_cli_jobs{args.jobs}": cli_jobs_run(name, attack, args, x)} if args.jobs else {}

    def settings(**values):
        """An attack's settings: its own, then the batch each side attacks in."""
        jobs = {"rcenp_cli_jobs_batch_size": -(-len(x) // args.jobs)} if args.jobs else {}
        return {**values, "batch_size": len(x), **jobs}

    if "bim" in args.attacks:
        ours = rcenp_attack(attacks_module, "bim")
        report["bim"] = _compare(
            f"{name} bim", x, args, {"torch": lambda: bim(twin, xt, args.eps, steps=BIM_STEPS)},
            ours if isinstance(ours, str) else lambda: ours(model, x, args.eps, steps=BIM_STEPS, batch_size=len(x)),
            lambda pred: pred != clean, predict_torch, predict_rcenp, jobs_runs("bim"))
        report["bim"]["settings"] = settings(eps=args.eps, steps=BIM_STEPS,
                                             success="adversarial prediction != clean prediction")
    if "jsma" in args.attacks:
        ours = rcenp_attack(attacks_module, "jsma")
        saliencies = SALIENCIES if args.torch_jsma == "both" else (args.torch_jsma,)
        runs = {("torch" if s == "pang2018" else f"torch_{s}"):
                (lambda s=s: jsma(twin, xt, args.eps, JSMA_MAX_ITERATIONS, saliency=s)) for s in saliencies}
        report["jsma"] = _compare(
            f"{name} jsma", x, args, runs,
            ours if isinstance(ours, str) else
            lambda: ours(model, x, args.eps, max_iterations=JSMA_MAX_ITERATIONS, variant=JSMA_VARIANT,
                         batch_size=len(x)),
            lambda pred: pred == least_likely, predict_torch, predict_rcenp, jobs_runs("jsma"))
        report["jsma"]["settings"] = settings(theta=args.eps, max_iterations=JSMA_MAX_ITERATIONS, variant=JSMA_VARIANT,
                                              success="adversarial prediction == least-likely clean class")
        # rcenp takes one backward per pick (the log-target form); the protocol's dt*|do| takes two
        if "seconds_rcenp_over_torch_log_target" in report["jsma"]:
            report["jsma"]["like_for_like"] = "seconds_rcenp_over_torch_log_target"
    if args.cw:
        report["cw_l2"] = bench_cw(model, twin, x, labels, clean, args, attacks_module, predict_rcenp)
    return report


def _threads(torch):
    from rcenp.ops.layout import blas_thread_count, workers

    return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
            "rcenp_host_workers": workers(), "rcenp_blas_threads": blas_thread_count(),
            "RCENP_HOST_THREADS": os.environ.get("RCENP_HOST_THREADS"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}


def _benchmark(args):
    return f"attacks on the first {args.n} {args.source} images, eps {args.eps}"


def _machine():
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__}


def _skipped(args, why) -> int:
    """0, after the JSON (``skipped``: ``why``) and one line on stderr: nothing to compare with."""
    sys.stderr.write(f"{os.path.basename(__file__)}: skipped: {why}\n")
    emit_report({"benchmark": _benchmark(args), "skipped": f"{why}: nothing to compare rcenp's attacks with",
                 "machine": _machine()}, args.json)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mnist-resnet32-ce", "mnist-resnet32-rce"],
                        help="shipped model names or run directories")
    parser.add_argument("--attacks", nargs="*", choices=ATTACKS, default=list(ATTACKS),
                        help="BIM and/or JSMA; none (a bare --attacks) with --cw times C&W only (without --cw: "
                             "refused, nothing to time)")
    parser.add_argument("--n", type=count, default=100, help="the first N test images")
    parser.add_argument("--source", choices=("sample", "test"), default="sample",
                        help="the embedded 1,000-image MNIST sample, or the test split under --data-dir")
    parser.add_argument("--data-dir", help="the data root for --source test (default: $RCENP_DATA, else the per-user "
                                           "cache)")
    parser.add_argument("--eps", type=_eps, default=0.1,
                        help="BIM eps and JSMA theta in (0, 1], in the units of images in [-0.5, 0.5] (0.1 is 25.5 "
                             "on 0-255)")
    parser.add_argument("--torch-jsma", choices=("pang2018", "log_target", "both"), default="both",
                        help="the PyTorch JSMA's saliency: the protocol's dt*|do| (entry 'torch'), "
                             "argmax d log F_t/dx as rcenp computes it (entry 'torch_log_target'), or both")
    parser.add_argument("--repeats", type=count, default=1, help="timed runs of each attack (median reported)")
    parser.add_argument("--threads", type=count, default=2,
                        help="threads for each side: PyTorch's intra- and inter-op threads, RCENP_HOST_THREADS, "
                             "OPENBLAS_NUM_THREADS and OMP_NUM_THREADS (the script restarts itself once to set the last "
                             "two before NumPy and PyTorch load)")
    parser.add_argument("--warmup", type=nonnegative(integer), default=1,
                        help="untimed runs of each BIM/JSMA implementation before timing (C&W: none)")
    parser.add_argument("--jobs", type=nonnegative(integer), default=0, metavar="J",
                        help="also time `rcenp attack --jobs J` on the same images (entry 'rcenp_cli_jobsJ'): J "
                             "one-thread shard processes and their merge, from a fresh process, files included")
    parser.add_argument("--channels-last", action="store_true",
                        help="run the twin's convolutions channels-last (torch.channels_last), as rcenp stores activations")
    parser.add_argument("--cw", action="store_true", help="also C&W-L2: foolbox 3.3.4 against rcenp.attacks.cw_l2")
    parser.add_argument("--cw-n", type=count, default=20, help="images for C&W (the first of the N)")
    parser.add_argument("--cw-steps", type=count, default=100, help="C&W iterations per binary-search step")
    parser.add_argument("--cw-binary-steps", type=count, default=3)
    parser.add_argument("--cw-c0", type=positive(real), default=1.0, help="initial constant c")
    parser.add_argument("--cw-lr", type=positive(real), default=0.01, help="Adam learning rate")
    parser.add_argument("--cw-kappa", type=nonnegative(real), default=0.0, help="confidence margin")
    parser.add_argument("--cw-abort-early", choices=["on", "off"], default="on",
                        help="abort-early on both sides (foolbox checks the batch's summed loss, rcenp each "
                             "sample's own) or off on both, so both run every iteration")
    parser.add_argument("--seed", type=nonnegative(integer), default=0, help="C&W target draw")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.jobs > args.n:
        parser.error(f"--jobs {args.jobs}: at most --n ({args.n}) shards")
    if args.data_dir is not None and args.source != "test":
        parser.error("--data-dir is read with --source test only (the default, sample, is embedded)")
    if not args.attacks and not args.cw:
        parser.error("--attacks names none and --cw is not given: nothing to time (name bim and/or jsma, or add --cw)")
    if importlib.util.find_spec("torch") is None:
        return _skipped(args, "PyTorch is not installed (pip install torch)")
    wanted = {name: str(args.threads) for name in ("RCENP_HOST_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if argv is None and any(os.environ.get(name) != value for name, value in wanted.items()):
        os.environ.update(wanted)  # equal threads on both sides, set before NumPy's OpenBLAS starts
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    os.environ["RCENP_HOST_THREADS"] = wanted["RCENP_HOST_THREADS"]  # called from Python: rcenp reads it lazily
    try:
        import torch
    except ImportError as exc:
        return _skipped(args, f"PyTorch does not import ({exc})")
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:  # refused once this process has set it or run inter-op work (main called again)
        pass  # _threads records the count that holds
    attacks_module = _rcenp_attacks()
    report = {"benchmark": _benchmark(args), "machine": {**_machine(), "torch": torch.__version__},
              "threads": _threads(torch), "torch_memory_format": "channels_last" if args.channels_last else "contiguous",
              "rcenp_attacks": "available" if attacks_module is not None else UNAVAILABLE,
              "load_average_1_5_15_min_at_start": list(os.getloadavg()),
              "models": {name: bench_model(name, args, attacks_module) for name in args.models}}
    report["load_average_1_5_15_min_at_end"] = list(os.getloadavg())
    emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
