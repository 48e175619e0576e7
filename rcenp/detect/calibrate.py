"""Operating threshold of the detector of paper §3.3: accept an input iff score > T.

Seen from the detector, a *false positive* is a clean input that is rejected (score ≤ T), so the
false-positive rate here is the rejection rate of clean inputs. (``roc.py`` keeps the authors'
AUC convention instead, with normal inputs as the positive class.) The paper fixes no T and
reports only AUC (protocol §4); this is for deployments and the "TPR at 5 % clean rejection" view.
"""
from __future__ import annotations

import math

import numpy as np

from rcenp.backend import as_numpy


def calibrate_threshold(clean_scores, target_fpr=0.05):
    """T such that the fraction of ``clean_scores`` ≤ T is at most ``target_fpr`` and maximal.

    Rule: with the clean scores sorted, s_(1) ≤ … ≤ s_(n), let k be the largest integer with
    k/n ≤ target_fpr; return T = s_(k), the k-th smallest score (s_(0) = −inf: reject nothing).
    Ties: if s_(k+1) = s_(k), rejecting every copy of s_(k) would exceed k, so T falls to the
    largest distinct score below s_(k) (or −inf); the calibration rejection rate is then below
    k/n. The target is never exceeded on the calibration set.

    On fresh data from the same continuous distribution, the rejection rate F(T) of T = s_(k) is
    Beta(k, n − k + 1) distributed, with mean k/(n + 1) ≤ target_fpr: slightly conservative.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must lie in [0, 1], got {target_fpr}")
    scores = np.sort(_scores(clean_scores))
    n = len(scores)
    k = _rank(n, target_fpr)
    if k == 0:
        return -math.inf
    threshold = scores[k - 1]
    if k < n and scores[k] == threshold:           # a tie straddles position k: step below it
        first = int(np.searchsorted(scores, threshold, side="left"))
        return float(scores[first - 1]) if first > 0 else -math.inf
    return float(threshold)


def min_calibration_images(target_fpr) -> int:
    """The fewest clean scores for which ``calibrate_threshold`` at ``target_fpr`` can reject one
    (k ≥ 1, i.e. 1/n ≤ target_fpr): with fewer, T = −inf whatever the scores. Raises ValueError
    for a ``target_fpr`` outside (0, 1] (or so small that 1/target_fpr overflows)."""
    if not 0.0 < target_fpr <= 1.0:
        raise ValueError(f"target_fpr must lie in (0, 1], got {target_fpr}")
    bound = 1.0 / target_fpr
    if not math.isfinite(bound):
        raise ValueError(f"target_fpr={target_fpr} is too small: 1/target_fpr overflows")
    n = max(1, math.ceil(bound) - 1)
    while _rank(n, target_fpr) == 0:
        n += 1
    while n > 1 and _rank(n - 1, target_fpr) > 0:
        n -= 1
    return n


def _rank(n, target_fpr) -> int:
    """k of ``calibrate_threshold``: the largest integer with k/n ≤ target_fpr (0 ≤ k ≤ n)."""
    k = math.floor(target_fpr * n)
    if k + 1 <= n and (k + 1) / n <= target_fpr:  # target·n rounded just below an integer
        k += 1
    return k


def rejection_rate(scores, threshold):
    """Fraction of ``scores`` the detector rejects: score ≤ threshold."""
    scores = _scores(scores)
    return float(np.count_nonzero(scores <= threshold)) / len(scores)


def _scores(x):
    a = np.asarray(as_numpy(x), dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError("scores contain NaN")
    return a
