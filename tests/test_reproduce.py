"""``rcenp reproduce``: the smoke budget end to end, killed and resumed, and bad input.

The smoke run is killed (SIGKILL) after its fifth attack cell, resumed with two worker processes
(``--jobs 2``), and resumed once more, in child processes that conftest's ``BackgroundSmoke``
starts as soon as collection finds these tests, so that it runs beside the rest of the suite
(about 2 minutes of it); the tests then read the files it wrote.
"""
import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import rcenp
from rcenp.cli import main
from rcenp.reproduce import cells as cells_module
from rcenp.reproduce import lineup, paper
from rcenp.reproduce.budgets import get_budget
from rcenp.reproduce.figures import INSTALL_HINT, missing_libraries

ROOT = Path(rcenp.__file__).resolve().parent.parent


def test_kill_then_resume_recomputes_nothing_finished(smoke):
    """``smoke`` (conftest's BackgroundSmoke): the run SIGKILLed after its fifth attack cell, then
    resumed, then resumed once more."""
    out, r = smoke
    assert r["killed_status"] == -signal.SIGKILL and len(r["attack_cells_finished"]) == 5  # killed, not ended
    assert r["resumed_status"] == 0, r["resumed_stderr"][-3000:]
    assert r["again_status"] == 0, r["again_stderr"][-3000:]
    resumed = r["resumed"]["outcomes"]
    finished, cut = ({str(path.relative_to(out / "cells")) for path in r[name]} for name in ("finished", "cut"))
    assert len(cut) <= 1   # the cell in work at the kill, if it had begun its batch
    for key, outcome in resumed.items():  # the finished cells were not run again, every other one was
        if outcome["status"] == "done":
            expected = ("resumed", False) if key in finished else ("continued" if key in cut else "computed", True)
            assert (outcome["source"], outcome["seconds"] > 0) == expected, (key, outcome)
    assert finished < {key for key, o in resumed.items() if o["status"] == "done"}
    for path, mtime in r["mtimes"].items():                    # and nothing finished was rewritten
        if path.parent in r["finished"]:
            assert path.stat().st_mtime_ns == mtime, path
    again = r["again"]["outcomes"]                              # a finished run computes nothing at all
    assert {(o["source"], o["seconds"]) for o in again.values() if o["status"] == "done"} == {("resumed", 0.0)}
    assert {k: o["status"] for k, o in again.items()} == {k: o["status"] for k, o in resumed.items()}
    assert "0 to compute" in r["again_stderr"]
    for path, mtime in r["mtimes_after"].items():
        assert path.stat().st_mtime_ns == mtime, path
    logs = [path.read_text() for path in (out / "cells").glob("*/*/attack.log")]   # a fresh cell is no --resume
    assert logs and not any("--resume: no run" in log for log in logs)


def test_report_of_a_killed_run_shows_its_finished_cells_and_computes_nothing(smoke):
    """``--report`` on the run killed after its fifth attack cell (before it was resumed): REPORT.md
    headed PARTIAL, the finished cells done, exactly the cells the resume then computed pending,
    and no cell computed: no cell file written or touched but Figure 1's t-SNE cache (with the
    report extra), which any report writes."""
    out, r = smoke
    assert r["report_status"] == 0, r["report_stderr"][-3000:]
    outcomes = r["report_cells"]
    finished = {str(path.relative_to(out / "cells")) for path in r["finished"]}
    assert {k for k, o in outcomes.items() if o["status"] == "done"} == finished
    computed_later = {k for k, o in r["resumed"]["outcomes"].items() if o["status"] == "done" and o["seconds"] > 0}
    pending = {k for k, o in outcomes.items() if o["status"] == "pending"}
    assert pending == computed_later and pending
    assert {k: o["status"] for k, o in outcomes.items() if k not in pending} == \
        {k: o["status"] for k, o in r["resumed"]["outcomes"].items() if k not in pending}
    after = r["mtimes_after_report"]   # no cell file rewritten; new files only Figure 1's t-SNE cache
    assert {path: after.get(path) for path in r["mtimes"]} == r["mtimes"]
    assert {path.name for path in set(after) - set(r["mtimes"])} <= {"tsne.npz"}
    report = r["report_md"]
    again = f"rcenp reproduce --budget smoke --out {out} --resume"
    assert f"**PARTIAL: {len(pending)} cells of this run (MNIST) are not computed yet" in report and f"`{again}`" in report
    assert f"**Pending: {len(pending)} cells**" in report
    assert all(f"- {key}" in report for key in pending)
    assert "pending: not computed yet" in r["report_csv_table2"]
    assert r["report_stdout"].strip().endswith(f"(PARTIAL: {len(pending)} cells pending)")


def test_resume_refuses_a_different_budget_and_a_run_without_resume(smoke, capsys):
    out, _ = smoke
    assert main(["reproduce", "--budget", "smoke", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["reproduce", "--budget", "cpu", "--out", str(out), "--resume"]) == 2
    assert "smoke run" in capsys.readouterr().err


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_every_file_is_written_and_marked_smoke(smoke):
    out, r = smoke
    for name in ("table1", "table2", "beyond", "table3", "table4", "fig2", "sanity"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.json").is_file(), name
        payload = json.loads((out / f"{name}.json").read_text())
        assert payload["smoke"] is True and payload["rows"]
        assert payload["paper_source"] == paper.source(name)
        assert {row["budget"] for row in read_csv(out / f"{name}.csv")} == {"smoke"}
    report = (out / "REPORT.md").read_text()
    assert report.startswith("# rcenp reproduce") and "[SMOKE]" in report
    for heading in ("Table 1", "Table 2", "Beyond the paper", "Table 3", "Table 4", "Figures", "Sanity checks",
                    "Protocol differences", "Wall time per part"):
        assert f"## {heading}" in report, heading
    assert "rcenp[report]" not in report and "issue 11" not in report and "shared/" not in report
    assert f"- paper values: {paper.SOURCE};" in report and "Pang, Du, Dong, Zhu" in paper.SOURCE
    recorded = json.loads((out / "reproduce.json").read_text())["computed_by"]  # the resumed run (the killed one
    assert recorded and all(e["cells"] >= 1 and e["command"].startswith("rcenp reproduce") for e in recorded)  # died)
    assert f"- cells computed by: `{recorded[0]['command']}` (" in report
    if missing_libraries():
        assert report.count(f"not installed ({INSTALL_HINT})") == 3
    else:
        for figure in ("fig1_tsne_mnist.png", "fig2_mnist.png", "fig3_cwwb_mnist.png"):
            assert (out / figure).stat().st_size > 10_000, figure
            assert f"]({figure})" in report


def test_every_cell_is_filled_or_says_why(smoke):
    out, _ = smoke
    from rcenp.models.registry import shipped_models

    shipped = set(shipped_models())
    for name in ("table1", "table2", "table3", "table4"):
        for row in read_csv(out / f"{name}.csv"):
            model = row.get("model") or row.get("target")
            if row["status"] == "ok":
                assert model in shipped
                value = {"table1": "ours_pct", "table2": "log_kd_auc", "table3": "ratio_f2_positive",
                         "table4": "auc"}[name]
                # filled, or an AUC over no pairs (the tiny smoke attack fooled no image): n says so
                assert row[value] != "" or row.get("n_pairs") == "0", (name, row)
            else:
                assert row["status"].startswith("not available: ") or row["status"].startswith("not run"), row
                assert "issue" not in row["status"], row
                if model not in shipped and "not shipped" in row["status"]:
                    assert row["status"].endswith("is not shipped in this version")
    rows = read_csv(out / "table2.csv")
    mnist = [r for r in rows if r["dataset"] == "mnist" and r["in_table"] == "True"]
    assert len(mnist) == 12 and all(r["status"] == "ok" for r in mnist)  # 6 attacks x CE/RCE, all run
    assert {r["eps"] for r in rows if r["dataset"] == "mnist" and r["attack"] == "bim"} == {"0.08", "0.16"}
    jsma = [r for r in rows if r["dataset"] == "mnist" and r["attack"] == "jsma"]
    assert {r["theta"] for r in jsma} == {"0.08", "0.16"} and {r["eps"] for r in jsma} == {""}  # θ is not an ε
    assert all(r["log_kd_paper"] for r in mnist)  # every in-table MNIST cell has the paper's value beside it
    t1 = {(r["depth"], r["objective"], r["dataset"]): r for r in read_csv(out / "table1.csv")}
    assert t1[("32", "rce", "mnist")]["paper_pct"] == "0.29" and t1[("32", "rce", "mnist")]["n_test"] == "200"


def test_sanity_checks_ran_on_the_shipped_models(smoke):
    out, _ = smoke
    rows = read_csv(out / "sanity.csv")
    checks = {r["check"] for r in rows}
    assert {"accuracy non-increasing in ε", "iterative ≥ single-step", "unbounded BIM (ε = 1) ~100% success",
            "zero input-gradient fraction", "C&W success at full budget", "white-box C&W-wb ≥ transfer"} <= checks
    assert all(r["status"] in ("PASS", "FLAG", "n/a") for r in rows)
    unbounded = [r for r in rows if r["check"].startswith("unbounded")]
    assert len(unbounded) == 2 and all(r["status"] == "PASS" for r in unbounded)
    # the smoke budget is not the paper's C&W budget: the check does not apply (neither PASS nor FLAG)
    cw = [r for r in rows if r["check"] == "C&W success at full budget"]
    assert len(cw) == 2 and all(r["status"] == "n/a" and "REDUCED budget" in r["detail"] for r in cw)
    assert {r["check"] for r in rows if r["subject"].endswith(" jsma")} == {"accuracy non-increasing in θ"}


def test_report_lists_run_cells_and_counts_missing_ones_per_model(smoke):
    out, r = smoke
    report = (out / "REPORT.md").read_text()
    cells_section = report[report.index("## Cells"):]
    outcomes = r["again"]["outcomes"]
    done = [k for k, o in outcomes.items() if o["status"] == "done"]
    missing = {k: o for k, o in outcomes.items() if o["status"] == "not available"}
    not_run = {k: o for k, o in outcomes.items() if o["status"] == "not run"}  # data sets smoke does not cover
    assert done and not_run and len(done) + len(missing) + len(not_run) == len(outcomes)  # missing: none once all ship
    assert f"**Run: {len(done)} cells**" in cells_section
    assert f"**Not available: {len(missing)} cells**" in cells_section
    assert f"**Not run: {len(not_run)} cells** (data sets this run does not cover; the smoke budget covers none " \
           "of them: another budget, in another folder, computes them)" in cells_section
    assert all(f"| {key} |" in cells_section for key in done)
    assert not any(key in cells_section for key in {**missing, **not_run})  # no row per cell not computed
    models, skipped = {}, {}
    for cell in cells_module.plan(get_budget("smoke"), cells_module.PARTS):
        if cell.missing_model:
            models[cell.missing_model] = models.get(cell.missing_model, 0) + 1
        elif cell.missing:  # a shipped model of a data set the smoke budget does not cover
            assert cell.dataset != "mnist" and cell.missing == "not run: the smoke budget covers MNIST only"
            name = cell.model or lineup.expected_name(cell.dataset, cell.depth, cell.objective)
            skipped[name] = skipped.get(name, 0) + 1
    assert sum(models.values()) == len(missing) and sum(skipped.values()) == len(not_run)
    for model, count in skipped.items():
        line, = [line for line in cells_section.splitlines() if line.startswith(f"- {model}: ")]
        assert line.startswith(f"- {model}: {count} {'cell' if count == 1 else 'cells'} (") and \
            line.endswith(", not run: the smoke budget covers MNIST only")
    for model, count in models.items():
        line, = [line for line in cells_section.splitlines() if line.startswith(f"- {model}: ")]
        assert f"not shipped in this version; {count} cell" in line and lineup.train_command(model) in line
    # the complete record keeps every cell with its reason
    recorded = json.loads((out / "cells.json").read_text())
    assert set(recorded) == set(outcomes)
    assert all(recorded[k]["reason"].endswith("is not shipped in this version") for k in missing)
    assert all(recorded[k]["reason"] == "not run: the smoke budget covers MNIST only" for k in not_run)


def test_report_says_which_test_images_every_table_uses(smoke):
    out, _ = smoke
    report = (out / "REPORT.md").read_text()
    t1 = [row for row in read_csv(out / "table1.csv") if row["status"] == "ok"]
    test_set = t1[0]["test_set"]
    assert "embedded sample" in test_set and all(row["test_set"] == test_set for row in t1)
    head = report[:report.index("## Table 1")]
    assert f"  - MNIST: {test_set}; n = 20, 200" in head  # attack cells 20 images, Table 1 200
    assert "  - CIFAR-10 (subset): no finished cell" in head
    table1 = report[report.index("## Table 1"):report.index("## Table 2")]
    assert f"- MNIST: {test_set}; n = 200" in table1
    t2 = [row for row in read_csv(out / "table2.csv") if row["status"] == "ok"]
    assert t2 and {row["test_set"] for row in t2} == {test_set}


def test_jsma_is_labelled_theta(smoke):
    out, _ = smoke
    report = (out / "REPORT.md").read_text()
    assert "| JSMA θ=0.08 |" in report and "| FGSM ε=0.08 |" in report and "| BIM ε=0.08 |" in report
    assert "JSMA ε" not in report


def test_the_result_line_goes_to_stdout_and_progress_to_stderr(smoke, capsys, tmp_path):
    """As for rcenp attack: stdout holds the result (where REPORT.md is), stderr the progress. On a
    copy of the smoke run, which the other tests read: its rewrite would change what they see."""
    out = tmp_path / "smoke"
    shutil.copytree(smoke[0], out)
    assert main(["reproduce", "--budget", "smoke", "--out", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reproduce (smoke): {out / 'REPORT.md'} and ")
    assert "0 to compute" in captured.err and "REPORT.md" not in captured.err


@pytest.mark.parametrize("argv, message", [
    (["--budget", "huge"], "unknown budget 'huge'"),
    (["--only", "table2,table9"], "unknown part 'table9'"),
    (["--only", ""], "--only: an empty part; expected"),
    (["--only", "table1,,fig2"], "--only: an empty part; expected"),
    (["--cells-from", "/nonexistent/cells"], "no such folder"),
    (["--data-dir", "/nonexistent/data"], "--data-dir /nonexistent/data: no such folder"),
    (["--data-dir", "/nonexistent/data", "--plan"], "--data-dir /nonexistent/data: no such folder"),
    (["--report"], "--report: no reproduce run in"),
    (["--report", "--plan"], "--report computes nothing: it goes with neither --plan nor --jobs"),
])
def test_bad_input_is_one_error_line(argv, message, tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "out")] + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rcenp reproduce: error: ") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("plan", [[], ["--plan"]])
def test_a_missing_data_root_in_the_environment_is_one_error_line(plan, tmp_path, capsys, monkeypatch):
    """$RCENP_DATA naming no folder was taken as a root without the data: the plan said
    'to compute: nothing' and never named the path it looked in."""
    monkeypatch.setenv("RCENP_DATA", str(tmp_path / "nonexistent"))
    assert main(["reproduce", "--out", str(tmp_path / "out"), "--only", "table1"] + plan) == 2
    err = capsys.readouterr().err
    assert err == f"rcenp reproduce: error: $RCENP_DATA {tmp_path / 'nonexistent'}: no such folder\n"
    assert not (tmp_path / "out").exists()


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "typo"), "--only", "table1", "--resume"]) == 0
    assert f"--resume: no reproduce run in {tmp_path / 'typo'} yet, so this starts one" in capsys.readouterr().err


def test_unwritable_out_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["reproduce", "--out", str(blocker / "out"), "--only", "table1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {blocker / 'out'}: {blocker} is a file, not a folder" in err
    assert "Traceback" not in err
    assert main(["reproduce", "--out", str(blocker), "--only", "table1"]) == 2   # as rcenp attack words it
    assert capsys.readouterr().err == (f"rcenp reproduce: error: --out {blocker}: a file of that name exists; "
                                       "--out names a folder\n")


def test_the_command_line_runs_outside_python(tmp_path):
    """The installed entry point, in a fresh interpreter: bad input exits 2 with one line."""
    done = subprocess.run([sys.executable, "-m", "rcenp", "reproduce", "--budget", "nope", "--out",
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "unknown budget" in done.stderr


def test_core_imports_no_plotting_library():
    code = ("import sys, rcenp.cli, rcenp.reproduce, rcenp.reproduce.report\n"
            "print(sorted(m for m in ('matplotlib', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_parts_plan_only_their_cells():
    budget = get_budget("smoke")
    names = {c.key.split("/", 1)[1] for c in cells_module.plan(budget, ["table1"])}
    assert names == {"test-error"}
    table2 = cells_module.plan(budget, ["table2"])
    assert {c.key.split("/", 1)[1] for c in table2 if c.dataset == "mnist"} == \
        {"fgsm-0.08", "bim-0.08", "ilcm-0.08", "jsma-0.08", "cw", "cw-hc"}
    table4 = cells_module.plan(budget, ["table4"])  # transfers, and the white-box cells whose x* they score
    assert all(c.depth == 56 for c in table4 if c.substitute) and \
        {c.key for c in table4 if not c.substitute} == {c.crafted for c in table4 if c.crafted}
