"""Sanity checks a careful evaluator adds (Carlini et al. 2019's checklist, AutoAttack's flags),
each PASS or FLAG, or n/a with the reason when a cell is missing or the check's premise does not
hold (C&W success needs the paper's C&W budget), from the finished cells.

Each check is a plain function of summaries or (ε, accuracy) series, so it can be tested on
numbers built to fail it; ``run_checks`` applies them to a run.
"""
from __future__ import annotations

import math

from rcenp.attacks.summary import zero_grad_stats
from rcenp.reproduce import lineup
from rcenp.reproduce.budgets import UNBOUNDED_EPS, Budget
from rcenp.reproduce.results import Results

ZERO_GRAD_LIMIT = 0.05  # mean share of exactly-zero input-gradient entries above which masking is suspected
UNBOUNDED_SUCCESS = 0.99  # BIM over the whole box should fool (almost) every correctly classified image
CW_SUCCESS = 0.99
NO_CELL = "no finished cell (pending, or not available)"  # the detail of a check without its cell


def check(name, subject, ok, value, detail) -> dict:
    """One result row: status PASS when ``ok``, FLAG when not, n/a when ``ok`` is None."""
    return {"check": name, "subject": subject, "status": "n/a" if ok is None else "PASS" if ok else "FLAG",
            "value": value, "detail": detail}


TOLERANCE_TEXT = "one image or 0.5 pp, whichever is larger"  # _tolerance's, in the checks' details


def _tolerance(n) -> float:
    """One image, or half a percentage point, whichever is larger (same images at every ε)."""
    return max(1.0 / n, 0.005) if n else 0.005


def monotone_in_eps(subject: str, points, symbol: str = "ε") -> dict:
    """Accuracy under attack must not rise with ε. points: [(ε, accuracy in [0, 1], n)]; FLAG when
    a larger ε leaves accuracy higher than a smaller one by more than one image (or 0.5 pp); n/a
    when the accuracy is the same at every ε (an attack that changed nothing passes vacuously).
    ``symbol`` names the strength in the check and its detail: "θ" for JSMA's per-feature step."""
    name = f"accuracy non-increasing in {symbol}"
    points = sorted(p for p in points if p[1] is not None)
    if len(points) < 2:
        return check(name, subject, None, None, f"fewer than two {symbol} computed")
    if len({acc for _, acc, _ in points}) == 1:  # e.g. an attack that changed no prediction at any strength
        return check(name, subject, None, 0.0, f"accuracy {100 * points[0][1]:.1f}% at every {symbol}: "
                                                "the same at each strength, so nothing to compare")
    worst, where = 0.0, None
    for i, (eps_a, acc_a, n) in enumerate(points):
        for eps_b, acc_b, _ in points[i + 1:]:
            if acc_b - acc_a > worst:
                worst, where = acc_b - acc_a, (eps_a, eps_b, n)
    ok = where is None or worst <= _tolerance(where[2])
    detail = f"accuracy falls or stays as {symbol} grows" if where is None else (
        f"accuracy {100 * worst:.1f} pp higher at {symbol} = {where[1]:g} than at {symbol} = {where[0]:g}, "
        f"{'within' if ok else 'beyond'} the tolerance of {TOLERANCE_TEXT}")
    return check(name, subject, ok, worst, detail)


def iterative_vs_single(subject: str, single, iterative) -> dict:
    """BIM (iterative) must leave no higher accuracy than FGSM (single step) at any ε both ran, by
    more than one image (or 0.5 pp). single, iterative: [(ε, accuracy, n)]. n/a when both leave
    one and the same accuracy at every ε (e.g. neither changed a prediction, or both reached 0%):
    such a pass would say nothing."""
    one = {e: (a, n) for e, a, n in single if a is not None}
    many = {e: (a, n) for e, a, n in iterative if a is not None}
    common = sorted(set(one) & set(many))
    if not common:
        return check("iterative ≥ single-step", subject, None, None, "no ε with both FGSM and BIM")
    same = {a for e in common for a in (one[e][0], many[e][0])}
    if len(same) == 1:
        return check("iterative ≥ single-step", subject, None, 0.0,
                     f"FGSM and BIM both leave {100 * same.pop():.1f}% accuracy at all {len(common)} ε: "
                     "nothing to compare")
    gaps = {e: many[e][0] - one[e][0] for e in common}
    eps = max(gaps, key=gaps.get)
    ok = gaps[eps] <= _tolerance(many[eps][1])
    if ok and gaps[eps] > 0:
        detail = (f"BIM accuracy at most FGSM's + the tolerance ({TOLERANCE_TEXT}) at all {len(common)} ε; "
                  f"the most above: {100 * gaps[eps]:.1f} pp at ε = {eps:g}")
    elif ok:
        detail = f"BIM accuracy ≤ FGSM accuracy at {'all ' if len(common) > 1 else ''}{len(common)} ε"
    else:
        detail = f"BIM leaves {100 * gaps[eps]:.1f} pp more accuracy than FGSM at ε = {eps:g}"
    return check("iterative ≥ single-step", subject, ok, gaps[eps], detail)


def unbounded_bim(subject: str, summary: dict | None) -> dict:
    """BIM with ε = 1 (the whole box) must fool ≥ 99% of the correctly classified images."""
    if summary is None:
        return check("unbounded BIM (ε = 1) ~100% success", subject, None, None, NO_CELL)
    counts = summary["counts"]
    rate = counts["efficient"] / counts["clean_correct"] if counts["clean_correct"] else None
    ok = None if rate is None else rate >= UNBOUNDED_SUCCESS
    return check("unbounded BIM (ε = 1) ~100% success", subject, ok, rate,
                 f"success on {counts['efficient']} of {counts['clean_correct']} correctly classified images "
                 f"(PASS at ≥ {100 * UNBOUNDED_SUCCESS:.0f}%)")


def _evasion(summary: dict) -> float | None:
    threshold = (summary.get("detection") or {}).get("threshold") or {}
    return threshold.get("undetected_misclassified_rate")


def whitebox_vs_transfer(subject: str, whitebox: dict | None, transfer: dict | None) -> dict:
    """C&W-wb run white-box on the target must evade its detector at least as often as examples
    transferred from a substitute: undetected-and-misclassified rate, white-box ≥ transfer (within one
    image or 0.5 pp). n/a when both rates are that close to 0: neither attack gets past the
    detector, and a pass would say nothing."""
    if whitebox is None or transfer is None:
        if whitebox is None and transfer is None:
            missing = "neither the target's own C&W-wb cell nor the transfer cell is finished"
        else:
            missing = "the target's own C&W-wb cell" if whitebox is None else "the transfer cell"
            missing += " is not finished"
        return check("white-box C&W-wb ≥ transfer", subject, None, None, f"{missing} (pending, or not available)")
    wb, tr = _evasion(whitebox), _evasion(transfer)
    if wb is None or tr is None:
        return check("white-box C&W-wb ≥ transfer", subject, None, None, "no detector decisions in the cells")
    tolerance = _tolerance(whitebox["counts"]["n"])
    detail = (f"undetected at the target detector's T and misclassified: white-box {100 * wb:.1f}% (the target's "
              f"own C&W-wb run), transfer {100 * tr:.1f}%")
    if max(wb, tr) <= tolerance:
        return check("white-box C&W-wb ≥ transfer", subject, None, wb - tr,
                     detail + ": both about 0, nothing to compare")
    return check("white-box C&W-wb ≥ transfer", subject, wb + tolerance >= tr, wb - tr, detail)


def zero_gradient(subject: str, summary: dict | None, samples: list[dict] | None = None) -> dict:
    """The mean share of exactly-zero input-gradient entries (at the clean image) must stay ≤ 5%:
    more suggests gradient masking (saturated softmax, dead units) that starves gradient attacks.

    The mean is over the images that have a fraction: a NaN (or null) one, which C&W records for a
    sample whose hinge is inactive at its first iterate (no gradient taken; not masking), is left
    out and counted in the detail. ``samples`` (the cell's records), when given, are averaged
    directly (``rcenp.attacks.summary.zero_grad_stats``); otherwise the summary's
    ``zero_grad_fraction_mean`` and ``zero_grad_fraction_excluded`` are used. n/a when no image has
    a fraction, or when an older summary's mean is NaN and no samples are given.
    """
    name = "zero input-gradient fraction"
    if summary is None and samples is None:
        return check(name, subject, None, None, NO_CELL)
    if samples is not None:
        stats = zero_grad_stats([s.get("zero_grad_fraction") for s in samples])
    else:
        mean = summary.get("zero_grad_fraction_mean")
        if mean is not None and math.isnan(mean):
            return check(name, subject, None, None, "the summary's mean is NaN (some images have no fraction) "
                                                    "and no per-sample records were given to average without them")
        stats = {"mean": mean, "n": summary.get("zero_grad_fraction_n"),
                 "excluded": summary.get("zero_grad_fraction_excluded", 0)}
    excluded = stats["excluded"] or 0
    left_out = (f"; {excluded} image{'s' if excluded != 1 else ''} without a fraction (NaN: e.g. a C&W hinge "
                f"inactive at the first iterate) left out") if excluded else ""
    if stats["mean"] is None:
        return check(name, subject, None, None, "no image has a zero-gradient fraction" + left_out)
    value = stats["mean"]
    over = f" over {stats['n']} images" if stats.get("n") is not None else ""
    return check(name, subject, value <= ZERO_GRAD_LIMIT, value,
                 f"{100 * value:.2f}% of input-gradient entries exactly zero{over} (FLAG above "
                 f"{100 * ZERO_GRAD_LIMIT:.0f}%){left_out}")


def cw_success(subject: str, summary: dict | None, full_budget: bool, cw: dict | None = None) -> dict:
    """C&W (κ = 0) at the paper's budget must reach its target on ≥ 99% of correctly classified
    images. At a smaller budget the premise does not hold: n/a, with the rate as its value and the
    detail saying the budget is reduced (``cw``: the budget's binary_steps and max_iterations)."""
    if summary is None:
        return check("C&W success at full budget", subject, None, None, NO_CELL)
    counts = summary["counts"]
    rate = counts["efficient"] / counts["clean_correct"] if counts["clean_correct"] else None
    reached = f"{counts['efficient']} of {counts['clean_correct']} correctly classified images reach the target"
    if not full_budget:
        run = f"{cw['binary_steps']} × {cw['max_iterations']:,} iterations" if cw else "fewer iterations"
        return check("C&W success at full budget", subject, None, rate,
                     f"not applied, REDUCED budget: {run}, the check needs the paper's 9 × 10,000; {reached}")
    ok = None if rate is None else rate >= CW_SUCCESS
    return check("C&W success at full budget", subject, ok, rate,
                 f"{reached} (paper budget; PASS at ≥ {100 * CW_SUCCESS:.0f}%)")


def _series(res: Results, dataset, objective, attack, budget: Budget):
    out = []
    for eps in budget.eps_sweep:
        s = res.summary(res.get(dataset, 32, objective, f"{attack}-{eps:g}"))
        if s is not None:
            out.append((eps, s["accuracy_under_attack"], s["counts"]["n"]))
    return out


def run_checks(res: Results, budget: Budget) -> list[dict]:
    """Every check on every model of the run with at least one finished cell for it."""
    rows = []
    for dataset in lineup.DATASETS:
        if budget.skips(dataset):
            continue
        for objective in lineup.OBJECTIVES:
            model = lineup.find_model(dataset, 32, objective)
            if model is None:
                continue
            series = {a: _series(res, dataset, objective, a, budget) for a in ("fgsm", "bim", "ilcm", "jsma")}
            for attack, points in series.items():
                symbol = "θ" if attack == "jsma" else "ε"
                if points:
                    rows.append(monotone_in_eps(f"{model} {attack}", points, symbol))
                elif not any(res.get(dataset, 32, objective, f"{attack}-{eps:g}") for eps in budget.eps_sweep):
                    rows.append(check(f"accuracy non-increasing in {symbol}", f"{model} {attack}", None, None,
                                      f"not run: its {symbol} sweep is Fig. 2's; add fig2 to --only"))
            if series["fgsm"] or series["bim"]:
                rows.append(iterative_vs_single(model, series["fgsm"], series["bim"]))
            unbounded = res.get(dataset, 32, objective, f"bim-{UNBOUNDED_EPS:g}")
            if unbounded is not None:
                rows.append(unbounded_bim(model, res.summary(unbounded)))
            for name in [f"{a}-{budget.table_eps:g}" for a in ("fgsm", "bim", "ilcm", "jsma")] + \
                    ["cw", "cw-hc", "cw-wb"]:
                cell = res.get(dataset, 32, objective, name)
                if res.summary(cell) is not None:
                    rows.append(zero_gradient(f"{model} {name}", res.summary(cell), res.samples(cell)))
                elif cell is None:
                    part = "table3" if name == "cw-wb" else "table2"
                    rows.append(check("zero input-gradient fraction", f"{model} {name}", None, None,
                                      f"not run: the cell is {part}'s; add {part} to --only"))
            cw = res.get(dataset, 32, objective, "cw")
            if cw is not None:
                rows.append(cw_success(model, res.summary(cw), budget.full_cw_budget, budget.cw))
        for target_obj in lineup.OBJECTIVES:
            target = lineup.find_model(dataset, 56, target_obj)
            wb = res.get(dataset, 56, target_obj, "cw-wb")
            if dataset == "fashion-mnist":
                continue
            if wb is None:  # planned only with table4, whose transfer cells the check compares with
                rows.append(check("white-box C&W-wb ≥ transfer", lineup.expected_name(dataset, 56, target_obj),
                                  None, None, "not run: it compares Table 4's transfer cells with a white-box "
                                              "run on the target; add table4 to --only"))
                continue
            if target is None:
                rows.append(check("white-box C&W-wb ≥ transfer", lineup.expected_name(dataset, 56, target_obj), None,
                                  None, lineup.missing_reason(dataset, 56, target_obj)))
                continue
            for sub_obj in lineup.OBJECTIVES:
                sub = lineup.find_model(dataset, 32, sub_obj)
                transfer = res.get(dataset, 56, target_obj, f"cw-wb-from-{sub}") if sub else None
                rows.append(whitebox_vs_transfer(f"{sub} → {target}", res.summary(wb), res.summary(transfer)))
    return rows
