"""``rcenp reproduce --jobs J``: a run's unfinished cells computed by J worker processes side by
side, one thread each; the command itself then writes the report.

Why processes: as for ``rcenp attack --jobs`` (``rcenp.attacks.jobs``), two one-thread processes
keep this project's 2-core VM busier than one process with two workers, whose threads meet at
every operation; and a machine with more cores runs that many cells at once. rcenp's results do
not depend on the number of threads, so each cell's files are those of a run without --jobs.

How: the command sorts the cells out first (setting stale folders aside), then starts J workers,
each ``rcenp reproduce`` with the same arguments and ``--resume``, told by ``WORKER_ENV`` that it
is worker K of J. Every worker walks the same list of unfinished cells and computes the ones it
can lock (an exclusive ``flock`` on OUT/locks/<cell>.lock, which the operating system releases
however a worker ends), so each cell goes to the first free worker and to no other; a transfer
cell whose substitute's C&W-wb cell is in another worker's hands waits for it. A worker records
its cells' outcomes in OUT/workers/K.json and its console output in OUT/workers/K.log; the
command merges the outcomes into OUT/cells.json. A kill at any point loses only the cells in
work, which resume from their last finished batch, as without --jobs; a worker stops with the
command even when the command is killed outright (``rcenp.attacks.jobs.stop_with_parent``).
The locks are POSIX ``flock``s: on a system without ``fcntl`` (Windows) --jobs is refused.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rcenp.attacks.jobs import ONE_THREAD, PARENT_ENV, last_line, stop_children, stop_on_termination
from rcenp.progress import Progress, plural

WORKER_ENV = "RCENP_REPRODUCE_WORKER"  # "K/J" in worker K of a --jobs J command


def worker_id() -> tuple[int, int] | None:
    """(K, J) in worker K of J, else None."""
    value = os.environ.get(WORKER_ENV)
    if not value:
        return None
    k, j = (int(part) for part in value.split("/"))
    return k, j


def check_jobs(jobs) -> int:
    """``jobs`` as a count of worker processes; ValueError (one line) for anything but an integer
    ≥ 1, and for more than one where file locks are unavailable."""
    from rcenp.checks import check_steps

    jobs = check_steps("--jobs", jobs)
    if jobs > 1 and importlib.util.find_spec("fcntl") is None:
        raise ValueError("--jobs above 1 needs POSIX file locks (fcntl), which this system lacks")
    return jobs


@contextlib.contextmanager
def cell_lock(out_dir, key: str, blocking: bool = True):
    """Hold OUT/locks/<key>.lock exclusively (→ True) while the block runs; → False at once where
    another process holds it and not ``blocking``. Without ``fcntl`` (one process only): → True."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    path = Path(out_dir) / "locks" / (key.replace("/", "--") + ".lock")
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


def run_workers(argv: list[str], out_dir, jobs: int, todo, stream=None) -> dict:
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
    for k in range(1, jobs + 1):  # a record is this command's: an earlier one's cells are finished cells now
        record_path(out_dir, k).unlink(missing_ok=True)
    root = str(Path(__file__).resolve().parents[2])  # the workers import this rcenp, installed or not
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, **ONE_THREAD, PYTHONPATH=path, **{PARENT_ENV: str(os.getpid())})
    total_cost = sum(cell.cost for cell in todo) or 1.0
    progress = Progress(out_dir / "reproduce.log", len(todo), interval=10.0, stream=stream, unit="cell")
    progress.message(f"{plural(jobs, 'worker process', 'worker processes')} of one thread each "
                     f"(their output: {folder}/K.log)")
    children, logs, failed, grace = [], [], None, 0.0
    handlers = stop_on_termination()
    try:
        for k in range(1, jobs + 1):
            logs.append(open(folder / f"{k}.log", "w"))
            children.append(subprocess.Popen([sys.executable, "-m", "rcenp", *argv], stdout=logs[-1],
                                              stderr=subprocess.STDOUT, env=dict(env, **{WORKER_ENV: f"{k}/{jobs}"})))
        start = time.monotonic()
        while any(child.poll() is None for child in children):
            failed = next((k for k, child in enumerate(children, 1) if child.returncode not in (None, 0)), None)
            if failed:  # the others are stopped below
                break
            finished = [c for c in todo if result_file(out_dir / "cells" / c.key, c.kind).is_file()]
            done_cost = sum(c.cost for c in finished)
            eta = (total_cost - done_cost) * (time.monotonic() - start) / done_cost if done_cost else math.inf
            progress.update(len(finished), f"{sum(c.poll() is None for c in children)} of {jobs} workers running", eta)
            time.sleep(1.0)
        failed = failed or next((k for k, child in enumerate(children, 1) if child.returncode != 0), None)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and not exc.args:  # Ctrl-C: the workers have it too
            grace = 5.0
        progress.message(f"stopping the workers ({type(exc).__name__} {' '.join(map(str, exc.args))}); "
                         "finished cells are kept: rerun with --resume")
        raise
    finally:
        stop_children(children, grace)
        for log in logs:
            log.close()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        progress.close()
    if failed:
        log = folder / f"{failed}.log"
        raise ValueError(f"worker {failed}/{jobs} failed: {last_line(log)} (its output: {log}); "
                         "finished cells are kept: rerun with --resume")
    outcomes: dict = {}
    for k in range(1, jobs + 1):
        if record_path(out_dir, k).is_file():
            outcomes.update(json.loads(record_path(out_dir, k).read_text()))
    return outcomes
