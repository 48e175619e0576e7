"""Aggregate figures of an attack run from its per-sample records (the lines of ``samples.jsonl``),
so that shards concatenated, or old runs, can be summarised again without re-attacking."""
from __future__ import annotations

import collections

import numpy as np

DISTORTIONS = ("l2_paper", "l2", "linf", "l0")
# how success after rounding is decided (rcenp.attacks.audit); a summary without it predates 978d080,
# when C&W-hc's and C&W-wb's rounded images were judged by the argmax alone
ROUNDED_TEST = "the attack's own success test (AttackResult.criterion)"
METRICS = ("confidence", "non_me", "log_kd")


def summarize(records: list[dict], detector=None) -> dict:
    """Counts, rates, distortions and (when the records carry detector scores) detection figures.

    Distortions are summarised over the paper's "efficient" samples (clean image correctly
    classified and attack successful, protocol §5) and over all samples. Detection AUCs follow
    protocol §4: normal is the positive class, pairs kept by the paper's rule (clean correct,
    adversarial misclassified), ties counted half and, as the authors' MATLAB does, strictly
    (``auc_entry``). ``zero_grad_fraction_mean`` ignores NaN fractions (a C&W sample whose hinge is
    inactive at its first iterate has none) and ``zero_grad_fraction_excluded`` counts them
    (``zero_grad_stats``). Raises ValueError on no records.
    """
    if not records:
        raise ValueError("no samples to summarise")
    column = {k: np.array([r.get(k) for r in records]) for k in records[0]}
    true, clean, adv = column["true_label"], column["clean_prediction"], column["adversarial_prediction"]
    success = column["success"].astype(bool)
    correct = clean == true
    efficient = correct & success
    n = len(records)
    summary = {
        "counts": {"n": n, "clean_correct": int(correct.sum()), "success": int(success.sum()),
                   "misclassified": int((adv != true).sum()), "efficient": int(efficient.sum()),
                   "success_8bit": int(column["success_8bit"].sum())},
        "success_rate": float(success.mean()),
        "success_rate_8bit": float(column["success_8bit"].mean()),
        "success_8bit_test": ROUNDED_TEST,
        "accuracy_clean": float(correct.mean()),
        "accuracy_under_attack": float((adv == true).mean()),
        "distortion": {k: {"efficient": _stats(column[k][efficient]), "all": _stats(column[k])} for k in DISTORTIONS},
        **{f"zero_grad_fraction_{k}": v for k, v in zero_grad_stats(column["zero_grad_fraction"]).items()},
        "iterations_mean": float(column["iterations"].mean()),
        "stop_reasons": dict(collections.Counter(column["stop_reason"].tolist())),
    }
    if "success_16bit" in column:
        summary["success_rate_16bit"] = float(column["success_16bit"].mean())
    if "clean_confidence" in column:
        summary["detection"] = _detection(column, true, clean, adv, detector)
    if "substitute_success" in column:
        summary["transfer"] = _transfer(column, correct, adv != true)
    return summary


def _transfer(column, correct, misclassified) -> dict:
    """Black-box transfer (paper §4.5): of the examples crafted successfully on the substitute
    whose clean image the target classifies correctly, the fraction the target misclassifies
    (``transfer_rate``) and the fraction it assigns to the attack's target class."""
    crafted = column["substitute_success"].astype(bool)
    eligible = crafted & correct
    hit = column["target_hit"].astype(bool)
    count = int(eligible.sum())
    return {"substitute_success_rate": float(crafted.mean()), "n_eligible": count,
            "transfer_rate": float(misclassified[eligible].mean()) if count else None,
            "target_hit_rate": float(hit[eligible].mean()) if count else None}


def zero_grad_stats(values) -> dict:
    """Mean share of exactly-zero input-gradient entries over the samples that have one.

    values: (N,) per-sample fractions in [0, 1]; NaN or None marks a sample without one (C&W: the
    hinge inactive at the first iterate, so no network gradient was taken there; not masking).
    → {"mean": NaN-ignoring mean, or None when no sample has a value; "n": samples averaged;
    "excluded": samples left out as NaN}.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    missing = np.isnan(values)
    kept = values[~missing]
    return {"mean": float(kept.mean()) if kept.size else None, "n": int(kept.size),
            "excluded": int(missing.sum())}


def auc_entry(normal, adversarial, metric: str) -> dict:
    """One metric's AUC figures over the paper-rule pairs (protocol §4; normal is the positive class).

    normal, adversarial: (n,) paired scores, n ≥ 1, higher = more normal (``log_kd`` is log KD).
    → ``auc`` (ties half, the headline), ``auc_ci95`` (its 95% paired bootstrap interval),
    ``auc_strict_ties`` (ties count 0: the authors' ``AUC.m`` rule, which the paper's values use)
    and ``auc_strict_ci95`` (its interval over the same 1,000 paired resamples, seed 0, as
    ``auc_ci95``); for ``log_kd`` also ``auc_authors_kd``
    (``rcenp.detect.roc.authors_kd_auc``: strict AUC on KD = exp(log KD) in float64, underflowing
    where the authors' did) and ``kd_zero`` (how many normal / adversarial KDs are exactly 0 in
    float64, i.e. log KD < about −745.13). ValueError (``rcenp.detect.roc``) on empty or NaN scores.
    """
    from rcenp.detect.roc import authors_kd_auc, bootstrap_auc_ci, roc_auc

    normal = np.asarray(normal, dtype=np.float64)
    adversarial = np.asarray(adversarial, dtype=np.float64)
    entry = {"auc": roc_auc(normal, adversarial),
             "auc_strict_ties": roc_auc(normal, adversarial, "strict"),
             "auc_ci95": list(bootstrap_auc_ci(normal, adversarial, paired=True)),
             "auc_strict_ci95": list(bootstrap_auc_ci(normal, adversarial, paired=True, ties="strict"))}
    if metric == "log_kd":
        entry["auc_authors_kd"] = authors_kd_auc(normal, adversarial)
        entry["kd_zero"] = {"normal": int((np.exp(normal) == 0).sum()),
                            "adversarial": int((np.exp(adversarial) == 0).sum())}
    return entry


def _stats(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"n": 0, "mean": None, "median": None}
    return {"n": int(len(values)), "mean": float(values.mean()), "median": float(np.median(values))}


def _detection(column, true, clean, adv, detector) -> dict:
    from rcenp.detect.roc import paper_pairs

    out = {}
    for metric in METRICS:
        if f"clean_{metric}" not in column:
            continue
        normal, adversarial, n = paper_pairs(column[f"clean_{metric}"].astype(float),
                                             column[f"adversarial_{metric}"].astype(float), true, clean, adv)
        entry = {"n_pairs": n}
        if n:
            entry.update(auc_entry(normal, adversarial, metric))
        out[metric] = entry
    if "detected" in column and column["detected"][0] is not None:
        detected = column["detected"].astype(bool)
        out["threshold"] = {
            "metric": detector.metric if detector is not None else None,
            "T": detector.threshold if detector is not None else None,
            "detected_rate": float(detected.mean()),
            "detection_aware_accuracy": float(((adv == true) & ~detected | detected).mean()),
            "undetected_misclassified_rate": float(((adv != true) & ~detected).mean()),
        }
    return out
