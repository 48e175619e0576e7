"""The bench scripts' command lines, as a fresh user met them: a bad option refused by the parser,
the library's errors as one line, status 2 and no traceback for both; --help describing the script
in whole sentences; the modules they import (bench_host.py, ...) saying so when run."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_host  # noqa: E402

SCRIPTS = ("bench_attacks.py", "bench_engine.py", "bench_kd.py", "profile_forward.py", "bench_conv_floor.py")


def run(script, *args, **env):
    environ = {**os.environ, "RCENP_HOST_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, f"bench/{script}", *args], capture_output=True, text=True, cwd=ROOT,
                          env=environ)


def refusal(done, script) -> str:
    """The error line of a refusal: status 2, nothing on stdout, no traceback; before the line only
    argparse's usage."""
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr, done.stderr
    *usage, line = done.stderr.strip().splitlines()
    assert line.startswith(f"{script}: error: ")
    assert all(text.startswith(("usage: ", " ")) for text in usage), done.stderr
    return line


@pytest.mark.parametrize("script, args, said", [
    ("bench_attacks.py", ["--eps", "0"], "argument --eps: must lie in (0, 1]"),
    ("bench_attacks.py", ["--eps", "5"], "argument --eps: must lie in (0, 1]"),
    ("bench_attacks.py", ["--data-dir", "/x"], "--data-dir is read with --source test only"),
    ("bench_attacks.py", ["--attacks"], "--attacks names none and --cw is not given: nothing to time"),
    ("profile_forward.py", ["--batch", "0"], "argument --batch: must be positive, got 0"),
    ("profile_forward.py", ["--repeats", "0"], "argument --repeats: must be positive, got 0"),
    ("profile_forward.py", ["--depth", "15"], "argument --depth: must be 6n+2 with n >= 1"),
    ("profile_forward.py", ["--shape", "0x28x28"], "argument --shape: expected CxHxW, H and W multiples of 4"),
    ("profile_forward.py", ["--passes", ""], "--passes names none; choose from forward, input_grad, train_step"),
    ("bench_engine.py", ["--shape", "1x27x27"], "argument --shape: expected CxHxW, H and W multiples of 4"),
    ("bench_kd.py", ["--queries", "0"], "argument --queries: must be positive, got 0"),
    ("bench_kd.py", ["--per-class", "0"], "argument --per-class: must be positive, got 0"),
    ("bench_kd.py", ["--repeats", "0"], "argument --repeats: must be positive, got 0"),
    ("bench_kd.py", ["--sigma2", "-1"], "argument --sigma2: must be positive, got -1"),
    ("bench_engine.py", ["--repeats", "0"], "argument --repeats: must be positive, got 0"),
    ("bench_engine.py", ["--depth", "15"], "argument --depth: must be 6n+2 with n >= 1"),
    ("bench_engine.py", ["--rounds", "0"], "argument --rounds: must be positive, got 0"),
    ("bench_engine.py", ["--batch", "1,0"], "argument --batch: must be positive, got 0"),
    ("bench_conv_floor.py", ["--batch", "1,0"], "argument --batch: must be positive, got 0"),
    ("bench_conv_floor.py", ["--depth", "15"], "argument --depth: must be 6n+2 with n >= 1"),
    ("bench_conv_floor.py", ["--shape", "1x27x27"], "argument --shape: expected CxHxW, H and W multiples of 4"),
    ("bench_conv_floor.py", ["--repeats", "0"], "argument --repeats: must be positive, got 0"),
])
def test_a_bad_option_is_refused_by_the_parser(script, args, said):
    assert said in refusal(run(script, *args), script)


def test_the_librarys_errors_end_as_one_line(monkeypatch, capsys):
    from rcenp.checkpoint import CheckpointError
    from rcenp.data import DataError

    def failing(error):
        def main():
            raise error
        return main

    monkeypatch.setattr(sys, "argv", ["bench/bench_x.py"])
    for error, said in ((DataError("mnist test images: no t10k-images-idx3-ubyte in /data/mnist"), None),
                        (CheckpointError("nosuch: neither a run directory, a checkpoint, nor a shipped model"), None),
                        (ValueError("eps must be positive and at most 1.0, got 5.0"), None),
                        (FileNotFoundError(2, "No such file or directory", "out/x.json"),
                         "out/x.json: no such file or directory")):
        assert bench_host.exit_status(failing(error)) == 2
        assert capsys.readouterr().err == f"bench_x.py: error: {said or error}\n"


def test_other_errors_keep_their_traceback():
    with pytest.raises(KeyError):
        bench_host.exit_status(lambda: {}["missing"])
    assert bench_host.exit_status(lambda: 0) == 0


def test_a_script_reports_the_librarys_error_in_one_line():
    pytest.importorskip("torch")
    done = run("bench_attacks.py", "--threads", "1", "--models", "nosuch", "--attacks", "bim", "--n", "1")
    assert refusal(done, "bench_attacks.py").startswith("bench_attacks.py: error: nosuch: neither a run directory")
    assert len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_the_script_in_whole_sentences(script):
    done = run(script, "--help", COLUMNS="1000")  # one line per paragraph: no word split at a hyphen
    assert done.returncode == 0, done.stderr
    summary = " ".join(importlib.import_module(script.removesuffix(".py")).__doc__.split("\n\n")[0].split())
    assert summary.endswith(".") and summary in " ".join(done.stdout.split())


MODULES = ("bench_host.py", "attack_measures.py", "cw_foolbox.py", "torch_attacks.py", "torch_twin.py")


@pytest.mark.parametrize("module", MODULES)
def test_a_module_run_directly_says_it_is_a_module(module):
    done = run(module, "--help")
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "a module of the bench scripts, not a command" in done.stderr
    assert done.stderr.startswith(f"{module}: ")
    assert all(script in done.stderr for script in SCRIPTS)  # every command it could have meant


def test_every_file_of_bench_is_a_command_or_a_module_that_says_so():
    assert sorted(p.name for p in (ROOT / "bench").glob("*.py")) == sorted(SCRIPTS + MODULES)


def test_bench_attacks_refuses_more_images_than_its_source_in_one_line():
    pytest.importorskip("torch")
    done = run("bench_attacks.py", "--threads", "1", "--models", "mnist-resnet32-ce", "--attacks", "bim", "--n", "1001")
    assert refusal(done, "bench_attacks.py") == "bench_attacks.py: error: --n 1001 but the sample set has 1000 images"
    assert len(done.stderr.splitlines()) == 1


def test_bench_attacks_reads_the_data_root_it_is_given(tmp_path):
    pytest.importorskip("torch")
    done = run("bench_attacks.py", "--threads", "1", "--models", "mnist-resnet32-ce", "--attacks", "bim", "--n", "1",
               "--source", "test", "--data-dir", str(tmp_path))
    line = refusal(done, "bench_attacks.py")
    assert str(tmp_path) in line and "mnist" in line


def test_emit_report_writes_non_finite_numbers_as_null(capsys):
    import numpy as np

    bench_host.emit_report({"ratio": float("nan"), "rates": [float("inf"), -np.inf, np.float32(0.5), 2],
                            "nested": {"x": (np.float64("nan"), True)}}, None)
    printed = capsys.readouterr().out
    assert "NaN" not in printed and "Infinity" not in printed
    assert json.loads(printed) == {"ratio": None, "rates": [None, None, 0.5, 2], "nested": {"x": [None, True]}}


def test_emit_report_prints_and_writes_the_same_json_atomically(tmp_path, capsys, monkeypatch):
    report = {"benchmark": "x", "runs": [1.5, {"a": None}]}
    target = tmp_path / "out.json"
    bench_host.emit_report(report, target, indent=1)
    printed = capsys.readouterr().out
    assert json.loads(printed) == report and target.read_text() == printed
    bench_host.emit_report(report, None)                     # no --json: printed only
    assert json.loads(capsys.readouterr().out) == report
    from rcenp import checkpoint

    def broken(path, text):   # a write that fails leaves the earlier file whole
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write_text", broken)
    with pytest.raises(OSError):
        bench_host.emit_report({"other": 1}, target)
    assert json.loads(target.read_text()) == report
