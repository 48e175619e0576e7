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
optimisers and is compared by outcome only.

Prints one JSON object; ``--json PATH`` also writes it (atomically). Needs torch (and foolbox for
``--cw``); the rcenp side reports "rcenp.attacks not available" when that module is missing.
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
run's files included), which on a VM that halts idle CPUs is faster than one process's workers:

    python bench/bench_attacks.py --jobs 2 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's rcenp
sys.path.insert(0, HERE)

from bench_host import steal_seconds as _steal_seconds  # noqa: E402

UNAVAILABLE = "rcenp.attacks not available"
ATTACKS = ("bim", "jsma")


def _rcenp_attacks():
    try:
        import rcenp.attacks as attacks
    except ImportError:
        return None
    return attacks


def rcenp_attack(attacks_module, name):
    """``rcenp.attacks.<name>``, or the string saying why it is missing."""
    if attacks_module is None:
        return UNAVAILABLE
    fn = getattr(attacks_module, name, None)
    return fn if fn is not None else f"rcenp.attacks.{name} not available"


def _host(result):
    """x* as a host float32 array, from an ``AttackResult`` (its ``adversarial``) or an array."""
    from rcenp.backend import as_numpy

    result = getattr(result, "adversarial", result)
    return np.asarray(as_numpy(result), dtype=np.float32)


def _timed(fn, repeats, what="", warmup=0):
    """(the last run's result, [(wall seconds, this process's CPU seconds) of every run]) after
    ``warmup`` untimed runs; each run is logged to stderr."""
    for _ in range(warmup):
        fn()
    seconds, result = [], None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        seconds.append((time.perf_counter() - start, time.process_time() - cpu))
        print(f"bench_attacks: {what}: {seconds[-1][0]:.2f} s", file=sys.stderr, flush=True)
    return result, seconds


def _cpu_seconds():
    """This process's CPU seconds, all threads, plus those of its finished child processes and
    theirs (``rcenp attack --jobs``'s shards)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def _interleaved(runs, repeats, what="", warmup=0):
    """{name: (the last run's result, [(wall s, CPU s, steal s) of every run])} for ``runs``
    {name: fn}, taken in turns: ``warmup`` untimed runs of each, then ``repeats`` rounds of one
    timed run of each, in reversed order every other round. A slow phase of the machine (this VM's
    steal time reached 30% for minutes) then falls on every implementation alike instead of on
    whichever block of repeats it met; each run's steal time (``_steal_seconds``) is recorded."""
    for name, fn in runs.items():
        for _ in range(warmup):
            fn()
    out = {name: (None, []) for name in runs}
    order = list(runs)
    for round_ in range(repeats):
        for name in (order if round_ % 2 == 0 else order[::-1]):
            steal, start, cpu = _steal_seconds(), time.perf_counter(), _cpu_seconds()
            result = runs[name]()
            wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
            steal = None if steal is None else _steal_seconds() - steal
            out[name] = (result, out[name][1] + [(wall, cpu, steal)])
            print(f"bench_attacks: {what} {name}: {out[name][1][-1][0]:.2f} s", file=sys.stderr, flush=True)
    return out


def _l2_255(x_adv, x):
    """||x* - x||_2 / sqrt(d) on the 0-255 scale, per image (N,)."""
    d = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    return 255.0 * np.sqrt((d * d).mean(1))


def _timing(x, seconds):
    """Median wall seconds, images/s and CPU seconds (all threads; on a shared machine, wall time
    counts waits for the cores and CPU time counts spinning threads), and each run's wall and
    host steal seconds where recorded."""
    wall = float(np.median([s[0] for s in seconds]))
    timing = {"seconds": wall, "images_per_s": len(x) / wall, "cpu_seconds": float(np.median([s[1] for s in seconds])),
              "seconds_all": [s[0] for s in seconds]}
    if all(len(s) > 2 and s[2] is not None for s in seconds):
        timing["host_steal_seconds_all"] = [round(s[2], 2) for s in seconds]
    return timing


def _summary(x_adv, x, success, seconds):
    l2 = _l2_255(x_adv, x)
    return {**_timing(x, seconds),
            "success_rate": float(success.mean()),
            "median_l2_255_successful": float(np.median(l2[success])) if success.any() else None,
            "median_features_changed": float(np.median((x_adv != x).reshape(len(x), -1).sum(1)))}


def _agreement(ours, theirs, pred_ours, pred_theirs):
    diff = np.abs(ours - theirs).reshape(len(ours), -1).max(1)
    return {"adv_prediction_agreement": float((pred_ours == pred_theirs).mean()),
            "identical_x_adv_fraction": float((diff <= 1e-6).mean()),
            "max_abs_x_adv_difference": float(diff.max())}


def _passes(image_passes, seconds):
    """Work done, in images through the network (one forward, with its backward where the attack
    takes a gradient), and its rate over the median wall time."""
    wall = float(np.median([s[0] for s in seconds]))
    return {"image_passes": int(image_passes), "image_passes_per_s": image_passes / wall}


def draw_targets(labels, seed):
    """(N,) targets uniform over the 9 classes != labels (10 classes)."""
    rng = np.random.default_rng(seed)
    return (labels + rng.integers(1, 10, len(labels))) % 10


def _outcome(x_adv, x, adv_pred, targets, correct, seconds):
    success = adv_pred == targets
    kept = success & correct  # the authors' efficient_index: clean-correct and successful
    l2 = _l2_255(x_adv, x)
    return {**_timing(x, seconds),
            "success_rate": float(success.mean()),
            "median_l2_255_correct_and_successful": float(np.median(l2[kept])) if kept.any() else None,
            "mean_l2_255_correct_and_successful": float(l2[kept].mean()) if kept.any() else None}


def bench_cw(model, twin, x, labels, clean, args, attacks_module, predict_rcenp):
    """C&W-L2, foolbox 3.3.4 on the twin against ``rcenp.attacks.cw_l2``, on the first
    ``args.cw_n`` images of x (N, C, H, W). Both targeted, the same targets: uniform among the 9
    classes != the true label (protocol §5.3). foolbox's ``PyTorchModel`` sees the twin's prediction
    logits (-s for RCE), as the authors' ``models_carlini`` wrapper does. The two optimisers differ
    in details (foolbox's tanh mapping, abort-early rule and best-iterate bookkeeping are its own),
    so they are compared by outcome: success and distortion."""
    import torch

    n = min(args.cw_n, len(x))
    x, labels, clean = x[:n], labels[:n], clean[:n]
    targets = draw_targets(labels, args.seed)
    correct = clean == labels
    settings = {"n": n, "binary_steps": args.cw_binary_steps, "max_iterations": args.cw_steps,
                "initial_const": args.cw_c0, "learning_rate": args.cw_lr, "kappa": args.cw_kappa,
                "abort_early": args.cw_abort_early == "on",
                "targets": f"uniform over the 9 classes != true label, seed {args.seed}"}
    entry = {"settings": settings}
    try:
        import foolbox as fb
    except ImportError:
        entry["foolbox"] = "foolbox not installed"
    else:
        fmodel = fb.PyTorchModel(twin, bounds=(-0.5, 0.5), device="cpu")
        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=args.cw_binary_steps, steps=args.cw_steps, stepsize=args.cw_lr,
            confidence=args.cw_kappa, initial_const=args.cw_c0,
            abort_early=args.cw_abort_early == "on")
        criterion = fb.criteria.TargetedMisclassification(torch.from_numpy(targets))
        xt = torch.from_numpy(x)

        sentinel, forwarded = [], []
        # foolbox runs one forward and one backward of the whole batch per iteration (no compaction):
        # count the images through the twin's forward, per run
        hook = twin.register_forward_hook(lambda module, inputs, output: forwarded.append(inputs[0].shape[0]))

        def run_foolbox():
            forwarded.clear()
            # Where its search found nothing, foolbox returns an all-zero image (landscape §2.6), and
            # its criterion then re-judges that image: a uniform grey the network happens to call the
            # target counts as a "success" at ||delta|| ~ 122 on 0-255. Those are failures; the
            # protocol returns the clean image for a failure.
            raw, clipped, success = attack(fmodel, xt, criterion, epsilons=None)
            found = raw.flatten(1).abs().amax(1) > 0
            sentinel.append(int((success & ~found).sum()))
            return torch.where((success & found).view(-1, 1, 1, 1), clipped, xt).detach().numpy()

        x_fb, seconds = _timed(run_foolbox, args.repeats, "cw_l2 foolbox")
        passes = sum(forwarded)
        hook.remove()
        with torch.no_grad():
            pred_fb = twin(torch.from_numpy(x_fb)).argmax(1).numpy()
        entry["foolbox"] = {"version": fb.__version__, **_outcome(x_fb, x, pred_fb, targets, correct, seconds),
                            "all_zero_failure_images_judged_successful": sentinel[-1],
                            "success_rate_as_foolbox_reports_it": float((pred_fb == targets).mean())
                            + sentinel[-1] / n, **_passes(passes, seconds)}
    ours = rcenp_attack(attacks_module, "cw_l2")
    if isinstance(ours, str):
        entry["rcenp"] = ours
        return entry
    results = []

    def run_rcenp():
        results.append(ours(model, x, targets=targets, labels=labels, binary_steps=args.cw_binary_steps,
                            max_iterations=args.cw_steps, initial_const=args.cw_c0, learning_rate=args.cw_lr,
                            kappa=args.cw_kappa, abort_early=args.cw_abort_early == "on"))
        return _host(results[-1])

    x_r, seconds = _timed(run_rcenp, args.repeats, "cw_l2 rcenp")
    pred_r = predict_rcenp(x_r)
    # one forward + backward per unfinished image and iteration, plus the clean and final forwards
    entry["rcenp"] = {**_outcome(x_r, x, pred_r, targets, correct, seconds),
                      **_passes(int(results[-1].iterations.sum()) + 2 * n, seconds)}
    if isinstance(entry["foolbox"], dict):
        entry["agreement"] = {"success_agreement": float(((pred_r == targets) == (pred_fb == targets)).mean()),
                              **_agreement(x_r, x_fb, pred_r, pred_fb)}
        entry["seconds_rcenp_over_foolbox"] = entry["rcenp"]["seconds"] / entry["foolbox"]["seconds"]
        # the engines alone: foolbox runs every image every iteration (its abort-early tests the batch's
        # summed loss), rcenp drops finished images, so wall time also measures the algorithm
        entry["passes_per_s_foolbox_over_rcenp"] = \
            entry["foolbox"]["image_passes_per_s"] / entry["rcenp"]["image_passes_per_s"]
        # the images whose success differs, with rcenp's per-sample audit (c of each binary step, ...)
        l2_r, l2_fb = _l2_255(x_r, x), _l2_255(x_fb, x)
        both = correct & (pred_r == targets) & (pred_fb == targets)  # the rule: images both break
        entry["both_successful"] = {
            "n": int(both.sum()),
            "median_l2_255_rcenp": float(np.median(l2_r[both])) if both.any() else None,
            "median_l2_255_foolbox": float(np.median(l2_fb[both])) if both.any() else None,
            "median_ratio_rcenp_over_foolbox": float(np.median(l2_r[both]) / np.median(l2_fb[both]))
            if both.any() else None}
        details = getattr(results[-1], "details", None) or [{}] * len(x)
        entry["disagreements"] = [
            {"index": int(i), "label": int(labels[i]), "target": int(targets[i]),
             "foolbox": {"success": bool(pred_fb[i] == targets[i]), "l2_255": float(l2_fb[i])},
             "rcenp": {"success": bool(pred_r[i] == targets[i]), "l2_255": float(l2_r[i]),
                       **{k: details[i][k] for k in ("c", "step_success", "step_iterations", "step_stop")
                          if k in details[i]}}}
            for i in np.flatnonzero((pred_r == targets) != (pred_fb == targets))]
    return entry


def _load_images(args, dataset):
    from rcenp.data import load, load_sample

    if args.source == "sample":
        if dataset != "mnist":
            raise SystemExit(f"bench_attacks: error: the embedded sample is MNIST; use --source test for {dataset}")
        data = load_sample()
    else:
        data = load(dataset, "test")
    if args.n > len(data):
        raise SystemExit(f"bench_attacks: error: --n {args.n} but the {args.source} set has {len(data)} images")
    return data.images[:args.n], data.labels[:args.n], data.identity


def _compare(name, x, args, torch_runs, run_rcenp, success_fn, predict_torch, predict_rcenp, rcenp_runs=None):
    """Time and compare one attack. ``torch_runs``: {entry name: function returning x*};
    ``run_rcenp``: a function returning x*, or the string saying why there is none; ``rcenp_runs``:
    {entry name: function returning host x*} of other ways to run rcenp (``--jobs``), compared
    with ``run_rcenp``'s; ``success_fn(adv_pred)``: success per image."""
    entry, outputs = {}, {}
    runs = dict(torch_runs)
    if not isinstance(run_rcenp, str):
        runs["rcenp"] = lambda: _host(run_rcenp())
        runs.update(rcenp_runs or {})
    timed = _interleaved(runs, args.repeats, name, args.warmup)
    for key in torch_runs:
        x_t, seconds = timed[key]
        x_t = x_t.detach().numpy()
        pred = predict_torch(x_t)
        entry[key], outputs[key] = _summary(x_t, x, success_fn(pred), seconds), (x_t, pred)
    if isinstance(run_rcenp, str):
        entry["rcenp"] = run_rcenp
        return entry
    x_r, seconds = timed["rcenp"]
    pred_r = predict_rcenp(x_r)
    entry["rcenp"] = _summary(x_r, x, success_fn(pred_r), seconds)
    for key, (x_t, pred) in outputs.items():
        entry[f"agreement_rcenp_{key}"] = _agreement(x_r, x_t, pred_r, pred)
        entry[f"seconds_rcenp_over_{key}"] = entry["rcenp"]["seconds"] / entry[key]["seconds"]
    for key in rcenp_runs or {}:
        x_j, seconds = timed[key]
        pred_j = predict_rcenp(x_j)
        entry[key] = _summary(x_j, x, success_fn(pred_j), seconds)
        entry[f"agreement_{key}_rcenp"] = _agreement(x_j, x_r, pred_j, pred_r)
        for torch_key in outputs:
            entry[f"seconds_{key}_over_{torch_key}"] = entry[key]["seconds"] / entry[torch_key]["seconds"]
    return entry


def cli_jobs_run(model_name, attack, args):
    """A function returning x* (N, C, H, W) from ``rcenp attack MODEL --jobs J`` on the first N
    images, in fresh processes: J one-thread shards of N/J images each, then their merge, timed
    end to end (imports, the model, detector scores and the run's files included)."""
    def run():
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "run")
            command = [sys.executable, "-m", "rcenp", "attack", model_name, "--attack", attack, "--eps", repr(args.eps),
                       "--n", str(args.n), "--batch-size", str(-(-args.n // args.jobs)), "--jobs", str(args.jobs),
                       "--out", out]
            done = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(HERE))
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip().splitlines()[-1:]}")
            with np.load(os.path.join(out, "adversarial.npz")) as files:
                return np.asarray(files["adversarial"], dtype=np.float32)
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
        return {f"rcenp_cli_jobs{args.jobs}": cli_jobs_run(name, attack, args)} if args.jobs else {}

    if "bim" in args.attacks:
        ours = rcenp_attack(attacks_module, "bim")
        report["bim"] = _compare(
            f"{name} bim", x, args, {"torch": lambda: bim(twin, xt, args.eps, steps=10)},
            ours if isinstance(ours, str) else lambda: ours(model, x, args.eps, steps=10),
            lambda pred: pred != clean, predict_torch, predict_rcenp, jobs_runs("bim"))
        report["bim"]["settings"] = {"eps": args.eps, "steps": 10, "success": "adversarial prediction != clean prediction"}
    if "jsma" in args.attacks:
        ours = rcenp_attack(attacks_module, "jsma")
        saliencies = SALIENCIES if args.torch_jsma == "both" else (args.torch_jsma,)
        runs = {("torch" if s == "pang2018" else f"torch_{s}"): (lambda s=s: jsma(twin, xt, args.eps, 100, saliency=s))
                for s in saliencies}
        report["jsma"] = _compare(
            f"{name} jsma", x, args, runs,
            ours if isinstance(ours, str) else
            lambda: ours(model, x, args.eps, max_iterations=100, variant="pang2018"),
            lambda pred: pred == least_likely, predict_torch, predict_rcenp, jobs_runs("jsma"))
        report["jsma"]["settings"] = {"theta": args.eps, "max_iterations": 100, "variant": "pang2018",
                                      "success": "adversarial prediction == least-likely clean class"}
        # rcenp takes one backward per pick (the log-target form); the protocol's dt*|do| takes two
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist-resnet32-ce", "mnist-resnet32-rce"],
                        help="shipped model names or run directories")
    parser.add_argument("--attacks", nargs="*", choices=ATTACKS, default=list(ATTACKS),
                        help="BIM and/or JSMA; none (a bare --attacks) with --cw times C&W only")
    parser.add_argument("--n", type=int, default=100, help="the first N test images")
    parser.add_argument("--source", choices=("sample", "test"), default="sample",
                        help="the embedded 1,000-image MNIST sample, or the test split under RCENP_DATA")
    parser.add_argument("--eps", type=float, default=0.1, help="BIM eps and JSMA theta, [-0.5, 0.5] units")
    parser.add_argument("--torch-jsma", choices=("pang2018", "log_target", "both"), default="both",
                        help="the PyTorch JSMA's saliency: the protocol's dt*|do| (entry 'torch'), "
                             "argmax d log F_t/dx as rcenp computes it (entry 'torch_log_target'), or both")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each attack (median reported)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for each side: torch.set_num_threads, RCENP_HOST_THREADS, OPENBLAS_NUM_THREADS "
                             "and OMP_NUM_THREADS (the script restarts itself once to set the last two before NumPy "
                             "and PyTorch load)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs of each BIM/JSMA implementation before timing (C&W: none)")
    parser.add_argument("--jobs", type=int, default=0, metavar="J",
                        help="also time `rcenp attack --jobs J` on the same images (entry 'rcenp_cli_jobsJ'): J "
                             "one-thread shard processes and their merge, from a fresh process, files included")
    parser.add_argument("--channels-last", action="store_true",
                        help="run the twin's convolutions channels-last (torch.channels_last), as rcenp stores activations")
    parser.add_argument("--cw", action="store_true", help="also C&W-L2: foolbox 3.3.4 against rcenp.attacks.cw_l2")
    parser.add_argument("--cw-n", type=int, default=20, help="images for C&W (the first of the N)")
    parser.add_argument("--cw-steps", type=int, default=100, help="C&W iterations per binary-search step")
    parser.add_argument("--cw-binary-steps", type=int, default=3)
    parser.add_argument("--cw-c0", type=float, default=1.0, help="initial constant c")
    parser.add_argument("--cw-lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--cw-kappa", type=float, default=0.0, help="confidence margin")
    parser.add_argument("--cw-abort-early", choices=["on", "off"], default="on",
                        help="abort-early on both sides (foolbox checks the batch's summed loss, rcenp each "
                             "sample's own) or off on both, so both run every iteration")
    parser.add_argument("--seed", type=int, default=0, help="C&W target draw")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.threads < 1 or args.cw_n < 1 or args.warmup < 0 or args.jobs < 0:
        parser.error("--n, --repeats, --threads and --cw-n must be positive, --warmup and --jobs not negative")
    if args.jobs > args.n:
        parser.error(f"--jobs {args.jobs}: at most --n ({args.n}) shards")
    wanted = {name: str(args.threads) for name in ("RCENP_HOST_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if argv is None and any(os.environ.get(name) != value for name, value in wanted.items()):
        os.environ.update(wanted)  # equal threads on both sides, set before NumPy's OpenBLAS starts
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    os.environ["RCENP_HOST_THREADS"] = wanted["RCENP_HOST_THREADS"]  # called from Python: rcenp reads it lazily
    if args.eps < 0:
        parser.error("--eps must be >= 0")
    try:
        import torch
    except ImportError:
        raise SystemExit("bench_attacks: error: PyTorch is not installed (pip install torch)") from None
    torch.set_num_threads(args.threads)
    attacks_module = _rcenp_attacks()
    report = {"benchmark": f"attacks on the first {args.n} {args.source} images, eps {args.eps}",
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__},
              "threads": _threads(torch), "torch_memory_format": "channels_last" if args.channels_last else "contiguous",
              "rcenp_attacks": "available" if attacks_module is not None else UNAVAILABLE,
              "load_average_1_5_15_min_at_start": list(os.getloadavg()),
              "models": {name: bench_model(name, args, attacks_module) for name in args.models}}
    report["load_average_1_5_15_min_at_end"] = list(os.getloadavg())
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        from rcenp.checkpoint import atomic_write_text  # this checkout's rcenp (sys.path above)

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
