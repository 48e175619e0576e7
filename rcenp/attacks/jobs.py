"""``rcenp attack --jobs J``: one run as J shard processes side by side on this machine, each
with one thread, then merged into the single run's files (``--shard``, ``--merge``:
``rcenp.attacks.shards``).

Why processes. In one process rcenp's two host workers meet at every operation (about 120
times per BIM iteration on ResNet-32), and a worker that waits lets its CPU go idle. On a virtual
machine that halts idle CPUs at once, such runs lose time to the host (``bench/bench_attacks.py``
records the steal time per run: it fell on rcenp's in-process runs, not on PyTorch's spinning
threads): on this project's 2-core VM, one process with two workers took 19-25 s for JSMA on 40
MNIST images (batch 20), and two one-thread shard processes plus the merge 11-12 s, with the same
samples.jsonl. Shards never wait for each other, and rcenp's results do not depend on the number
of threads, so the merged files equal the single run's.

Layout: the shards run in ``OUT/shards/K-of-J`` (each with its own attack.log; the console
output of each process in its ``console.log``), the merged run in ``OUT``, and this command's
progress in ``OUT/jobs.log``. ``--resume`` (with the same J) resumes every shard from its last
finished batch, and a merge cut short. Once the run has finished, ``OUT/shards`` may be deleted:
``--resume`` of a finished run reads only ``OUT``. A shard stops with this command however it
ends (Ctrl-C, SIGTERM, SIGHUP, and on Linux even SIGKILL: ``stop_with_parent``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from rcenp.backend import default_device, xp_for
from rcenp.checkpoint import atomic_write_text, check_folder
from rcenp.progress import Progress, plural

ONE_THREAD = {"RCENP_HOST_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}
PARENT_ENV = "RCENP_SHARD_PARENT"  # set for a shard process: the pid of the --jobs process it stops with
NOT_PASSED = {"help", "model", "out", "resume", "shard", "merge", "json", "jobs"}  # the parent's own


def shard_folders(out, jobs: int) -> list[Path]:
    return [Path(out) / "shards" / f"{k}-of-{jobs}" for k in range(1, jobs + 1)]


def child_argv(parser, args, shard: int, jobs: int, folder: Path, resume: bool) -> list[str]:
    """The ``rcenp attack`` command line of shard ``shard``/``jobs``: every option of ``args`` that
    is not at its default, as ``parser`` (the attack command's) reads it back, then ``--shard``,
    ``--out`` and ``--resume`` when that shard has begun."""
    argv = [str(args.model)]
    for action in parser._actions:  # argparse's list of the command's options
        if action.dest in NOT_PASSED or not action.option_strings:
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        if action.nargs == 0:  # a flag
            argv.append(action.option_strings[0])
        else:
            argv += [action.option_strings[0], str(value)]
    argv += ["--shard", f"{shard}/{jobs}", "--out", str(folder)]
    return argv + (["--resume"] if resume else [])


def stop_with_parent() -> None:
    """In a shard process (``PARENT_ENV`` set by ``run_shards``; elsewhere nothing): SIGINT, as a
    Ctrl-C (handled as Python's KeyboardInterrupt even where the shell started the --jobs process
    with SIGINT ignored), as soon as its --jobs process dies, even by SIGKILL, so that no shard outlives it
    (Linux's PR_SET_PDEATHSIG; other systems keep the shard running to its end). Raises ValueError
    when that process is gone already."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    # a --jobs process started in the background by a shell (`cmd &`) passes SIGINT on ignored, and
    # then neither its SIGINT nor this one would stop the shard: Python's handler, as in a terminal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGINT))  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if str(os.getppid()) != parent:
        raise ValueError(f"the --jobs process (pid {parent}) that started this shard is gone; stopping")


def check_jobs(args, out: Path, options: dict) -> None:
    """ValueError (one line) for a ``--jobs`` run that cannot go ahead, DataError for its test
    images: checked here, before any shard process starts (``options``: the attack's, as
    ``run_attack`` takes them; a begun shard resumed with others is refused, and without
    ``--resume`` a run folder or begun shard of other settings is named, ``another_run``)."""
    from rcenp.attacks.run import attacked_split
    from rcenp.attacks.runfiles import another_run, brief, check_png_dir, comparable, differing
    from rcenp.models.registry import resolve

    check_folder(out, "--out")
    xp_for(args.device or default_device())  # a device that is not there: refused here, not in every shard
    manifest = json.loads(resolve(args.model).with_suffix(".json").read_text())
    attacked_split(manifest["config"]["dataset"], args.n, args.data_dir)
    check_same_jobs(out, args.jobs)
    if tuple(args.shard) != (1, 1) or args.merge:
        raise ValueError("--jobs runs and merges every shard here: leave out --shard and --merge")
    batches = math.ceil(args.n / args.batch_size)
    if args.jobs > batches:
        raise ValueError(f"--jobs {args.jobs}: {args.n} images in batches of {args.batch_size} make "
                         f"{plural(batches, 'batch', 'batches')}; use at most that many jobs or a smaller --batch-size")
    now = {"model": str(args.model), "attack": args.attack, "options": options, "n": args.n, "seed": args.seed,
           "batch_size": args.batch_size}
    for folder in [out, *shard_folders(out, args.jobs)]:
        if (folder / "run.json").is_file():
            there = json.loads((folder / "run.json").read_text())
            there = comparable({key: there.get(key) for key in now})
            if not (changed := differing(there, comparable(now))):
                continue
            if not args.resume:
                raise ValueError(another_run(folder, changed, there, now))
            raise ValueError(f"{folder}: --resume with other settings than the run there: "
                             + brief(changed, there, now))
    if (out / "run.json").is_file() and not (out / "summary.json").is_file() and not (out / "shards").is_dir():
        raise ValueError(f"{out} holds a run begun without --jobs: resume it without --jobs, or choose another --out")
    if args.png is not None:  # the shards' PNG folder: refused here, not in every shard
        check_folder(args.png, "--png")
        check_png_dir(args.png, out, now, args.resume)


def check_same_jobs(out, jobs: int) -> None:
    """ValueError (one line) when ``out`` holds the unfinished shards of a run with another
    ``--jobs`` than ``jobs`` (1: a run without ``--jobs``)."""
    earlier = shards_there(out)
    if earlier not in (None, jobs) and not (Path(out) / "summary.json").is_file():
        raise ValueError(f"{out} holds the shards of a --jobs {earlier} run: resume it with --jobs {earlier} "
                         "(its finished batches are kept), or choose another --out")


def shards_there(out) -> int | None:
    """J of the ``--jobs J`` run whose shard folders ``out`` holds (the largest J found), or None."""
    counts = [int(m.group(1)) for folder in (Path(out) / "shards").glob("*-of-*")
              if (m := re.fullmatch(r"\d+-of-(\d+)", folder.name)) and (folder / "run.json").is_file()]
    return max(counts) if counts else None


def _finished_batches(folders, batches: int) -> int:
    """Batches finished over the shards: a finished shard's all (its partial/ folder is gone),
    else its partial/ batch files. ``batches``: the whole run's."""
    jobs, done = len(folders), 0
    for k, folder in enumerate(folders, 1):
        if (folder / "summary.json").is_file():
            done += k * batches // jobs - (k - 1) * batches // jobs  # shard k's (run.shard_indices)
        else:
            done += len(list((folder / "partial").glob("batch-*.jsonl")))
    return done


def last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_shards(parser, args, out: Path, stream=None) -> None:
    """Run the ``args.jobs`` shard processes of ``args``' run (one thread each) until all have
    finished, with one progress line over their batches. Raises ValueError naming the first
    shard that failed (its last console line and its log); the others are stopped, and every
    finished batch is kept for ``--resume``."""
    stream = sys.stderr if stream is None else stream
    folders = shard_folders(out, args.jobs)
    for folder in folders:
        if (folder / "run.json").is_file() and not args.resume:
            raise ValueError(f"{folder} already holds this shard's run: pass --resume to continue it, "
                             "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    env = child_env()
    total = math.ceil(args.n / args.batch_size)
    progress = Progress(out / "jobs.log", total, stream=stream, unit="batch")
    done_before = _finished_batches(folders, total)
    progress.message(f"{plural(args.jobs, 'shard process', 'shard processes')} of one thread each, in {out / 'shards'}"
                     + (f"; {done_before} of {total} batches done before" if done_before else ""))
    failed = None
    try:
        with child_processes(progress, "shards", "batches") as (children, logs):
            for k, folder in enumerate(folders, 1):
                folder.mkdir(parents=True, exist_ok=True)
                logs.append(open(folder / "console.log", "a"))
                begun = (folder / "run.json").is_file()
                argv = [sys.executable, "-m", "rcenp", "attack", *child_argv(parser, args, k, args.jobs, folder, begun)]
                children.append(subprocess.Popen(argv, stdout=logs[-1], stderr=subprocess.STDOUT, env=env))
            start = time.monotonic()
            while any(child.poll() is None for child in children):
                failed = next((k for k, child in enumerate(children, 1) if child.returncode not in (None, 0)), None)
                if failed:  # the others are stopped on leaving the block
                    break
                done = _finished_batches(folders, total)
                rate = (done - done_before) / max(time.monotonic() - start, 1e-9)
                progress.update(done, f"{sum(c.poll() is None for c in children)} of {args.jobs} shards running",
                                (total - done) / rate if rate > 0 else math.nan)
                time.sleep(1.0)
            failed = failed or next((k for k, child in enumerate(children, 1) if child.returncode != 0), None)
            if failed:
                progress.message(f"shard {failed}/{args.jobs} failed "
                                 f"(its output: {folders[failed - 1] / 'console.log'})")
            else:
                progress.update(total, f"all {args.jobs} shards finished; merging", 0.0, force=True)
    finally:
        progress.close()
    if failed:
        log = folders[failed - 1] / "console.log"
        line = last_line(log)
        hint = "" if "--resume" in line else "; finished batches are kept: rerun with --resume"
        raise ValueError(f"shard {failed}/{args.jobs} failed: {line} (its output: {log}){hint}")


def record_jobs(out, summary: dict, jobs: int, wall_s: float) -> dict:
    """Add this invocation's wall time to the merged summary (whose ``seconds_this_run`` and
    images/s sum the shards' processes) and rewrite OUT/summary.json → the summary."""
    summary = dict(summary, jobs={"processes": jobs, "wall_seconds_this_invocation": wall_s,
                                  "note": "shards and merge, this invocation; seconds_this_run sums the shards' processes"})
    atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def stop_on_termination() -> dict:
    """Make SIGTERM and SIGHUP (a scheduler's kill, a closed terminal) raise KeyboardInterrupt here,
    so that the shards are stopped with this process → the handlers to restore."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    handlers = {}
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None and threading.current_thread() is threading.main_thread():
            handlers[signum] = signal.signal(signum, interrupt)
    return handlers


def child_env() -> dict:
    """The environment of a child process of a --jobs command: one thread, this rcenp importable
    (installed or not), and ``PARENT_ENV`` for ``stop_with_parent``."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, **ONE_THREAD, PYTHONPATH=path, **{PARENT_ENV: str(os.getpid())})


@contextlib.contextmanager
def child_processes(progress, what: str, kept: str):
    """→ (children, logs): the lists that the block fills with the child processes it starts and
    their open log files. However the block ends, the children still running are stopped
    (``stop_children``; after a Ctrl-C, which has reached them too, with 5 s of grace), all are
    reaped and the logs closed; SIGTERM and SIGHUP meanwhile raise KeyboardInterrupt here
    (``stop_on_termination``). An exception is noted on ``progress`` ("stopping the WHAT: ...;
    finished KEPT are kept") and raised on."""
    children, logs, grace = [], [], 0.0
    handlers = stop_on_termination()
    try:
        yield children, logs
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and not exc.args:  # Ctrl-C: the children have it too
            grace = 5.0
        why = type(exc).__name__ + (f" ({', '.join(map(str, exc.args))})" if exc.args else "")
        progress.message(f"stopping the {what}: {why}; finished {kept} are kept: rerun with --resume")
        raise
    finally:
        stop_children(children, grace)
        for log in logs:
            log.close()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def stop_children(children, grace: float = 0.0) -> None:
    """Stop the child processes still running (a failed one, an interrupt) and reap them all.
    After a Ctrl-C on a terminal, which has reached them already (one process group), they get
    ``grace`` seconds to stop on it before one SIGINT of ours (a second one could cut short a
    child's clean-up); then 30 s before SIGKILL. Batches and cells are written atomically: none is lost."""
    deadline = time.monotonic() + grace
    while any(child.poll() is None for child in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
