"""REPORT.md's section "Cells that differ from the paper by more than their interval": the Table 2
and Table 4 values whose interval misses the paper's, one line each with what a reader needs to
judge the difference (n pairs, the score medians, for an ε-attack its row's best-fitting ε).
"""
from __future__ import annotations

from rcenp.reproduce import tables


def _interval(auc, low, high, degenerate) -> str:
    return f"{auc:.1f} [{low:.1f}, {high:.1f}]" + (" (zero-width interval)" if degenerate else "")


def _ours_strict(auc, low, high, degenerate) -> str:
    return "ours (strict ties) " + _interval(auc, low, high, degenerate)


def best_fit(t2_rows, row) -> tuple[dict, list] | None:
    """The strength of an ε-attack row's sweep (JSMA: θ) that fits the paper's row best: one for
    the row, the least mean |strict-tie AUC − paper| over the metrics the paper gives (ties: the
    smaller strength), among the finished strengths with at least ``tables.FEW_PAIRS`` pairs and
    a strict interval for each of those metrics → (that strength's row, the finished rows of the
    sweep, each marked by whether it took part: [(row, took_part), ...] in strength order); None
    for C&W or where fewer than two take part. The paper states no ε (protocol §4): this says
    whether some one ε could explain the row."""
    if tables.strength(row) is None:
        return None
    metrics = [m for m in tables.METRIC_TITLES if row.get(f"{m}_paper") is not None]
    finished = sorted((r for r in t2_rows if (r["dataset"], r["attack"], r["objective"]) ==
                       (row["dataset"], row["attack"], row["objective"]) and tables.strength(r) is not None
                       and r.get("n_pairs") is not None), key=tables.strength)
    marked = [(r, r["n_pairs"] >= tables.FEW_PAIRS and all(
        r.get(f"{m}_{field}") is not None for m in metrics for field in ("auc_strict", "strict_ci_low", "strict_ci_high")))
        for r in finished]
    usable = [r for r, took_part in marked if took_part]
    if not metrics or len(usable) < 2:
        return None
    best = min(usable, key=lambda r: (sum(abs(r[f"{m}_auc_strict"] - row[f"{m}_paper"]) for m in metrics) / len(metrics),
                                      tables.strength(r)))
    return best, marked


def _at_best_fit(fit, row, metric) -> str:
    """What ``best_fit`` found, for one metric of ``row``: "; at this row's best fit over the
    sweep, ε=E (k of n finished strengths with ≥ 30 pairs[, the smallest / largest of them]): AUC
    [low, high][ (zero-width interval)], which meets the paper's value | which misses it too (n =
    N pairs)", or "; ε=E is also this row's best fit over the sweep (...)" where E is the row's own
    strength; "" where there is no fit."""
    if fit is None:
        return ""
    best, marked = fit
    usable = [r for r, took_part in marked if took_part]
    counted = f"{len(usable)} of {len(marked)} finished strengths with ≥ {tables.FEW_PAIRS} pairs"
    if best is usable[0] or best is usable[-1]:
        counted += ", the smallest of them" if best is usable[0] else ", the largest of them"
    label = tables.strength_label(row["attack"], tables.strength(best))
    if tables.strength(best) == tables.strength(row):
        return f"; {label} is also this row's best fit over the sweep ({counted})"
    low, high = best[f"{metric}_strict_ci_low"], best[f"{metric}_strict_ci_high"]
    meets = tables.paper_outside_interval(row[f"{metric}_paper"], low, high) is False
    return (f"; at this row's best fit over the sweep, {label} ({counted}): "
            + _interval(best[f"{metric}_auc_strict"], low, high, best.get(f"{metric}_ci_degenerate"))
            + (", which meets the paper's value" if meets else ", which misses it too") + f" (n = {best['n_pairs']} pairs)")


def _outside(t2_rows) -> tuple[list[str], list[str], int]:
    """Table 2 values our strict-tie interval misses (``tables.paper_outside_interval``), one line
    each with our AUC and interval, the paper's value, n pairs, the medians of the metric's clean
    and adversarial scores over the pairs (which way the AUC leans) and, for an ε-attack, the
    metric at the strength of the sweep that fits the paper's row best (``best_fit``) → (the
    differences: intervals from at least ``tables.FEW_PAIRS`` pairs and of nonzero width, marked
    **†**; the others, marked (†); how many values had such an informative comparison)."""
    counted, weak, compared = [], [], 0
    for r in t2_rows:
        fit = best_fit(t2_rows, r) if any(r.get(f"{m}_outside_ci") for m in tables.METRIC_TITLES) else None
        for m in tables.METRIC_TITLES:
            outside, degenerate = r.get(f"{m}_outside_ci"), r.get(f"{m}_ci_degenerate")
            informative = tables.informative(r.get("n_pairs"), degenerate)
            compared += outside is not None and informative
            if not outside:
                continue
            line = (f"- {r['dataset']} {r['attack']}"
                    + (f" {tables.strength_label(r['attack'], tables.strength(r))}"
                       if tables.strength(r) is not None else "")
                    + f" {r['objective'].upper()} {tables.METRIC_TITLES[m]}: "
                    + _ours_strict(r[f"{m}_auc_strict"], r[f"{m}_strict_ci_low"], r[f"{m}_strict_ci_high"], degenerate)
                    + f", paper {r[f'{m}_paper']:.1f} (n = {r['n_pairs']} pairs"
                    + (f"; medians clean {r[f'{m}_clean_median']:.6g}, adversarial {r[f'{m}_adversarial_median']:.6g}"
                       if r.get(f"{m}_clean_median") is not None else "") + ")" + _at_best_fit(fit, r, m))
            (counted if informative else weak).append(line)
    return counted, weak, compared


def _outside_table4(t4_rows) -> tuple[list[str], list[str], int]:
    """Table 4's values marked (``threat_tables.table4``), as ``_outside``: the K-density AUC
    against the paper's value (CIFAR-10) or bound (MNIST), and the transfer rate's Wilson interval
    against the paper's bound (always counted)."""
    counted, weak, compared = [], [], 0
    for r in t4_rows:
        pair = (f"- {r['dataset']} Table 4, {r['substitute_objective'].upper()} substitute → "
                f"{r['target_objective'].upper()} target")
        informative = tables.informative(r.get("n_pairs"), r.get("ci_degenerate"))
        compared += (r.get("outside_ci") is not None and informative) + (r.get("transfer_outside") is not None)
        if r.get("outside_ci"):
            paper_text = f"paper {r['paper']:.1f}" if r["paper"] is not None else \
                f"paper: all above {r['paper_lower_bound']:.0f}"
            (counted if informative else weak).append(
                f"{pair}, K-density: "
                + _ours_strict(r["auc_strict"], r["strict_ci_low"], r["strict_ci_high"], r.get("ci_degenerate"))
                + f", {paper_text} (n = {r['n_pairs']} pairs)")
        if r.get("transfer_outside"):
            counted.append(f"{pair}, transfer rate: ours {100 * r['transfer_rate']:.1f}% "
                           f"[{100 * r['transfer_ci_low']:.1f}, {100 * r['transfer_ci_high']:.1f}] "
                           f"(n = {r['n_transfer_eligible']}), "
                           f"paper: under {100 * r['paper_transfer_rate_below']:.0f}%" + _within_paper_distortion(r))
    return counted, weak, compared


def _within_paper_distortion(r) -> str:
    """The transfer rate over the examples no more distorted than the paper's Table 3 mean for the
    substitute: a shorter C&W-wb budget leaves larger perturbations, which may transfer more."""
    n, rate = r.get("n_transfer_within_paper_distortion"), r.get("transfer_rate_within_paper_distortion")
    if not n:
        return ""
    return (f"; over the {n} of them with ‖δ‖₂/√d at most the paper's Table 3 mean for this substitute "
            f"({r['paper_substitute_distortion']:.2f}): {100 * rate:.1f}% [{100 * r['transfer_within_ci_low']:.1f}, "
            f"{100 * r['transfer_within_ci_high']:.1f}]")


def differences_md(t2_rows, t4_rows) -> str:
    """The section 'Cells that differ from the paper by more than their interval'."""
    counted, weak, compared = (a + b for a, b in zip(_outside(t2_rows), _outside_table4(t4_rows)))
    text = ("Table 2 and Table 4 values whose rounding interval [p − 0.05, p + 0.05] misses our 95% strict-tie "
            "bootstrap interval (the paper's tie rule); for Table 4 also MNIST AUCs whose whole interval is at or "
            "below the paper's bound of 95, and transfer rates whose 95% Wilson interval lies above the paper's "
            f"bound. Only AUC intervals from at least {tables.FEW_PAIRS} pairs and of nonzero width count. Each "
            "Table 2 line gives the medians of the metric's clean and adversarial scores over the pairs: higher "
            "is more normal, so an AUC near 0 means the adversarial images score as the more normal. An ε-attack's "
            "line (JSMA: θ) also gives the metric at its row's best fit over the ε sweep: one ε for the row's "
            "three metrics, the one with the least mean |strict AUC − paper| among strengths with enough pairs. The "
            "paper states no ε ('Protocol differences'); as the best of several strengths, agreement there is likelier "
            "than at a fixed ε, so it says only whether some one ε could explain the row. ")
    if not compared:
        text += "No value had such a comparison in this run (no finished Table 2 or 4 cell with enough pairs)."
    else:
        text += (f"The intervals are our sampling error only (the paper gives neither n nor intervals): of the "
                 f"{compared} comparisons made, about 5% would be marked by chance alone were our models and "
                 f"protocol the paper's, and more, since the paper's values carry a sampling error of their own "
                 f"that our intervals leave out.\n\n"
                 + ("\n".join(counted) + "\n\nSee 'Protocol differences' for what may explain them."
                    if counted else "None."))
    if weak:
        text += (f"\n\nAlso outside, but from an interval that says little (under {tables.FEW_PAIRS} pairs, or zero "
                 "width), marked (†) and not counted:\n\n" + "\n".join(weak))
    return text
