"""``rcenp.reproduce`` results: cross-fitted TPR at 5% FPR, Table 3's f₂ figures, the AUC tie rules,
the † marks against the paper's rounding and intervals, Table 4's marks, zero-gradient fractions."""
import json
import types

import numpy as np
import pytest

from rcenp.reproduce import budgets, cells, differences, sanity, tables, threat_tables
from rcenp.reproduce.results import pair_medians, wb_figures
from tests.reproduce_fakes import unavailable


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


def test_pair_medians_are_over_the_papers_pairs_only():
    samples = [{"true_label": 1, "clean_prediction": c, "adversarial_prediction": a, "clean_confidence": cc,
                "adversarial_confidence": ac, "clean_non_me": 1.0, "adversarial_non_me": 2.0,
                "clean_log_kd": -1.0, "adversarial_log_kd": lk}
               for c, a, cc, ac, lk in [(1, 0, 0.9, 0.5, -3.0), (1, 2, 0.8, 0.7, -5.0), (1, 3, 0.7, 0.6, -4.0),
                                        (0, 2, 0.1, 0.1, 9.0),     # clean wrong: not a pair
                                        (1, 1, 0.2, 0.2, 9.0)]]    # attack failed: not a pair
    medians = pair_medians(samples)
    assert medians["confidence_clean_median"] == 0.8 and medians["confidence_adversarial_median"] == 0.6
    assert medians["log_kd_adversarial_median"] == -4.0 and medians["non_me_clean_median"] == 1.0
    assert set(pair_medians(samples[3:]).values()) == {None} and set(pair_medians(None).values()) == {None}


def test_wb_figures():
    rows = [{"clean_prediction": 1, "true_label": 1, "f2": 0.0, "stop_reason": "success", "l2_paper": 10.0},
            {"clean_prediction": 2, "true_label": 2, "f2": 1.5, "stop_reason": "f2 > 0", "l2_paper": 30.0},
            {"clean_prediction": 3, "true_label": 3, "f2": 2.0, "stop_reason": "no success", "l2_paper": 0.0},
            {"clean_prediction": 4, "true_label": 5, "f2": 9.0, "stop_reason": "f2 > 0", "l2_paper": 99.0}]
    figures = wb_figures(rows)
    assert figures["n"] == 3 and figures["ratio_f2_positive"] == pytest.approx(2 / 3)
    assert figures["distortion"] == pytest.approx(20.0) and figures["n_distortion"] == 2
    assert figures["distortion_evading"] == pytest.approx(10.0) and figures["n_evading"] == 1
    assert wb_figures(rows[3:])["distortion_evading"] is None and wb_figures(rows[3:])["n_evading"] == 0
    assert wb_figures(rows[1:3])["distortion_evading"] is None and wb_figures(rows[1:3])["n_evading"] == 0


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
    assert differences._outside([row]) == ([], [weak], 0)
    assert tables._auc_text(row, "non_me").endswith("; paper 99.8, Δ +0.2 (†)")
    row["n_pairs"] = 30
    assert differences._outside([row]) == ([], [weak.replace("n = 9", "n = 30")], 0)  # still zero width
    row.update(tables._auc_fields({"non_me": dict(entry, auc_strict_ci95=[0.995, 1.0])}, "non_me", 99.8), n_pairs=30)
    counted = "- mnist cw CE non-ME: ours (strict ties) 100.0 [99.5, 100.0], paper 99.8 (n = 30 pairs)"
    assert differences._outside([row]) == ([], [], 1)                                # [99.5, 100] holds 99.8
    row.update(tables._auc_fields({"non_me": dict(entry, auc_strict_ci95=[0.999, 1.0])}, "non_me", 99.8), n_pairs=30)
    assert differences._outside([row]) == ([counted.replace("99.5", "99.9")], [], 1)
    assert tables._auc_text(row, "non_me").endswith(" **†**")
    text = differences.differences_md([row], [])
    assert "of the 1 comparisons made" in text and counted.replace("99.5", "99.9") in text
    assert "No value had such a comparison" in differences.differences_md([], [])


class _Table4Results:
    """Every Table 4 cell finished with the same K-density entry and transfer record."""

    def __init__(self, entry, transfer, samples=None):
        self.entry, self.transfer, self._samples = entry, transfer, samples

    def samples(self, cell):
        return self._samples

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
    lines, weak, compared = differences._outside_table4(rows)
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


def test_table4_gives_the_transfer_rate_within_the_papers_distortion():
    """MNIST's CE → CE transfer rate is above the paper's bound; the cpu budget's C&W-wb leaves larger
    perturbations than the paper's (Table 3), so the rate over the examples no more distorted than
    the paper's mean says whether those carry it."""
    def sample(l2, misclassified, substitute_success=True, clean_prediction=3):
        return {"l2_paper": l2, "misclassified": misclassified, "substitute_success": substitute_success,
                "clean_prediction": clean_prediction, "true_label": 3}

    samples = [sample(10.0, True), sample(17.12, False), sample(20.0, True), sample(30.0, True),
               sample(5.0, True, clean_prediction=4), sample(6.0, True, substitute_success=False)]
    assert threat_tables.transfer_within(samples, 17.12) == (2, 0.5)     # 10.0 and 17.12; the last two not eligible
    assert threat_tables.transfer_within(samples, 9.0) == (0, None)
    assert threat_tables.transfer_within(samples, None) == threat_tables.transfer_within(None, 1.0) == (None, None)
    smoke = budgets.get_budget("smoke")
    auc = {"auc": 0.99, "auc_strict_ties": 0.99, "auc_ci95": [0.97, 1.0], "auc_strict_ci95": [0.96, 1.0]}
    rows = threat_tables.table4(_Table4Results(auc, {"n_eligible": 100, "transfer_rate": 0.9}, samples), smoke).rows
    row = next(r for r in rows if r["dataset"] == "mnist" and r["substitute_objective"] == "ce")
    assert row["paper_substitute_distortion"] == 17.12 and row["n_transfer_within_paper_distortion"] == 2
    assert row["transfer_rate_within_paper_distortion"] == 0.5
    assert (row["transfer_within_ci_low"], row["transfer_within_ci_high"]) == threat_tables.transfer_interval(0.5, 2)
    rce = next(r for r in rows if r["dataset"] == "mnist" and r["substitute_objective"] == "rce")
    assert rce["paper_substitute_distortion"] == 31.59 and rce["n_transfer_within_paper_distortion"] == 4
    lines, _, _ = differences._outside_table4(rows)
    low, high = (100 * v for v in threat_tables.transfer_interval(0.5, 2))
    assert "- mnist Table 4, CE substitute → CE target, transfer rate: ours 90.0% [" in "\n".join(lines)
    assert any(line.endswith(f"paper: under 50%; over the 2 of them with ‖δ‖₂/√d at most the paper's Table 3 "
                             f"mean for this substitute (17.12): 50.0% [{low:.1f}, {high:.1f}]") for line in lines)


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
    assert ("of the examples crafted successfully on the substitute (over all its attacked images, so also those "
            "it misclassifies when clean, which Table 3's n leaves out) whose clean image the target classifies "
            "correctly (n shown), the share the target misclassifies") in t4
    assert "shipped K-density detector" not in bey.markdown and "the cell's detector, on its metric" in bey.markdown
    assert {"detector_metric", "tpr5_crossfit_log_kd", "fpr5_crossfit_log_kd"} <= set(bey.columns)
    assert "Δ = strict − paper" in tables.table2(res, smoke).markdown


def test_an_epsilon_attack_difference_names_its_rows_best_fitting_strength():
    """The paper states no ε: a Table 2 line outside its interval gives the metric at the one ε of
    the sweep that fits the paper's whole row best (least mean |Δ| over its metrics, among
    finished strengths with 30+ pairs) and whether that interval meets the paper's value."""
    def row(eps, kd, conf, n_pairs=100, paper=False):
        fields = {"dataset": "mnist", "attack": "bim", "eps": eps, "theta": None, "objective": "ce", "n_pairs": n_pairs}
        for metric, (auc, low, high), theirs in (("log_kd", kd, 90.0), ("confidence", conf, 80.0)):
            fields.update({f"{metric}_auc_strict": auc, f"{metric}_strict_ci_low": low,
                           f"{metric}_strict_ci_high": high, f"{metric}_auc": auc, f"{metric}_ci_degenerate": False,
                           f"{metric}_paper": theirs if paper else None, f"{metric}_outside_ci": True if paper else None})
        return fields

    table = row(0.08, (95.0, 94.0, 96.0), (95.0, 94.0, 96.0), paper=True)
    unfinished = dict(row(0.1, (None,) * 3, (None,) * 3), n_pairs=None)   # planned, not computed: not counted
    sweep = [row(0.02, (90.0, 60.0, 100.0), (80.0, 50.0, 100.0), n_pairs=10),   # a perfect fit from 10 pairs: left out
             row(0.04, (89.0, 88.0, 89.5), (70.0, 69.0, 71.0)),      # K-density's closest, Confidence far
             row(0.06, (92.0, 91.0, 93.0), (82.0, 79.9, 84.0)),      # the row's best fit: mean(|2|, |2|)
             table, unfinished, row(0.12, (97.0, 96.0, 98.0), (97.0, 96.0, 98.0))]
    best, marked = differences.best_fit(sweep, table)
    assert best["eps"] == 0.06 and [(r["eps"], took_part) for r, took_part in marked] == [
        (0.02, False), (0.04, True), (0.06, True), (0.08, True), (0.12, True)]
    counted, weak, compared = differences._outside(sweep)
    assert (len(counted), weak, compared) == (2, [], 2)
    assert counted[0].endswith("; at this row's best fit over the sweep, ε=0.06 (4 of 5 finished strengths with ≥ 30 "
                               "pairs): 82.0 [79.9, 84.0], which meets the paper's value (n = 100 pairs)")  # Confidence
    assert counted[1].endswith("ε=0.06 (4 of 5 finished strengths with ≥ 30 pairs): 92.0 [91.0, 93.0], which misses "
                               "it too (n = 100 pairs)")                                                  # K-density
    sweep[2]["confidence_ci_degenerate"] = True
    assert "82.0 [79.9, 84.0] (zero-width interval), which meets" in differences._outside(sweep)[0][0]
    sweep[2]["n_pairs"] = 20                    # now the best fit is 0.04 (mean 5.5 against 0.12's 12), the smallest
    assert differences._outside(sweep)[0][0].endswith(
        "ε=0.04 (3 of 5 finished strengths with ≥ 30 pairs, the smallest of them): 70.0 [69.0, 71.0], which misses "
        "it too (n = 100 pairs)")
    sweep[0]["n_pairs"], sweep[1]["n_pairs"] = 100, 10          # 0.02 joins, 0.04 leaves: 0.02 fits best
    assert "ε=0.02 (3 of 5 finished strengths with ≥ 30 pairs, the smallest of them): 80.0" in \
        differences._outside(sweep)[0][0]
    sweep[0]["n_pairs"] = 10                                    # 0.04 and 0.06 out too: the table's own ε fits best
    assert differences._outside(sweep)[0][0].endswith("; ε=0.08 is also this row's best fit over the sweep "
                                                      "(2 of 5 finished strengths with ≥ 30 pairs, the smallest of them)")
    sweep[3 + 2]["log_kd_strict_ci_low"] = None                 # 0.12 without an interval cannot take part
    assert "best fit" not in differences._outside(sweep)[0][0]
    cw = dict(table, attack="cw", eps=None)
    assert "best fit" not in differences._outside([cw])[0][0]
    assert "best fit" not in differences._outside([table])[0][0]   # no other strength computed


def test_the_strict_auc_is_shown_wherever_it_prints_differently():
    """CIFAR ILCM RCE non-ME: ties-half 70.650 and strict 70.645 differ by under 0.05, so the table
    printed 70.7 beside Δ −7.2 (from 70.6); the strict value is now shown wherever it prints apart."""
    row = {"non_me_auc": 70.650, "non_me_ci_low": 68.0, "non_me_ci_high": 73.4, "non_me_auc_strict": 70.645,
           "non_me_strict_ci_low": 68.0, "non_me_strict_ci_high": 73.4, "non_me_paper": 77.8,
           "non_me_diff": 70.645 - 77.8, "non_me_outside_ci": True, "non_me_ci_degenerate": False, "n_pairs": 723}
    assert tables._auc_text(row, "non_me") == (
        "70.7 [68.0, 73.4]; strict 70.6 [68.0, 73.4]; paper 77.8, Δ -7.2 **†**")
    same = dict(row, non_me_auc_strict=70.66, non_me_diff=70.66 - 77.8)
    assert tables._auc_text(same, "non_me") == "70.7 [68.0, 73.4]; paper 77.8, Δ -7.1 **†**"
    low = dict(same, non_me_strict_ci_low=67.94)    # the interval alone prints apart
    assert "70.7 [68.0, 73.4]; strict 70.7 [67.9, 73.4]; paper" in tables._auc_text(low, "non_me")
    assert tables.printed_apart((67.96, 68.04)) is False and tables.printed_apart((67.94, 67.96)) is True
