"""bench/bench_engine.py's bookkeeping, without timing anything real: its statistics, its RSS
baseline, how rounds merge and take turns, the device both frameworks run on, and its exit status."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_engine  # noqa: E402


def record(framework, device="cpu", seconds=1.0, peak=500.0, before=400.0, steal=0.5):
    times = {key: seconds for key in bench_engine._TIMED}
    return {"framework": framework, "device": device, **times, "train_step_minor_faults": 3, "host_steal_s": steal,
            **bench_engine._rss_fields(peak, before, "statm")}


def engine_args(**overrides):
    values = dict(depth=8, rounds=1, no_torch=False, repeats=1, tune_allocator=False, threads=None, device="cpu")
    return argparse.Namespace(**{**values, **overrides})


def test_the_median_of_an_even_count_is_the_mean_of_the_middle_two(monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 3.0, 3.0, 6.0, 6.0, 10.0])  # calls of 1, 2, 3 and 4 s
    monkeypatch.setattr(bench_engine.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(bench_engine.time, "process_time", lambda: 0.0)
    median, least, cpu = bench_engine._timeit(lambda: None, lambda: None, repeats=4, warmup=0)
    assert (median, least, cpu) == (2.5, 1.0, 0.0)


def test_the_rss_baseline_is_the_resident_set_now_not_the_high_water_mark(tmp_path):
    import os

    statm = tmp_path / "statm"
    statm.write_text("9000 2560 100 1 0 500 0\n")
    assert bench_engine._current_rss_mb(str(statm)) == (2560 * os.sysconf("SC_PAGE_SIZE") / 2**20, "statm")
    mb, source = bench_engine._current_rss_mb(str(tmp_path / "missing"))
    assert source == "ru_maxrss" and mb == bench_engine._rss_mb()
    if Path("/proc/self/statm").is_file():
        assert bench_engine._current_rss_mb()[1] == "statm"


def test_a_rise_that_is_not_positive_is_null():
    assert bench_engine._rss_fields(500.0, 400.0, "statm")["peak_rss_above_baseline_mb"] == 100.0
    assert bench_engine._rss_fields(400.0, 400.0, "statm")["peak_rss_above_baseline_mb"] is None
    assert bench_engine._rss_fields(390.0, 400.0, "ru_maxrss")["peak_rss_above_baseline_mb"] is None


def test_rounds_merge_without_mixing_one_rounds_fields_with_anothers():
    first = record("rcenp", seconds=2.0, peak=600.0, before=550.0, steal=0.25)    # rise 50
    second = record("rcenp", seconds=1.0, peak=580.0, before=400.0, steal=0.5)    # rise 180
    second["train_step_minor_faults"] = 7
    best = bench_engine._best_of([first, second])
    assert best["rounds"] == 2 and best["train_step_s"] == 1.0 and best["peak_rss_mb"] == 600.0
    assert best["peak_rss_above_baseline_mb"] == 180.0  # one round's own rise, not 600 - 400 across rounds
    assert best["train_step_minor_faults"] == 7 and best["host_steal_s"] == 0.75
    assert "rss_before_steps_mb" not in best and best["per_round"] == [first, second]
    flat = bench_engine._best_of([record("rcenp", peak=400.0, before=400.0)])
    assert flat["peak_rss_above_baseline_mb"] is None


def test_the_frameworks_take_turns_between_rounds(monkeypatch):
    calls = []

    def child(framework, args, batch, shape):
        calls.append(framework)
        return record(framework)

    monkeypatch.setattr(bench_engine, "_child", child)
    report = bench_engine._compare(engine_args(rounds=3), 1, (1, 8, 8), has_torch=True)
    assert calls == ["rcenp", "torch", "torch", "rcenp", "rcenp", "torch"]
    assert report["ratio_rcenp_over_torch"]["train_step"] == 1.0
    assert report["ratio_rcenp_over_torch"]["peak_rss_above_baseline"] == 1.0


def test_no_memory_ratio_where_pytorchs_steps_raised_no_rss(monkeypatch):
    records = {"rcenp": record("rcenp"), "torch": record("torch", peak=400.0, before=400.0)}
    monkeypatch.setattr(bench_engine, "_child", lambda framework, *_: records[framework])
    ratios = bench_engine._compare(engine_args(), 1, (1, 8, 8), has_torch=True)["ratio_rcenp_over_torch"]
    assert ratios["peak_rss_above_baseline"] is None and ratios["peak_rss"] == 1.25


def test_different_devices_give_no_ratios_and_status_1(monkeypatch, capsys):
    monkeypatch.setattr(bench_engine, "_has_torch", lambda: True)  # the children are stand-ins
    records = {"rcenp": record("rcenp", device="cuda"), "torch": record("torch", device="cpu")}
    monkeypatch.setattr(bench_engine, "_child", lambda framework, *_: records[framework])
    monkeypatch.setattr("rcenp.backend.default_device", lambda: "cuda")
    assert bench_engine.main(["--batch", "1", "--shape", "1x8x8", "--depth", "8"]) == 1
    out, err = capsys.readouterr()
    (run,) = json.loads(out)["runs"]
    assert "ratio_rcenp_over_torch" not in run
    assert run["device_mismatch"].startswith("rcenp ran on cuda and PyTorch on cpu: no ratios")
    assert err.count("\n") == 1 and err.startswith("bench_engine.py: error: rcenp and PyTorch ran on different devices")


def test_a_failed_child_gives_status_1_after_the_json(monkeypatch, capsys):
    monkeypatch.setattr(bench_engine, "_has_torch", lambda: True)  # the children are stand-ins
    def child(framework, *_):
        return {"framework": "torch", "error": "RuntimeError: out of memory"} if framework == "torch" else record("rcenp")

    monkeypatch.setattr(bench_engine, "_child", child)
    assert bench_engine.main(["--batch", "1", "--shape", "1x8x8", "--depth", "8"]) == 1
    out, err = capsys.readouterr()
    (run,) = json.loads(out)["runs"]
    assert run["torch"]["error"] == "RuntimeError: out of memory" and "ratio_rcenp_over_torch" not in run
    assert err.count("\n") == 1 and "1 child process(es) failed (ResNet-8 batch 1 1x8x8 torch" in err
    monkeypatch.setattr(bench_engine, "_child", lambda framework, *_: record(framework))
    assert bench_engine.main(["--batch", "1", "--shape", "1x8x8", "--depth", "8"]) == 0
    assert capsys.readouterr().err == ""


def test_both_children_are_told_the_device_as_rcenp_reads_it(monkeypatch, capsys):
    monkeypatch.setattr(bench_engine, "_has_torch", lambda: True)  # the children are stand-ins
    seen = []
    monkeypatch.setenv("RCENP_DEVICE", " CPU ")
    monkeypatch.setattr(bench_engine, "_child", lambda framework, args, *_: seen.append(args.device) or record(framework))
    assert bench_engine.main(["--batch", "1", "--shape", "1x8x8", "--depth", "8"]) == 0
    assert seen == ["cpu", "cpu"] and json.loads(capsys.readouterr().out)["device"] == "cpu"
    monkeypatch.setenv("RCENP_DEVICE", "gpu")
    with pytest.raises(Exception, match="RCENP_DEVICE='gpu': expected one of cpu, cuda"):
        bench_engine.main(["--batch", "1", "--shape", "1x8x8", "--depth", "8"])


def test_a_child_is_started_with_the_device_and_its_failure_is_its_last_line(monkeypatch):
    commands = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\n  File x\nMemoryError: no\n")

    monkeypatch.setattr(bench_engine.subprocess, "run", fake_run)
    failed = bench_engine._child("torch", engine_args(device="cuda"), 4, (1, 8, 8))
    assert failed == {"framework": "torch", "error": "MemoryError: no"}
    assert commands[0][commands[0].index("--child-device") + 1] == "cuda"
    monkeypatch.setattr(bench_engine.subprocess, "run", lambda cmd, **_: subprocess.CompletedProcess(cmd, 3, "", ""))
    assert bench_engine._child("rcenp", engine_args(), 4, (1, 8, 8))["error"] == "exit status 3"


def test_pytorch_runs_on_the_cpu_where_its_build_has_no_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this PyTorch has CUDA")
    args = argparse.Namespace(depth=8, channels=1, hw=[8, 8], batch=1, threads=None, repeats=1, device="cuda")
    result = bench_engine.run_torch(args)
    assert result["device"] == "cpu" and result["rss_before_steps_source"] in ("statm", "ru_maxrss")
