"""Tables 1-4 and the beyond-the-paper table: rows for the CSV/JSON and Markdown for REPORT.md.

Every row carries the paper's value, ours and the difference (ours − paper, in the paper's units),
or the reason the cell is empty ("not available: model X is not shipped in this version"). AUCs
are in the paper's units of 10⁻²; ``outside_ci`` marks a paper value outside our 95% bootstrap
interval. An attack's strength is labelled ε (FGSM, BIM, ILCM: the L∞ ball) or θ (JSMA: the
per-feature step), ``strength_label``; the CSVs keep them apart, in an ``eps`` column (FGSM, BIM,
ILCM) and a ``theta`` column (JSMA), ``strength_columns``.
"""
from __future__ import annotations

import dataclasses

from rcenp.reproduce import lineup, paper
from rcenp.reproduce.budgets import Budget
from rcenp.reproduce.results import METRICS, Results, beyond_paper, wb_figures

METRIC_TITLES = {"confidence": "Confidence", "non_me": "non-ME", "log_kd": "K-density"}
ATTACK_TITLES = {"fgsm": "FGSM", "bim": "BIM", "ilcm": "ILCM", "jsma": "JSMA", "cw": "C&W", "cw-hc": "C&W-hc"}


@dataclasses.dataclass
class Table:
    """name: file stem (table1 → table1.csv/.json); title; rows: dicts with the keys ``columns``;
    markdown: the REPORT.md section body."""

    name: str
    title: str
    columns: list
    rows: list
    markdown: str


def _num(value, digits=1, scale=1.0):
    return "" if value is None else f"{value * scale:.{digits}f}"


def _diff(ours, theirs):
    return None if ours is None or theirs is None else ours - theirs


def _md(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _depth_title(depth, objective):
    return f"ResNet-{depth} ({objective.upper()})"


def strength_label(attack: str, value) -> str:
    """``"θ=0.16"`` for JSMA (the per-feature step), ``"ε=0.16"`` for the other ε-attacks, ``""``
    when ``value`` is None (C&W)."""
    if value is None:
        return ""
    return f"{'θ' if attack == 'jsma' else 'ε'}={value:g}"


def strength_columns(attack: str, value) -> dict:
    """A row's strength columns: ``eps`` holds an ε-attack's ε, ``theta`` JSMA's θ; the other is
    None (both for C&W), so that no column holds two different quantities."""
    return {"eps": None if attack == "jsma" else value, "theta": value if attack == "jsma" else None}


def strength(row: dict):
    """The ε or θ of a row with ``strength_columns`` (None for C&W)."""
    return row["theta"] if row["attack"] == "jsma" else row["eps"]


def describe_test_sets(rows) -> list[str]:
    """One Markdown line per data set saying which test split ``rows`` (dicts with ``dataset``, ``n``
    and ``test_set``, run_attack's / evaluate's description of the split) took their first n images
    from, and the n's."""
    lines = []
    for dataset in lineup.DATASETS:
        found = [r for r in rows if r["dataset"] == dataset and r.get("test_set")]
        if not found:
            lines.append(f"- {lineup.DATASET_TITLES[dataset]}: no finished cell")
            continue
        for test_set in dict.fromkeys(r["test_set"] for r in found):
            counts = sorted({r["n"] for r in found if r["test_set"] == test_set and r["n"]})
            lines.append(f"- {lineup.DATASET_TITLES[dataset]}: {test_set}; n = {', '.join(f'{n:,}' for n in counts)}")
    return lines


def table1(res: Results, budget: Budget) -> Table:
    """Test error (%) of every (depth, objective, data set) model, next to Table 1."""
    rows = []
    for depth in lineup.DEPTHS:
        for objective in lineup.OBJECTIVES:
            for dataset in lineup.DATASETS:
                cell = res.get(dataset, depth, objective, "test-error")
                result, reason = res.result(cell), res.status(cell)
                ours = None if result is None else 100.0 * result["test_error"]
                theirs = paper.TABLE1.get((depth, objective), {}).get(dataset)
                rows.append({"depth": depth, "objective": objective, "dataset": dataset,
                             "model": cell.model if cell else None, "n_test": result and result["n_test"],
                             "test_set": result and result["test_set"], "ours_pct": ours, "paper_pct": theirs,
                             "diff_pct": _diff(ours, theirs), "status": reason or "ok"})
    md_rows = []
    for depth in lineup.DEPTHS:
        for objective in lineup.OBJECTIVES:
            line = [_depth_title(depth, objective)]
            for dataset in lineup.DATASETS:
                r = next(r for r in rows if (r["depth"], r["objective"], r["dataset"]) == (depth, objective, dataset))
                if r["status"] != "ok":
                    line.append(r["status"] + (f" (paper {r['paper_pct']:.2f})" if r["paper_pct"] is not None else ""))
                    continue
                text = f"{r['ours_pct']:.2f} (n = {r['n_test']:,})"
                if r["paper_pct"] is not None:
                    text += f"; paper {r['paper_pct']:.2f}, Δ {r['diff_pct']:+.2f}"
                line.append(text)
            md_rows.append(line)
    headers = ["model"] + [lineup.DATASET_TITLES[d] for d in lineup.DATASETS]
    note = ("Test error in %, ours on the first n test images of the split found (n shown); paper = Table 1 "
            "(full test sets; CIFAR-10 there is the full data set, ours the subset).")
    data = describe_test_sets([{"dataset": r["dataset"], "n": r["n_test"], "test_set": r["test_set"]} for r in rows])
    data_md = "Test images (the first n of each split):\n\n" + "\n".join(data)
    return Table("table1", "Table 1: test error (%)", list(rows[0]), rows,
                 note + "\n\n" + _md(headers, md_rows) + "\n\n" + data_md)


def _auc_fields(detection: dict | None, metric: str, theirs) -> dict:
    entry = (detection or {}).get(metric, {})
    auc = entry.get("auc")
    ci = entry.get("auc_ci95") or (None, None)
    ours = None if auc is None else 100.0 * auc
    outside = None if auc is None or theirs is None else not (100 * ci[0] <= theirs <= 100 * ci[1])
    return {f"{metric}_auc": ours, f"{metric}_auc_strict": None if auc is None else 100.0 * entry["auc_strict_ties"],
            f"{metric}_ci_low": None if auc is None else 100.0 * ci[0],
            f"{metric}_ci_high": None if auc is None else 100.0 * ci[1],
            f"{metric}_paper": theirs, f"{metric}_diff": _diff(ours, theirs), f"{metric}_outside_ci": outside}


def table2_rows(res: Results, budget: Budget) -> list[dict]:
    """One row per (data set, attack, objective, ε): the table's ε and every other ε of the sweep
    that was computed (``in_table`` marks the rows Table 2 shows), C&W and C&W-hc."""
    rows = []
    for dataset in lineup.DATASETS:
        for attack in paper.ATTACKS:
            for objective in lineup.OBJECTIVES:
                if attack in ("cw", "cw-hc"):
                    places = [(attack, None)]
                else:
                    sweep = sorted(set(budget.eps_sweep) | {budget.table_eps})
                    places = [(f"{attack}-{eps:g}", eps) for eps in sweep]
                for name, eps in places:
                    cell = res.get(dataset, 32, objective, name)
                    in_table = eps is None or eps == budget.table_eps
                    if cell is None and not in_table:
                        continue
                    summary, reason = res.summary(cell), res.status(cell)
                    detection = (summary or {}).get("detection")
                    row = {"dataset": dataset, "attack": attack, "objective": objective,
                           **strength_columns(attack, eps), "in_table": in_table, "model": cell.model if cell else None,
                           "n": summary and summary["counts"]["n"], "test_set": summary and summary.get("test_set"),
                           "n_pairs": (detection or {}).get("log_kd", {}).get("n_pairs"),
                           "status": reason or ("ok" if detection else "no detector scores in this cell")}
                    for metric in METRICS:
                        theirs = paper.table2(attack, objective, dataset, metric) if in_table else None
                        row.update(_auc_fields(detection, metric, theirs))
                    row.update(beyond_paper(res.samples(cell)) if summary else
                               {f"tpr5_{m}": None for m in METRICS})
                    threshold = (detection or {}).get("threshold", {})
                    row.update(detection_aware_accuracy=threshold.get("detection_aware_accuracy"),
                               accuracy_under_attack=summary and summary["accuracy_under_attack"],
                               success_rate=summary and summary["success_rate"],
                               zero_grad_fraction=summary and summary["zero_grad_fraction_mean"])
                    rows.append(row)
    return rows


def _auc_text(row, metric):
    ours = row[f"{metric}_auc"]
    theirs = row[f"{metric}_paper"]
    if ours is None:
        return "n = 0 pairs" + (f" (paper {theirs:.1f})" if theirs is not None else "")
    text = f"{ours:.1f} [{row[f'{metric}_ci_low']:.1f}, {row[f'{metric}_ci_high']:.1f}]"
    if abs(row[f"{metric}_auc_strict"] - ours) >= 0.05:
        text += f" strict {row[f'{metric}_auc_strict']:.1f}"
    if theirs is not None:
        text += f"; paper {theirs:.1f}, Δ {row[f'{metric}_diff']:+.1f}"
        text += " **†**" if row[f"{metric}_outside_ci"] else ""
    return text


def table2(res: Results, budget: Budget) -> Table:
    """Table 2 (AUC ×100, paper-rule pairs, 95% bootstrap interval, strict-tie AUC where it differs)."""
    rows = table2_rows(res, budget)
    sections = []
    for dataset in lineup.DATASETS:
        md_rows = []
        for row in (r for r in rows if r["dataset"] == dataset and r["in_table"]):
            head = [f"{ATTACK_TITLES[row['attack']]} {strength_label(row['attack'], strength(row))}".strip(),
                    row["objective"].upper()]
            if row["status"] != "ok":
                md_rows.append(head + ["", row["status"], "", ""])
                continue
            md_rows.append(head + [row["n_pairs"]] + [_auc_text(row, m) for m in METRICS])
        sections.append(f"**{lineup.DATASET_TITLES[dataset]}**\n\n" + _md(
            ["attack", "obj.", "n pairs"] + [METRIC_TITLES[m] for m in METRICS], md_rows))
    note = (f"AUC × 100 with normal as the positive class (ties half), over the pairs of the paper's rule "
            f"(clean correct, adversarial misclassified; n pairs shown), 95% paired-bootstrap interval in brackets; "
            f"'strict' is the authors' tie rule (ties count 0) where it differs by ≥ 0.05; **†**: the paper's value "
            f"lies outside our interval. FGSM, BIM and ILCM at ε = {budget.table_eps:g} (box units), JSMA at θ = "
            f"{budget.table_eps:g} (its per-feature step; see 'Protocol differences'); table2.csv holds every ε "
            f"computed in its eps column, and JSMA's θ in its theta column. Paper: Table 2.")
    return Table("table2", "Table 2: detection AUC (×100)", list(rows[0]), rows, note + "\n\n" + "\n\n".join(sections))


def beyond(res: Results, budget: Budget, rows=None) -> Table:
    """Per Table 2 cell: TPR at 5% FPR for each metric and detection-aware accuracy at the shipped T."""
    rows = rows if rows is not None else table2_rows(res, budget)
    keep = [r for r in rows if r["in_table"]]
    md_rows = []
    for r in keep:
        attack = f"{ATTACK_TITLES[r['attack']]} {strength_label(r['attack'], strength(r))}".strip()
        if r["status"] != "ok":
            md_rows.append([lineup.DATASET_TITLES[r["dataset"]], attack, r["objective"].upper(), r["status"],
                            "", "", "", "", ""])
            continue
        md_rows.append([lineup.DATASET_TITLES[r["dataset"]], attack, r["objective"].upper()]
                       + [_num(r[f"tpr5_{m}"], 1, 100) for m in METRICS]
                       + [_num(r["detection_aware_accuracy"], 1, 100), _num(r["accuracy_under_attack"], 1, 100),
                          _num(r["success_rate"], 1, 100)])
    columns = ["dataset", "attack", "objective", "eps", "theta", "model", "n", "n_pairs"] + \
        [f"tpr5_{m}" for m in METRICS] + ["detection_aware_accuracy", "accuracy_under_attack", "success_rate"]
    note = ("TPR at 5% FPR: the share of adversarial examples (paper-rule pairs) that a threshold on the metric "
            "rejects while rejecting at most 5% of their clean images. Detection-aware accuracy: the share of all "
            "attacked images that end correctly classified or rejected (NOT SURE) by the shipped K-density "
            "detector at its threshold T (5% false positives on clean test images), Tramèr et al.'s accuracy at "
            "5% FPR. All in %.")
    headers = ["data set", "attack", "obj.", "TPR@5% conf.", "TPR@5% non-ME", "TPR@5% KD",
               "detection-aware acc.", "acc. under attack", "success"]
    return Table("beyond", "Beyond the paper: TPR at 5% FPR and detection-aware accuracy", columns,
                 [{k: r.get(k) for k in columns} for r in keep], note + "\n\n" + _md(headers, md_rows))


def table3(res: Results, budget: Budget) -> Table:
    """C&W-wb: ratio of f₂ > 0 and mean minimal distortion, attacker kernel (the paper's) and the
    detector's own kernel."""
    rows = []
    for dataset in lineup.DATASETS:
        for objective in lineup.OBJECTIVES:
            for kernel, name in (("attacker", "cw-wb"), ("detector", "cw-wb-detector")):
                cell = res.get(dataset, 32, objective, name)
                samples, reason = res.samples(cell), res.status(cell)
                figures = wb_figures(samples) if samples else {}
                theirs = paper.TABLE3.get((objective, dataset), {}) if kernel == "attacker" else {}
                rows.append({"dataset": dataset, "objective": objective, "kernel": kernel,
                             "model": cell.model if cell else None, "n_clean_correct": figures.get("n"),
                             "ratio_f2_positive": figures.get("ratio_f2_positive"),
                             "paper_ratio": theirs.get("ratio"),
                             "diff_ratio": _diff(figures.get("ratio_f2_positive"), theirs.get("ratio")),
                             "distortion": figures.get("distortion"), "n_distortion": figures.get("n_distortion"),
                             "paper_distortion": theirs.get("distortion"),
                             "diff_distortion": _diff(figures.get("distortion"), theirs.get("distortion")),
                             "success_rate": figures.get("success_rate"), "status": reason or "ok"})
    md_rows = []
    for r in rows:
        head = [lineup.DATASET_TITLES[r["dataset"]], r["objective"].upper(), r["kernel"]]
        if r["status"] != "ok":
            theirs = "" if r["paper_ratio"] is None else f" (paper {r['paper_ratio']:.2f} / {r['paper_distortion']:.2f})"
            md_rows.append(head + [r["status"] + theirs, "", "", ""])
            continue
        ratio = f"{r['ratio_f2_positive']:.2f}"
        dist = _num(r["distortion"], 2)
        if r["paper_ratio"] is not None:
            ratio += f"; paper {r['paper_ratio']:.2f}, Δ {r['diff_ratio']:+.2f}"
            if r["distortion"] is not None:
                dist += f"; paper {r['paper_distortion']:.2f}, Δ {r['diff_distortion']:+.2f}"
        md_rows.append(head + [r["n_clean_correct"], ratio, dist + f" (n = {r['n_distortion']})",
                               _num(r["success_rate"], 1, 100)])
    note = ("Over images classified correctly when clean (n): the ratio whose returned image has f₂ > 0 (no "
            "iterate reached the target with f₂ ≤ 0), and the mean ‖δ‖₂/√d on 0-255 over images whose returned "
            "image is classified as the target. Kernel 'attacker': 100 of the detector's points per class (the "
            "paper); 'detector': the detector's own kernel (a stronger adaptive attack; no paper value). "
            "Success: target reached with f₂ ≤ 0, in %. Paper: Table 3.")
    headers = ["data set", "obj.", "kernel", "n", "ratio f₂ > 0", "distortion", "success"]
    return Table("table3", "Table 3: C&W-wb", list(rows[0]), rows, note + "\n\n" + _md(headers, md_rows))


def table4(res: Results, budget: Budget) -> Table:
    """Black-box: C&W-wb crafted on ResNet-32 (substitute), scored on ResNet-56 (target)."""
    rows = []
    for dataset in ("mnist", "cifar10"):
        for target_obj in lineup.OBJECTIVES:
            for sub_obj in lineup.OBJECTIVES:
                sub = lineup.find_model(dataset, 32, sub_obj) or lineup.expected_name(dataset, 32, sub_obj)
                cell = res.get(dataset, 56, target_obj, f"cw-wb-from-{sub}")
                summary, reason = res.summary(cell), res.status(cell)
                kd = ((summary or {}).get("detection") or {}).get("log_kd", {})
                ours = None if kd.get("auc") is None else 100.0 * kd["auc"]
                theirs = paper.TABLE4.get((target_obj, sub_obj)) if dataset == "cifar10" else None
                bound = paper.TABLE4_MNIST_LOWER_BOUND if dataset == "mnist" else None
                rows.append({"dataset": dataset, "target_objective": target_obj, "substitute_objective": sub_obj,
                             "target": cell.model if cell else None, "substitute": sub,
                             "n_pairs": kd.get("n_pairs"), "auc": ours,
                             "ci_low": None if ours is None else 100.0 * kd["auc_ci95"][0],
                             "ci_high": None if ours is None else 100.0 * kd["auc_ci95"][1],
                             "paper": theirs, "paper_lower_bound": bound, "diff": _diff(ours, theirs),
                             "transfer_rate": ((summary or {}).get("transfer") or {}).get("transfer_rate"),
                             "paper_transfer_rate_below": paper.TRANSFER_RATE_UPPER_BOUND[dataset],
                             "status": reason or "ok"})
    md_rows = []
    for r in rows:
        head = [lineup.DATASET_TITLES[r["dataset"]], f"ResNet-56 ({r['target_objective'].upper()})",
                f"ResNet-32 ({r['substitute_objective'].upper()})"]
        paper_text = f"{r['paper']:.1f}" if r["paper"] is not None else f"> {r['paper_lower_bound']:.0f}"
        if r["status"] != "ok":
            md_rows.append(head + [r["status"], paper_text, "", f"< {100 * r['paper_transfer_rate_below']:.0f}%"])
            continue
        auc = "n = 0 pairs" if r["auc"] is None else f"{r['auc']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
        md_rows.append(head + [auc, paper_text + ("" if r["diff"] is None else f", Δ {r['diff']:+.1f}"),
                               _num(r["transfer_rate"], 1, 100),
                               f"< {100 * r['paper_transfer_rate_below']:.0f}%"])
    note = ("K-density AUC × 100 of the target's own detector on C&W-wb examples crafted on the substitute with "
            "the substitute's detector (paper-rule pairs with the target's predictions), and the transfer rate "
            "(share of examples the target misclassifies). Paper: Table 4, which prints CIFAR-10 values only; §4.5 "
            "says MNIST's are all above 95 and bounds the transfer rates.")
    headers = ["data set", "target", "substitute", "AUC (ours)", "paper", "transfer rate", "paper transfer"]
    return Table("table4", "Table 4: black-box transfer (AUC ×100)", list(rows[0]), rows,
                 note + "\n\n" + _md(headers, md_rows))


def fig2_data(res: Results, budget: Budget) -> Table:
    """Fig. 2's data: (a) accuracy under attack per ε; (b) C&W / C&W-hc mean minimal distortion."""
    rows = []
    for dataset in lineup.DATASETS:
        for objective in lineup.OBJECTIVES:
            for attack in ("fgsm", "bim", "ilcm", "jsma"):
                for eps in budget.eps_sweep:
                    cell = res.get(dataset, 32, objective, f"{attack}-{eps:g}")
                    s = res.summary(cell)
                    rows.append({"dataset": dataset, "objective": objective, "attack": attack,
                                 **strength_columns(attack, eps), "n": s and s["counts"]["n"],
                                 "accuracy_under_attack": s and s["accuracy_under_attack"],
                                 "distortion_mean": None, "status": res.status(cell) or "ok"})
            for attack in ("cw", "cw-hc"):
                cell = res.get(dataset, 32, objective, attack)
                s = res.summary(cell)
                rows.append({"dataset": dataset, "objective": objective, "attack": attack,
                             **strength_columns(attack, None),
                             "n": s and s["distortion"]["l2_paper"]["efficient"]["n"],
                             "accuracy_under_attack": s and s["accuracy_under_attack"],
                             "distortion_mean": s and s["distortion"]["l2_paper"]["efficient"]["mean"],
                             "status": res.status(cell) or "ok"})
    return Table("fig2", "Figure 2's data", list(rows[0]), rows, "")
