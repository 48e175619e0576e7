"""scripts/cw_study_tables.py: the C&W study's tables from finished and partial run folders."""
import gzip
import json

import pytest


def record(index, success, l2, iterations=900):
    return {"index": index, "success": success, "success_8bit": success and index % 2 == 0, "l2": l2 / 10,
            "l2_paper": l2, "iterations": iterations}


def write_lines(path, records, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt") as out:
            out.write(text)
    else:
        path.write_text(text)


def test_partial_runs_and_the_budget_rows(tmp_path, load_script):
    tables = load_script("cw_study_tables")
    ce = tmp_path / "cw-9x1000" / "mnist-resnet32-ce" / "cw"
    write_lines(ce / "samples.jsonl.gz", [record(i, i != 3, 10.0 + i) for i in range(25)], compress=True)
    (ce / "summary.json").write_text(json.dumps({"detection": {
        m: {"auc": 0.5, "n_pairs": 24} for m in ("confidence", "non_me", "log_kd")}}))
    rce = tmp_path / "cw-9x1000" / "mnist-resnet32-rce" / "cw" / "partial"
    write_lines(rce / "batch-00025.jsonl", [record(i, True, 5.0) for i in range(25, 30)])
    write_lines(rce / "batch-00000.jsonl", [record(i, i < 10, 4.0) for i in range(25)])
    longest = tmp_path / "cw-budget" / "mnist-resnet32-ce" / "cw-10000"
    write_lines(longest / "samples.jsonl", [record(i, i != 5, 5.0 + i / 2) for i in range(20)])

    study = {(r["model"], r["attack"]): r for r in tables.study_rows(tmp_path)}
    assert study["mnist-resnet32-ce", "cw"]["finished"] and study["mnist-resnet32-ce", "cw"]["successes"] == 24
    assert study["mnist-resnet32-ce", "cw"]["auc"]["non_me"] == 0.5
    partial = study["mnist-resnet32-rce", "cw"]
    assert not partial["finished"] and partial["n"] == 30 and "auc" not in partial
    assert partial["successes"] == 15 and partial["l2_paper_median"] == 4.0

    budget = {(r["model"], r["iterations_per_step"]): r for r in tables.budget_rows(tmp_path)}
    one_k = budget["mnist-resnet32-ce", 1000]   # the first 20 images of the 200-image run
    assert one_k["n"] == 20 and one_k["successes"] == 19
    expected = sorted((10.0 + i) / (5.0 + i / 2) for i in range(20) if i not in (3, 5))
    assert one_k["l2_vs_10k_n"] == 18 and abs(one_k["l2_vs_10k_median"] - (expected[8] + expected[9]) / 2) < 1e-12
    assert budget["mnist-resnet32-ce", 10000]["l2_vs_10k_median"] == 1.0
    assert budget["mnist-resnet32-rce", 1000]["l2_vs_10k_median"] is None   # no 10k run yet
    text = tables.markdown(tables.study_rows(tmp_path), tables.budget_rows(tmp_path))
    assert "| cw | mnist-resnet32-rce | 30 (partial) | 50.0% |" in text and "50.0 (64.1)" in text
    # the brackets are explained in the output itself, on the line under the study table
    assert text.split("\n\n")[1] == tables.PAPER and "in brackets the paper's Table 2 value" in tables.PAPER


def test_a_missing_results_folder_is_one_line(tmp_path, load_script, capsys):
    tables = load_script("cw_study_tables")
    with pytest.raises(SystemExit) as stop:
        tables.main(["--results", str(tmp_path / "nowhere")])
    assert stop.value.code == 2
    assert "no such folder" in capsys.readouterr().err


def test_readme_is_written_whole(tmp_path, load_script):
    tables = load_script("cw_study_tables")
    run = tmp_path / "cw-9x1000" / "mnist-resnet32-ce" / "cw"
    write_lines(run / "partial" / "batch-00000.jsonl", [record(i, True, 9.0) for i in range(25)])
    assert tables.main(["--results", str(tmp_path), "--readme"]) == 0
    text = (run.parent.parent / "README.md").read_text()
    assert "| cw | mnist-resnet32-ce | 25 (partial) | 100.0% |" in text
    assert "| mnist-resnet32-ce | 1,000 | 20 | 100% | 9.00 | 9.00 | 900 | — |" in text
    assert not list(run.parent.parent.glob("*.tmp"))
    assert "| cw-hc | mnist-resnet32-rce | not started yet |" in text   # what the study lacks is listed
    assert "| mnist-resnet32-rce | 10,000 | not finished yet |" in text
    assert tables.PAPER not in text and "the paper's Table 2 value in brackets" in text   # said once, in the prose


def test_the_confidence_note_counts_the_papers_pairs(tmp_path, load_script):
    tables = load_script("cw_study_tables")
    run = tmp_path / "cw-9x1000" / "mnist-resnet32-ce" / "cw-hc"
    records = [dict(record(i, i != 0, 10.0), clean_prediction=7, true_label=7 if i != 1 else 3,
                    misclassified=i != 0, clean_confidence=0.99999 if i < 4 else 0.999,
                    adversarial_confidence=0.9999, final_margin=10.0 + i / 100) for i in range(6)]
    write_lines(run / "samples.jsonl", records)
    (run / "summary.json").write_text(json.dumps({"detection": {
        m: {"auc": 0.5, "n_pairs": 4} for m in ("confidence", "non_me", "log_kd")}}))
    row, = tables.study_rows(tmp_path)
    # pairs: images 2-5 (0 not misclassified, 1 not clean-correct); clean more confident: 2 and 3
    assert row["confidence"]["n_pairs"] == 4 and row["confidence"]["clean_more_confident"] == 0.5
    assert row["confidence"]["final_margin_median"] == pytest.approx(10.035)
    note = tables.confidence_note([row])
    assert "mnist-resnet32-ce: the clean image is the more confident in 50% of 4 pairs" in note
    assert "discussed here once" in tables.confidence_note([])
    no_success = [dict(r, success=False) for r in records]
    assert tables.confidence_pairs(no_success)["final_margin_median"] is None


def test_the_budget_note_compares_1000_with_10000_and_the_status_follows_the_runs(tmp_path, load_script):
    tables = load_script("cw_study_tables")
    rows = [{"model": "mnist-resnet32-rce", "iterations_per_step": 1000, "success_rate": 0.8, "iterations_mean": 500.0,
             "l2_vs_10k_median": 1.089, "l2_vs_10k_n": 16},
            {"model": "mnist-resnet32-rce", "iterations_per_step": 10000, "success_rate": 1.0,
             "iterations_mean": 2000.0, "l2_vs_10k_median": 1.0, "l2_vs_10k_n": 20}]
    note = tables.budget_note(rows)
    assert "on mnist-resnet32-rce, 1,000 iterations per step break 80% of the images (10,000: 100%)" in note
    assert "median ‖δ‖₂ ratio is 1.089 (n = 16), in 25% of the iterations per image" in note
    assert "mnist-resnet32-ce" not in note and tables.budget_note(rows[1:]) == ""   # no 1,000 row: nothing said
    for r in rows:
        r.update(n=20, l2_paper_mean=10.0, l2_paper_median=10.0)
    assert tables.RUNNING in tables.readme([], rows) and tables.FINISHED not in tables.readme([], rows)
    study = [{"model": m, "attack": a, "finished": True, "n": 200, "success_rate": 1.0, "success_rate_8bit": 0.5,
              "l2_paper_mean": 10.0, "l2_paper_median": 10.0, "iterations_mean": 900.0}
             for a in tables.ATTACKS for m in tables.MODELS]
    every_budget = [dict(rows[0], model=m, iterations_per_step=b) for m in tables.MODELS for b in tables.BUDGETS]
    assert tables.FINISHED in tables.readme(study, every_budget) and tables.RUNNING not in tables.readme(study, every_budget)
