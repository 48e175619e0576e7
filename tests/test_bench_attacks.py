"""bench/bench_attacks.py end to end on two images: its JSON, and BIM on both sides agreeing.
Skips without torch (a bench-only dependency)."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import attack_measures  # noqa: E402
import bench_attacks  # noqa: E402


@pytest.mark.filterwarnings("ignore:Please import `gaussian_filter`:DeprecationWarning")  # foolbox 3.3.4 on SciPy
def test_bim_and_cw_report(tmp_path, capsys):
    out = tmp_path / "attacks.json"
    assert bench_attacks.main(["--models", "mnist-resnet32-rce", "--n", "2", "--attacks", "bim", "--threads", "1",
                               "--cw", "--cw-n", "2", "--cw-steps", "2", "--cw-binary-steps", "1",
                               "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["threads"]["torch_intra_op"] == 1
    entry = report["models"]["mnist-resnet32-rce"]
    assert entry["n"] == 2 and entry["twin"]["prediction_agreement"] == 1.0
    assert entry["twin"]["max_logit_difference_relative"] < 1e-4
    bim = entry["bim"]
    assert bim["torch"]["images_per_s"] > 0 and 0 <= bim["torch"]["success_rate"] <= 1
    assert bim["settings"] == {"eps": 0.1, "steps": 10, "success": "adversarial prediction != clean prediction",
                               "batch_size": 2}  # every side attacks the N images in one batch
    if isinstance(bim["rcenp"], str):
        assert bim["rcenp"].endswith("not available")
    else:  # the same spec on the same weights: the same images up to float32 rounding
        assert bim["agreement_rcenp_torch"]["adv_prediction_agreement"] == 1.0
        assert bim["agreement_rcenp_torch"]["max_abs_x_adv_difference"] <= 0.02 + 1e-6  # at most one step
    cw = entry["cw_l2"]
    assert cw["settings"]["n"] == 2 and cw["settings"]["max_iterations"] == 2 and cw["settings"]["batch_size"] == 2
    for side in ("foolbox", "rcenp"):  # the two take turns, each run recording the host's steal time
        if isinstance(cw[side], dict):
            assert len(cw[side]["seconds_all"]) == 1
            assert ("host_steal_seconds_all" in cw[side]) == (attack_measures.steal_seconds() is not None)
    assert isinstance(cw["foolbox"], str) or 0 <= cw["foolbox"]["success_rate"] <= 1
    if isinstance(cw["foolbox"], dict) and isinstance(cw["rcenp"], dict):  # each image whose success differs, listed
        disagree = cw["disagreements"]
        assert len(disagree) == round(2 * (1 - cw["agreement"]["success_agreement"]))
        assert all(d["foolbox"]["success"] != d["rcenp"]["success"] and len(d["rcenp"]["c"]) == 1 for d in disagree)
    assert not out.with_name("attacks.json.tmp").exists()


def test_threads_sets_pytorchs_inter_op_threads_too(tmp_path):
    """In a fresh process, as a user runs it: in this one PyTorch may have run inter-op work already."""
    import os
    import subprocess

    out = tmp_path / "attacks.json"
    env = {**os.environ, "RCENP_HOST_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "bench/bench_attacks.py", "--models", "mnist-resnet32-ce", "--n", "1",
                           "--attacks", "bim", "--warmup", "0", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], env=env)
    assert done.returncode == 0, done.stderr
    threads = json.loads(out.read_text())["threads"]
    assert threads["torch_intra_op"] == threads["torch_inter_op"] == 1


def test_bad_arguments_exit_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        bench_attacks.main(["--n", "0"])
    assert info.value.code == 2
    assert "must be positive" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^--n 1001 but the sample set has 1000 images$"):
        bench_attacks.main(["--models", "mnist-resnet32-ce", "--n", "1001", "--attacks", "bim"])


def test_implementations_take_turns_and_each_run_records_the_hosts_steal_time():
    calls = []
    runs = {"torch": lambda: calls.append("torch") or "t", "rcenp": lambda: calls.append("rcenp") or "r"}
    timed = attack_measures.interleaved(runs, repeats=3, warmup=1)
    assert calls == ["torch", "rcenp", "torch", "rcenp", "rcenp", "torch", "torch", "rcenp"]
    assert timed["torch"][0] == "t" and timed["rcenp"][0] == "r"
    for _, seconds in timed.values():
        assert len(seconds) == 3
        for wall, cpu, steal in seconds:
            assert wall >= 0 and cpu >= 0
            assert steal is None or steal >= 0
    timing = attack_measures.timing(np.zeros((4, 1)), timed["rcenp"][1])
    assert len(timing["seconds_all"]) == 3
    assert ("host_steal_seconds_all" in timing) == (attack_measures.steal_seconds() is not None)


def test_cli_jobs_entry_times_rcenp_attack_jobs_on_the_same_images(tmp_path):
    out = tmp_path / "attacks.json"
    assert bench_attacks.main(["--models", "mnist-resnet32-ce", "--n", "2", "--attacks", "bim", "--threads", "1",
                               "--warmup", "0", "--jobs", "2", "--json", str(out)]) == 0
    bim = json.loads(out.read_text())["models"]["mnist-resnet32-ce"]["bim"]
    jobs = bim["rcenp_cli_jobs2"]
    assert jobs["seconds"] > 0 and jobs["success_rate"] == bim["rcenp"]["success_rate"]
    assert jobs["cpu_seconds"] > 0  # the processes it started count
    assert bim["agreement_rcenp_cli_jobs2_rcenp"]["identical_x_adv_fraction"] == 1.0  # BIM: per image
    assert bim["seconds_rcenp_cli_jobs2_over_torch"] > 0


def test_rcenps_attacks_take_all_n_images_in_one_batch_and_like_for_like_names_only_what_exists(monkeypatch):
    calls = {}

    class Attacks:
        @staticmethod
        def bim(model, x, eps, **options):
            calls["bim"] = options
            return x

        @staticmethod
        def jsma(model, x, theta, **options):
            calls["jsma"] = options
            return x

    def compare(name, x, args, torch_runs, run_rcenp, *rest):
        run_rcenp()
        return {"seconds_rcenp_over_torch": 1.0}

    monkeypatch.setattr(bench_attacks, "_compare", compare)
    args = argparse.Namespace(n=3, source="sample", data_dir=None, eps=0.1, attacks=["bim", "jsma"], jobs=0,
                              channels_last=False, torch_jsma="pang2018", cw=False)
    report = bench_attacks.bench_model("mnist-resnet32-ce", args, Attacks)
    assert calls == {"bim": {"steps": 10, "batch_size": 3},
                     "jsma": {"max_iterations": 100, "variant": "pang2018", "batch_size": 3}}
    assert report["bim"]["settings"]["batch_size"] == report["jsma"]["settings"]["batch_size"] == 3
    assert "like_for_like" not in report["jsma"]  # no torch_log_target entry to name

    def compare_both(*_, **__):
        return {"seconds_rcenp_over_torch": 1.0, "seconds_rcenp_over_torch_log_target": 0.5}

    monkeypatch.setattr(bench_attacks, "_compare", compare_both)
    args.torch_jsma, args.jobs = "both", 2
    report = bench_attacks.bench_model("mnist-resnet32-ce", args, Attacks)
    assert report["jsma"]["like_for_like"] == "seconds_rcenp_over_torch_log_target"
    assert report["jsma"]["settings"]["rcenp_cli_jobs_batch_size"] == 2
