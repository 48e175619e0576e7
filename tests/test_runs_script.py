"""scripts/runs.py's bookkeeping: which run a shipped model belongs to, and the command each run trains with."""
import json
import signal
from pathlib import Path

import pytest


def test_a_shipped_model_counts_only_for_the_run_that_trained_it(tmp_path, monkeypatch, load_script):
    runs = load_script("runs")
    monkeypatch.setattr(runs, "PRETRAINED", tmp_path)
    one, two = runs.BY_NAME["subset-cifar32-rce"], runs.BY_NAME["subset2x-cifar32-rce"]
    assert one.ship_as == two.ship_as == "cifar10subset-resnet32-rce"
    assert not runs.shipped(one) and not runs.shipped(two) and runs.replaces(two) == ""
    manifest = tmp_path / f"{one.ship_as}.json"
    manifest.write_text(json.dumps({"command": "rcenp train --dataset cifar10 --objective rce --preset subset "
                                               "--depth 32 --seed 0 --checkpoint-every 250 --resume "
                                               "--out runs/subset-cifar32-rce"}))
    assert runs.shipped(one) and not runs.shipped(two)
    assert runs.replaces(two) == " (replaces the one shipped)" and runs.replaces(one) == ""
    manifest.write_text("not json")
    assert not runs.shipped(one)


def test_the_2x_runs_train_with_the_schedule_scale_and_their_own_folders(load_script):
    runs = load_script("runs")
    for name in ("subset2x-cifar32-ce", "subset2x-cifar56-rce"):
        args = runs.BY_NAME[name].train_args()
        assert args[args.index("--schedule-scale") + 1] == "2" and args[args.index("--preset") + 1] == "subset"
        assert args[-2:] == ["--out", f"runs/{name}"]
    assert "--schedule-scale" not in runs.BY_NAME["paper-mnist56-ce"].train_args()
    assert len({run.name for run in runs.RUNS}) == len(runs.RUNS)


def test_a_missing_interpreter_is_one_clear_line_not_a_run_reported_as_started(monkeypatch, load_script):
    runs = load_script("runs")
    monkeypatch.setenv("PYTHON", "/nonexistent/.venv/bin/python")
    try:
        runs.interpreter()
    except SystemExit as stop:
        assert "no Python interpreter '/nonexistent/.venv/bin/python'" in str(stop.code)
    else:
        raise AssertionError("interpreter() accepted a missing PYTHON")
    monkeypatch.setenv("PYTHON", "sh")
    assert runs.interpreter().endswith("/sh")


def test_without_python_set_the_checkouts_venv_comes_before_python3(monkeypatch, tmp_path, load_script):
    """So that `runs.py then`, started with a plain python3, starts its runs with the .venv's Python."""
    runs = load_script("runs")
    monkeypatch.delenv("PYTHON", raising=False)
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    assert runs.interpreter() == runs.shutil.which("python3")
    venv = tmp_path / ".venv" / "bin" / "python"
    venv.parent.mkdir(parents=True)
    venv.write_text("#!/bin/sh\n")
    venv.chmod(0o755)
    assert runs.interpreter() == str(venv)
    monkeypatch.setenv("PYTHON", "sh")
    assert runs.interpreter().endswith("/sh")


def test_a_run_that_exits_at_once_is_reported_with_its_last_line(tmp_path, monkeypatch, load_script, capsys):
    runs = load_script("runs")
    for name in ("ROOT", "SAVED", "PRETRAINED"):
        monkeypatch.setattr(runs, name, tmp_path / name.lower())
    monkeypatch.setattr(runs, "code_dir", lambda commit: tmp_path)
    monkeypatch.setattr(runs, "running", lambda run: [])
    monkeypatch.setenv("PYTHON", "false")   # exits 1 at once, as a run without its data would
    try:
        runs.start(runs.BY_NAME["subset2x-cifar56-ce"])
    except SystemExit as stop:
        assert str(stop.code).startswith("subset2x-cifar56-ce: exited at once with status 1")
    else:
        raise AssertionError("start() reported a dead run as started")
    assert "started" not in capsys.readouterr().out


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc/PID/status (Linux)")
def test_a_run_started_with_sigint_ignored_gets_it_back_for_stop(tmp_path, monkeypatch, load_script):
    """`runs.py then` started by a shell without job control has SIGINT ignored, and a child inherits
    that: the run must get SIGINT's default back, or `stop` cannot end it after its checkpoint."""
    runs = load_script("runs")
    for name in ("ROOT", "SAVED", "PRETRAINED"):
        monkeypatch.setattr(runs, name, tmp_path / name.lower())
    monkeypatch.setattr(runs, "code_dir", lambda commit: tmp_path)
    monkeypatch.setattr(runs, "running", lambda run: [])
    probe = tmp_path / "probe.sh"   # stands in for Python: records what it ignores, then exits
    probe.write_text(f"#!/bin/sh\ngrep SigIgn /proc/self/status > {tmp_path / 'ignored'}\nexit 3\n")
    probe.chmod(0o755)
    monkeypatch.setenv("PYTHON", str(probe))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(SystemExit, match="exited at once with status 3"):
            runs.start(runs.BY_NAME["subset2x-cifar56-ce"])
    finally:
        signal.signal(signal.SIGINT, previous)
    mask = int((tmp_path / "ignored").read_text().split()[1], 16)
    assert not mask & (1 << (signal.SIGINT - 1))


def test_save_copies_a_checkpoint_whose_last_rename_was_cut_short(tmp_path, monkeypatch, load_script):
    """A save killed after its json leaves the arrays in checkpoint.npz.next: runs.py save must
    carry those (the json's SHA-256), not fail on the stale checkpoint.npz."""
    import os

    import numpy as np
    import pytest

    from rcenp import checkpoint

    runs = load_script("runs")
    src = tmp_path / "run"
    checkpoint.save(src / "checkpoint", {"w": np.arange(3.0)}, None, {"step": 250})
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(KeyboardInterrupt)
                        if str(b).endswith("checkpoint.npz") else real_replace(a, b))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(src / "checkpoint", {"w": np.ones(3)}, None, {"step": 500})
    monkeypatch.setattr(os, "replace", real_replace)
    assert runs.copy_checkpoint(src, tmp_path / "saved") == 500
    manifest, model, _ = checkpoint.load(tmp_path / "saved" / "checkpoint")
    assert manifest["step"] == 500 and np.array_equal(model["w"], np.ones(3))


def test_every_pinned_commit_is_in_this_repository(load_script):
    """A mistyped pin would only show when its run starts, sessions later."""
    import subprocess

    import pytest

    runs = load_script("runs")
    if subprocess.run(["git", "-C", str(runs.ROOT), "rev-parse", "--is-shallow-repository"],
                      capture_output=True, text=True).stdout.strip() != "false":
        pytest.skip("not a full git clone")
    for run in runs.RUNS:
        found = subprocess.run(["git", "-C", str(runs.ROOT), "cat-file", "-e", f"{run.commit}^{{commit}}"],
                               capture_output=True)
        assert found.returncode == 0, f"{run.name}: pinned commit {run.commit} is not in the repository"


def test_then_starts_the_next_runs_only_once_every_waited_run_has_finished(tmp_path, monkeypatch, load_script):
    runs = load_script("runs")
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    a, b, c = (runs.BY_NAME[n] for n in ("paper-mnist56-ce", "paper-mnist56-rce", "subset2x-cifar32-ce"))
    alive = {a.name: True, b.name: True}
    monkeypatch.setattr(runs, "running", lambda run: [1] if alive.get(run.name) else [])
    started, polls = [], []
    monkeypatch.setattr(runs, "start", lambda run: started.append(run.name))

    def tick(seconds):   # one poll: A finishes at the first, B at the third
        polls.append(seconds)
        done = {1: a.name, 3: b.name}.get(len(polls))
        if done:
            (tmp_path / "runs" / done).mkdir(parents=True)
            (tmp_path / "runs" / done / "metrics.json").write_text("{}")
            alive[done] = False

    assert runs.then([a, b], [c], poll_s=7, sleep=tick) == 0
    assert started == [c.name] and polls == [7, 7, 7]
    # a waited run that stops unfinished (killed) starts nothing
    alive[b.name], started[:] = False, []
    (tmp_path / "runs" / b.name / "metrics.json").unlink()
    with pytest.raises(SystemExit, match="paper-mnist56-rce stopped before finishing"):
        runs.then([a, b], [c], sleep=tick)
    assert started == []


def test_running_counts_only_processes_training_into_this_checkouts_runs(tmp_path, monkeypatch, load_script):
    """A fresh clone must not report another checkout's run of the same name as its own: the
    process's relative --out runs/NAME is resolved from its working directory (fake /proc here)."""
    runs = load_script("runs")
    run = runs.BY_NAME["subset2x-cifar32-ce"]
    main, trial, proc = tmp_path / "main", tmp_path / "trial", tmp_path / "proc"
    (main / "runs" / run.name).mkdir(parents=True)
    (main / ".paper-code-0d4baeb").mkdir()
    (main / ".paper-code-0d4baeb" / "runs").symlink_to("../runs")
    trial.mkdir()
    for pid, cwd in (("self", tmp_path), ("101", main / ".paper-code-0d4baeb"), ("102", trial), ("103", main)):
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cwd").symlink_to(cwd)
    patterns = []
    monkeypatch.setattr(runs, "pgrep", lambda pattern: patterns.append(pattern) or [101, 102, 103, 104])
    monkeypatch.setattr(runs, "PROC", proc)
    monkeypatch.setattr(runs, "ROOT", main)
    assert runs.running(run) == [101, 103]   # 104: exited, or another user's
    assert patterns == [f"rcenp train .*--out runs/{run.name}( |$)"]
    monkeypatch.setattr(runs, "ROOT", trial)   # no runs/ folder at all
    assert runs.running(run) == [102]
    monkeypatch.setattr(runs, "PROC", tmp_path / "no-proc")   # not Linux: the command line alone
    assert runs.running(run) == [101, 102, 103, 104]


def test_status_says_replaced_and_not_started(tmp_path, monkeypatch, load_script, capsys):
    runs = load_script("runs")
    for name in ("ROOT", "SAVED", "PRETRAINED"):
        monkeypatch.setattr(runs, name, tmp_path / name.lower())
    monkeypatch.setattr(runs, "running", lambda run: [])
    runs.PRETRAINED.mkdir()
    for old, new in (("subset-cifar32-rce", "subset2x-cifar32-rce"), ("subset2x-cifar32-ce", "subset-cifar32-ce")):
        ship_as = runs.BY_NAME[old].ship_as
        (runs.PRETRAINED / f"{ship_as}.json").write_text(json.dumps({"command": f"rcenp train --out runs/{new}"}))
    (runs.ROOT / "runs" / "subset2x-cifar56-rce").mkdir(parents=True)
    (runs.SAVED / "subset2x-cifar32-ce").mkdir(parents=True)   # a fresh clone: committed progress only
    (runs.SAVED / "subset2x-cifar32-ce" / "checkpoint.json").write_text(json.dumps({"step": 2250}))
    for name in ("subset-cifar32-rce", "subset2x-cifar32-ce", "subset2x-cifar56-ce", "subset2x-cifar56-rce"):
        runs.status(runs.BY_NAME[name])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[1] == "replaced" and lines[0].endswith(
        "by subset2x-cifar32-rce, shipped as cifar10subset-resnet32-rce")
    assert lines[1].split()[1:5] == ["stopped", "checkpoint", "-", "saved"]   # the 2x run, to replace the 1x
    assert lines[2].split()[1:3] == ["not", "started"] and lines[3].split()[1] == "stopped"
    assert runs.replaces(runs.BY_NAME["subset-cifar32-rce"]) == " (replaced by subset2x-cifar32-rce)"
    assert runs.replaces(runs.BY_NAME["subset2x-cifar32-ce"]) == " (replaces the one shipped)"
    assert runs.replaced_by(runs.BY_NAME["subset2x-cifar32-rce"]) is None


def test_help_exits_0_and_bad_usage_2():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "runs.py"
    for argv in (["--help"], ["-h"], ["status", "--help"]):   # after a verb too, not taken for a run's name
        done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)
        assert done.returncode == 0 and "runs.py status [RUN...]" in done.stdout and not done.stderr
    done = subprocess.run([sys.executable, str(script), "bogus"], capture_output=True, text=True)
    assert done.returncode == 2 and "runs.py status [RUN...]" in done.stderr and not done.stdout


def test_stop_signals_each_run_only_after_its_next_checkpoint_then_saves_it(tmp_path, monkeypatch, load_script, capsys):
    runs = load_script("runs")
    a, b, idle = (runs.BY_NAME[n] for n in ("subset2x-cifar32-ce", "subset2x-cifar56-ce", "subset2x-cifar56-rce"))
    steps, alive = {a.name: 8000, b.name: 1750}, {a.name: True, b.name: True}
    monkeypatch.setattr(runs, "step_of", lambda folder: steps.get(folder.name))
    monkeypatch.setattr(runs, "running", lambda run: [hash(run.name) % 1000 + 2] if alive.get(run.name) else [])
    saved, signals, clock = [], [], []
    monkeypatch.setattr(runs, "save", lambda run: saved.append((run.name, steps[run.name])))

    def kill(pid, sig):
        name = next(n for n in alive if hash(n) % 1000 + 2 == pid)
        signals.append((name, steps[name], sig))
        alive[name] = False

    def tick(seconds):  # polls: A checkpoints at the 2nd, B at the 5th; nothing is signalled before
        clock.append(seconds)
        if len(clock) == 2:
            steps[a.name] = 8250
        if len(clock) == 5:
            steps[b.name] = 2000

    assert runs.stop([a, b, idle], poll_s=10, settle_s=5, sleep=tick, kill=kill) == 0
    assert signals == [(a.name, 8250, runs.signal.SIGINT), (b.name, 2000, runs.signal.SIGINT)]
    assert saved == [(a.name, 8250), (b.name, 2000)]
    assert f"{idle.name}: not running" in capsys.readouterr().out
    # a run that ignores SIGINT is reported and not saved
    alive[a.name], saved[:] = True, []
    steps[a.name] = 8250
    monkeypatch.setattr(runs, "step_of", lambda folder: steps.get(folder.name) + (250 if clock else 0))
    clock[:] = []
    assert runs.stop([a], sleep=tick, kill=lambda pid, sig: None, exit_s=3) == 1
    assert saved == [] and "still running 3 s after SIGINT" in capsys.readouterr().out


def test_each_start_records_its_host_and_save_carries_the_record(tmp_path, monkeypatch, load_script):
    """A run resumes bit for bit only on the same CPU and BLAS kernel, which its pinned code's
    checkpoints do not record: runs.py keeps a hosts.log per run, carried by save and report."""
    import sys

    import numpy as np

    from rcenp import checkpoint

    runs = load_script("runs")
    monkeypatch.setattr(runs, "interpreter", lambda: sys.executable)
    out = tmp_path / "runs" / "r"
    checkpoint.save(out / "checkpoint", {"w": np.arange(3.0)}, None, {"step": 250})
    runs.record_host(out)
    runs.record_host(out)
    lines = (out / "hosts.log").read_text().splitlines()
    assert len(lines) == 2 and all(" from step 250: {" in line for line in lines)
    assert json.loads(lines[0].split(": ", 1)[1]) == checkpoint.host()
    runs.copy_checkpoint(out, tmp_path / "saved")
    assert (tmp_path / "saved" / "hosts.log").read_text() == (out / "hosts.log").read_text()
    monkeypatch.setattr(runs, "interpreter", lambda: "/nonexistent/python")
    runs.record_host(out)
    assert "unknown (" in (out / "hosts.log").read_text().splitlines()[-1]


def test_a_reader_that_goes_away_ends_the_listing_quietly():
    """`runs.py list | head -1` ended in a BrokenPipeError traceback: now status 141 and no stderr,
    with stdout buffered (a plain shell) or not (PYTHONUNBUFFERED)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "runs.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for unbuffered in ({}, {"PYTHONUNBUFFERED": "1"}):
        process = subprocess.Popen([sys.executable, str(script), "list"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=dict(env, **unbuffered))
        process.stdout.close()
        assert process.wait() == 141 and process.stderr.read() == b""


def test_unknown_verbs_and_names_are_said_and_report_needs_a_run_folder(tmp_path, monkeypatch, load_script, capsys):
    import sys

    runs = load_script("runs")
    assert runs.main(["frobnicate"]) == 2 and "unknown verb 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="list takes no run names"):
        runs.main(["list", "subset2x-cifar32-ce"])
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    monkeypatch.setattr(runs, "SAVED", tmp_path / "saved")
    with pytest.raises(SystemExit, match="holds no checkpoint or no config, nothing to report$"):
        runs.report(runs.BY_NAME["subset2x-cifar56-rce"])
    (runs.SAVED / "subset2x-cifar56-rce").mkdir(parents=True)
    (runs.SAVED / "subset2x-cifar56-rce" / "checkpoint.json").write_text(json.dumps({"step": 250}))
    with pytest.raises(SystemExit, match="its saved progress is in saved/subset2x-cifar56-rce"):
        runs.report(runs.BY_NAME["subset2x-cifar56-rce"])
    before = list(sys.path)
    load_script("runs")   # loaded again: scripts/ is on the path once
    assert sys.path == before

