"""rcenp attack --jobs: shard processes side by side, merged into the single run's files."""
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from rcenp.attacks.jobs import child_argv
from rcenp.cli import build_parser, main

BASE = ["attack", "mnist-resnet32-ce", "--attack", "fgsm", "--eps", "0.1", "--n", "6", "--batch-size", "2"]


def one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0], text
    assert "Traceback" not in text, text
    return lines[0]


def same_run(a, b):
    assert (a / "samples.jsonl").read_text() == (b / "samples.jsonl").read_text()
    with np.load(a / "adversarial.npz") as x, np.load(b / "adversarial.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            np.testing.assert_array_equal(x[name], y[name])
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (a, b))
    assert sa["counts"] == sb["counts"] and sa["success_rate"] == sb["success_rate"]


def shard_processes(out) -> list[str]:
    """The pids of processes attacking into out/shards/ ("--": the pattern is not an option)."""
    found = subprocess.run(["pgrep", "-f", "--", f"--out {out}/shards/"], capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr  # 1: none
    return found.stdout.split()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(BASE + ["--out", str(out)]) == 0
    return out


def test_jobs_give_the_single_runs_files_and_resume_a_begun_shard(single, tmp_path, capsys):
    out = tmp_path / "jobs"
    # shard 1 of 2 ran before (an interrupted --jobs run); --jobs 2 --resume runs shard 2 and merges
    assert main(BASE + ["--shard", "1/2", "--out", str(out / "shards" / "1-of-2")]) == 0
    capsys.readouterr()
    assert main(BASE + ["--jobs", "2", "--out", str(out)]) == 2  # begun: only with --resume
    assert "1-of-2 already holds this shard's run: pass --resume" in one_error_line(capsys.readouterr().err)
    assert main(BASE + ["--jobs", "2", "--resume", "--out", str(out)]) == 0
    same_run(out, single)
    assert "2 shard processes of one thread each" in (out / "jobs.log").read_text()
    jobs = json.loads((out / "summary.json").read_text())["jobs"]
    assert jobs["processes"] == 2 and jobs["wall_seconds_this_invocation"] > 0
    capsys.readouterr()
    assert main(BASE + ["--jobs", "2", "--out", str(out)]) == 2  # a finished run: only with --resume
    assert "already holds an attack run" in one_error_line(capsys.readouterr().err)
    assert main(BASE + ["--jobs", "2", "--resume", "--out", str(out)]) == 0
    assert "already finished" in capsys.readouterr().err
    (out / "summary.json").unlink()  # killed while merging: run.json written, summary.json not yet
    assert main(BASE + ["--jobs", "2", "--resume", "--out", str(out)]) == 0
    same_run(out, single)


def test_a_jobs_resume_naming_a_default_keeps_the_options_as_first_given(tmp_path, capsys):
    cw = ["attack", "mnist-resnet32-ce", "--attack", "cw", "--n", "4", "--batch-size", "2", "--binary-steps", "1",
          "--max-iterations", "2"]
    out = tmp_path / "cw"
    assert main(cw + ["--shard", "1/2", "--out", str(out / "shards" / "1-of-2")]) == 0
    assert main(cw + ["--jobs", "2", "--resume", "--kappa", "0", "--initial-const", "1", "--out", str(out)]) == 0
    first = json.loads((out / "shards" / "1-of-2" / "run.json").read_text())["options"]
    assert "kappa" not in first
    assert json.loads((out / "run.json").read_text())["options"] == first
    assert json.loads((out / "summary.json").read_text())["settings"]["options"] == first
    assert main(cw + ["--jobs", "2", "--resume", "--kappa", "1", "--out", str(out)]) == 2  # another value
    assert "options.kappa: 0.0 there, 1.0 now" in capsys.readouterr().err  # the default it ran with


@pytest.mark.parametrize("extra, says", [
    (["--jobs", "4"], "--jobs 4: 6 images in batches of 2 make 3 batches; use at most that many jobs"),
    (["--jobs", "2", "--shard", "1/2"], "--jobs runs and merges every shard here: leave out --shard and --merge"),
])
def test_jobs_that_cannot_run_say_why(tmp_path, capsys, extra, says):
    assert main(BASE + extra + ["--out", str(tmp_path / "x")]) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_a_run_begun_without_jobs_is_not_taken_over(single, capsys):
    (single / "summary.json").rename(single / "summary.moved")  # as if that run had been killed
    try:
        assert main(BASE + ["--jobs", "2", "--resume", "--out", str(single)]) == 2
        assert "holds a run begun without --jobs" in one_error_line(capsys.readouterr().err)
    finally:
        (single / "summary.moved").rename(single / "summary.json")


def test_missing_data_is_refused_before_any_shard_starts(tmp_path, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    assert main(BASE + ["--jobs", "2", "--data-dir", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert "no t10k-images-idx3-ubyte in" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_a_failing_shard_is_named_with_its_last_line(tmp_path, capsys, monkeypatch):
    from rcenp.attacks import jobs

    monkeypatch.setitem(jobs.ONE_THREAD, "RCENP_HOST_THREADS", "none")  # every shard process fails at once
    assert main(BASE + ["--jobs", "2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    line = err[-1]
    assert re.match(r"rcenp attack: error: shard [12]/2 failed: \S", line), line  # whichever failed first
    assert "console.log); finished batches are kept: rerun with --resume" in line


def test_a_second_jobs_process_on_a_run_in_work_is_refused_before_any_shard_starts(tmp_path, capsys):
    import os

    from rcenp.attacks.runfiles import lock_run

    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    held = lock_run(out / "shards", out)  # as the first --jobs process holds it
    try:
        assert main(BASE + ["--jobs", "2", "--out", str(out), "--resume"]) == 2
    finally:
        held.close()
    assert one_error_line(capsys.readouterr().err) == (
        f"rcenp attack: error: {out}: another process (pid {os.getpid()}) is computing this run; wait for it to end, "
        "or stop it and resume")
    assert sorted(p.name for p in (out / "shards").iterdir()) == [".lock"]  # no shard began


@pytest.mark.parametrize("argv", [
    ["m", "--attack", "cw", "--n", "20", "--batch-size", "5", "--kappa", "2.5", "--binary-steps", "3",
     "--max-iterations", "7", "--learning-rate", "0.05", "--targets", "untargeted", "--seed", "3", "--json",
     "--jobs", "2", "--png", "p", "--data-dir", "d"],
    ["m", "--attack", "ilcm", "--eps", "0.06", "--steps", "4", "--target-vector", "pang2018-code", "--jobs", "3"],
    ["m", "--attack", "cw-wb", "--kernel", "detector", "--anchor", "stage1", "--stage1-iterations", "9",
     "--substitute", "s", "--device", "cpu", "--jobs", "2", "--resume", "--out", "o"],
])
def test_a_shards_command_line_reads_back_as_the_same_run(argv):
    parser = build_parser()
    args = parser.parse_args(["attack", *argv])
    child = parser.parse_args(["attack", *child_argv(args.attack_parser, args, 2, args.jobs, "o/shards/2", True)])
    expected = vars(args) | {"shard": (2, args.jobs), "out": "o/shards/2", "resume": True, "jobs": 1, "json": False}
    assert {k: v for k, v in vars(child).items() if k != "attack_parser"} == \
        {k: v for k, v in expected.items() if k != "attack_parser"}


def test_a_jobs_run_is_resumed_only_with_its_own_number_of_jobs(tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(BASE + ["--shard", "1/2", "--out", str(out / "shards" / "1-of-2")]) == 0  # begun with --jobs 2
    capsys.readouterr()
    for extra in (["--jobs", "3"], []):
        assert main(BASE + extra + ["--resume", "--out", str(out)]) == 2
        assert one_error_line(capsys.readouterr().err).endswith(
            f"{out} holds the shards of a --jobs 2 run: resume it with --jobs 2 (its finished batches are kept), "
            "or choose another --out")
    assert not (out / "shards" / "1-of-3").exists() and not (out / "run.json").exists()


def test_cuda_without_a_gpu_is_refused_before_any_shard_starts(tmp_path, capsys):
    from rcenp.backend import cuda_available

    if cuda_available():
        pytest.skip("a GPU is here")
    assert main(BASE + ["--jobs", "2", "--device", "cuda", "--out", str(tmp_path / "x")]) == 2
    assert "device 'cuda' requested but CuPy" in one_error_line(capsys.readouterr().err)  # what is missing
    assert not (tmp_path / "x").exists()


def test_terminating_the_parent_stops_its_shards(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "rcenp", "attack", "mnist-resnet32-ce", "--attack", "jsma", "--eps", "0.1",
            "--n", "40", "--batch-size", "10", "--jobs", "2", "--out", str(out)]
    parent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not all((out / "shards" / f"{k}-of-2" / "run.json").is_file() for k in (1, 2)):
        assert time.monotonic() < deadline and parent.poll() is None, "the shards did not start"
        time.sleep(0.1)
    parent.terminate()
    err = parent.communicate(timeout=60)[1]
    assert parent.returncode != 0 and "stopping the shards: KeyboardInterrupt (SIGTERM)" in err
    assert shard_processes(out) == [], "shard processes outlived their parent"
    assert "stopping the shards" in (out / "jobs.log").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sigint_ignored", [False, True])
def test_shards_stop_when_their_parent_is_killed_outright(tmp_path, sigint_ignored):
    """kill -9 leaves no handler to stop the shards: each one asked the kernel for a SIGINT when
    its parent dies, and stops on it (as on a Ctrl-C) with its finished batches kept; also when
    a shell started the parent in the background (`cmd &`), which passes SIGINT on ignored."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "rcenp", "attack", "mnist-resnet32-ce", "--attack", "jsma", "--eps", "0.1",
            "--n", "400", "--batch-size", "10", "--jobs", "2", "--out", str(out)]  # minutes of work
    if sigint_ignored:
        argv = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *argv]
    parent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not all((out / "shards" / f"{k}-of-2" / "run.json").is_file() for k in (1, 2)):
        assert time.monotonic() < deadline and parent.poll() is None, "the shards did not start"
        time.sleep(0.1)
    parent.kill()
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while shard_processes(out):
        assert time.monotonic() < deadline, "shard processes outlived their parent's SIGKILL"
        time.sleep(0.2)
    for k in (1, 2):
        shard = out / "shards" / f"{k}-of-2"
        assert not (shard / "summary.json").exists()
        assert "rcenp attack: interrupted" in (shard / "console.log").read_text()


def test_a_shard_whose_parent_is_gone_stops_at_once(monkeypatch, capsys):
    from rcenp.attacks import jobs

    monkeypatch.setenv(jobs.PARENT_ENV, "999999999")  # not this process's parent
    with pytest.raises(ValueError, match="pid 999999999.* is gone"):
        jobs.stop_with_parent()
    monkeypatch.delenv(jobs.PARENT_ENV, raising=False)
    jobs.stop_with_parent()  # not a shard: nothing happens


def test_a_begun_shard_resumed_with_other_settings_is_refused_before_any_starts(tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(BASE + ["--shard", "1/2", "--out", str(out / "shards" / "1-of-2")]) == 0
    capsys.readouterr()
    other = [a if a != "0.1" else "0.2" for a in BASE]  # another eps for the same folders
    assert main(other + ["--jobs", "2", "--resume", "--out", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == (f"rcenp attack: error: {out / 'shards' / '1-of-2'}: --resume "
                                                       "with other settings than the run there: options.eps: 0.1 "
                                                       "there, 0.2 now")
    assert not (out / "shards" / "2-of-2").exists()  # refused before any shard started
