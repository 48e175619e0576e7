#!/usr/bin/env python3
"""The long training runs behind the shipped models, resumable across sessions.

    python3 scripts/runs.py list                # the runs (scripts/_run_table.py), settings, which are shipped
    python3 scripts/runs.py start [RUN...]      # train in the background (no RUN: resume every run in progress)
    python3 scripts/runs.py save [RUN...]       # progress into rcenp/models/pretrained/in-progress/RUN/
    python3 scripts/runs.py stop RUN...         # stop each run right after its next checkpoint, then save it
    python3 scripts/runs.py status [RUN...]     # state (running, stopped, replaced...), step, last progress line
    python3 scripts/runs.py finish RUN...       # ship, fit the detector, write runs/detection-NAME.json
    python3 scripts/runs.py report RUN...       # command, wall time, final loss, test error, detector figures (JSON)
    python3 scripts/runs.py then RUN... -- NEXT...   # wait until every RUN has finished, then start NEXT

A run takes hours on a CPU and a session lasts three, so each one checkpoints every 250 steps
into runs/RUN/ and continues bit for bit from there (``rcenp train --resume``). ``save`` copies the
latest checkpoint, config, log and the code's commit into in-progress/RUN/, which is committed as
progress (overwritten in place: one checkpoint per run); ``start`` copies it back where runs/RUN/
has no checkpoint.

Each run trains with the code of its pinned commit (``Run.commit``), checked out as a git worktree
in .paper-code-<first 7 hex digits>, whose runs/ links to this checkout's. Later changes to the
engine's arithmetic therefore cannot make a resumed run a mix of two versions, and the command
recorded in the checkpoint and the shipped manifest is the plain one (``--out runs/RUN``). Runs
start niced (19, and their session too: ``background``) with one host worker and one BLAS thread
(results do not depend on the worker count), with $PYTHON, else the checkout's .venv, else
``python3``. A run already training into this checkout's runs/RUN (``running``) is not started
twice. ``finish`` uses this checkout's code: scripts/ship_model.py, ``rcenp detect --fit``,
scripts/detection_report.py. The checkpoint copy and the train.log summary are in
scripts/_run_files.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the sibling modules below, however this file is loaded
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _run_files import copy_checkpoint, log_summary  # noqa: E402
from _run_table import BY_NAME, RUNS, Run, code_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAVED = ROOT / "rcenp" / "models" / "pretrained" / "in-progress"
PRETRAINED = SAVED.parent
PROC = Path("/proc")


def running(run: Run) -> list[int]:
    """Process ids training into this checkout's runs/<name>: their command line ends in
    ``--out runs/<name>``, a path relative to their working directory (a .paper-code worktree, whose
    runs/ links to ours), which must resolve to our runs/<name>; another checkout's run of the same
    name is not ours, nor is another user's process, whose working directory we may not read.
    Without /proc (not Linux) the command line alone decides."""
    pids = pgrep(f"rcenp train .*--out runs/{run.name}( |$)")
    if not (PROC / "self" / "cwd").exists():
        return pids
    ours = (ROOT / "runs" / run.name).resolve()
    return [pid for pid in pids if (cwd := process_cwd(pid)) and (cwd / "runs" / run.name).resolve() == ours]


def pgrep(pattern: str) -> list[int]:
    """Process ids whose command line matches ``pattern``."""
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def process_cwd(pid: int) -> Path | None:
    """The working directory of process ``pid``; None if it has exited or is not ours to read."""
    try:
        return Path(os.readlink(PROC / str(pid) / "cwd"))
    except OSError:
        return None


def step_of(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "checkpoint.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def shipped(run: Run) -> bool:
    """Whether the shipped model ``run.ship_as`` is this run's (its manifest's command trains into
    runs/<name>): a longer run that will replace a shipped model is not "shipped" before it is."""
    try:
        command = json.loads((PRETRAINED / f"{run.ship_as}.json").read_text()).get("command", "")
    except (OSError, ValueError):
        return False
    return command.split()[-2:] == ["--out", f"runs/{run.name}"]


def replaced_by(run: Run) -> str | None:
    """The name of a later run of the table whose model is shipped under ``run.ship_as``, if any:
    the table lists a run's successors after it (the 2x schedule's runs after the 1x)."""
    later = RUNS[RUNS.index(run) + 1:]
    return next((other.name for other in later if other.ship_as == run.ship_as and shipped(other)), None)


def replaces(run: Run) -> str:
    """" (replaces the one shipped)" when another model is shipped under this run's name, unless a
    later run's: then " (replaced by RUN)"."""
    if shipped(run) or not (PRETRAINED / f"{run.ship_as}.json").is_file():
        return ""
    later = replaced_by(run)
    return f" (replaced by {later})" if later else " (replaces the one shipped)"


def in_progress(run: Run) -> bool:
    return not shipped(run) and (step_of(SAVED / run.name) is not None or (ROOT / "runs" / run.name).is_dir())


def start(run: Run) -> None:
    if shipped(run):
        print(f"{run.name}: shipped as {run.ship_as}, not started")
        return
    if (ROOT / "runs" / run.name / "metrics.json").is_file():
        print(f"{run.name}: finished, not started (ship it with: finish {run.name})")
        return
    if running(run):
        print(f"{run.name}: already running (pid {', '.join(map(str, running(run)))})")
        return
    saved_commit = (SAVED / run.name / "CODE_COMMIT").read_text().strip() if (SAVED / run.name / "CODE_COMMIT").is_file() else None
    if saved_commit and saved_commit != run.commit:
        sys.exit(f"{run.name}: saved progress was trained with {saved_commit}, the table pins {run.commit}")
    out = ROOT / "runs" / run.name
    if step_of(out) is None and step_of(SAVED / run.name) is not None:
        print(f"{run.name}: restoring step {copy_checkpoint(SAVED / run.name, out)} from {SAVED.relative_to(ROOT)}")
    out.mkdir(parents=True, exist_ok=True)
    code = code_dir(run.commit)
    env = dict(os.environ, RCENP_HOST_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(code),
               RCENP_DATA=os.environ.get("RCENP_DATA") or str(ROOT.parent / "shared" / "data"))
    command = ["nice", "-n", "19", interpreter(), "-m", "rcenp", "train", *run.train_args()]
    with open(out / "stdout.log", "ab") as log:
        process = subprocess.Popen(command, cwd=code, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=sigint_default)
    background(process.pid)
    try:  # a run that cannot start (no data, a broken environment) says so here, not hours later
        exit_status = process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        exit_status = None
    if exit_status is not None:
        tail = (out / "stdout.log").read_text(errors="replace").strip().splitlines()[-1:]
        sys.exit(f"{run.name}: exited at once with status {exit_status}: {tail[0] if tail else '(no output)'}")
    print(f"{run.name}: started (pid {process.pid}) with commit {run.commit[:7]} in {code.name}: {' '.join(command[3:])}")
    record_host(out)


def record_host(out: Path) -> None:
    """Append the host this session trains on (``rcenp.checkpoint.host``: CPU model, OpenBLAS
    kernel) to runs/RUN/hosts.log, which ``save`` carries with the checkpoint: a run resumes bit for
    bit only on the same CPU and BLAS kernel, and the pinned commits' checkpoints predate recording
    them. Best effort: a failed probe writes its reason instead."""
    try:
        probe = subprocess.run([interpreter(), "-c", "import json; from rcenp.checkpoint import host; "
                                "print(json.dumps(host()))"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                               capture_output=True, text=True)
        found = probe.stdout.strip() if probe.returncode == 0 else \
            f"unknown ({(probe.stderr.strip().splitlines() or ['no output'])[-1]})"
    except OSError as exc:
        found = f"unknown ({exc})"
    with open(out / "hosts.log", "a") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} from step {step_of(out) or 0}: {found}\n")


def interpreter() -> str:
    """$PYTHON, else this checkout's .venv/bin/python (``scripts/setup-venv.sh`` makes it), else
    ``python3``, as a path; or exit with one line saying it is missing. The .venv comes before
    ``python3`` so that a run and the runs ``then`` starts later use one interpreter however the
    script itself was started."""
    venv = ROOT / ".venv" / "bin" / "python"
    name = os.environ.get("PYTHON") or (str(venv) if venv.is_file() else "python3")
    path = shutil.which(name)
    if path is None:
        sys.exit(f"no Python interpreter {name!r} (set PYTHON to one with rcenp's dependencies, "
                 "e.g. the .venv that scripts/setup-venv.sh creates)")
    return path


def sigint_default() -> None:
    """In a run's child process before exec: SIGINT back to its default. A shell without job control
    starts ``cmd &`` with SIGINT ignored, and an ignored signal stays ignored across fork and exec,
    so a run started by ``runs.py then`` from such a shell ignored ``stop``'s SIGINT (it did on
    2026-12-03) and trained on past its checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def background(pid: int) -> None:
    """Make ``nice 19`` mean background. With the kernel's autogroup scheduling (Linux's default
    where /proc/sys/kernel/sched_autogroup_enabled is 1), CPU time is first shared fairly between
    sessions, and a process's nice only ranks it within its own session: a run started in a new
    session, however niced, took as much CPU as a whole interactive session's work (measured here:
    two runs at nice 19 held 50% of a core each beside a benchmark at nice 0). The session's own
    nice, /proc/PID/autogroup, sets its share; best effort where there is no such file."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text("19")
    except OSError:
        pass


def save(run: Run) -> None:
    out = ROOT / "runs" / run.name
    if step_of(out) is None:
        print(f"{run.name}: no checkpoint in runs/{run.name} yet, nothing saved")
        return
    step = copy_checkpoint(out, SAVED / run.name)
    (SAVED / run.name / "CODE_COMMIT").write_text(run.commit + "\n")
    print(f"{run.name}: saved step {step} to {(SAVED / run.name).relative_to(ROOT)}")


def status(run: Run) -> None:
    out = ROOT / "runs" / run.name
    step = step_of(out)
    saved = step_of(SAVED / run.name)
    later = replaced_by(run)
    if shipped(run):
        state = "shipped"
    elif later:
        state = "replaced"
    elif (out / "metrics.json").is_file():
        state = "finished"
    elif running(run):
        state = "running"
    else:
        state = "stopped" if step is not None or saved is not None or out.is_dir() else "not started"
    try:
        last = (out / "train.log").read_text().splitlines()[-1]
    except (OSError, IndexError):
        last = f"by {later}, shipped as {run.ship_as}" if later else ""
    print(f"{run.name:20} {state:11} checkpoint {step if step is not None else '-'}"
          f" saved {saved if saved is not None else '-'}  {last}")


def finish(run: Run) -> None:
    out = ROOT / "runs" / run.name
    if not (out / "metrics.json").is_file():
        sys.exit(f"runs/{run.name} has not finished (no metrics.json)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), RCENP_DATA=os.environ.get("RCENP_DATA") or str(ROOT.parent / "shared" / "data"))
    python = interpreter()
    for command in ([python, "scripts/ship_model.py", f"runs/{run.name}", run.ship_as],
                    [python, "-m", "rcenp", "detect", run.ship_as, "--fit", "--overwrite", "--per-class", str(run.per_class)],
                    [python, "scripts/detection_report.py", run.ship_as, "--per-class", str(run.per_class),
                     "--json", f"runs/detection-{run.ship_as}.json"]):
        print("+", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, env=env, check=True)
    if (SAVED / run.name).is_dir():
        shutil.rmtree(SAVED / run.name)
        print(f"{run.name}: shipped; removed its saved progress ({(SAVED / run.name).relative_to(ROOT)})")


def stop(runs: list[Run], poll_s: float = 10.0, settle_s: float = 5.0, exit_s: float = 120.0,
         sleep=time.sleep, kill=os.kill) -> int:
    """Stop each running run of ``runs`` just after its next checkpoint, then ``save`` it: the end
    of a session loses at most the steps since that checkpoint. A pinned commit may predate
    ``rcenp train``'s save on SIGINT (0d4baeb does), so a run stopped at any other moment would
    lose up to ``--checkpoint-every`` steps. A new checkpoint is seen in checkpoint.json;
    ``settle_s`` later (its arrays' rename) the run gets SIGINT, and is saved once its processes
    have exited. Runs not running are said so and skipped; a run that ends by itself meanwhile
    (finished, or killed) is saved as it is. Returns 1 if a run outlived ``exit_s`` after SIGINT."""
    waiting = {}
    for run in runs:
        if running(run):
            waiting[run.name] = (run, step_of(ROOT / "runs" / run.name))
            print(f"{run.name}: stopping after its next checkpoint (now at {waiting[run.name][1]})", flush=True)
        else:
            print(f"{run.name}: not running")
    status = 0
    while waiting:
        for name, (run, before) in list(waiting.items()):
            now = step_of(ROOT / "runs" / run.name)
            if running(run) and (now is None or now == before):
                continue
            del waiting[name]
            if running(run):
                sleep(settle_s)
                for pid in running(run):
                    kill(pid, signal.SIGINT)
                waited = 0.0
                while running(run) and waited < exit_s:
                    sleep(1.0)
                    waited += 1.0
                if running(run):
                    print(f"{run.name}: still running {exit_s:.0f} s after SIGINT (pid "
                          f"{', '.join(map(str, running(run)))}); not saved", flush=True)
                    status = 1
                    continue
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {run.name}: stopped after checkpoint {now}", flush=True)
            else:
                print(f"{run.name}: ended by itself (checkpoint {now})", flush=True)
            save(run)
        if waiting:
            sleep(poll_s)
    return status


def then(waited: list[Run], following: list[Run], poll_s: float = 60.0, sleep=time.sleep) -> int:
    """Start ``following`` as soon as every run of ``waited`` has finished (metrics.json written and
    no process left), so the cores do not idle between a run's end and the next session; shipping
    (``finish``) is left to a person. Exits with a message, starting nothing, when a waited run
    stops unfinished (killed: its checkpoint resumes with ``start``). Run it in the background:
    ``setsid nohup python3 scripts/runs.py then A B -- C D > runs/then.log 2>&1 &``."""
    def finished(run):
        return (ROOT / "runs" / run.name / "metrics.json").is_file()

    while True:
        stopped = [run.name for run in waited if not running(run) and not finished(run)]
        if stopped:
            sys.exit(f"{', '.join(stopped)} stopped before finishing: not starting {', '.join(r.name for r in following)}")
        if all(finished(run) and not running(run) for run in waited):
            break
        sleep(poll_s)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {', '.join(r.name for r in waited)} finished; starting the next",
          flush=True)
    for run in following:
        start(run)
    return 0


def report(run: Run) -> None:
    """One JSON line for the closing note: the command, code, wall time and final loss from the
    log, hosts, test error, train_hours where metrics.json records the total, detector figures."""
    out = ROOT / "runs" / run.name
    if not (out / "config.json").is_file() or step_of(out) is None:
        where = f"; its saved progress is in {(SAVED / run.name).relative_to(ROOT)} (start restores it)" \
            if step_of(SAVED / run.name) is not None else ""
        sys.exit(f"{run.name}: runs/{run.name} holds no checkpoint or no config, nothing to report{where}")
    config = json.loads((out / "config.json").read_text())
    trained_with = json.loads((out / "checkpoint.json").read_text()).get("environment", {})
    entry = {"run": run.name, "shipped_as": run.ship_as, "command": config["command"],
             "code": trained_with.get("commit"), "code_dirty": trained_with.get("dirty"),
             **log_summary(out / "train.log", config["config"]["steps"]),
             "hosts": sorted({line.split(": ", 1)[1] for line in (out / "hosts.log").read_text().splitlines()
                              if ": " in line}) if (out / "hosts.log").is_file() else None}
    if (out / "metrics.json").is_file():
        metrics = json.loads((out / "metrics.json").read_text())
        entry.update(test_error=metrics["test_error"], n_test=metrics["n_test"])
        if metrics.get("train_seconds_total") is not None:  # runs whose code records it (wall_hours: from the log)
            entry.update(train_hours=round(metrics["train_seconds_total"] / 3600, 2))
    detection = ROOT / "runs" / f"detection-{run.ship_as}.json"
    if detection.is_file():
        d = json.loads(detection.read_text())
        entry.update(detector_threshold=d["detector"]["threshold"],
                     held_out_false_positive_rate=d["detector"]["held_out_false_positive_rate"],
                     clean_quartiles=d["clean_quartiles"])
    print(json.dumps(entry))


def table() -> None:
    print(f"{'run':20} {'data set':14} {'depth':>5} {'objective':9} {'preset':10} {'code':8} shipped as")
    for run in RUNS:
        scale = run.extra[run.extra.index("--schedule-scale") + 1] + "x" if "--schedule-scale" in run.extra else ""
        print(f"{run.name:20} {run.dataset:14} {run.depth:>5} {run.objective:9} {run.preset + ' ' + scale:10} {run.commit[:7]:8} "
              f"{run.ship_as}{' (shipped)' if shipped(run) else replaces(run)}")


def main(argv: list[str]) -> int:
    verbs = {"start": start, "save": save, "status": status, "finish": finish, "report": report}
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return 0
    if not argv or argv[0] not in (*verbs, "list", "then", "stop"):
        said = f"runs.py: unknown verb {argv[0]!r}; one of:\n" if argv else ""
        print(said + __doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    verb, names = argv[0], argv[1:]
    if verb == "list":
        if names:
            sys.exit(f"list takes no run names (got {' '.join(names)}); status NAME... shows runs")
        table()
        return 0
    if verb == "then":
        if "--" not in names or not names[:names.index("--")] or not names[names.index("--") + 1:]:
            sys.exit("then needs RUN... -- NEXT...: the runs to wait for, then the runs to start")
        waited, following = names[:names.index("--")], names[names.index("--") + 1:]
        unknown = [n for n in waited + following if n not in BY_NAME]
        if unknown:
            sys.exit(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
        return then([BY_NAME[n] for n in waited], [BY_NAME[n] for n in following])
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        sys.exit(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    if not names and verb in ("finish", "report", "stop"):
        sys.exit(f"{verb} needs the run names")
    runs = [BY_NAME[n] for n in names] if names else [r for r in RUNS if verb == "status" or in_progress(r)]
    if verb == "stop":
        return stop(runs)
    for run in runs:
        verbs[verb](run)
    return 0


if __name__ == "__main__":
    try:
        try:
            code = main(sys.argv[1:])
        finally:  # a buffered stdout writes at exit, even after sys.exit(message): a reader gone is seen here
            sys.stdout.flush()
        sys.exit(code)
    except BrokenPipeError:  # `runs.py status | head`: the reader is gone, as rcenp's own commands treat it
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())  # the flush at exit must not fail again
        os.close(null)
        sys.exit(141)
