"""bench/profile_forward.py on a tiny ResNet: every pass profiled, its per-shape convolution split
adding up to the per-operation totals, and the flops counted per gradient a backward computes."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import profile_forward  # noqa: E402


def conv_flops(c, co, h, w, n=2):
    return 2.0 * n * h * w * 9 * c * co


def test_profile_splits_the_convolutions_by_shape_and_counts_each_gradient():
    report = profile_forward.profile(depth=8, batch=2, shape=(1, 8, 8), repeats=1)
    assert set(report) >= set(profile_forward.PASSES)
    for name in profile_forward.PASSES:
        result = report[name]
        ops = {o["op"]: o for o in result["operations"]}
        for phase in ("forward", "backward"):
            if f"Conv2d.{phase}" not in ops:
                assert name == "forward" and phase == "backward"
                continue
            layers = [e for e in result["conv_by_shape"] if e["phase"] == phase]
            assert sum(e["ms"] for e in layers) == pytest.approx(ops[f"Conv2d.{phase}"]["ms"])
            assert sum(e["calls"] for e in layers) == ops[f"Conv2d.{phase}"]["calls"]
    # ResNet-8 on 1x8x8: the stem 1->16, then one unit per stage (8x8, 4x4, 2x2)
    forward = sum(e["gflop_per_s"] * e["ms"] for e in report["forward"]["conv_by_shape"]) * 1e6
    expected = (conv_flops(1, 16, 8, 8) + 2 * conv_flops(16, 16, 8, 8) + conv_flops(16, 32, 4, 4)
                + conv_flops(32, 32, 4, 4) + conv_flops(32, 64, 2, 2) + conv_flops(64, 64, 2, 2))
    assert forward == pytest.approx(expected)
    # the input gradient computes dx only; the training step dx and dw, but no dx for the stem's image input
    for name, backward in (("input_grad", expected), ("train_step", 2 * expected - conv_flops(1, 16, 8, 8))):
        layers = [e for e in report[name]["conv_by_shape"] if e["phase"] == "backward"]
        assert sum(e["gflop_per_s"] * e["ms"] for e in layers) * 1e6 == pytest.approx(backward)


def test_the_gpu_check_calls_the_benchmarks_with_options_they_have():
    """scripts/gpu_check.sh called bench_engine.py with --channels/--size after they became --shape;
    its output went to /dev/null, so the GPU session lost that row without a word."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / "scripts" / "gpu_check.sh").read_text().replace("\\\n", " ")
    calls = re.findall(r"python3 (bench/\w+\.py)([^\n>|]*)", script)
    assert {path for path, _ in calls} >= {"bench/bench_engine.py", "bench/bench_kd.py"}
    for path, options in calls:
        source = (root / path).read_text()
        for flag in re.findall(r"(--[\w-]+)", options):
            assert f'"{flag}"' in source, f"scripts/gpu_check.sh passes {flag} to {path}, which has no such option"


def test_the_gpu_checks_reproduce_stage_passes_options_reproduce_has():
    """The paper stage's `rcenp reproduce` line and its default PAPER_ARGS, against the parser."""
    import re
    import shlex

    from rcenp.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    script = (root / "scripts" / "gpu_check.sh").read_text().replace("\\\n", " ")
    line = re.search(r"python3 -m rcenp (reproduce [^\n>]*)", script)[1]
    default_args = re.search(r"\$\{PAPER_ARGS:-([^}]*)\}", line)[1]
    argv = shlex.split(re.sub(r"\$\{PAPER_ARGS:-[^}]*\}", default_args, line).replace('"$out', '"runs/gpu'))
    args, extras = build_parser().parse_known_args(argv)
    assert extras == [] and args.command == "reproduce"
    assert (args.budget, args.device, args.resume, args.only, args.datasets) == ("paper", "cuda", True, "table2", "mnist")


def test_bench_engine_records_each_child_processes_host_steal_time(tmp_path):
    import json
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "engine.json"
    done = subprocess.run([sys.executable, "bench/bench_engine.py", "--no-torch", "--batch", "1", "--shape", "1x28x28",
                           "--repeats", "1", "--json", str(out)], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    run = json.loads(out.read_text())["runs"][0]
    assert run["torch"] == "skipped (--no-torch)"
    record = run["rcenp"]
    assert record["train_step_s"] > 0
    assert ("host_steal_s" in record) == Path("/proc/stat").is_file() and record.get("host_steal_s", 0) >= 0


def test_bench_engine_says_why_pytorch_was_not_timed(monkeypatch):
    import argparse

    import bench_engine

    monkeypatch.setattr(bench_engine, "_child", lambda framework, *_: {"framework": framework, "error": ["stub"]})
    args = argparse.Namespace(depth=8, rounds=1, no_torch=True)
    assert bench_engine._compare(args, 1, (1, 8, 8), has_torch=True)["torch"] == "skipped (--no-torch)"
    args.no_torch = False
    assert bench_engine._compare(args, 1, (1, 8, 8), has_torch=False)["torch"] == "not installed: comparison skipped"


def test_the_conv_floor_times_every_layer_of_the_forward_once_per_shape(tmp_path):
    """bench_conv_floor.py on a ResNet-8: each distinct conv layer of the forward with its call
    count (7 convolutions: the stem, then 2 in each of 3 units), rcenp's time, its algorithm's bare GEMMs
    and, where PyTorch is installed, PyTorch's conv2d; totals weighted by the counts."""
    import importlib.util
    import json
    import subprocess

    done = subprocess.run([sys.executable, "bench/bench_conv_floor.py", "--depth", "8", "--shape", "1x8x8",
                           "--batch", "2", "--repeats", "1", "--json", str(tmp_path / "floor.json")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "floor.json").read_text())
    assert json.loads(done.stdout) == report and report["threads"] == 1
    (result,) = report["results"]
    layers = result["layers"]
    assert result["batch"] == 2 and sum(e["calls"] for e in layers) == 7
    assert [e["layer"] for e in layers] == ["1->16 3x3 stride 1 on 8x8", "16->16 3x3 stride 1 on 8x8",
                                            "16->32 3x3 stride 2 on 8x8", "32->32 3x3 stride 1 on 4x4",
                                            "32->64 3x3 stride 2 on 4x4", "64->64 3x3 stride 1 on 2x2"]
    assert [e["algorithm"] for e in layers] == ["im2col", "kernel rows", "im2col", "kernel rows", "im2col",
                                                "kernel rows"]
    has_torch = importlib.util.find_spec("torch") is not None
    for key in ("rcenp", "gemms") + (("torch",) if has_torch else ()):
        assert all(e[f"{key}_us"] > 0 for e in layers)
        total = sum(e[f"{key}_us"] * e["calls"] for e in layers) / 1000
        assert abs(result["totals"][f"{key}_ms"] - total) < 1e-3
    assert ("torch_us" in layers[0]) == has_torch and (report["torch_skipped"] is None) == has_torch
