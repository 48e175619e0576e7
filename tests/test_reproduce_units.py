"""``rcenp.reproduce`` parts on their own: the paper's values against the paper's text, each sanity
check on numbers built to fail it, reuse of published cells, the Table 4 transfer path."""
import dataclasses
import io
import json
import os
import re
import types
from pathlib import Path

import numpy as np
import pytest

import rcenp
from rcenp.reproduce import budgets, cells, costs, lineup, paper, report, reuse, run, sanity, tables, threat_tables
from rcenp.reproduce.results import Results, wb_figures

ROOT = Path(rcenp.__file__).resolve().parent.parent
PAPER_CANDIDATES = [ROOT.parent / "shared" / "paper", Path(os.environ.get("RCENP_DATA") or "/nonexistent").parent / "paper",
                    Path("/work/shared/paper")]


def paper_text() -> str:
    for folder in PAPER_CANDIDATES:
        path = folder / "pang2018-towards-robust-detection.txt"
        if path.is_file():
            return path.read_text()
    pytest.skip("the paper's text (shared/paper/) is not beside this checkout")


def numbers(line):
    return [float(x) for x in re.findall(r"(?<![\w.-])\d+\.\d+", line)]


def test_table1_matches_the_paper_text():
    text = paper_text()
    for (depth, objective), values in paper.TABLE1.items():
        line = next(l for l in text.splitlines() if l.startswith(f"Resnet-{depth} ({objective.upper()})"))
        assert numbers(line) == [values["mnist"], values["cifar10"]], line


def test_table2_matches_the_paper_text():
    text = paper_text()
    block = text[text.index("Attack\tObj.\tMNIST"):text.index("Figure 2:")]
    attack = None
    names = {"FGSM": "fgsm", "BIM": "bim", "ILCM": "ilcm", "JSMA": "jsma", "C&W": "cw", "C&W-hc": "cw-hc"}
    seen = 0
    for line in block.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[1] not in ("CE", "RCE"):
            continue
        attack = names[fields[0]] if fields[0] else attack
        values = numbers("\t".join(fields[2:]))
        objective = fields[1].lower()
        expected = [paper.TABLE2[(attack, objective, d)][m] for d in ("mnist", "cifar10") for m in paper.METRICS]
        assert values == expected, line
        seen += 1
    assert seen == 12


def test_tables_3_and_4_match_the_paper_text():
    text = paper_text()
    lines = text.splitlines()
    for objective in ("ce", "rce"):
        line = next(l for l in lines if l.startswith(objective.upper() + "\t"))
        t3 = paper.TABLE3
        assert numbers(line) == [t3[(objective, "mnist")]["ratio"], t3[(objective, "mnist")]["distortion"],
                                 t3[(objective, "cifar10")]["ratio"], t3[(objective, "cifar10")]["distortion"]]
        line = next(l for l in lines if l.startswith(f"Res.-56 ({objective.upper()})"))
        assert numbers(line) == [paper.TABLE4[(objective, "ce")], paper.TABLE4[(objective, "rce")]]
    assert "all higher than 95%" in text and "less than 50%" in text and "less than 15% on CIFAR-10" in text
    assert paper.TABLE4_MNIST_LOWER_BOUND == 95.0 and paper.TRANSFER_RATE_UPPER_BOUND == {"mnist": 0.5, "cifar10": 0.15}


def test_the_paper_is_cited_not_a_file_outside_a_clone():
    """The reports cite the paper and its table; no path a user's clone lacks."""
    assert "shared/" not in paper.SOURCE and ".txt" not in paper.SOURCE
    assert "Pang, Du, Dong, Zhu" in paper.SOURCE and "NeurIPS 2018" in paper.SOURCE
    for n in (1, 2, 3, 4):
        cited = paper.source(f"table{n}")
        assert cited.startswith(f"Table {n}") and paper.CITATION in cited and "shared/" not in cited
    assert paper.source("beyond") is None and paper.source("sanity") is None


# ---- sanity checks: each FLAGs on a case built to fail it, and PASSes on a good one ---------------
def test_monotone_in_eps():
    theta = sanity.monotone_in_eps("m jsma", [(0.1, 0.50, 1000), (0.2, 0.60, 1000)], "θ")
    assert theta["status"] == "FLAG" and theta["check"] == "accuracy non-increasing in θ"
    assert "θ = 0.2" in theta["detail"] and "ε" not in theta["detail"]
    good = sanity.monotone_in_eps("m", [(0.1, 0.50, 1000), (0.2, 0.30, 1000), (0.3, 0.30, 1000)])
    bad = sanity.monotone_in_eps("m", [(0.1, 0.50, 1000), (0.2, 0.30, 1000), (0.3, 0.40, 1000)])
    assert good["status"] == "PASS" and bad["status"] == "FLAG"
    assert "ε = 0.3" in bad["detail"] and bad["value"] == pytest.approx(0.10)
    noise = sanity.monotone_in_eps("m", [(0.1, 0.50, 1000), (0.2, 0.501, 1000)])  # one image: tolerated
    assert noise["status"] == "PASS"
    assert sanity.monotone_in_eps("m", [(0.1, 0.5, 10)])["status"] == "n/a"
    flat = sanity.monotone_in_eps("m jsma", [(0.08, 1.0, 20), (0.16, 1.0, 20)], "θ")   # the attack moved nothing
    assert flat["status"] == "n/a" and flat["detail"].startswith("accuracy 100.0% at every θ")


def test_iterative_vs_single():
    fgsm = [(0.1, 0.40, 500), (0.2, 0.20, 500)]
    assert sanity.iterative_vs_single("m", fgsm, [(0.1, 0.10, 500), (0.2, 0.00, 500)])["status"] == "PASS"
    bad = sanity.iterative_vs_single("m", fgsm, [(0.1, 0.10, 500), (0.2, 0.35, 500)])
    assert bad["status"] == "FLAG" and "ε = 0.2" in bad["detail"]
    assert sanity.iterative_vs_single("m", fgsm, [(0.3, 0.1, 500)])["status"] == "n/a"
    within = sanity.iterative_vs_single("m", fgsm, [(0.1, 0.402, 500), (0.2, 0.00, 500)])  # one image above
    assert within["status"] == "PASS" and "0.2 pp at ε = 0.1" in within["detail"]
    for level in (0.0, 0.98):  # both at 0%, or neither moved a prediction: a pass would say nothing
        flat = [(0.1, level, 500), (0.2, level, 500)]
        assert sanity.iterative_vs_single("m", flat, flat)["status"] == "n/a"


def summary(n=100, clean_correct=100, efficient=100, zero=0.0, evasion=None):
    s = {"counts": {"n": n, "clean_correct": clean_correct, "efficient": efficient}, "zero_grad_fraction_mean": zero}
    if evasion is not None:
        s["detection"] = {"threshold": {"undetected_misclassified_rate": evasion}}
    return s


def test_unbounded_bim():
    assert sanity.unbounded_bim("m", summary(efficient=100))["status"] == "PASS"
    assert sanity.unbounded_bim("m", summary(efficient=90))["status"] == "FLAG"
    assert sanity.unbounded_bim("m", None)["status"] == "n/a"


def test_whitebox_vs_transfer():
    assert sanity.whitebox_vs_transfer("s → t", summary(evasion=0.6), summary(evasion=0.2))["status"] == "PASS"
    bad = sanity.whitebox_vs_transfer("s → t", summary(evasion=0.1), summary(evasion=0.3))
    assert bad["status"] == "FLAG" and "white-box 10.0%" in bad["detail"]
    assert sanity.whitebox_vs_transfer("s → t", summary(evasion=0.1), None)["status"] == "n/a"
    nothing = sanity.whitebox_vs_transfer("s → t", summary(evasion=0.0), summary(evasion=0.0))  # both stopped
    assert nothing["status"] == "n/a" and "nothing to compare" in nothing["detail"]
    assert sanity.whitebox_vs_transfer("s → t", summary(evasion=0.0), summary(evasion=0.05))["status"] == "FLAG"


def test_zero_gradient():
    assert sanity.zero_gradient("m fgsm", summary(zero=0.0))["status"] == "PASS"
    assert sanity.zero_gradient("m fgsm", summary(zero=0.4))["status"] == "FLAG"


def test_cw_success():
    assert sanity.cw_success("m", summary(efficient=100), True)["status"] == "PASS"
    bad = sanity.cw_success("m", summary(efficient=60), True)
    assert bad["status"] == "FLAG" and "paper budget" in bad["detail"]
    assert "REDUCED" in sanity.cw_success("m", summary(efficient=60), False)["detail"]
    # at a reduced budget the check's premise does not hold: n/a (neither PASS nor FLAG), rate kept as its value
    smoke = budgets.get_budget("smoke")
    for efficient in (60, 100):
        reduced = sanity.cw_success("m", summary(efficient=efficient), smoke.full_cw_budget, smoke.cw)
        assert reduced["status"] == "n/a" and reduced["value"] == pytest.approx(efficient / 100)
        assert "REDUCED budget: 2 × 20 iterations" in reduced["detail"] and "9 × 10,000" in reduced["detail"]
        assert f"{efficient} of 100" in reduced["detail"]


# ---- results helpers -----------------------------------------------------------------------------
def crossfit_samples():
    """100 images, test indices 0-99 (even: fold 0, odd: fold 1). Clean score = index; images 0 and 1
    are misclassified when clean; the attack fails on 90-99; adversarial score = index − 50."""
    out = []
    for i in range(100):
        record = {"index": i, "true_label": 1, "clean_prediction": 0 if i < 2 else 1,
                  "adversarial_prediction": 1 if i >= 90 else 2}
        for metric in ("confidence", "non_me", "log_kd"):
            record[f"clean_{metric}"], record[f"adversarial_{metric}"] = float(i), float(i - 50)
        out.append(record)
    return out


def test_tpr_at_5_percent_fpr_is_cross_fitted_on_held_out_clean_images(monkeypatch):
    """T for each fold comes from the OTHER fold's correctly classified clean images; the clean
    rejection rate is measured on images T was not fitted on; the pairs are paper_sample_rule's."""
    from rcenp.detect import roc
    from rcenp.detect.calibrate import calibrate_threshold
    from rcenp.reproduce.results import adversarial_rejection_crossfit, beyond_paper

    samples = crossfit_samples()
    calls = []
    real_rule = roc.paper_sample_rule
    monkeypatch.setattr(roc, "paper_sample_rule", lambda *a: calls.append(1) or real_rule(*a))
    figures = adversarial_rejection_crossfit(samples, "log_kd")
    assert calls                                                  # the sample rule is roc's, not a copy
    # fold 0 (even) is scored against T fitted on odd clean-correct scores 3, 5, ..., 99 (49 images, k = 2)
    assert figures["thresholds"] == [calibrate_threshold(np.arange(3.0, 100, 2), 0.05),
                                     calibrate_threshold(np.arange(2.0, 100, 2), 0.05)] == [5.0, 4.0]
    # adversarial (paper rule: clean correct, attack succeeded) = 2-89; rejected iff i − 50 ≤ T of its fold:
    # even 2-54 (27) and odd 3-53 (26) of 88
    assert figures["n_adversarial"] == 88 and figures["tpr"] == pytest.approx(53 / 88)
    # clean rejection, measured: even 2, 4 ≤ 5 and odd 3 ≤ 4, of the 98 correctly classified clean images
    assert figures["n_clean"] == 98 and figures["clean_rejection"] == pytest.approx(3 / 98)
    row = beyond_paper(samples)
    assert row["tpr5_crossfit_confidence"] == pytest.approx(53 / 88)
    assert row["fpr5_crossfit_non_me"] == pytest.approx(3 / 98) and row["n_clean_correct"] == 98
    assert "tpr5_log_kd" not in row                               # the in-sample figure is gone
    # no correctly classified clean image in one fold: no threshold for the other
    odd_only = [s for s in samples if s["index"] % 2]
    assert adversarial_rejection_crossfit(odd_only, "log_kd")["tpr"] is None
    assert beyond_paper(None)["tpr5_crossfit_log_kd"] is None
    assert figures["why"] is None and row["tpr5_crossfit_why"] is None


def test_tpr_is_not_available_with_under_20_calibration_images_in_a_half():
    """T fitted on fewer than 1/FPR images would reject nothing: a 0% TPR that says nothing."""
    from rcenp.reproduce.results import adversarial_rejection_crossfit, beyond_paper

    samples = crossfit_samples()
    few = samples[:40] + [s for s in samples[40:] if s["index"] % 2 == 0]   # odd half: 19 clean-correct (3-39)
    figures = adversarial_rejection_crossfit(few, "log_kd")
    assert figures["tpr"] is figures["clean_rejection"] is figures["thresholds"] is None
    assert figures["why"] == "under 20 calibration images in a half (19)"
    row = beyond_paper(few)
    assert row["tpr5_crossfit_non_me"] is None and row["tpr5_crossfit_why"] == figures["why"]
    enough = samples[:42] + [s for s in samples[42:] if s["index"] % 2 == 0]   # 20 in the odd half (3-41)
    assert adversarial_rejection_crossfit(enough, "log_kd")["tpr"] is not None


def test_wb_figures():
    rows = [{"clean_prediction": 1, "true_label": 1, "f2": 0.0, "stop_reason": "success", "l2_paper": 10.0},
            {"clean_prediction": 2, "true_label": 2, "f2": 1.5, "stop_reason": "f2 > 0", "l2_paper": 30.0},
            {"clean_prediction": 3, "true_label": 3, "f2": 2.0, "stop_reason": "no success", "l2_paper": 0.0},
            {"clean_prediction": 4, "true_label": 5, "f2": 9.0, "stop_reason": "f2 > 0", "l2_paper": 99.0}]
    figures = wb_figures(rows)
    assert figures["n"] == 3 and figures["ratio_f2_positive"] == pytest.approx(2 / 3)
    assert figures["distortion"] == pytest.approx(20.0) and figures["n_distortion"] == 2


def test_ratio_of_f2_positive_is_the_attacks_own_decision():
    """A success whose re-scored f₂ is 1e-7 (a separate forward pass) is still a success: the ratio
    counts stop_reason != "success", so ratio + success rate = 1; the re-score is an audit field."""
    rows = [{"clean_prediction": 1, "true_label": 1, "f2": 1e-7, "stop_reason": "success", "l2_paper": 10.0},
            {"clean_prediction": 2, "true_label": 2, "f2": 0.0, "stop_reason": "success", "l2_paper": 12.0},
            {"clean_prediction": 3, "true_label": 3, "f2": 0.5, "stop_reason": "f2 > 0", "l2_paper": 30.0},
            {"clean_prediction": 4, "true_label": 4, "f2": 0.9, "stop_reason": "no success", "l2_paper": 0.0}]
    figures = wb_figures(rows)
    assert figures["ratio_f2_positive"] == pytest.approx(0.5) and figures["success_rate"] == pytest.approx(0.5)
    assert figures["ratio_f2_positive"] + figures["success_rate"] == pytest.approx(1.0)
    assert figures["ratio_f2_rescored_positive"] == pytest.approx(0.75) and figures["n_f2_disagree"] == 1


def attack_records(n, clean_confidence, adversarial_confidence, zero=0.0):
    """Minimal per-sample records for ``summarize``: image i true label 1, clean correct, attack
    successful (predicted 2); log KD clean −1, adversarial −2 − i."""
    out = []
    for i in range(n):
        out.append({"index": i, "true_label": 1, "clean_prediction": 1, "adversarial_prediction": 2,
                    "success": True, "success_8bit": True, "l2_paper": 1.0, "l2": 0.1, "linf": 0.1, "l0": 3,
                    "zero_grad_fraction": zero[i] if isinstance(zero, list) else zero, "iterations": 1,
                    "stop_reason": "steps", "clean_confidence": clean_confidence,
                    "adversarial_confidence": adversarial_confidence, "clean_non_me": 1.0 + i,
                    "adversarial_non_me": 0.5 * i, "clean_log_kd": -1.0, "adversarial_log_kd": -2.0 - i})
    return out


def test_delta_and_dagger_use_the_strict_auc_the_paper_used():
    """Saturated confidence (1.0 everywhere): ties half gives 50, the authors' rule 0, and the paper
    prints 0.0 (e.g. CIFAR BIM CE). Δ and † compare with the strict AUC and strict interval."""
    from rcenp.attacks.summary import summarize

    detection = summarize(attack_records(40, 1.0, 1.0))["detection"]
    entry = detection["confidence"]
    assert entry["auc"] == 0.5 and entry["auc_ci95"] == [0.5, 0.5]
    assert entry["auc_strict_ties"] == 0.0 and entry["auc_strict_ci95"] == [0.0, 0.0]
    fields = tables._auc_fields(detection, "confidence", 0.0)
    assert fields["confidence_auc"] == 50.0                       # the headline stays ties-half
    assert fields["confidence_diff"] == 0.0 and fields["confidence_outside_ci"] is False
    assert fields["confidence_ci_degenerate"] is True
    assert "strict 0.0 [0.0, 0.0] (zero width); paper 0.0, Δ +0.0" in tables._auc_text(fields, "confidence")


def test_published_cells_get_the_strict_interval_from_their_samples():
    """A summary written before the strict interval existed is completed from its samples,
    with the same figures a new summary has; its own keys are kept."""
    from rcenp.attacks.summary import summarize
    from rcenp.reproduce.results import complete_detection

    records = attack_records(30, 0.9, 1.0)
    new = summarize(records)
    old = json.loads(json.dumps(new))
    for metric in ("confidence", "non_me", "log_kd"):
        for key in ("auc_strict_ci95", "auc_authors_kd", "kd_zero"):
            old["detection"][metric].pop(key, None)
    completed = complete_detection(old, records)
    for metric in ("confidence", "non_me", "log_kd"):
        assert completed[metric] == new["detection"][metric], metric
    with pytest.raises(ValueError, match="no samples"):
        complete_detection(old, None)


def test_authors_emulated_kd_auc_is_in_table2():
    """Log KD straddling the float64 underflow point (≈ −745): our strict AUC keeps the adversarial
    scores apart, the authors-emulated one (KD = exp(log KD) = 0 for both) ties them."""
    from rcenp.attacks.summary import summarize

    records = attack_records(4, 0.9, 1.0)
    for record, clean, adversarial in zip(records, (-744.0, -746.0, -750.0, -10.0), (-745.5, -800.0, -760.0, -20.0)):
        record["clean_log_kd"], record["adversarial_log_kd"] = clean, adversarial
    entry = summarize(records)["detection"]["log_kd"]
    # log space: -744 beats 3, -746 beats 2, -750 beats 2 (-800, -760), -10 beats 4 → 11/16
    assert entry["auc_strict_ties"] == pytest.approx(11 / 16)
    # exp in float64: normal (e^-744 > 0, 0, 0, e^-10), adversarial (0, 0, 0, e^-20) → (3 + 4)/16
    assert entry["auc_authors_kd"] == pytest.approx(7 / 16)
    assert entry["kd_zero"] == {"normal": 2, "adversarial": 3}
    fields = tables._auc_fields({"log_kd": entry}, "log_kd", None)
    assert fields["log_kd_auc_authors_emulated"] == pytest.approx(100 * 7 / 16)
    assert (fields["log_kd_zero_normal"], fields["log_kd_zero_adversarial"]) == (2, 3)
    assert "authors-emulated 43.8" in tables._auc_text(fields, "log_kd")


def test_dagger_allows_for_the_papers_rounding_and_notes_zero_width_intervals():
    # perfect separation: a zero-width interval [100, 100]; the paper's 99.96 would print as 100.0
    entry = {"auc": 1.0, "auc_strict_ties": 1.0, "auc_ci95": [1.0, 1.0], "auc_strict_ci95": [1.0, 1.0]}
    fields = tables._auc_fields({"non_me": entry}, "non_me", 99.96)
    assert fields["non_me_outside_ci"] is False and fields["non_me_ci_degenerate"] is True
    assert "(zero width)" in tables._auc_text(fields, "non_me")
    outside = tables.paper_outside_interval
    assert outside(98.0, 98.04, 99.0) is False                    # 98.0 stands for [97.95, 98.05]
    assert outside(98.0, 98.06, 99.0) is True
    assert outside(99.9, 99.95, 100.0) is False                   # touching counts as meeting
    assert outside(100.0, 100.0, 100.0) is False                  # zero width, the paper's value
    assert outside(99.9, 100.0, 100.0) is True                    # zero width, missed
    assert outside(0.0, 0.0, 0.04) is False and outside(None, 1.0, 2.0) is None
    row = {"dataset": "mnist", "attack": "cw", "eps": None, "theta": None, "objective": "ce", "n_pairs": 9,
           **tables._auc_fields({"non_me": entry}, "non_me", 99.8)}
    # a zero-width interval, or one from under 30 pairs, says little: marked (†), listed apart, not counted
    weak = "- mnist cw CE non-ME: ours (strict ties) 100.0 [100.0, 100.0] (zero-width interval), paper 99.8 (n = 9 pairs)"
    assert report._outside([row]) == ([], [weak], 0)
    assert tables._auc_text(row, "non_me").endswith("; paper 99.8, Δ +0.2 (†)")
    row["n_pairs"] = 30
    assert report._outside([row]) == ([], [weak.replace("n = 9", "n = 30")], 0)  # still zero width
    row.update(tables._auc_fields({"non_me": dict(entry, auc_strict_ci95=[0.995, 1.0])}, "non_me", 99.8), n_pairs=30)
    counted = "- mnist cw CE non-ME: ours (strict ties) 100.0 [99.5, 100.0], paper 99.8 (n = 30 pairs)"
    assert report._outside([row]) == ([], [], 1)                                # [99.5, 100] holds 99.8
    row.update(tables._auc_fields({"non_me": dict(entry, auc_strict_ci95=[0.999, 1.0])}, "non_me", 99.8), n_pairs=30)
    assert report._outside([row]) == ([counted.replace("99.5", "99.9")], [], 1)
    assert tables._auc_text(row, "non_me").endswith(" **†**")
    text = report.differences_md([row], [])
    assert "of the 1 comparisons made" in text and counted.replace("99.5", "99.9") in text
    assert "No value had such a comparison" in report.differences_md([], [])


class _Table4Results:
    """Every Table 4 cell finished with the same K-density entry and transfer record."""

    def __init__(self, entry, transfer):
        self.entry, self.transfer = entry, transfer

    def get(self, dataset, depth, objective, name):
        return types.SimpleNamespace(model=f"{dataset}-resnet{depth}-{objective}")

    def summary(self, cell):
        return {"transfer": self.transfer, "detection": {"log_kd": {"n_pairs": 40}}}

    def status(self, cell):
        return None

    def detection(self, cell):
        return {"log_kd": self.entry}


def test_table4_marks_values_and_transfer_rates_outside_the_papers():
    """† on Table 4: CIFAR-10's value missed by our strict interval, MNIST's "all above 95" missed by
    our whole interval, a transfer rate whose Wilson interval lies above the paper's bound."""
    smoke = budgets.get_budget("smoke")
    low = {"auc": 0.90, "auc_strict_ties": 0.90, "auc_ci95": [0.85, 0.94], "auc_strict_ci95": [0.85, 0.94]}
    rows = threat_tables.table4(_Table4Results(low, {"n_eligible": 40, "transfer_rate": 0.5}), smoke).rows
    mnist = [r for r in rows if r["dataset"] == "mnist"]
    assert all(r["outside_ci"] for r in mnist)                                 # [85, 94] is all below 95
    cifar = {(r["target_objective"], r["substitute_objective"]): r for r in rows if r["dataset"] == "cifar10"}
    assert cifar[("ce", "ce")]["outside_ci"] and cifar[("rce", "rce")]["outside_ci"]   # 75.0, 84.9: missed
    assert cifar[("ce", "rce")]["outside_ci"] is False and cifar[("rce", "ce")]["outside_ci"] is False  # 90.8, 89.1
    assert all(r["transfer_outside"] for r in cifar.values())                  # 50% of 40: low end above 15%
    assert not any(r["transfer_outside"] for r in mnist)                       # 50% is not above 50%
    lines, weak, compared = report._outside_table4(rows)
    assert weak == [] and compared == 16                    # 8 AUCs from 40 pairs, 8 transfer rates
    assert "- mnist Table 4, CE substitute → CE target, K-density: ours (strict ties) 90.0 [85.0, 94.0], " \
           "paper: all above 95 (n = 40 pairs)" in lines
    assert any(line.startswith("- cifar10 Table 4") and "transfer rate: ours 50.0% [" in line
               and line.endswith("(n = 40), paper: under 15%") for line in lines)
    high = {"auc": 0.99, "auc_strict_ties": 0.99, "auc_ci95": [0.97, 1.0], "auc_strict_ci95": [0.96, 1.0]}
    rows = threat_tables.table4(_Table4Results(high, {"n_eligible": 40, "transfer_rate": 0.05}), smoke).rows
    assert not any(r["outside_ci"] for r in rows if r["dataset"] == "mnist")
    assert all(r["outside_ci"] for r in rows if r["dataset"] == "cifar10")     # 96-100 misses 75.0-90.8
    assert not any(r["transfer_outside"] for r in rows)
    assert threat_tables.transfer_interval(None, 10) == (None, None)
    assert threat_tables.transfer_interval(0.5, 0) == (None, None)


def test_zero_gradient_fractions_ignore_nan_and_count_it():
    """C&W records NaN where the hinge is inactive at the first iterate: left out of the mean, counted."""
    from rcenp.attacks import summary as summary_module

    records = attack_records(4, 0.9, 1.0, zero=[0.0, float("nan"), 0.1, None])
    summary = summary_module.summarize(records)
    assert summary["zero_grad_fraction_mean"] == pytest.approx(0.05)
    assert (summary["zero_grad_fraction_n"], summary["zero_grad_fraction_excluded"]) == (2, 2)
    assert summary_module.zero_grad_stats([float("nan")]) == {"mean": None, "n": 0, "excluded": 1}
    row = sanity.zero_gradient("m cw", summary)
    assert row["status"] == "PASS" and row["value"] == pytest.approx(0.05)
    assert "over 2 images" in row["detail"] and "2 images without a fraction" in row["detail"]
    records[0]["zero_grad_fraction"] = 0.5
    from_samples = sanity.zero_gradient("m cw", {"zero_grad_fraction_mean": float("nan")}, records)
    assert from_samples["status"] == "FLAG" and from_samples["value"] == pytest.approx(0.3)
    assert sanity.zero_gradient("m cw", {"zero_grad_fraction_mean": float("nan")})["status"] == "n/a"
    assert sanity.zero_gradient("m cw", None, [{"zero_grad_fraction": None}])["status"] == "n/a"


def test_notes_say_what_the_code_does():
    """Table 3: the 100 attacker points are the authors' code's; Table 4: the transfer rate's
    denominator; beyond: the cell's detector, not necessarily K-density."""
    smoke = budgets.get_budget("smoke")
    res = unavailable(cells.plan(smoke, ["table2", "table3", "table4"]))
    t3, t4, bey = threat_tables.table3(res, smoke).markdown, threat_tables.table4(res, smoke).markdown, tables.beyond(res, smoke)
    assert "(the paper)" not in t3 and "authors' code (select_kernel_for_attack.m; the paper does not state it)" in t3
    assert "share of examples the target misclassifies" not in t4
    assert ("of the examples crafted successfully on the substitute whose clean image the target classifies "
            "correctly (n shown), the share the target misclassifies") in t4
    assert "shipped K-density detector" not in bey.markdown and "the cell's detector, on its metric" in bey.markdown
    assert {"detector_metric", "tpr5_crossfit_log_kd", "fpr5_crossfit_log_kd"} <= set(bey.columns)
    assert "Δ = strict − paper" in tables.table2(res, smoke).markdown


# ---- the plan: budgets, missing models, reuse, transfer -------------------------------------------
def test_budgets_and_eps_options_match_the_sweep_script(load_script):
    sweep = load_script("attack_sweep")
    cpu = budgets.get_budget("cpu")
    assert cpu.eps_sweep == sweep.EPSILONS
    for attack in ("fgsm", "bim", "ilcm", "jsma"):
        for eps in sweep.EPSILONS:
            assert budgets.eps_options(attack, eps, cpu) == sweep.OPTIONS[attack](eps)
    paper_budget = budgets.get_budget("paper")
    assert paper_budget.n_cw == paper_budget.n_wb == 1000 and paper_budget.cw["max_iterations"] == 10000
    assert paper_budget.cw["binary_steps"] == 9 and paper_budget.full_cw_budget
    with pytest.raises(ValueError, match="unknown budget"):
        budgets.get_budget("fast")


def test_missing_models_are_named_and_planned_as_not_available(monkeypatch):
    """A model absent from the registry is named, with the reason, under every budget (the two
    models are hidden here, so the test does not depend on which models a version ships)."""
    hidden = ("mnist-resnet56-rce", "cifar10subset-resnet32-ce")
    infos = tuple(i for i in lineup._shipped() if i["name"] not in hidden)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    planned = cells.plan(budgets.get_budget("smoke"), ["table1"])
    by_key = {c.key: c for c in planned}
    assert len(planned) == 12
    missing = by_key["mnist-resnet56-rce/test-error"]
    assert missing.model is None
    assert missing.missing == "not available: model mnist-resnet56-rce is not shipped in this version"
    assert missing.missing_model == "mnist-resnet56-rce"
    cpu = {c.key: c for c in cells.plan(budgets.get_budget("cpu"), ["table1"])}
    assert cpu["cifar10subset-resnet32-ce/test-error"].missing == \
        "not available: model cifar10subset-resnet32-ce is not shipped in this version"
    assert by_key["mnist-resnet32-ce/test-error"].model == "mnist-resnet32-ce"
    shipped = by_key["mnist-resnet32-ce/test-error"]
    assert shipped.missing is None and shipped.missing_model is None
    assert not any("issue" in c.missing for c in planned if c.missing)


def test_the_smoke_budget_runs_mnist_only_and_says_so_for_the_rest(monkeypatch):
    """A shipped model of another data set is 'not run' under smoke and planned under cpu."""
    infos = lineup._shipped() + ({"name": "fashion-mnist-resnet32-ce", "dataset": "fashion-mnist", "depth": 32,
                                  "objective": "ce", "detector": True},)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    smoke = cells.plan(budgets.get_budget("smoke"), cells.PARTS)
    cpu = {c.key: c for c in cells.plan(budgets.get_budget("cpu"), cells.PARTS)}
    assert any(c.dataset == "mnist" and c.missing is None for c in smoke)
    others = [c for c in smoke if c.dataset != "mnist"]
    assert others and all(c.missing == "not run: the smoke budget covers MNIST only" and c.missing_model is None
                          for c in others)
    fashion = [c for c in others if c.model == "fashion-mnist-resnet32-ce"]
    common = [c for c in fashion if c.key in cpu]  # the same cell under cpu (smoke's n and ε differ for some)
    assert common and all(cpu[c.key].missing is None for c in common)
    assert not any(c.missing and c.missing.startswith("not run") for c in cpu.values())


def test_the_train_command_for_a_missing_model_parses():
    """Each missing model's ``rcenp train`` line is a valid command for that model's place."""
    from rcenp.cli import build_parser

    for dataset in lineup.DATASETS:
        for depth in lineup.DEPTHS:
            for objective in lineup.OBJECTIVES:
                name = lineup.expected_name(dataset, depth, objective)
                argv = lineup.train_command(name).split()
                assert argv[0] == "rcenp"
                args = build_parser().parse_args(argv[1:])
                assert (args.command, args.dataset, args.depth, args.objective, args.out) == \
                    ("train", dataset, depth, objective, f"runs/{name}")
    assert lineup.train_command("not-a-model") == ""
    assert lineup.train_command("cifar10subset-resnet56-rce").endswith(
        "--preset subset --out runs/cifar10subset-resnet56-rce")
    for command in ("rcenp data fetch", "scripts/ship_model.py", "rcenp detect NAME --fit", "--resume"):
        assert command in lineup.HOW_TO_ADD
    assert "issue" not in lineup.HOW_TO_ADD


def test_a_newly_shipped_model_is_picked_up(monkeypatch):
    infos = tuple(i for i in lineup._shipped() if i["name"] != "mnist-resnet56-rce") + (  # as before it shipped
        {"name": "mnist-r56-later", "dataset": "mnist", "depth": 56, "objective": "rce", "detector": True},)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    assert lineup.find_model("mnist", 56, "rce") == "mnist-r56-later"
    planned = {c.key: c for c in cells.plan(budgets.get_budget("smoke"), ["table4"])}
    assert planned["mnist-r56-later/cw-wb-from-mnist-resnet32-ce"].missing is None
    assert planned["mnist-r56-later/cw-wb-from-mnist-resnet32-ce"].options["substitute"] == "mnist-resnet32-ce"


def test_a_missing_substitute_is_the_missing_model(monkeypatch):
    """Table 4's transfer from an unshipped substitute waits for the substitute, and says so."""
    infos = tuple(i for i in lineup._shipped() if i["name"] != "mnist-resnet32-rce") + (
        {"name": "mnist-resnet56-ce", "dataset": "mnist", "depth": 56, "objective": "ce", "detector": True},)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    planned = {c.key: c for c in cells.plan(budgets.get_budget("smoke"), ["table4"])}
    cell = planned["mnist-resnet56-ce/cw-wb-from-mnist-resnet32-rce"]
    assert cell.model == "mnist-resnet56-ce" and cell.missing_model == "mnist-resnet32-rce"
    assert cell.missing == "not available: model mnist-resnet32-rce is not shipped in this version"
    assert planned["mnist-resnet56-ce/cw-wb-from-mnist-resnet32-ce"].missing is None


def fake_published(root: Path, cell, options=None, **recorded):
    folder = root / cell.key
    folder.mkdir(parents=True)
    asked = {"model": cell.model, "attack": cell.attack, "options": options or cell.options, "n": cell.n, "seed": 0,
             **recorded}
    (folder / "run.json").write_text(json.dumps(asked))
    (folder / "summary.json").write_text(json.dumps({"settings": asked}))
    return folder


def test_published_cells_are_reused_in_place(tmp_path, monkeypatch):
    cpu = budgets.get_budget("cpu")
    planned = [c for c in cells.plan(cpu, ["fig2"]) if c.model == "mnist-resnet32-ce" and c.attack == "bim"]
    same = fake_published(tmp_path / "published", planned[0])
    fake_published(tmp_path / "published", planned[1], options={"eps": planned[1].eps, "steps": 5})  # other settings
    assert reuse.reusable(planned[0], [tmp_path / "published"]) == same
    assert reuse.reusable(planned[1], [tmp_path / "published"]) is None

    def must_not_run(*args, **kwargs):
        raise AssertionError("a reusable cell was recomputed")

    from rcenp.attacks import run as attack_run

    monkeypatch.setattr(attack_run, "run_attack", must_not_run)
    outcomes = cells.run_cells(planned[:1], tmp_path / "out", cells_from=[tmp_path / "published"],
                               stream=open(os.devnull, "w"))
    assert outcomes[planned[0].key] == {"status": "done", "path": str(same), "source": "reused", "seconds": 0.0}


def test_the_plan_lists_the_work_and_computes_writes_and_moves_nothing(tmp_path, capsys):
    from rcenp.cli import main

    cpu = budgets.get_budget("cpu")
    planned = [c for c in cells.plan(cpu, ["fig2"]) if c.model == "mnist-resnet32-ce" and c.attack == "bim"]
    fake_published(tmp_path / "published", planned[0])
    fake_published(tmp_path / "out" / "cells", planned[1], options={"eps": planned[1].eps, "steps": 5})  # stale
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["reproduce", "--budget", "cpu", "--only", "fig2", "--datasets", "mnist", "--out", str(tmp_path / "out"),
                 "--cells-from", str(tmp_path / "published"), "--plan"]) == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"reproduce (cpu) into {tmp_path / 'out'}: ") and "nothing has been" in lines[0]
    computed = [line.split()[0] for line in lines if line.startswith("  mnist-")]
    assert planned[1].key in computed and planned[0].key not in computed
    assert f"finished, kept: 1 cell (1 from {tmp_path / 'published'})" in lines
    assert f"{planned[1].key}: asked for other settings (options.steps: 5 there, 10 now); would be set aside " \
           "and computed afresh" in lines
    assert any(line.startswith("not run: ") for line in lines)
    assert any(line.startswith("to compute: ") and " h at 4.0 ms per unit on one free core" in line for line in lines)
    (tmp_path / "typo").mkdir()
    assert main(["reproduce", "--budget", "cpu", "--only", "fig2", "--datasets", "mnist", "--out", str(tmp_path / "out"),
                 "--cells-from", str(tmp_path / "published"), "--cells-from", str(tmp_path / "typo"), "--plan"]) == 0
    assert capsys.readouterr().out.splitlines()[-2].startswith(f"--cells-from {tmp_path / 'typo'}: none of this run's")
    (tmp_path / "out" / "reproduce.json").write_text(json.dumps({"budget": "smoke"}))  # a smoke run is there
    for extra in ([], ["--resume"]):
        assert main(["reproduce", "--budget", "cpu", "--out", str(tmp_path / "out"), "--plan"] + extra) == 2
        assert "smoke" in capsys.readouterr().err
    total = int(next(line for line in lines if line.startswith("to compute: ")).split()[4].replace(",", ""))
    assert total == round(sum(cells.cell_cost(c) for c in cells.plan(cpu, ["fig2"])
                              if c.dataset == "mnist" and c.model is not None and c.key != planned[0].key))


def test_published_cells_with_another_detector_or_an_unrecorded_eta_are_not_reused(tmp_path):
    from rcenp.attacks.runfiles import detector_identity

    cpu = budgets.get_budget("cpu")
    bim = next(c for c in cells.plan(cpu, ["fig2"]) if c.model == "mnist-resnet32-ce" and c.attack == "bim")
    current = detector_identity("mnist-resnet32-ce")
    assert current is not None
    fake_published(tmp_path / "now", bim, detector=current)
    fake_published(tmp_path / "refit", bim, detector=dict(current, threshold=current["threshold"] + 1))
    assert reuse.reusable(bim, [tmp_path / "now"]) == tmp_path / "now" / bim.key
    assert reuse.reusable(bim, [tmp_path / "refit"]) is None
    wb = next(c for c in cells.plan(cpu, ["table3"]) if c.attack == "cw-wb" and c.model == "mnist-resnet32-ce")
    fake_published(tmp_path / "old", wb)
    fake_published(tmp_path / "new", wb, eta="exact: training features")
    assert reuse.reusable(wb, [tmp_path / "old"]) is None
    assert reuse.reusable(wb, [tmp_path / "new"]) == tmp_path / "new" / wb.key


def test_transfer_cell_runs_on_the_target_with_the_substitute(tmp_path, monkeypatch):
    """A real run_attack call with the substitute option: the cell finishes with a transfer block.
    With no data root (the embedded test sample; η from the detector's points), so that the η
    pass over 60,000 training images, tested elsewhere, does not cost minutes here."""
    smoke = budgets.get_budget("smoke")
    options = budgets.cw_wb_options(smoke, "attacker", "mnist-resnet32-rce")
    options["stage1"] = {"binary_steps": 1, "max_iterations": 2}
    options["stage2"] = {"binary_steps": 1, "max_iterations": 2}
    cell = cells.Cell("mnist-resnet32-ce/cw-wb-from-mnist-resnet32-rce", "attack", "mnist-resnet32-ce", "mnist", 32,
                      "ce", 2, attack="cw-wb", options=options, substitute="mnist-resnet32-rce", batch_size=2)
    monkeypatch.delenv("RCENP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no data in the per-user cache either
    outcome = cells.run_cell(cell, tmp_path / cell.key, stream=open(os.devnull, "w"))
    assert outcome["status"] == "done"
    summary = json.loads((tmp_path / cell.key / "summary.json").read_text())
    assert summary["settings"]["data"]["n"] == 1000 and summary["settings"]["eta"]["rule"].startswith("approximation")
    assert summary["transfer"]["n_eligible"] <= 2 and summary["settings"]["options"]["substitute"] == "mnist-resnet32-rce"


def test_figures_without_the_report_extra(monkeypatch, tmp_path):
    """Without matplotlib or scikit-learn every figure is skipped with the install hint and no file
    is written (CI installs the report extra, so this path is checked here)."""
    from rcenp.reproduce import figures

    assert figures.missing_libraries(("numpy", "rcenp_no_such_module")) == ["rcenp_no_such_module"]
    monkeypatch.setattr(figures, "missing_libraries", lambda needs: [n for n in needs if n == "sklearn"])
    hint = "pip install -e '.[report]' in the rcenp checkout"  # rcenp is not on PyPI: install the extra from a clone
    assert figures.INSTALL_HINT == hint
    assert figures.draw(None, None, tmp_path, ["fig1"]) == {"fig1": {"skipped": f"sklearn not installed ({hint})"}}
    monkeypatch.setattr(figures, "missing_libraries", lambda needs: list(needs))
    drawn = figures.draw(None, None, tmp_path, figures.FIGURES)
    assert drawn["fig1"] == {"skipped": f"matplotlib, sklearn not installed ({hint})"}
    assert drawn["fig2"] == drawn["fig3"] == {"skipped": f"matplotlib not installed ({hint})"}
    assert not any(tmp_path.iterdir())


def test_the_command_help_gives_the_install_hint_from_a_clone():
    from rcenp.cli import build_parser
    from rcenp.reproduce import figures

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "reproduce" in a.choices)
    description = subparsers.choices["reproduce"].description
    assert figures.INSTALL_HINT in description and "rcenp[report]" not in description


# ---- report Markdown: strength labels, test images, the Cells section ---------------------------
def unavailable(planned) -> Results:
    """Results in which every planned cell is not available, with its plan's reason."""
    return Results(planned, {c.key: {"status": "not available", "reason": c.missing or "not available: no data",
                                     "path": None} for c in planned})


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
    assert report._outside([row]) == ([], ["- mnist jsma θ=0.16 RCE Confidence: ours (strict ties) 45.0 [35.0, 55.0], "
                                           "paper 100.0 (n = 20 pairs)"], 0)


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
    detection = {m: {"auc": 0.9, "n_pairs": 7} for m in paper.METRICS}
    for cell in ("bim-0.08", "jsma-0.08"):
        (tmp_path / "m-ce" / cell).mkdir(parents=True)
        (tmp_path / "m-ce" / cell / "summary.json").write_text(json.dumps({"detection": detection}))
    rows = script.distances(tmp_path, {"ce": "m-ce"})
    assert [(r["attack"], r.get("eps"), r.get("theta")) for r in rows] == [("bim", 0.08, None), ("jsma", None, 0.08)]
    table = script.markdown(rows)
    assert "| JSMA (θ) | CE |" in table and "| BIM | CE |" in table
    published = ROOT / "results" / "fig2a"
    if (published / "mnist-resnet32-ce").is_dir():
        rows = script.distances(published, {"ce": "mnist-resnet32-ce", "rce": "mnist-resnet32-rce"})
        assert any(r["attack"] == "jsma" and r["theta"] is not None for r in rows)
        assert all(r["eps"] is not None for r in rows if r["attack"] != "jsma")


# ---- audit fixes: refused cells, stale cells, timings, the plan, the report's own statements -----
DEVNULL = open(os.devnull, "w")


def fake_run_attack(calls):
    """A stand-in for run_attack that records its folder and writes a finished run there."""
    def run_attack(model, attack, out_dir, options, n=1000, seed=0, batch_size=100, **kwargs):
        calls.append(Path(out_dir))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        asked = {"model": model, "attack": attack, "options": options, "n": n, "seed": seed, "batch_size": batch_size}
        (Path(out_dir) / "run.json").write_text(json.dumps(asked))
        (Path(out_dir) / "summary.json").write_text(json.dumps({"settings": asked}))
    return run_attack


def smoke_cell(attack, part="table2", model="mnist-resnet32-ce"):
    return next(c for c in cells.plan(budgets.get_budget("smoke"), [part]) if c.model == model and c.attack == attack)


def test_a_cell_that_run_attack_refuses_is_not_available_and_the_run_goes_on(tmp_path, monkeypatch):
    """A ValueError or CheckpointError of one cell is that cell's reason; the other cells still run.
    A transfer whose substitute has no fitted detector is not attempted."""
    from rcenp.attacks import run as attack_run
    from rcenp.checkpoint import CheckpointError

    fgsm, bim = smoke_cell("fgsm"), smoke_cell("bim")
    calls = []

    def refuse(model, attack, out_dir, *args, **kwargs):
        calls.append(attack)
        if attack == "fgsm":
            raise ValueError("out: --resume with other settings than the run there: options.eps: 0.1 there\nmore")
        raise CheckpointError("mnist-resnet32-ce: detector fitted for other weights")

    monkeypatch.setattr(attack_run, "run_attack", refuse)
    outcomes = cells.run_cells([fgsm, bim], tmp_path / "out", stream=DEVNULL)
    assert calls == ["fgsm", "bim"]
    assert outcomes[fgsm.key]["status"] == outcomes[bim.key]["status"] == "not available"
    assert outcomes[fgsm.key]["reason"] == \
        "not available: out: --resume with other settings than the run there: options.eps: 0.1 there"
    assert outcomes[bim.key]["reason"] == "not available: mnist-resnet32-ce: detector fitted for other weights"
    assert set(json.loads((tmp_path / "out" / "cells.json").read_text())) == {fgsm.key, bim.key}
    smoke = budgets.get_budget("smoke")
    transfer = cells.Cell("mnist-resnet32-ce/cw-wb-from-mnist-resnet32-rce", "attack", "mnist-resnet32-ce", "mnist",
                          32, "ce", 2, attack="cw-wb", options=budgets.cw_wb_options(smoke, "attacker",
                                                                                     "mnist-resnet32-rce"),
                          substitute="mnist-resnet32-rce", batch_size=2)
    monkeypatch.setattr(lineup, "has_detector", lambda name: name != "mnist-resnet32-rce")
    outcome = cells.run_cell(transfer, tmp_path / transfer.key, stream=DEVNULL)
    assert outcome["status"] == "not available" and calls == ["fgsm", "bim"]
    assert outcome["reason"].startswith("not available: substitute mnist-resnet32-rce has no fitted K-density detector")


def test_a_finished_cell_computed_with_other_settings_is_set_aside_and_recomputed(tmp_path, monkeypatch):
    """The run's own finished cells get reusable's check: one asked with another ε, or scored by a
    detector refit since, is renamed <name>.stale-<k> (kept) and computed afresh; a matching one is kept."""
    from rcenp.attacks import run as attack_run
    from rcenp.attacks.runfiles import detector_identity

    fgsm, bim = smoke_cell("fgsm"), smoke_cell("bim")
    root = tmp_path / "out" / "cells"
    fake_published(root, fgsm, options={"eps": 0.3})
    fake_published(root, bim, batch_size=bim.batch_size, detector=detector_identity(bim.model))
    calls = []
    monkeypatch.setattr(attack_run, "run_attack", fake_run_attack(calls))
    outcomes = cells.run_cells([fgsm, bim], tmp_path / "out", stream=DEVNULL)
    assert calls == [root / fgsm.key]
    assert outcomes[fgsm.key]["source"] == "computed" and outcomes[bim.key]["source"] == "resumed"
    aside = root / "mnist-resnet32-ce" / "fgsm-0.08.stale-1"
    assert json.loads((aside / "run.json").read_text())["options"] == {"eps": 0.3}
    assert (aside / "summary.json").is_file()
    assert "options.eps: 0.3 there, 0.08 now" in (tmp_path / "out" / "reproduce.log").read_text()
    refit = dict(detector_identity(fgsm.model), threshold=1e9)
    run_file = root / fgsm.key / "run.json"
    run_file.write_text(json.dumps(dict(json.loads(run_file.read_text()), detector=refit)))
    cells.run_cells([fgsm, bim], tmp_path / "out", stream=DEVNULL)
    assert calls == [root / fgsm.key] * 2 and (root / "mnist-resnet32-ce" / "fgsm-0.08.stale-2").is_dir()
    assert cells.run_cells([fgsm, bim], tmp_path / "out", stream=DEVNULL)[fgsm.key]["source"] == "resumed"
    assert len(calls) == 2


def test_reuse_compares_the_test_split_but_not_the_batch_size(tmp_path):
    """Other test images are other cells: a copy on another split is not reused, the same files
    in another folder are the same split; another batch size changes only float32 rounding."""
    jsma = next(c for c in cells.plan(budgets.get_budget("cpu"), ["table2"])
                if c.model == "mnist-resnet32-ce" and c.attack == "jsma")
    split = {"name": "mnist", "split": "test", "n": 10000, "note": "full",
             "sha256": {"t10k-images-idx3-ubyte.gz": "aa", "t10k-labels-idx1-ubyte.gz": "bb"}, "source": "/here"}
    here = lambda dataset: dict(split, source="/elsewhere")  # noqa: E731
    fake_published(tmp_path / "same", jsma, batch_size=100, data=split)
    fake_published(tmp_path / "batch", jsma, batch_size=1000, data=split)
    other = dict(split, sha256={"t10k-images-idx3-ubyte.gz": "cc", "t10k-labels-idx1-ubyte.gz": "bb"})
    fake_published(tmp_path / "data", jsma, batch_size=100, data=other)
    assert reuse.reusable(jsma, [tmp_path / "same"], here) == tmp_path / "same" / jsma.key
    assert reuse.reusable(jsma, [tmp_path / "batch"], here) == tmp_path / "batch" / jsma.key
    assert reuse.reusable(jsma, [tmp_path / "data"], here) is None
    asked = json.loads((tmp_path / "data" / jsma.key / "run.json").read_text())
    assert reuse.stale(jsma, asked, here) == "data: other test images (their SHA-256 differ)"


def test_timings_are_written_after_every_cell(tmp_path, monkeypatch):
    """A run killed in its second cell keeps the first cell's seconds; the report reads them back."""
    import time

    from rcenp.reproduce import run

    fgsm, bim = smoke_cell("fgsm"), smoke_cell("bim")

    def run_cell(cell, cell_dir, *args):
        if cell is bim:
            raise KeyboardInterrupt
        time.sleep(0.01)
        return {"status": "done", "path": str(cell_dir), "source": "computed"}

    monkeypatch.setattr(cells, "run_cell", run_cell)
    with pytest.raises(KeyboardInterrupt):
        cells.run_cells([fgsm, bim], tmp_path, stream=DEVNULL)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert set(timings) == {fgsm.key} and timings[fgsm.key] >= 0.01
    assert run._part_seconds(tmp_path, [fgsm, bim]) == {"table2": timings[fgsm.key]}


def test_the_white_box_attack_on_a_table4_target_is_planned_only_for_the_sanity_check(monkeypatch):
    infos = lineup._shipped() + ({"name": "mnist-resnet56-ce", "dataset": "mnist", "depth": 56, "objective": "ce",
                                  "detector": True},)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    smoke = budgets.get_budget("smoke")
    assert "mnist-resnet56-ce/cw-wb" not in {c.key for c in cells.plan(smoke, ["table4"])}
    both = {c.key: c for c in cells.plan(smoke, ["table4", "sanity"])}
    assert both["mnist-resnet56-ce/cw-wb"].parts == {"sanity"}
    assert "mnist-resnet56-ce/cw-wb-from-mnist-resnet32-ce" in both


def test_the_white_box_versus_transfer_check_without_table4_says_why(monkeypatch):
    """--only sanity plans no transfer cell: the check is listed as not run, not left out."""
    from rcenp.reproduce.results import Results

    smoke = budgets.get_budget("smoke")
    rows = sanity.run_checks(Results(cells.plan(smoke, ["sanity"]), {}), smoke)
    wb = [r for r in rows if r["check"] == "white-box C&W-wb ≥ transfer"]
    assert {r["subject"] for r in wb} == {"mnist-resnet56-ce", "mnist-resnet56-rce"}
    assert all(r["status"] == "n/a" and "add table4 to --only" in r["detail"] for r in wb)
    both = sanity.run_checks(Results(cells.plan(smoke, ["sanity", "table4"]), {}), smoke)
    assert not any("add table4" in r["detail"] for r in both)
    # the checks whose cells belong to other parts say so too, instead of dropping out
    not_run = {(r["check"], r["subject"]): r["detail"] for r in rows if r["detail"].startswith("not run")}
    assert not_run[("accuracy non-increasing in θ", "mnist-resnet32-ce jsma")] == \
        "not run: its θ sweep is Fig. 2's; add fig2 to --only"
    assert not_run[("zero input-gradient fraction", "mnist-resnet32-rce cw-wb")] == \
        "not run: the cell is table3's; add table3 to --only"
    assert ("zero input-gradient fraction", "mnist-resnet32-ce ilcm-0.08") in not_run
    full = sanity.run_checks(Results(cells.plan(smoke, list(cells.PARTS)), {}), smoke)
    assert not any(r["detail"].startswith("not run") for r in full)


def test_a_broken_manifest_is_the_reason_not_a_missing_model(monkeypatch):
    from rcenp.models import registry

    real = registry.model_info

    def model_info(name):
        if name == "mnist-resnet32-rce":
            raise KeyError("config")
        return real(name)

    monkeypatch.setattr(registry, "model_info", model_info)
    lineup.refresh()
    try:
        assert lineup.find_model("mnist", 32, "rce") is None
        why = "not available: model mnist-resnet32-rce ships with a manifest that cannot be read (KeyError: 'config')"
        assert lineup.missing_reason("mnist", 32, "rce") == why
        text = report.cells_md(unavailable(cells.plan(budgets.get_budget("smoke"), ["table1"])))
        line, = [line for line in text.splitlines() if line.startswith("- mnist-resnet32-rce: ")]
        assert line.endswith(why) and "not shipped" not in line and "rcenp train" not in line
    finally:
        monkeypatch.undo()
        lineup.refresh()


def test_a_missing_model_of_a_skipped_data_set_is_named(monkeypatch):
    infos = tuple(i for i in lineup._shipped() if i["depth"] != 56)
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    text = report.cells_md(unavailable(cells.plan(budgets.get_budget("smoke"), ["table1"])))
    assert "- None:" not in text
    for name in ("cifar10subset-resnet56-ce", "fashion-mnist-resnet56-rce"):
        line, = [line for line in text.splitlines() if line.startswith(f"- {name}: ")]
        assert line.endswith("1 cell (table1), not run: the smoke budget covers MNIST only")


def test_the_detector_line_comes_from_each_detectors_record():
    calibration = "509 test images, a random half of the test split (held_out_split(1017, seed=0))"
    cifar = {"kernel_per_class": 475, "fitted_on": 5085, "target_fpr": 0.05, "calibration": calibration}
    line = report.detector_line({"cifar10subset-resnet32-ce": cifar, "cifar10subset-resnet32-rce": cifar,
                                 "fashion-mnist-resnet32-ce": None})
    assert (f"cifar10subset-resnet32-ce, cifar10subset-resnet32-rce: 475 kernel points per class drawn from the "
            f"first 5,085 training images; T at 5% false positives on {calibration}") in line
    assert "60,000" not in line and "fashion" not in line
    assert "overlaps the attacked test images" in line and "partly in-sample" in line
    smoke = budgets.get_budget("smoke")
    detectors = report.run_detectors(unavailable(cells.plan(smoke, ["table2"])))
    assert set(detectors) == {"mnist-resnet32-ce", "mnist-resnet32-rce"}  # smoke runs MNIST only
    assert all(info["kernel_per_class"] == 1000 for info in detectors.values())
    assert report.detector_line(detectors) in report.protocol_differences(smoke, detectors)


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
            if name.split("-")[0] in ("fgsm", "bim", "ilcm", "jsma"):
                return {"accuracy_under_attack": 0.5}
            if name in ("cw", "cw-hc") and objective == "ce":
                n = 3 if name == "cw" else 0
                return {"distortion": {"l2_paper": {"efficient": {"n": n, "mean": 2.5 if n else None}}}}
            return None

    heights, texts = [], []
    real_bar, real_text = Axes.bar, Axes.text
    monkeypatch.setattr(Axes, "bar", lambda self, x, height, *a, **k: heights.extend(np.atleast_1d(height).tolist())
                        or real_bar(self, x, height, *a, **k))
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, *a, **k: texts.append(s)
                        or real_text(self, x, y, s, *a, **k))
    drawn = figures.fig2(Finished(), budgets.get_budget("smoke"), tmp_path)
    assert drawn["files"] == ["fig2_mnist.png"] and (tmp_path / "fig2_mnist.png").is_file()
    assert heights == [2.5] and texts.count("n/a") == 3


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
    assert "its cells wait for the ResNet-56 models where they are not shipped" in protocol
    assert "FGSM's at 0.14-0.18" in protocol and "fitted to the paper's MNIST rows (‡ in Table 2)" in protocol
    table2 = text[text.index("## Table 2"):text.index("## Beyond")]
    mnist, others = table2[:table2.index("**CIFAR-10")], table2[table2.index("**CIFAR-10"):]
    assert "| FGSM ε=0.08 ‡ |" in mnist and "| JSMA θ=0.08 ‡ |" in mnist and "| C&W |" in mnist
    assert "‡" not in others.replace("| FGSM ε=0.08 |", "") and "| FGSM ε=0.08 |" in others


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


def test_the_eta_pass_is_costed_once_per_crafting_model_where_its_training_split_is_found(tmp_path):
    """The ETA counts C&W-wb's forward over the training split once per crafting model (run_attack
    caches it per process), and not at all without a training split (η is then the approximation)."""
    from tests.test_train import write_mnist_root

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    root = write_mnist_root(tmp_path / "data", lambda split, n: (rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10),
                            (50, 10))
    bare = tmp_path / "bare"
    (bare / "mnist").mkdir(parents=True)
    for name in (root / "mnist").iterdir():
        if name.name.startswith("t10k"):
            (bare / "mnist" / name.name).symlink_to(name)

    def todo():
        wb = {"stage1": {"binary_steps": 1, "max_iterations": 2}, "stage2": {"binary_steps": 1, "max_iterations": 2}}
        made = [cells.Cell(f"{m}/{name}", "attack", m, "mnist", 32, m[-3:].strip("-"), 4, attack=attack,
                           options=dict(wb, **({"substitute": sub} if sub else {})) if attack == "cw-wb" else {})
                for m, name, attack, sub in (
                    ("mnist-resnet32-ce", "cw-wb", "cw-wb", None),
                    ("mnist-resnet32-ce", "cw-wb-detector", "cw-wb", None),
                    ("mnist-resnet32-ce", "cw-wb-from-mnist-resnet32-rce", "cw-wb", "mnist-resnet32-rce"),
                    ("mnist-resnet32-rce", "cw-wb", "cw-wb", None),
                    ("mnist-resnet32-rce", "fgsm-0.1", "fgsm", None))]
        for cell in made:
            cell.cost = 1.0
        return made

    with_train, without = todo(), todo()
    cells.add_eta_costs(with_train, root)
    cells.add_eta_costs(without, bare)
    eta = costs.ETA_PASS_PER_IMAGE * 50
    assert [c.cost for c in with_train] == [1.0 + eta, 1.0, 1.0 + eta, 1.0, 1.0]  # CE, then RCE as crafter
    assert [c.cost for c in without] == [1.0] * 5


def test_table4_scores_the_images_of_its_substitutes_own_white_box_cell(monkeypatch):
    """A transfer crafts what its substitute's Table 3 C&W-wb cell crafts (rcenp.attacks.transfer),
    so Table 4 plans that cell, after which the transfer cell only scores its images."""
    infos = lineup._shipped() + tuple({"name": f"mnist-resnet56-{o}", "dataset": "mnist", "depth": 56,
                                       "objective": o, "detector": True} for o in ("ce", "rce"))
    monkeypatch.setattr(lineup, "_shipped", lambda: infos)
    for budget in ("smoke", "cpu", "paper"):
        planned = cells.plan(budgets.get_budget(budget), ["table4"])
        order = {c.key: i for i, c in enumerate(planned)}
        transfers = [c for c in planned if (c.options or {}).get("substitute") and c.dataset == "mnist"]
        assert len(transfers) == 4
        for cell in transfers:
            source = planned[order[cell.crafted]]
            assert cell.crafted == f"{cell.substitute}/cw-wb" and source.model == cell.substitute
            assert order[cell.crafted] < order[cell.key] and source.n == cell.n and source.batch_size == cell.batch_size
            assert source.options == {k: v for k, v in cell.options.items() if k != "substitute"}
            assert cell.cost < source.cost / 10
        mnist = {c.key for c in planned if c.dataset == "mnist"}
        assert mnist == {c.key for c in transfers} | {c.crafted for c in transfers}


def test_a_transfer_cell_is_given_the_finished_source_and_a_begun_one_goes_on_as_it_began(tmp_path, monkeypatch):
    from rcenp.attacks import run as attack_run
    from rcenp.attacks.transfer import CraftedMismatch

    smoke = budgets.get_budget("smoke")
    source = cells.Cell("mnist-resnet32-rce/cw-wb", "attack", "mnist-resnet32-rce", "mnist", 32, "rce", 20,
                        attack="cw-wb", options=budgets.cw_wb_options(smoke), batch_size=20)
    transfer = cells.Cell("mnist-resnet32-ce/cw-wb-from-mnist-resnet32-rce", "attack", "mnist-resnet32-ce", "mnist",
                          32, "ce", 20, attack="cw-wb", options=budgets.cw_wb_options(smoke, "attacker",
                                                                                    "mnist-resnet32-rce"),
                          substitute="mnist-resnet32-rce", batch_size=20, crafted=source.key)
    given, refuse = [], set()

    def run_attack(model, attack, out_dir, options, crafted=None, **kwargs):
        given.append((Path(out_dir).name, crafted))
        if crafted is not None and "mismatch" in refuse:
            raise CraftedMismatch(f"{crafted}: not mnist-resnet32-rce's own cw-wb run of these settings (n: 8 there)")
        fake_run_attack([])(model, attack, out_dir, options, **kwargs)

    monkeypatch.setattr(attack_run, "run_attack", run_attack)
    monkeypatch.setattr(lineup, "has_detector", lambda name: True)
    outcomes = cells.run_cells([source, transfer], tmp_path / "a", stream=DEVNULL)
    assert given == [("cw-wb", None), ("cw-wb-from-mnist-resnet32-rce", tmp_path / "a" / "cells" / source.key)]
    assert outcomes[transfer.key]["status"] == "done"
    given.clear()  # the source is not finished: the transfer crafts its own
    outcomes = cells.run_cells([transfer], tmp_path / "b", stream=DEVNULL)
    assert given == [("cw-wb-from-mnist-resnet32-rce", None)]
    given.clear()  # a source that is not the run the transfer would craft: crafting afresh, said once
    refuse.add("mismatch")
    stream = io.StringIO()
    outcomes = cells.run_cells([source, transfer], tmp_path / "c", stream=stream)
    assert given == [("cw-wb", None), ("cw-wb-from-mnist-resnet32-rce", tmp_path / "c" / "cells" / source.key),
                     ("cw-wb-from-mnist-resnet32-rce", None)]
    note = outcomes[transfer.key]["note"]
    assert note.startswith("crafted its own images: mnist-resnet32-rce/cw-wb is not their source") and "n: 8 there" in note
    assert f"{transfer.key}: {note}" in stream.getvalue()
    assert f"{transfer.key}: {note}" in (tmp_path / "c" / "reproduce.log").read_text()
    given.clear()  # a cell begun crafting its own goes on so, though its source has finished since
    begun = tmp_path / "d" / "cells" / transfer.key
    begun.mkdir(parents=True)
    (begun / "run.json").write_text(json.dumps({"model": transfer.model, "attack": "cw-wb",
                                                "options": transfer.options, "n": 20, "seed": 0,
                                                "eta": "exact: training features"}))
    refuse.clear()
    cells.run_cells([source, transfer], tmp_path / "d", stream=DEVNULL)
    assert given == [("cw-wb", None), ("cw-wb-from-mnist-resnet32-rce", None)] and begun.is_dir()


def test_datasets_narrow_a_budget_and_the_others_say_why_not_run(tmp_path, monkeypatch, capsys):
    from rcenp.cli import main

    cpu = budgets.get_budget("cpu")
    assert run.parse_datasets(None, cpu) is None and run.parse_datasets("", cpu) is None
    assert run.parse_datasets("fashion-mnist, mnist", cpu) == ("mnist", "fashion-mnist")  # report order
    for bad, message in (("mnist,svhn", "unknown data set 'svhn'"), (",", "(none given)")):
        with pytest.raises(ValueError, match=re.escape(message)):
            run.parse_datasets(bad, cpu)
    with pytest.raises(ValueError, match="the smoke budget covers MNIST only, not CIFAR-10"):
        run.parse_datasets("mnist,cifar10", budgets.get_budget("smoke"))
    narrowed = dataclasses.replace(cpu, datasets=("mnist",), datasets_by="--datasets mnist")
    planned = cells.plan(narrowed, cells.PARTS)
    assert {c.key for c in planned} == {c.key for c in cells.plan(cpu, cells.PARTS)}  # the same places
    assert all(c.missing is None for c in planned if c.dataset == "mnist" and c.model and c.depth == 32)
    others = [c for c in planned if c.dataset != "mnist"]
    assert others and all(c.missing == "not run: --datasets mnist covers MNIST only" for c in others)
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--budget", "cpu", "--datasets", "mnist,svhn", "--out", "r"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown data set 'svhn'" in err[0] and not (tmp_path / "r").exists()


def test_a_later_run_over_other_data_sets_keeps_the_finished_cells_of_the_earlier_ones(tmp_path):
    cpu = budgets.get_budget("cpu")
    mnist = dataclasses.replace(cpu, datasets=("mnist",), datasets_by="--datasets mnist")
    fashion = dataclasses.replace(cpu, datasets=("fashion-mnist",), datasets_by="--datasets fashion-mnist")
    planned = cells.plan(mnist, ["table1"])
    done = [c for c in planned if c.dataset == "mnist" and c.model]
    for cell in done:   # as the first run left them
        folder = tmp_path / "cells" / cell.key
        folder.mkdir(parents=True)
        (folder / "result.json").write_text("{}")
    later = cells.plan(fashion, ["table1"])
    assert all(c.skipped for c in later if c.dataset != "fashion-mnist")
    outcomes = cells.run_cells([c for c in later if c.dataset != "fashion-mnist"], tmp_path, stream=DEVNULL)
    assert {k for k, o in outcomes.items() if o["status"] == "done"} == {c.key for c in done}
    assert all(o["source"] == "resumed" for o in outcomes.values() if o["status"] == "done")
    rest = [o for o in outcomes.values() if o["status"] != "done"]
    assert rest and all(o == {"status": "not run", "reason": "not run: --datasets fashion-mnist covers "
                              "Fashion-MNIST (extra) only", "path": None} for o in rest)
    text = report.cells_md(Results([c for c in later if c.dataset != "fashion-mnist"], outcomes))
    assert f"**Run: {len(done)} cells**" in text and f"**Not run: {len(rest)} cells**" in text
    assert "**Not available: 0 cells**" in text


def test_an_out_that_holds_a_run_is_refused_with_the_command_that_continues_it(tmp_path):
    """The fix a refusal suggests works: same budget → --resume; another budget → that budget and --resume."""
    (tmp_path / "reproduce.json").write_text(json.dumps({"budget": "smoke"}))
    with pytest.raises(ValueError, match=r"\(budget smoke\): pass --resume to continue it, or choose another --out"):
        run.claim(tmp_path, "smoke", resume=False)
    with pytest.raises(ValueError, match=r"\(budget smoke\): pass --budget smoke --resume to continue it"):
        run.claim(tmp_path, "cpu", resume=False)
    with pytest.raises(ValueError, match=r"holds a smoke run; --resume with --budget smoke, or choose another --out"):
        run.claim(tmp_path, "cpu", resume=True)
    assert run.claim(tmp_path, "smoke", resume=True) is False  # the suggested command goes ahead
