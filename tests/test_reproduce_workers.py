"""``rcenp reproduce --jobs J`` (rcenp.reproduce.workers): the cell locks, the worker processes'
arguments, bad --jobs, and workers that stop with a command killed outright. The smoke run of
test_reproduce.py resumes with --jobs 2 and checks the merged outcomes and the report."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rcenp.cli import main
from rcenp.reproduce.run import worker_argv
from rcenp.attacks.jobs import PARENT_ENV
from rcenp.reproduce import workers
from rcenp.reproduce.workers import WORKER_ENV, cell_lock, worker_id

pytest.importorskip("fcntl")

HOLD = """
import sys, time
from rcenp.reproduce.workers import cell_lock
with cell_lock(sys.argv[1], "m/cell") as held:
    print(held, flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_cell_held_by_another_process_is_refused_without_waiting_then_waited_for(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    with cell_lock(tmp_path, "m/cell", blocking=False) as held:
        assert held is False
    with cell_lock(tmp_path, "m/other", blocking=False) as held:   # another cell is free
        assert held is True
    start = time.monotonic()
    with cell_lock(tmp_path, "m/cell") as held:                     # waits for the holder to let go
        assert held is True and time.monotonic() - start > 0.5
    holder.wait()
    assert (tmp_path / "locks" / "m--cell.lock").is_file()


def test_a_killed_holder_releases_its_cell(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "60"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    holder.kill()
    holder.wait()
    with cell_lock(tmp_path, "m/cell", blocking=False) as held:
        assert held is True


def test_workers_get_the_runs_arguments_with_resume(tmp_path):
    argv = worker_argv("cpu", tmp_path / "out", ["table2", "fig2"], "/data", ["results/fig2a", "results/cw"],
                       "cuda", ("mnist",))
    assert argv == ["reproduce", "--budget", "cpu", "--out", str(tmp_path / "out"), "--resume",
                    "--only", "table2,fig2", "--datasets", "mnist", "--data-dir", "/data",
                    "--cells-from", "results/fig2a", "--cells-from", "results/cw", "--device", "cuda"]
    assert worker_argv("smoke", Path("o"), ["table1"], None, (), None, None) == \
        ["reproduce", "--budget", "smoke", "--out", "o", "--resume", "--only", "table1"]


def test_worker_id_reads_the_environment(monkeypatch):
    monkeypatch.delenv(WORKER_ENV, raising=False)
    assert worker_id() is None
    monkeypatch.setenv(WORKER_ENV, "2/3")
    monkeypatch.setenv(PARENT_ENV, str(os.getppid()))
    assert worker_id() == (2, 3)


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_bad_jobs_is_one_error_line(jobs, tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "out"), "--only", "table1", "--jobs", jobs]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rcenp reproduce: error: ") and "--jobs" in err
    assert not (tmp_path / "out").exists()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_workers_stop_when_the_command_is_killed_outright(tmp_path):
    """(Resuming after a kill is the smoke run's test: test_reproduce.py.)"""
    env = dict(os.environ, RCENP_DATA="", XDG_CACHE_HOME=str(tmp_path / "cache"))
    out = tmp_path / "out"
    command = subprocess.Popen([sys.executable, "-m", "rcenp", "reproduce", "--out", str(out), "--only", "table2",
                                "--jobs", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (len(_children(command.pid)) == 2 and
                                                any((out / "cells").glob("*/*/run.json"))):
        time.sleep(0.05)
    workers = _children(command.pid)
    assert len(workers) == 2, "the workers did not start"
    command.kill()
    command.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(map(_running, workers)):
        time.sleep(0.1)
    assert not any(map(_running, workers)), "a worker outlived its command"


def test_more_workers_than_cores_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(workers, "cores", lambda: 2)
    assert main(["reproduce", "--out", str(tmp_path / "out"), "--only", "table1", "--jobs", "3"]) == 2
    err = capsys.readouterr().err
    assert err == ("rcenp reproduce: error: --jobs 3: this machine has 2 cores, so at most 2 workers of one "
                   "thread each run side by side\n")


def test_a_stray_worker_variable_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PARENT_ENV, raising=False)
    for value in ("1/2", "x", "3/2"):
        monkeypatch.setenv(WORKER_ENV, value)
        assert main(["reproduce", "--out", str(tmp_path / "out"), "--only", "table1"]) == 2
        assert f"{WORKER_ENV}={value!r} is set only by rcenp reproduce --jobs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


HOLD_RUN = """
import sys, time
from rcenp.reproduce.workers import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(30)
"""


def test_a_second_command_on_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "--out", str(out), "--only", "table1"]) == 0   # a run, and its cells' locks gone
    assert not (out / "locks").exists()
    capsys.readouterr()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["reproduce", "--out", str(out), "--only", "table1", "--resume"]) == 2
        assert capsys.readouterr().err == (f"rcenp reproduce: error: another rcenp reproduce is running on {out}: "
                                           "wait for it to end, or choose another --out\n")
    finally:
        holder.kill()
        holder.wait()
    assert main(["reproduce", "--out", str(out), "--only", "table1", "--resume"]) == 0
