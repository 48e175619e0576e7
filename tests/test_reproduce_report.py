"""``rcenp.reproduce`` report: strength labels, CSV columns, test images, the Cells section, and what
the report's tables, figures and notes say."""
import json

import numpy as np
import pytest

from rcenp.reproduce import budgets, cells, differences, lineup, paper, report, tables, threat_tables
from tests.reproduce_fakes import ROOT, unavailable


def test_strength_is_theta_for_jsma_and_epsilon_otherwise():
    assert tables.strength_label("jsma", 0.16) == "θ=0.16"
    assert [tables.strength_label(a, 0.16) for a in ("fgsm", "bim", "ilcm")] == ["ε=0.16"] * 3
    assert tables.strength_label("cw", None) == ""
    smoke = budgets.get_budget("smoke")
    res = unavailable(cells.plan(smoke, ["table2"]))
    for table in (tables.table2(res, smoke), tables.beyond(res, smoke)):
        assert "| JSMA θ=0.08 |" in table.markdown and "| FGSM ε=0.08 |" in table.markdown
        assert "JSMA ε" not in table.markdown and "| C&W |" in table.markdown
    row = {"dataset": "mnist", "attack": "jsma", "eps": None, "theta": 0.16, "objective": "rce", "n_pairs": 20,
           "confidence_outside_ci": True, "confidence_auc": 50.0, "confidence_ci_low": 40.0,
           "confidence_ci_high": 60.0, "confidence_auc_strict": 45.0, "confidence_strict_ci_low": 35.0,
           "confidence_strict_ci_high": 55.0, "confidence_ci_degenerate": False, "confidence_paper": 100.0}
    line = "- mnist jsma θ=0.16 RCE Confidence: ours (strict ties) 45.0 [35.0, 55.0], paper 100.0 (n = 20 pairs"
    assert differences._outside([row]) == ([], [line + ")"], 0)
    row.update(confidence_clean_median=0.99999731, confidence_adversarial_median=0.9998723)  # which way it leans
    assert differences._outside([row])[1] == [line + "; medians clean 0.999997, adversarial 0.999872)"]


def test_csv_rows_keep_epsilon_and_theta_in_separate_columns():
    """JSMA's θ is not an ε: the CSVs hold it in a theta column, and their eps column holds ε only."""
    smoke = budgets.get_budget("smoke")
    res = unavailable(cells.plan(smoke, ["table2", "fig2"]))
    for table in (tables.table2(res, smoke), tables.beyond(res, smoke), threat_tables.fig2_data(res, smoke)):
        assert {"eps", "theta"} <= set(table.columns), table.name
        rows = [{k: r.get(k) for k in table.columns} for r in table.rows]
        jsma = [r for r in rows if r["attack"] == "jsma"]
        eps_attacks = [r for r in rows if r["attack"] in ("fgsm", "bim", "ilcm")]
        assert jsma and eps_attacks, table.name
        assert all(r["eps"] is None and r["theta"] in (*smoke.eps_sweep, smoke.table_eps) for r in jsma)
        assert all(r["theta"] is None and r["eps"] is not None for r in eps_attacks)
        assert all(r["eps"] is None and r["theta"] is None for r in rows if r["attack"].startswith("cw"))
        assert [tables.strength(r) for r in jsma] == [r["theta"] for r in jsma]


def test_test_images_name_the_split_per_data_set():
    lines = tables.describe_test_sets([
        {"dataset": "mnist", "n": 200, "test_set": "mnist/test: 1,000 images, SUBSET (embedded sample)"},
        {"dataset": "mnist", "n": 20, "test_set": "mnist/test: 1,000 images, SUBSET (embedded sample)"},
        {"dataset": "cifar10", "n": None, "test_set": None}])
    assert lines == ["- MNIST: mnist/test: 1,000 images, SUBSET (embedded sample); n = 20, 200",
                     "- CIFAR-10 (subset): no finished cell", "- Fashion-MNIST (extra): no finished cell"]


def test_cells_section_lists_run_cells_and_counts_the_others_per_model(monkeypatch):
    infos = tuple(i for i in lineup._shipped() if i["depth"] != 56)  # models still to ship: the ResNet-56s
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    smoke = budgets.get_budget("smoke")
    planned = cells.plan(smoke, ["table1", "table3", "table4"])
    res = unavailable(planned)
    shipped = [c for c in planned if c.missing is None]
    for c in shipped[:2]:
        res.outcomes[c.key] = {"status": "done", "path": f"/out/cells/{c.key}", "source": "computed", "seconds": 1.0}
    for c in shipped[2:]:  # shipped, but not available for another reason (one line per model and reason)
        res.outcomes[c.key] = {"status": "not available", "path": None, "reason": "not available: no test data"}
    text = report.cells_md(res)
    lines = text.splitlines()
    assert "**Run: 2 cells**" in lines and sum(line.startswith("| ") and "/out/cells/" in line for line in lines) == 2
    missing = [c for c in planned if c.missing_model]
    assert f"**Not available: {len(planned) - 2} cells**" in lines
    for model in {c.missing_model for c in missing}:
        line, = [line for line in lines if line.startswith(f"- {model}: ")]
        count = sum(c.missing_model == model for c in missing)
        assert f"not shipped in this version; {count} cell" in line and lineup.train_command(model) in line
    others = [line for line in lines if "no test data" in line]
    assert len(others) == len({c.model for c in shipped[2:]}) >= 1
    assert lineup.HOW_TO_ADD in lines and "issue" not in text
    assert not any(c.key in text for c in missing)  # no row per unavailable cell


def test_table2_eps_script_keeps_theta_apart_and_reads_the_published_sweep(tmp_path, load_script):
    """scripts/table2_eps.py on attack_sweep's own folder format (results/fig2a): JSMA rows carry θ
    under 'theta', the others ε under 'eps'; the published sweep still reads."""
    script = load_script("table2_eps")
    detection = {m: {"auc": 0.9, "auc_strict_ties": 0.9, "n_pairs": 7} for m in paper.METRICS}
    for cell in ("bim-0.08", "jsma-0.08"):
        (tmp_path / "m-ce" / cell).mkdir(parents=True)
        (tmp_path / "m-ce" / cell / "summary.json").write_text(json.dumps({"detection": detection}))
    rows = script.distances(tmp_path, {"ce": "m-ce"})
    assert [(r["attack"], r.get("eps"), r.get("theta")) for r in rows] == [("bim", 0.08, None), ("jsma", None, 0.08)]
    assert not any(r["closest"] for r in rows)   # 7 pairs: too few to be anyone's closest ε
    table = script.markdown(rows)
    assert "| JSMA (θ) | CE |" in table and "| BIM | CE |" in table and "**" not in table


def test_table2_eps_compares_the_papers_strict_tie_auc_among_cells_with_enough_pairs(tmp_path, load_script):
    """The paper's tie rule (strict), and the closest ε chosen as the report's best fit: among cells
    with at least FEW_PAIRS pairs, the smaller ε on a tie."""
    script = load_script("table2_eps")
    row = paper.TABLE2[("bim", "ce", "mnist")]

    def cell(eps, off_half, off_strict, n):
        detection = {m: {"auc": (row[m] + off_half) / 100, "auc_strict_ties": (row[m] + off_strict) / 100, "n_pairs": n}
                     for m in paper.METRICS}
        (tmp_path / "m-ce" / f"bim-{eps:g}").mkdir(parents=True)
        (tmp_path / "m-ce" / f"bim-{eps:g}" / "summary.json").write_text(json.dumps({"detection": detection}))

    cell(0.02, 0.0, 0.0, tables.FEW_PAIRS - 1)   # exact, but on too few pairs
    cell(0.04, 0.0, 3.0, 500)                    # exact with ties half, 3 points off with the paper's rule
    cell(0.06, 2.0, -1.0, 500)
    cell(0.08, 1.0, 1.0, tables.FEW_PAIRS)
    rows = script.distances(tmp_path, {"ce": "m-ce"})
    assert [round(r["mean_abs_difference"], 6) for r in rows] == [0.0, 3.0, 1.0, 1.0]
    assert [r["closest"] for r in rows] == [False, False, True, False]
    published = ROOT / "results" / "fig2a"
    if (published / "mnist-resnet32-ce").is_dir():
        rows = script.distances(published, {"ce": "mnist-resnet32-ce", "rce": "mnist-resnet32-rce"})
        assert any(r["attack"] == "jsma" and r["theta"] is not None for r in rows)
        assert all(r["eps"] is not None for r in rows if r["attack"] != "jsma")


def test_table3_with_no_clean_correct_image_says_n_0(tmp_path):
    smoke = budgets.get_budget("smoke")
    planned = cells.plan(smoke, ["table3"])
    res = unavailable(planned)
    cell = next(c for c in planned if c.model == "mnist-resnet32-ce" and c.key.endswith("/cw-wb"))
    misclassified = {"clean_prediction": 1, "true_label": 2, "f2": 1.0, "stop_reason": "f2 > 0", "l2_paper": 3.0}
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(misclassified) for _ in range(2)))
    res.outcomes[cell.key] = {"status": "done", "path": str(tmp_path), "source": "computed"}
    table = threat_tables.table3(res, smoke)
    row, = [line for line in table.markdown.splitlines() if line.startswith("| MNIST | CE | attacker |")]
    assert "| 0 | n = 0; paper " in row


def test_table3_gives_the_distortion_of_the_evading_examples_beside_all_at_the_target(tmp_path):
    """RCE's 33.06 (n = 66) was 37 evading examples at 22.13 and 29 that the detector still flags at
    47.0: the flagged fallbacks carried the match with the paper's 31.59. Both are shown."""
    smoke = budgets.get_budget("smoke")
    planned = cells.plan(smoke, ["table3"])
    res = unavailable(planned)
    cell = next(c for c in planned if c.model == "mnist-resnet32-rce" and c.key.endswith("/cw-wb"))
    rows = [{"clean_prediction": 1, "true_label": 1, "f2": 0.0, "stop_reason": "success", "l2_paper": 20.0},
            {"clean_prediction": 1, "true_label": 1, "f2": 0.0, "stop_reason": "success", "l2_paper": 24.0},
            {"clean_prediction": 1, "true_label": 1, "f2": 2.0, "stop_reason": "f2 > 0", "l2_paper": 50.0},
            {"clean_prediction": 1, "true_label": 1, "f2": 2.0, "stop_reason": "no success", "l2_paper": 0.0}]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res.outcomes[cell.key] = {"status": "done", "path": str(tmp_path), "source": "computed"}
    table = threat_tables.table3(res, smoke)
    row = next(r for r in table.rows if r["model"] == "mnist-resnet32-rce" and r["kernel"] == "attacker")
    assert (row["distortion_evading"], row["n_distortion_evading"]) == (22.0, 2)
    assert (row["distortion"], row["n_distortion"]) == (pytest.approx(94 / 3), 3)
    assert row["diff_distortion_evading"] == pytest.approx(22.0 - 31.59)
    line, = [x for x in table.markdown.splitlines() if x.startswith("| MNIST | RCE | attacker |")]
    assert "| 22.00; paper 31.59, Δ -9.59 (n = 2) | 31.33; paper 31.59, Δ -0.26 (n = 3) | 50.0 |" in line
    assert "| distortion, evading | distortion, at the target (evading or flagged) |" in table.markdown


def test_fig2b_leaves_out_a_missing_cw_bar_and_says_n_a(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from rcenp.reproduce import figures

    class Finished:
        """MNIST: every ε-attack; C&W on CE only; C&W-hc on CE attacked no image; no C&W cell on RCE."""

        def get(self, dataset, depth, objective, name):
            return dataset, objective, name

        def summary(self, cell):
            dataset, objective, name = cell
            if dataset != "mnist":
                return None
            if name.split("-")[0] in ("fgsm", "bim", "ilcm"):   # JSMA pending: its panel says so
                return {"accuracy_under_attack": 0.5}
            if name in ("cw", "cw-hc") and objective == "ce":
                n = 3 if name == "cw" else 0
                return {"distortion": {"l2_paper": {"efficient": {"n": n, "mean": 2.5 if n else None}}}}
            return None

        def status(self, cell):
            return None if cell[0] == "mnist" else f"not run: --datasets mnist covers MNIST only ({cell[0]})"

    heights, texts = [], []
    real_bar, real_text = Axes.bar, Axes.text
    monkeypatch.setattr(Axes, "bar", lambda self, x, height, *a, **k: heights.extend(np.atleast_1d(height).tolist())
                        or real_bar(self, x, height, *a, **k))
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, *a, **k: texts.append(s)
                        or real_text(self, x, y, s, *a, **k))
    legends, real_legend = [], Axes.legend
    monkeypatch.setattr(Axes, "legend", lambda self, *a, **k: legends.append(k.get("handles")) or real_legend(self, *a, **k))
    drawn = figures.fig2(Finished(), budgets.get_budget("smoke"), tmp_path)
    assert drawn["files"] == ["fig2_mnist.png"] and (tmp_path / "fig2_mnist.png").is_file()
    assert heights == [2.5] and texts.count("n/a") == 3 and texts.count("no finished cell") == 1
    assert "CIFAR-10 (subset): not run: --datasets mnist covers MNIST only (cifar10)" in drawn["notes"]  # as its cells say
    # (b)'s legend keeps RCE's own colour though no RCE bar was drawn (it was CE's blue)
    handles = legends[-1]
    assert [h.get_label() for h in handles] == ["CE", "RCE"]
    assert [matplotlib.colors.to_hex(h.get_facecolor()) for h in handles] == \
        [matplotlib.colors.to_hex(c) for c in ("C0", "C1")]


def test_the_report_head_and_protocol_say_what_the_tables_do(tmp_path):
    smoke = budgets.get_budget("smoke")
    planned = cells.plan(smoke, ["table2", "table4"])
    meta = {"command": "rcenp reproduce", "code": "commit x", "wall_s": 0.0, "counts": "1 done", "part_seconds": {}}
    report.write_report(unavailable(planned), smoke, ["table2", "table4"], tmp_path, meta)
    text = (tmp_path / "REPORT.md").read_text()
    head = text[:text.index("\n## ")]
    assert "Δ = ours − paper." not in head  # the AUC tables' Δ is not against the headline AUC
    assert "ours is the ties-half AUC, while Δ (and the AUCs' †) compare the paper with our strict-tie AUC" in head
    assert "Δ = strict − paper" in text[text.index("## Table 4"):]  # what the table notes say
    protocol = text[text.index("## Protocol differences"):]
    assert "needs ResNet-56 targets and run_attack's substitute option" not in protocol
    assert "wait for the ResNet-56 models" not in protocol  # all four are shipped
    assert "scored on the ResNet-56 target. The paper does not give n" in protocol
    assert "FGSM's at 0.14-0.18" in protocol and "fitted to the paper's MNIST rows (‡ in Table 2)" in protocol
    table2 = text[text.index("## Table 2"):text.index("## Beyond")]
    mnist, others = table2[:table2.index("**CIFAR-10")], table2[table2.index("**CIFAR-10"):]
    assert "| FGSM ε=0.08 ‡ |" in mnist and "| JSMA θ=0.08 ‡ |" in mnist and "| C&W |" in mnist
    assert "‡" not in others.replace("| FGSM ε=0.08 |", "") and "| FGSM ε=0.08 |" in others


def test_the_protocol_says_table4_waits_only_while_a_target_is_not_shipped(tmp_path, monkeypatch):
    infos = tuple(i for i in lineup._shipped() if i["name"] != "cifar10subset-resnet56-rce")
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    lineup.refresh()
    try:
        smoke = budgets.get_budget("smoke")
        meta = {"command": "rcenp reproduce", "code": "commit x", "wall_s": 0.0, "counts": "1 done", "part_seconds": {}}
        report.write_report(unavailable(cells.plan(smoke, ["table4"])), smoke, ["table4"], tmp_path, meta)
        protocol = (tmp_path / "REPORT.md").read_text().split("## Protocol differences")[1]
        assert "the ResNet-56 target; its cells wait for the ResNet-56 models that are not shipped (see 'Cells')." \
            in protocol
    finally:
        monkeypatch.undo()
        lineup.refresh()


def test_a_partial_report_of_a_budget_over_every_data_set_names_them(tmp_path):
    """The cpu and paper budgets cover every data set (``datasets`` None): a partial report of
    theirs, as ``--report`` writes while cells are pending, names them all (it raised TypeError)."""
    cpu = budgets.get_budget("cpu")
    assert cpu.datasets is None
    planned = cells.plan(cpu, ["table1"])
    meta = {"command": "rcenp reproduce --budget cpu --report", "code": "commit x", "wall_s": 0.0, "counts": "1 pending",
            "part_seconds": {}, "pending": 3, "again": "rcenp reproduce --budget cpu --resume"}
    report.write_report(unavailable(planned), cpu, ["table1"], tmp_path, meta)
    head = (tmp_path / "REPORT.md").read_text().split("\n## ")[0]
    assert ("**PARTIAL: 3 cells of this run (MNIST, CIFAR-10 (subset), Fashion-MNIST (extra)) are not computed yet"
            in head) and "not part of this run" not in head


def test_the_budget_docstring_states_where_each_attack_matches_best():
    doc = " ".join(budgets.__doc__.split())
    assert "MNIST BIM, ILCM and JSMA rows best at 0.06-0.08 (FGSM's at 0.18 CE and 0.14 RCE)" in doc
    readme = ROOT / "results" / "fig2a" / "README.md"
    if not readme.is_file():
        return
    best = {}
    for line in readme.read_text().splitlines():
        cells_ = [c.strip() for c in line.strip("|").split("|")]
        if len(cells_) == 12 and cells_[1] in ("CE", "RCE") and any("**" in c for c in cells_):
            best[(cells_[0], cells_[1])] = round(0.02 * next(i for i, c in enumerate(cells_[2:], 1) if "**" in c), 2)
    assert best[("FGSM", "CE")] == 0.18 and best[("FGSM", "RCE")] == 0.14
    assert all(eps in (0.06, 0.08) for (attack, _), eps in best.items() if attack != "FGSM")
