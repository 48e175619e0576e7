"""Read finished cells back: summaries, per-sample records, detection figures beyond the paper."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from rcenp.attacks.runfiles import read_samples
from rcenp.reproduce.cells import Cell

METRICS = ("confidence", "non_me", "log_kd")
TARGET_FPR = 0.05


class Results:
    """The plan's cells and their outcomes, looked up by place: ``get(dataset, depth, objective, name)``."""

    def __init__(self, cells: list[Cell], outcomes: dict):
        self.cells = {c.key: c for c in cells}
        self.outcomes = outcomes
        self._by_place = {(c.dataset, c.depth, c.objective, c.key.split("/", 1)[1]): c for c in cells}
        self._cache: dict = {}

    def get(self, dataset, depth, objective, name) -> Cell | None:
        """The planned cell at this place, or None when the run's parts did not plan it."""
        return self._by_place.get((dataset, depth, objective, name))

    def status(self, cell: Cell | None) -> str | None:
        """None when the cell is finished; else the reason to print in its place."""
        if cell is None:
            return "not run (part not selected)"
        outcome = self.outcomes.get(cell.key)
        if outcome is None:
            return "not run"
        return None if outcome["status"] == "done" else outcome.get("reason", outcome["status"])

    def path(self, cell: Cell) -> Path:
        return Path(self.outcomes[cell.key]["path"])

    def summary(self, cell: Cell | None) -> dict | None:
        """summary.json of a finished attack cell (None otherwise)."""
        if cell is None or self.status(cell):
            return None
        key = ("summary", cell.key)
        if key not in self._cache:
            self._cache[key] = json.loads((self.path(cell) / "summary.json").read_text())
        return self._cache[key]

    def detection(self, cell: Cell | None) -> dict | None:
        """The finished attack cell's detection block, completed from its samples where an older
        summary lacks the strict interval or the authors-emulated K-density AUC (``complete_detection``)."""
        summary = self.summary(cell)
        if summary is None or summary.get("detection") is None:
            return None
        key = ("detection", cell.key)
        if key not in self._cache:
            self._cache[key] = complete_detection(summary, self.samples(cell))
        return self._cache[key]

    def result(self, cell: Cell | None) -> dict | None:
        """result.json of a finished test-error cell."""
        if cell is None or self.status(cell):
            return None
        return json.loads((self.path(cell) / "result.json").read_text())

    def samples(self, cell: Cell | None) -> list[dict] | None:
        """The per-sample records (samples.jsonl, or the published samples.jsonl.gz)."""
        if cell is None or self.status(cell):
            return None
        key = ("samples", cell.key)
        if key not in self._cache:
            self._cache[key] = read_samples(self.path(cell))
        return self._cache[key]


def complete_detection(summary: dict | None, samples: list[dict] | None) -> dict | None:
    """The summary's ``detection`` block with every metric's AUC entry complete.

    Summaries written before ``rcenp.attacks.summary.auc_entry`` gained them lack
    ``auc_strict_ci95`` and, for ``log_kd``, ``auc_authors_kd`` / ``kd_zero``; those entries are
    recomputed from the cell's per-sample records (the same pairs, rule and seeded resamples), so
    published cells need no re-run. The summary's other keys are kept. None when the summary has
    no detection block; ValueError when an entry is incomplete and ``samples`` is None.
    """
    from rcenp.attacks.summary import auc_entry
    from rcenp.detect.roc import paper_pairs

    block = (summary or {}).get("detection")
    if block is None:
        return None
    out = dict(block)
    for metric in METRICS:
        entry = block.get(metric)
        if not entry or not entry.get("n_pairs"):
            continue
        wanted = ("auc_strict_ci95", "auc_authors_kd") if metric == "log_kd" else ("auc_strict_ci95",)
        if all(k in entry for k in wanted):
            continue
        if not samples:
            raise ValueError(f"the summary's {metric} entry lacks {wanted} and there are no samples to compute them")
        column = {k: np.array([s[k] for s in samples]) for k in
                  ("true_label", "clean_prediction", "adversarial_prediction", f"clean_{metric}",
                   f"adversarial_{metric}")}
        normal, adversarial, n = paper_pairs(column[f"clean_{metric}"].astype(float),
                                             column[f"adversarial_{metric}"].astype(float), column["true_label"],
                                             column["clean_prediction"], column["adversarial_prediction"])
        if n != entry["n_pairs"]:
            raise ValueError(f"{metric}: the samples give {n} paper-rule pairs, the summary {entry['n_pairs']}")
        out[metric] = {**auc_entry(normal, adversarial, metric), **entry}
    return out


def adversarial_rejection_crossfit(samples: list[dict], metric: str, target_fpr: float = TARGET_FPR) -> dict:
    """Detector-side "TPR at 5% FPR" with the threshold fitted on held-out clean images only
    (landscape §4 item 4): positive = adversarial, rejected iff score ≤ T (the detector accepts
    iff score > T, paper §3.3; ``rcenp.detect.calibrate``).

    Two-fold cross-fit over the cell's images, folded by the parity of the test-image index (the
    record's ``index``, else its position). For fold f, T_f = ``calibrate_threshold`` at
    ``target_fpr`` on the clean ``metric`` scores of the correctly classified clean images of the
    OTHER fold; fold f then contributes its paper-rule adversarials (clean correct, adversarial
    misclassified; ``rcenp.detect.roc.paper_sample_rule``) and its correctly classified clean
    images, each scored against T_f. Counts are pooled over the two folds:

    - ``tpr``: the share of the paper-rule adversarial images rejected (None without any);
    - ``clean_rejection``: the share of the correctly classified clean images rejected, measured on
      images T was not fitted on, so the 5% is a measurement, not a construction.

    With fewer than 1/target_fpr calibration images (20 at 5%) T would be −inf and reject nothing,
    a 0% that says nothing of the detector: then every figure is None, as when either fold has no
    correctly classified clean image, and ``why`` says which. samples: the cell's records with
    ``true_label``, ``clean_prediction``, ``adversarial_prediction``, ``clean_<metric>`` and
    ``adversarial_<metric>`` (higher = more normal). → {"tpr", "clean_rejection", "n_adversarial",
    "n_clean", "thresholds": [T_0, T_1], "why": None or the reason the figures are None}.
    """
    from rcenp.detect.calibrate import calibrate_threshold
    from rcenp.detect.roc import paper_sample_rule

    true = np.array([s["true_label"] for s in samples])
    clean_pred = np.array([s["clean_prediction"] for s in samples])
    adv_pred = np.array([s["adversarial_prediction"] for s in samples])
    clean_score = np.array([s[f"clean_{metric}"] for s in samples], float)
    adv_score = np.array([s[f"adversarial_{metric}"] for s in samples], float)
    fold = np.array([s.get("index", i) for i, s in enumerate(samples)]) % 2
    correct = clean_pred == true
    pairs = paper_sample_rule(true, clean_pred, adv_pred)
    empty = {"tpr": None, "clean_rejection": None, "n_adversarial": int(pairs.sum()), "n_clean": int(correct.sum()),
             "thresholds": None}
    smallest = min(int((correct & (fold == f)).sum()) for f in (0, 1))
    needed = math.ceil(1 / target_fpr - 1e-9)
    if smallest == 0:
        return {**empty, "why": "a half without correctly classified clean images"}
    if smallest < needed:
        return {**empty, "why": f"under {needed} calibration images in a half ({smallest})"}
    thresholds, adv_hits, clean_hits = [], 0, 0
    for f in (0, 1):
        threshold = calibrate_threshold(clean_score[correct & (fold != f)], target_fpr)
        thresholds.append(float(threshold))
        adv_hits += int((adv_score[pairs & (fold == f)] <= threshold).sum())
        clean_hits += int((clean_score[correct & (fold == f)] <= threshold).sum())
    n_adv, n_clean = int(pairs.sum()), int(correct.sum())
    return {"tpr": adv_hits / n_adv if n_adv else None, "clean_rejection": clean_hits / n_clean,
            "n_adversarial": n_adv, "n_clean": n_clean, "thresholds": thresholds,
            "why": None if n_adv else "no paper-rule adversarial images"}


def beyond_paper(samples: list[dict] | None) -> dict:
    """Per metric, ``adversarial_rejection_crossfit`` at 5%: ``tpr5_crossfit_<metric>`` (share of
    the paper-rule adversarials rejected) and ``fpr5_crossfit_<metric>`` (share of the correctly
    classified clean images rejected, measured), each None without detector scores; ``n_clean_correct``;
    and ``tpr5_crossfit_why``, the reason the figures are None (the same for every metric), else None."""
    out = {"n_clean_correct": None, "tpr5_crossfit_why": None}
    for metric in METRICS:
        out[f"tpr5_crossfit_{metric}"] = out[f"fpr5_crossfit_{metric}"] = None
    if not samples or "clean_log_kd" not in samples[0]:
        return out
    for metric in METRICS:
        figures = adversarial_rejection_crossfit(samples, metric)
        out[f"tpr5_crossfit_{metric}"] = figures["tpr"]
        out[f"fpr5_crossfit_{metric}"] = figures["clean_rejection"]
        out["n_clean_correct"] = figures["n_clean"]
        out["tpr5_crossfit_why"] = figures["why"]
    return out


def pair_medians(samples: list[dict] | None) -> dict:
    """Per metric, the median clean and adversarial scores over the paper-rule pairs (clean
    correct, adversarial misclassified): ``<metric>_clean_median``, ``<metric>_adversarial_median``,
    None without pairs or scores. They say which way an AUC leans and by how much (an AUC near 0:
    the adversarial images score as more normal)."""
    from rcenp.detect.roc import paper_sample_rule

    out = {f"{metric}_{side}_median": None for metric in METRICS for side in ("clean", "adversarial")}
    if not samples or "clean_log_kd" not in samples[0]:
        return out
    pairs = paper_sample_rule(*(np.array([s[k] for s in samples])
                                for k in ("true_label", "clean_prediction", "adversarial_prediction")))
    if not pairs.any():
        return out
    for metric in METRICS:
        for side in ("clean", "adversarial"):
            out[f"{metric}_{side}_median"] = float(np.median(np.array([s[f"{side}_{metric}"] for s in samples])[pairs]))
    return out


def wb_figures(samples: list[dict]) -> dict:
    """Table 3's figures from C&W-wb records, over the images classified correctly when clean (n).

    ``ratio_f2_positive``: the share for which the attack found no iterate classified as the target
    (margin κ) with f₂ ≤ 0, i.e. ``stop_reason != "success"`` (the attack's own decision, protocol
    §5.4), so that ratio + ``success_rate`` = 1. ``distortion``: the mean ‖δ‖₂/√d (0-255) over the
    ``n_distortion`` images whose returned image is classified as the target (stop_reason "success"
    or "f2 > 0": the evading examples and the fallbacks the detector still flags, as the authors'
    code returns both); ``distortion_evading`` over the ``n_evading`` successes alone. Audit only:
    ``ratio_f2_rescored_positive``, the share whose ``f2`` field (f₂ re-scored on the returned image
    in a separate forward pass) is > 0, and ``n_f2_disagree``, the images where that and the
    attack's decision differ (None without ``f2`` fields).
    """
    correct = [s for s in samples if s["clean_prediction"] == s["true_label"]]
    if not correct:
        return {"n": 0, "ratio_f2_positive": None, "distortion": None, "n_distortion": 0, "distortion_evading": None,
                "n_evading": 0, "success_rate": None, "ratio_f2_rescored_positive": None, "n_f2_disagree": None}
    reached = [s for s in correct if s.get("stop_reason") in ("success", "f2 > 0")]
    evading = [s for s in reached if s["stop_reason"] == "success"]
    failed = np.array([s["stop_reason"] != "success" for s in correct])
    rescored = np.array([s["f2"] > 0 for s in correct]) if all("f2" in s for s in correct) else None
    return {"n": len(correct), "ratio_f2_positive": float(failed.mean()),
            "distortion": float(np.mean([s["l2_paper"] for s in reached])) if reached else None,
            "n_distortion": len(reached),
            "distortion_evading": float(np.mean([s["l2_paper"] for s in evading])) if evading else None,
            "n_evading": len(evading), "success_rate": float((~failed).mean()),
            "ratio_f2_rescored_positive": None if rescored is None else float(rescored.mean()),
            "n_f2_disagree": None if rescored is None else int((rescored != failed).sum())}
