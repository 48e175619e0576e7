"""Tables 1 and 2 and the beyond-the-paper table: rows for the CSV/JSON and Markdown for REPORT.md
(Tables 3 and 4 and Figure 2's data: ``rcenp.reproduce.threat_tables``).

Every row carries the paper's value, ours and the difference (ours − paper, in the paper's units),
or the reason the cell is empty ("not available: model X is not shipped in this version"). AUCs
are in the paper's units of 10⁻²; the paper's AUCs come from the authors' MATLAB ``AUC.m``, which
counts a tie as 0 (protocol §4), so Tables 2 and 4 compare them with our strict-tie AUC (ties half
stays the headline value). ``outside_ci`` (†) marks a paper value whose rounding interval
[p − 0.05, p + 0.05] does not meet our 95% strict-tie bootstrap interval
(``paper_outside_interval``). An attack's strength is labelled ε (FGSM, BIM, ILCM: the L∞ ball) or θ (JSMA: the
per-feature step), ``strength_label``; the CSVs keep them apart, in an ``eps`` column (FGSM, BIM,
ILCM) and a ``theta`` column (JSMA), ``strength_columns``. Table 2 marks MNIST's ε-attack rows ‡:
its ε was chosen on them (``rcenp.reproduce.budgets``).
"""
from __future__ import annotations

import dataclasses

from rcenp.attacks.summary import zero_grad_stats
from rcenp.reproduce import lineup, paper
from rcenp.reproduce.budgets import Budget
from rcenp.reproduce.results import METRICS, Results, beyond_paper, pair_medians

METRIC_TITLES = {"confidence": "Confidence", "non_me": "non-ME", "log_kd": "K-density"}
ATTACK_TITLES = {"fgsm": "FGSM", "bim": "BIM", "ilcm": "ILCM", "jsma": "JSMA", "cw": "C&W", "cw-hc": "C&W-hc"}
FEW_PAIRS = 30  # below this a percentile bootstrap interval of an AUC is mostly a few resampled points
PAPER_HALF_STEP = 0.05  # the paper prints AUC × 100 to one decimal: a printed p stands for [p − 0.05, p + 0.05]


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


def _signed(value, digits) -> str:
    """A difference with its sign, '+0.0' where it rounds to zero ('-0.0' read as a shortfall)."""
    text = f"{value:+.{digits}f}"
    return "+" + text[1:] if float(text) == 0 else text


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
                    text += f"; paper {r['paper_pct']:.2f}, Δ {_signed(r['diff_pct'], 2)}"
                line.append(text)
            md_rows.append(line)
    headers = ["model"] + [lineup.DATASET_TITLES[d] for d in lineup.DATASETS]
    note = ("Test error in %, ours on the first n test images of the split found (n shown); paper = Table 1 "
            "(the paper says 'test sets'; the authors' released test_nor.py reads 5,000 test images by default and "
            "keeps the best precision over re-evaluated checkpoints, protocol §1.3; CIFAR-10 there is the full data "
            "set, ours the subset).")
    data = describe_test_sets([{"dataset": r["dataset"], "n": r["n_test"], "test_set": r["test_set"]} for r in rows])
    data_md = "Test images (the first n of each split):\n\n" + "\n".join(data)
    return Table("table1", "Table 1: test error (%)", list(rows[0]), rows,
                 note + "\n\n" + _md(headers, md_rows) + "\n\n" + data_md)


def paper_outside_interval(theirs, low, high, half_step=PAPER_HALF_STEP) -> bool | None:
    """† rule: True when the paper's rounding interval [theirs − half_step, theirs + half_step] does
    not meet our interval [low, high] (all in the same units, AUC × 100 here), False when it does,
    None when any of them is None. A paper value printed to 0.1 is not flagged for rounding, nor a
    zero-width interval (e.g. [100.0, 100.0] under perfect separation) for missing a value it
    rounds to. A 1e-9 slack absorbs the float error of the × 100 scaling."""
    if theirs is None or low is None or high is None:
        return None
    return theirs + half_step < low - 1e-9 or theirs - half_step > high + 1e-9


def _auc_fields(detection: dict | None, metric: str, theirs) -> dict:
    """A Table 2 row's columns for one metric (AUC × 100): ``<m>_auc`` and ``<m>_ci_low/high``, ties
    half (the headline); ``<m>_auc_strict`` and ``<m>_strict_ci_low/high``, ties 0 (the authors'
    rule, same resamples); ``<m>_paper``; ``<m>_diff`` = strict − paper; ``<m>_outside_ci`` (†,
    ``paper_outside_interval`` on the strict interval); ``<m>_ci_degenerate``: the strict interval
    has zero width. For ``log_kd`` also ``log_kd_auc_authors_emulated`` (strict AUC on KD =
    exp(log KD) in float64, ``rcenp.detect.roc.authors_kd_auc``) and ``log_kd_zero_normal`` /
    ``log_kd_zero_adversarial`` (pairs whose KD is exactly 0 there)."""
    entry = (detection or {}).get(metric, {})

    def scaled(value):
        return None if value is None else 100.0 * value

    auc, strict = scaled(entry.get("auc")), scaled(entry.get("auc_strict_ties"))
    low, high = (scaled(v) for v in (entry.get("auc_ci95") or (None, None)))
    strict_low, strict_high = (scaled(v) for v in (entry.get("auc_strict_ci95") or (None, None)))
    fields = {f"{metric}_auc": auc, f"{metric}_ci_low": low, f"{metric}_ci_high": high,
              f"{metric}_auc_strict": strict, f"{metric}_strict_ci_low": strict_low,
              f"{metric}_strict_ci_high": strict_high, f"{metric}_paper": theirs,
              f"{metric}_diff": _diff(strict, theirs),
              f"{metric}_outside_ci": paper_outside_interval(theirs, strict_low, strict_high),
              f"{metric}_ci_degenerate": None if strict_low is None else strict_low == strict_high}
    if metric == "log_kd":
        zero = entry.get("kd_zero") or {}
        fields.update(log_kd_auc_authors_emulated=scaled(entry.get("auc_authors_kd")),
                      log_kd_zero_normal=zero.get("normal"), log_kd_zero_adversarial=zero.get("adversarial"))
    return fields


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
                    detection = res.detection(cell) if summary else None
                    samples = res.samples(cell) if summary else None
                    row = {"dataset": dataset, "attack": attack, "objective": objective,
                           **strength_columns(attack, eps), "in_table": in_table, "model": cell.model if cell else None,
                           "n": summary and summary["counts"]["n"], "test_set": summary and summary.get("test_set"),
                           "n_pairs": (detection or {}).get("log_kd", {}).get("n_pairs"),
                           "status": reason or ("ok" if detection else "no detector scores in this cell")}
                    for metric in METRICS:
                        theirs = paper.table2(attack, objective, dataset, metric) if in_table else None
                        row.update(_auc_fields(detection, metric, theirs))
                    row.update(beyond_paper(samples))
                    row.update(pair_medians(samples))
                    threshold = (detection or {}).get("threshold") or {}
                    zero = zero_grad_stats([s.get("zero_grad_fraction") for s in samples]) if samples else {}
                    row.update(detector_metric=threshold.get("metric"), detector_T=threshold.get("T"),
                               detection_aware_accuracy=threshold.get("detection_aware_accuracy"),
                               accuracy_under_attack=summary and summary["accuracy_under_attack"],
                               success_rate=summary and summary["success_rate"],
                               zero_grad_fraction=zero.get("mean"), zero_grad_excluded=zero.get("excluded"))
                    rows.append(row)
    return rows


def informative(n_pairs, degenerate) -> bool:
    """Whether an AUC's bootstrap interval says much: from at least FEW_PAIRS pairs and not of zero
    width. Only such intervals count as differences from the paper (**†**); the others are marked (†)."""
    return n_pairs is not None and n_pairs >= FEW_PAIRS and not degenerate


def dagger(outside, n_pairs, degenerate) -> str:
    """The mark after a paper value our interval misses: **†**, or (†) for an interval that says little."""
    if not outside:
        return ""
    return " **†**" if informative(n_pairs, degenerate) else " (†)"


def printed_apart(*pairs) -> bool:
    """Whether any pair (a, b) of AUCs × 100 prints differently at the tables' one decimal: where
    the strict-tie value is shown beside the ties-half one, so that a printed Δ always matches a
    printed AUC (a 0.05 threshold let 70.650 and 70.645 print as 70.7 with Δ from 70.6)."""
    return any(f"{a:.1f}" != f"{b:.1f}" for a, b in pairs)


def _auc_text(row, metric):
    ours = row[f"{metric}_auc"]
    theirs = row[f"{metric}_paper"]
    if ours is None:
        return "n = 0 pairs" + (f" (paper {theirs:.1f})" if theirs is not None else "")
    text = f"{ours:.1f} [{row[f'{metric}_ci_low']:.1f}, {row[f'{metric}_ci_high']:.1f}]"
    strict = (row[f"{metric}_auc_strict"], row[f"{metric}_strict_ci_low"], row[f"{metric}_strict_ci_high"])
    if None not in strict and printed_apart(*zip(strict, (ours, row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]))):
        text += f"; strict {strict[0]:.1f} [{strict[1]:.1f}, {strict[2]:.1f}]"
    if row[f"{metric}_ci_degenerate"]:
        text += " (zero width)"
    emulated = row.get(f"{metric}_auc_authors_emulated")
    if emulated is not None and strict[0] is not None and printed_apart((emulated, strict[0])):
        text += f"; authors-emulated {emulated:.1f}"
    if theirs is not None:
        text += f"; paper {theirs:.1f}, Δ {_signed(row[f'{metric}_diff'], 1)}" if row[f"{metric}_diff"] is not None \
            else f"; paper {theirs:.1f}"
        text += dagger(row[f"{metric}_outside_ci"], row.get("n_pairs"), row[f"{metric}_ci_degenerate"])
    return text


def table2(res: Results, budget: Budget) -> Table:
    """Table 2 (AUC ×100, paper-rule pairs, 95% bootstrap interval; strict-tie AUC and interval
    where they differ; Δ and † against the strict-tie AUC)."""
    rows = table2_rows(res, budget)
    sections = []
    for dataset in lineup.DATASETS:
        md_rows = []
        for row in (r for r in rows if r["dataset"] == dataset and r["in_table"]):
            fitted = " ‡" if dataset == "mnist" and strength(row) is not None else ""  # ε chosen on these rows
            head = [f"{ATTACK_TITLES[row['attack']]} {strength_label(row['attack'], strength(row))}".strip() + fitted,
                    row["objective"].upper()]
            if row["status"] != "ok":
                md_rows.append(head + ["", row["status"], "", ""])
                continue
            md_rows.append(head + [row["n_pairs"]] + [_auc_text(row, m) for m in METRICS])
        sections.append(f"**{lineup.DATASET_TITLES[dataset]}**\n\n" + _md(
            ["attack", "obj.", "n pairs"] + [METRIC_TITLES[m] for m in METRICS], md_rows))
    note = (f"AUC × 100 with normal as the positive class (ties half), over the pairs of the paper's rule "
            f"(clean correct, adversarial misclassified; n pairs shown), 95% paired-bootstrap interval (1,000 "
            f"resamples) in brackets. 'strict': the same AUC and interval with ties counted 0, the authors' "
            f"MATLAB rule, shown where it prints differently; the paper's values come from that rule, so Δ = "
            f"strict − paper, and **†** marks a paper value p whose rounding interval [p − 0.05, p + 0.05] "
            f"misses our strict interval, (†) the same where the interval says little (under {FEW_PAIRS} pairs, or "
            f"zero width), which is not counted as a difference. '(zero width)': every resample gave the same "
            f"strict AUC (e.g. perfect separation), so the interval understates the uncertainty. K-density "
            f"'authors-emulated' (shown where "
            f"it prints differently from strict; every cell in table2.csv): the strict AUC on KD = exp(log KD) "
            f"in float64, which is exactly 0 below log KD ≈ −745 as in the authors' plain-mean KD, while our "
            f"log-space KD keeps those inputs apart; the gap is how much of the paper's K-density figure is "
            f"underflow (table2.csv: log_kd_zero_normal / log_kd_zero_adversarial count the pairs whose KD is 0). "
            f"FGSM, BIM and ILCM at ε = {budget.table_eps:g} (box units), JSMA at θ = "
            f"{budget.table_eps:g} (its per-feature step; see 'Protocol differences'); table2.csv holds every ε "
            f"computed in its eps column, and JSMA's θ in its theta column. **‡**: this ε (θ) was chosen on "
            f"these MNIST rows of the paper: near where BIM's, ILCM's and JSMA's AUCs come closest to them "
            f"(0.06-0.08, by a row's mean |strict AUC − paper| over its three metrics; FGSM's at larger ε), so "
            f"their agreement is partly built in. Paper: Table 2.")
    return Table("table2", "Table 2: detection AUC (×100)", list(rows[0]), rows, note + "\n\n" + "\n\n".join(sections))


def beyond(res: Results, budget: Budget, rows=None) -> Table:
    """Per Table 2 cell: TPR at 5% FPR for each metric, with T fitted on held-out clean images
    (``rcenp.reproduce.results.adversarial_rejection_crossfit``) and the clean rejection rate
    measured at that T, and detection-aware accuracy at the cell's detector threshold."""
    rows = rows if rows is not None else table2_rows(res, budget)
    keep = [r for r in rows if r["in_table"]]
    md_rows = []
    for r in keep:
        attack = f"{ATTACK_TITLES[r['attack']]} {strength_label(r['attack'], strength(r))}".strip()
        if r["status"] != "ok":
            md_rows.append([lineup.DATASET_TITLES[r["dataset"]], attack, r["objective"].upper(), r["status"],
                            "", "", "", "", "", ""])
            continue
        why = r.get("tpr5_crossfit_why")
        rates = [f"n/a: {why}" if why and r[f"fpr5_crossfit_{m}"] is None else
                 (_num(r[f"tpr5_crossfit_{m}"], 1, 100) or "n/a: no paper-rule adversarial example")
                 + (f" ({_num(r[f'fpr5_crossfit_{m}'], 1, 100)})" if r[f"fpr5_crossfit_{m}"] is not None else "")
                 for m in METRICS]
        md_rows.append([lineup.DATASET_TITLES[r["dataset"]], attack, r["objective"].upper()] + rates
                       + [r["detector_metric"] or "", _num(r["detection_aware_accuracy"], 1, 100),
                          _num(r["accuracy_under_attack"], 1, 100), _num(r["success_rate"], 1, 100)])
    columns = ["dataset", "attack", "objective", "eps", "theta", "model", "n", "n_pairs", "n_clean_correct"] + \
        [f"{kind}5_crossfit_{m}" for m in METRICS for kind in ("tpr", "fpr")] + ["tpr5_crossfit_why"] + \
        ["detector_metric", "detector_T", "detection_aware_accuracy", "accuracy_under_attack", "success_rate"]
    note = ("TPR at 5% FPR, cross-fitted: the cell's images are split in two by the parity of their test index; for "
            "each half, T is calibrated (rcenp's rule: reject iff score ≤ T, at most 5% of the calibration "
            "images rejected) on the clean scores of the correctly classified clean images of the OTHER half, "
            "and the half contributes its paper-rule adversarial examples (clean correct, adversarial "
            "misclassified) and its correctly classified clean images; counts are pooled over the halves. TPR: "
            "the share of those adversarial examples rejected; in parentheses the clean rejection rate measured "
            "the same way on clean images T was not fitted on, so the 5% is measured, not imposed (n/a with under "
            "20 calibration images in a half, where T would reject nothing). Detection-aware accuracy: the share of all attacked "
            "images that end correctly classified or rejected (NOT SURE) by the cell's detector, on its metric "
            "(detector column) at its threshold T (5% false positives on clean test images), Tramèr et al.'s "
            "accuracy at 5% FPR. Success: the share of all n attacked images that reach the attack's own goal "
            "(FGSM, BIM: a prediction other than the clean one, so an image misclassified when clean that moves "
            "to its true class counts too, and accuracy + success can pass 100; ILCM, JSMA: the least-likely "
            "class; C&W: the random target), so a targeted attack can misclassify images it does not count as "
            "successes. All in %.")
    headers = ["data set", "attack", "obj.", "conf.: TPR (clean rej.)", "non-ME: TPR (clean rej.)",
               "KD: TPR (clean rej.)", "detector", "detection-aware acc.", "acc. under attack", "success (its goal)"]
    return Table("beyond", "Beyond the paper: TPR at 5% FPR (held-out T) and detection-aware accuracy", columns,
                 [{k: r.get(k) for k in columns} for r in keep], note + "\n\n" + _md(headers, md_rows))
