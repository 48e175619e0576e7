"""``rcenp reproduce --jobs J``: a run's unfinished cells computed by J worker processes side by
side, one thread each; the command itself then writes the report.

Why processes: as for ``rcenp attack --jobs`` (``rcenp.attacks.jobs``), two one-thread processes
keep this project's 2-core VM busier than one process with two workers, whose threads meet at
every operation; and a machine with more cores runs that many cells at once. rcenp's results do
not depend on the number of threads, so each cell's files are those of a run without --jobs.

How: the command holds OUT/.lock while it runs (a second command on the same OUT is refused),
sorts the cells out (setting stale folders aside), then starts J workers, each ``rcenp
reproduce`` with the same arguments and ``--resume``, told by ``WORKER_ENV`` that it is worker K
of J. Every worker walks the same list of unfinished cells and computes the ones it can lock (an
exclusive ``flock`` on OUT/locks/<cell>.lock, which the operating system releases however a
worker ends), so each cell goes to the first free worker and to no other; a transfer cell whose
substitute's C&W-wb cell is in another worker's hands waits for it. A worker records its cells'
outcomes in OUT/workers/K.json, which the command merges into OUT/cells.json and removes, and
appends its console output to OUT/workers/K.log. A kill at any point loses only the cells in
work, which resume from their last finished batch, as without --jobs; a worker stops with the
command even when the command is killed outright (``rcenp.attacks.jobs.stop_with_parent``;
Linux only: elsewhere a worker finishes its cell). The locks are POSIX ``flock``s: on a system
without ``fcntl`` (Windows) --jobs above 1 is refused. At most one worker per core.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rcenp.attacks.jobs import PARENT_ENV, child_env, child_processes, last_line
from rcenp.progress import Progress, plural

WORKER_ENV = "RCENP_REPRODUCE_WORKER"  # "K/J" in worker K of a --jobs J command


def worker_id() -> tuple[int, int] | None:
    """(K, J) in worker K of J, else None. ValueError where ``WORKER_ENV`` is set outside a worker
    (its --jobs command sets ``PARENT_ENV`` beside it) or malformed."""
    value = os.environ.get(WORKER_ENV)
    if value is None:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", value)
    if not match or PARENT_ENV not in os.environ or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"{WORKER_ENV}={value!r} is set only by rcenp reproduce --jobs for its workers; unset it")
    return int(match.group(1)), int(match.group(2))


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_jobs(jobs) -> int:
    """``jobs`` as a count of worker processes; ValueError (one line) for anything but an integer
    from 1 to the number of cores, and for more than one where file locks are unavailable."""
    from rcenp.checks import check_steps

    jobs = check_steps("--jobs", jobs)
    if jobs > cores():
        raise ValueError(f"--jobs {jobs}: this machine has {plural(cores(), 'core', 'cores')}, so at most "
                         f"{cores()} workers of one thread each run side by side")
    if jobs > 1 and importlib.util.find_spec("fcntl") is None:
        raise ValueError("--jobs above 1 needs POSIX file locks (fcntl), which this system lacks")
    return jobs


@contextlib.contextmanager
def run_lock(out_dir):
    """Hold OUT/.lock for one ``rcenp reproduce`` command (its workers are its own) → ValueError
    at once where another command holds it; on leaving, OUT/locks (the cells' lock files, which
    no other command can be waiting on) and the workers' records (merged by then, or left by a
    failed run: their cells are finished cells) are removed. Without ``fcntl``: no check."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(Path(out_dir) / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another rcenp reproduce is running on {out_dir}: wait for it to end, "
                             "or choose another --out") from None
        try:
            yield
        finally:
            shutil.rmtree(Path(out_dir) / "locks", ignore_errors=True)
            for record in (Path(out_dir) / "workers").glob("*.json"):  # merged, or left by a failed --jobs run
                record.unlink()
            fcntl.flock(handle, fcntl.LOCK_UN)


def held(path) -> bool:
    """Whether a process holds the ``flock`` on ``path`` now (False where there is no such file, or
    no ``fcntl``). Creates nothing; it takes the free lock for an instant, so a command starting in
    that instant is refused as if a run were there."""
    try:
        import fcntl
        handle = open(path)
    except (ImportError, OSError):
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def in_progress(out_dir, keys) -> tuple[bool, set]:
    """(whether a command holds OUT's run lock, the cells of ``keys`` a process computes now):
    what ``--plan`` says of a run already at work on OUT. (Cells outside a lock, as without fcntl, read
    as not in work.)"""
    running = held(Path(out_dir) / ".lock")
    return running, {k for k in keys if held(lock_path(out_dir, k))} if running else set()


def lock_path(out_dir, key: str) -> Path:
    """OUT/locks/<cell>.lock, cell ``key``'s lock file (``cell_lock``)."""
    return Path(out_dir) / "locks" / (key.replace("/", "--") + ".lock")


@contextlib.contextmanager
def cell_lock(out_dir, key: str, blocking: bool = True):
    """Hold OUT/locks/<key>.lock exclusively (→ True) while the block runs; → False at once where
    another process holds it and not ``blocking``. Without ``fcntl`` (one process only): → True."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    path = lock_path(out_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_path(out_dir, k: int) -> Path:
    return Path(out_dir) / "workers" / f"{k}.json"


def run_workers(argv: list[str], out_dir, jobs: int, todo, stream=None, intro=()) -> dict:
    """Run ``jobs`` workers (``python -m rcenp`` + ``argv``, one thread each) until every one has
    ended, with one progress line over the cells of ``todo`` (``Cell``s with their ``cost``) → the
    outcomes the workers recorded, {cell key: outcome}. Raises ValueError naming the first worker
    that failed (its last line, its log); the others are stopped, and every finished cell is kept
    for ``--resume``."""
    from rcenp.reproduce.cells import result_file

    stream = sys.stderr if stream is None else stream
    out_dir = Path(out_dir)
    folder = out_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, jobs + 1):  # a record left by a command cut short: its cells are finished cells now
        record_path(out_dir, k).unlink(missing_ok=True)
    env = child_env()
    total_cost = sum(cell.cost for cell in todo) or 1.0
    progress = Progress(out_dir / "reproduce.log", len(todo), interval=10.0, stream=stream, unit="cell")
    for line in intro:
        progress.message(line)
    progress.message(f"{plural(jobs, 'worker process', 'worker processes')} of one thread each "
                     f"(their output: {folder}/K.log)")
    failed, start, shown = None, time.monotonic(), None
    try:
        with child_processes(progress, "workers", "cells") as (children, logs):
            for k in range(1, jobs + 1):
                logs.append(open(folder / f"{k}.log", "a"))
                logs[-1].write(f"== worker {k}/{jobs}, {time.strftime('%Y-%m-%d %H:%M:%S')}: rcenp {' '.join(argv)}\n")
                logs[-1].flush()
                children.append(subprocess.Popen([sys.executable, "-m", "rcenp", *argv], stdout=logs[-1],
                                                  stderr=subprocess.STDOUT, env={**env, WORKER_ENV: f"{k}/{jobs}"}))
            while any(child.poll() is None for child in children):
                failed = next((k for k, child in enumerate(children, 1) if child.returncode not in (None, 0)), None)
                if failed:  # the others are stopped on leaving the block
                    break
                finished = [c for c in todo if result_file(out_dir / "cells" / c.key, c.kind).is_file()]
                running = sum(c.poll() is None for c in children)
                if (len(finished), running) != shown:  # a line when something changed, not every second
                    shown = len(finished), running
                    done_cost = sum(c.cost for c in finished)
                    eta = (total_cost - done_cost) * (time.monotonic() - start) / done_cost if done_cost else math.inf
                    progress.update(len(finished), f"{running} of {jobs} workers running", eta, force=True)
                time.sleep(1.0)
            failed = failed or next((k for k, child in enumerate(children, 1) if child.returncode != 0), None)
            if failed:
                log, status = folder / f"{failed}.log", children[failed - 1].returncode
                how = (f"was killed by {signal.Signals(-status).name}"
                       if status < 0 and -status in signal.valid_signals()
                       else f"failed (exit status {status}): {last_line(log)}")
                error = (f"worker {failed}/{jobs} {how} (its output: {log}); finished cells are kept: "
                         "rerun with --resume")
                progress.message(error, echo=False)  # the command's error line says it on the console
            else:
                every = ("all " if len(todo) > 1 else "") + plural(len(todo), "cell", "cells")
                progress.update(len(todo), f"{every} computed in {time.monotonic() - start:.0f} s by {jobs} workers",
                                0.0, force=True)
    finally:
        progress.close()
    if failed:
        raise ValueError(error)
    outcomes: dict = {}
    for k in range(1, jobs + 1):  # merged into OUT/cells.json by the caller
        if record_path(out_dir, k).is_file():
            outcomes.update(json.loads(record_path(out_dir, k).read_text()))
            record_path(out_dir, k).unlink()
    return outcomes
