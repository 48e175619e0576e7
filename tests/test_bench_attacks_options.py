"""bench/bench_attacks.py's options and its `rcenp attack --jobs` entry, without running an attack
(the command's process is faked): every attack setting passed explicitly, the data root the script
read passed as an absolute path, one-line errors, a refused empty selection, and a clean skip
without PyTorch. Needs no PyTorch."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_attacks  # noqa: E402


def parsed(*argv):
    """bench_attacks' options as main reads them (without running it)."""
    import argparse

    args = argparse.Namespace(eps=0.1, n=4, jobs=2, source="sample", data_dir=None)
    for name, value in zip(argv[::2], argv[1::2]):
        setattr(args, name, value)
    return args


def option(command, flag):
    return command[command.index(flag) + 1]


def test_the_jobs_command_passes_every_attack_setting_explicitly():
    bim = bench_attacks.jobs_command("mnist-resnet32-ce", "bim", parsed(), "out")
    assert option(bim, "--steps") == str(bench_attacks.BIM_STEPS) == "10"
    assert "--max-iterations" not in bim and "--variant" not in bim  # `rcenp attack` refuses options of other attacks
    jsma = bench_attacks.jobs_command("mnist-resnet32-ce", "jsma", parsed(), "out")
    assert option(jsma, "--max-iterations") == "100" and option(jsma, "--variant") == "pang2018"
    assert "--steps" not in jsma
    assert option(jsma, "--eps") == "0.1" and option(jsma, "--n") == "4" and option(jsma, "--batch-size") == "2"
    assert "--data-dir" not in jsma  # the embedded sample has no data root


def test_the_jobs_command_reads_the_data_root_the_script_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = bench_attacks.jobs_command("m", "bim", parsed("source", "test", "data_dir", "data"), "out")
    assert option(command, "--data-dir") == str(tmp_path / "data")  # absolute: the command runs elsewhere
    monkeypatch.setenv("RCENP_DATA", str(tmp_path / "env-root"))
    command = bench_attacks.jobs_command("m", "bim", parsed("source", "test"), "out")
    assert option(command, "--data-dir") == str(tmp_path / "env-root")


def fake_attack_command(clean, returncode=0, stderr="", seen=None):
    def run(command, **kwargs):
        if seen is not None:
            seen.append((command, kwargs))
        out = Path(option(command, "--out"))
        if returncode == 0:
            out.mkdir(parents=True)
            np.savez(out / "adversarial.npz", clean=clean, adversarial=clean + 0.1)
        return subprocess.CompletedProcess(command, returncode, "", stderr)
    return run


def test_the_jobs_entry_returns_the_commands_x_adv_for_the_same_images(monkeypatch):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 1, 8, 8)).astype(np.float32)
    seen = []
    monkeypatch.setenv("RCENP_DATA", "/elsewhere")
    monkeypatch.setattr(bench_attacks.subprocess, "run", fake_attack_command(x, seen=seen))
    adversarial = bench_attacks.cli_jobs_run("m", "bim", parsed(), x)()
    assert adversarial.dtype == np.float32 and np.array_equal(adversarial, x + 0.1)
    (_, kwargs), = seen
    assert "RCENP_DATA" not in kwargs["env"]  # --source sample: no data root for the command either


def test_the_jobs_entry_refuses_other_clean_images(monkeypatch):
    x = np.zeros((4, 1, 8, 8), np.float32)
    monkeypatch.setattr(bench_attacks.subprocess, "run", fake_attack_command(x + 0.25))
    with pytest.raises(ValueError, match=r"^`rcenp attack m --attack bim --jobs 2` attacked other images than this "
                                         r"script read \(sample images\)$"):
        bench_attacks.cli_jobs_run("m", "bim", parsed(), x)()


def test_a_failed_jobs_command_is_one_line_with_its_last_line(monkeypatch, capsys):
    x = np.zeros((4, 1, 8, 8), np.float32)
    monkeypatch.setattr(bench_attacks.subprocess, "run",
                        fake_attack_command(x, returncode=2, stderr="warning\nrcenp attack: error: no mnist here\n"))
    with pytest.raises(ValueError) as info:
        bench_attacks.cli_jobs_run("m", "jsma", parsed(), x)()
    assert str(info.value) == "`rcenp attack m --attack jsma --jobs 2` failed: rcenp attack: error: no mnist here"
    monkeypatch.setattr(sys, "argv", ["bench/bench_attacks.py"])

    def main():
        bench_attacks.cli_jobs_run("m", "jsma", parsed(), x)()

    assert bench_attacks.exit_status(main) == 2  # one line, no traceback
    assert capsys.readouterr().err == ("bench_attacks.py: error: `rcenp attack m --attack jsma --jobs 2` failed: "
                                       "rcenp attack: error: no mnist here\n")
    monkeypatch.setattr(bench_attacks.subprocess, "run", fake_attack_command(x, returncode=-9))
    with pytest.raises(ValueError, match=r"failed: exit status -9$"):
        bench_attacks.cli_jobs_run("m", "jsma", parsed(), x)()


def test_a_bare_attacks_without_cw_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        bench_attacks.main(["--attacks"])
    assert info.value.code == 2
    assert "--attacks names none and --cw is not given: nothing to time" in capsys.readouterr().err.splitlines()[-1]


def test_without_pytorch_the_script_skips_cleanly(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails, find_spec finds none
    out = tmp_path / "attacks.json"
    assert bench_attacks.main(["--n", "3", "--json", str(out)]) == 0
    printed, err = capsys.readouterr()
    report = json.loads(printed)
    assert report == json.loads(out.read_text())
    assert report["skipped"].startswith("PyTorch is not installed (pip install torch)")
    assert report["benchmark"] == "attacks on the first 3 sample images, eps 0.1" and "models" not in report
    assert err == "bench_attacks.py: skipped: PyTorch is not installed (pip install torch)\n"
