"""ROC analysis under the authors' protocol (protocol §4).

Normal examples are the POSITIVE class and a higher score means "more normal" for every metric
(K-density, confidence, non-ME). The direction is never flipped: AUC < 0.5 is a real result
(adversarial examples scoring as more normal than normal ones, e.g. confidence under C&W-hc).

Scores are 1-D, non-empty and NaN-free (±inf is allowed and ranks as usual); NumPy or CuPy
arrays and lists are accepted, and all the arithmetic is done on the host in float64.
"""
from __future__ import annotations

import numpy as np

from rcenp.backend import as_numpy, make_rng

TIES = ("half", "strict")


def roc_auc(normal_scores, adversarial_scores, ties="half"):
    """AUC = P(s_normal > s_adv) + c · P(s_normal = s_adv) over all normal × adversarial pairs.

    ``ties="half"`` (c = 1/2) is the Mann–Whitney U statistic with mid-ranks divided by n₁n₀, the
    usual ROC area. ``ties="strict"`` (c = 0) reproduces the TIE RULE of the authors' MATLAB
    ``AUC.m`` (protocol §4), which sorts stably with normal scores first and so counts a tie as a
    loss; it matters where scores tie, e.g. confidence saturating at 1.0. It reproduces the tie rule
    only, not the authors' scores: their K-density is a float64 plain mean of exp(−d²/σ²) that is
    exactly 0 once log KD < about −745, where rcenp's log-space KD keeps the inputs apart (see
    ``authors_kd_auc``). Exact integer pair counts, O(n log n).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    normal = _scores(normal_scores, "normal_scores")
    adversarial = _scores(adversarial_scores, "adversarial_scores")
    greater, equal = _pair_counts(normal, adversarial)
    pairs = len(normal) * len(adversarial)
    return (2 * greater + equal) / (2 * pairs) if ties == "half" else greater / pairs


def roc_curve(normal_scores, adversarial_scores):
    """ROC of the rule "call an input normal iff score ≥ t" → (fpr, tpr, thresholds).

    ``thresholds`` runs over +inf and then the distinct scores in decreasing order; ``tpr`` is
    the fraction of normal scores ≥ t, ``fpr`` the fraction of adversarial scores ≥ t. The curve
    starts at (0, 0) and ends at (1, 1), and its trapezoidal area is ``roc_auc(..., "half")``.
    """
    normal = _scores(normal_scores, "normal_scores")
    adversarial = _scores(adversarial_scores, "adversarial_scores")
    scores = np.concatenate([normal, adversarial])
    is_normal = np.concatenate([np.ones(len(normal), bool), np.zeros(len(adversarial), bool)])
    order = np.argsort(scores)[::-1]
    scores, is_normal = scores[order], is_normal[order]
    run_ends = np.append(np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1)
    true_pos = np.cumsum(is_normal)[run_ends]
    false_pos = run_ends + 1 - true_pos
    tpr = np.concatenate([[0.0], true_pos / len(normal)])
    fpr = np.concatenate([[0.0], false_pos / len(adversarial)])
    return fpr, tpr, np.concatenate([[np.inf], scores[run_ends]])


def tpr_at_fpr(normal_scores, adversarial_scores, fpr):
    """The largest TPR over the operating points of ``roc_curve`` whose FPR is ≤ ``fpr``, with
    NORMAL as the positive class (this module's, and the authors', AUC convention).

    TPR = the fraction of normal inputs accepted (score ≥ t); FPR = the fraction of adversarial
    inputs accepted. It is NOT the detector-side "TPR at 5% FPR" of ``rcenp.reproduce.results``
    (``adversarial_rejection_crossfit``), whose positive class is the adversarial input and whose
    FPR is the share of clean inputs rejected. In-sample: t is chosen on the scores it is measured
    on. A step function (no interpolation between thresholds). Raises ValueError for ``fpr``
    outside [0, 1].
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    fprs, tprs, _ = roc_curve(normal_scores, adversarial_scores)
    return float(tprs[fprs <= fpr].max())


def bootstrap_auc_ci(normal_scores, adversarial_scores, n_boot=1000, level=0.95, seed=0,
                     paired=False, ties="half"):
    """Percentile bootstrap interval (low, high) for ``roc_auc``.

    ``paired=False`` resamples the normal and the adversarial scores independently, with
    replacement; ``paired=True`` resamples indices j and keeps (normal[j], adversarial[j])
    together, which is right for the paper's sets (the clean and adversarial version of the same
    test image; both arrays must then have equal length). ``ties`` is ``roc_auc``'s; the resamples
    depend only on ``seed``, ``n_boot``, ``paired`` and the lengths, so the "half" and "strict"
    intervals of one call pattern are taken over the same resamples. Raises ValueError for a
    ``level`` outside (0, 1), ``n_boot`` < 1, unequal paired lengths or an unknown ``ties``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    normal = _scores(normal_scores, "normal_scores")
    adversarial = _scores(adversarial_scores, "adversarial_scores")
    if paired and len(normal) != len(adversarial):
        raise ValueError(f"paired=True needs equal lengths, got {len(normal)} normal and "
                         f"{len(adversarial)} adversarial scores")
    rng = make_rng(seed)
    aucs = np.empty(int(n_boot))
    for b in range(len(aucs)):
        i = rng.integers(0, len(normal), len(normal))
        j = i if paired else rng.integers(0, len(adversarial), len(adversarial))
        aucs[b] = roc_auc(normal[i], adversarial[j], ties)
    low, high = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def authors_kd_auc(normal_log_kd, adversarial_log_kd):
    """The authors-emulated K-density AUC: ``roc_auc(exp(normal_log_kd), exp(adversarial_log_kd),
    ties="strict")`` with the exponential taken in float64.

    The authors score K-density as KD itself, a float64 plain mean (1/M) Σ_k exp(−‖z − z_k‖²/σ²)
    in MATLAB, and rank it with ``AUC.m``'s strict tie rule (protocol §3.1, §4). That mean is
    exactly 0 once log KD < about −745.13 (ln 2⁻¹⁰⁷⁵: below half the smallest subnormal, 2⁻¹⁰⁷⁴ =
    e^−744.44), and between −745.13 and −708.40 (the smallest normal, e^−708.40) it keeps fewer
    bits, so distinct inputs tie. exp(log KD) in float64 saturates in the same place, up to the
    rounding of subnormals (their mean sums the M terms, each rounded, before dividing by M).
    rcenp's log-space KD (``rcenp.detect.kde``) keeps such inputs apart. Whether any input falls
    there depends on the cell (the attack summaries' ``kd_zero`` counts them; in the published
    MNIST cells none does, the lowest log KD being about −222, BIM at ε = 1); where some do, the gap
    between this AUC and ``roc_auc(log KD, ties="strict")`` is the part of the authors' K-density
    figure decided by underflow.

    normal_log_kd, adversarial_log_kd: 1-D log KD (natural log, the detector's ``kd`` score), as
    for ``roc_auc`` (non-empty, NaN-free; ValueError otherwise). → AUC in [0, 1].
    """
    normal = np.exp(_scores(normal_log_kd, "normal_log_kd"))
    adversarial = np.exp(_scores(adversarial_log_kd, "adversarial_log_kd"))
    return roc_auc(normal, adversarial, ties="strict")


def paper_sample_rule(true_labels, clean_pred, adv_pred):
    """Which pairs enter the AUC: clean prediction == true label AND adversarial prediction !=
    true label (``auc_of_roc_RCE.m``: correctly classified normal, successful adversarial)."""
    true_labels, clean_pred, adv_pred = (as_numpy(a) for a in (true_labels, clean_pred, adv_pred))
    if not (true_labels.ndim == 1 and true_labels.shape == clean_pred.shape == adv_pred.shape):
        raise ValueError(f"expected three (N,) label arrays, got {true_labels.shape}, "
                         f"{clean_pred.shape}, {adv_pred.shape}")
    return (clean_pred == true_labels) & (adv_pred != true_labels)


def paper_pairs(normal_scores, adversarial_scores, true_labels, clean_pred, adv_pred):
    """The scores of the pairs kept by ``paper_sample_rule`` → (normal, adversarial, n)."""
    mask = paper_sample_rule(true_labels, clean_pred, adv_pred)
    normal, adversarial = as_numpy(normal_scores), as_numpy(adversarial_scores)
    if normal.shape != mask.shape or adversarial.shape != mask.shape:
        raise ValueError(f"scores must be paired with the labels ({mask.shape}), got "
                         f"{normal.shape} and {adversarial.shape}")
    return normal[mask], adversarial[mask], int(mask.sum())


def _scores(x, name):
    """A float64 host copy of a 1-D, non-empty, NaN-free score array."""
    a = np.asarray(as_numpy(x), dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: ROC analysis needs at least one normal and one "
                         f"adversarial score")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains {int(np.isnan(a).sum())} NaN score(s); a NaN has no "
                         f"rank (fix the metric, or drop those examples explicitly)")
    return a


def _pair_counts(normal, adversarial):
    """(#pairs with normal > adversarial, #pairs with normal == adversarial), as Python ints."""
    adversarial = np.sort(adversarial)
    below = np.searchsorted(adversarial, normal, side="left")       # adversarial < s
    at_or_below = np.searchsorted(adversarial, normal, side="right")  # adversarial <= s
    return int(below.sum()), int((at_or_below - below).sum())
