"""The bookkeeping of the streamed C&W optimiser (``rcenp.attacks.cw.optimise``): the binary search
on c, the abort-early rules, and the per-slot state (protocol §5.3-5.4, landscape §2.6).
"""
from __future__ import annotations

import numpy as np

from rcenp.backend import as_numpy

SENTINEL, FOUND = 1e10, 1e9          # c's initial upper bound; an upper bound below FOUND is real
ABORT_RULES = ("carliniL2", "carliniL2_specific")


def binary_search_update(const, lower, upper, success):
    """One binary-search update of c per sample (Carlini's rule; arrays (N,) → new arrays (N,)).

    success in this step: upper = min(upper, c), then c = (lower + upper)/2 if upper < 1e9;
    failure: lower = max(lower, c), then c = (lower + upper)/2 if upper < 1e9, else c × 10.
    So c never grows after a success and never shrinks after a failure, and lower ≤ c always. A
    success at c ≥ 1e9 (reachable from c₀ = 100 after 7 failures) leaves c unchanged: upper = c is
    then no bound, as in the reference.
    """
    const, lower, upper = (np.array(a, dtype=np.float64) for a in (const, lower, upper))
    success = np.asarray(success, dtype=bool)
    upper = np.where(success, np.minimum(upper, const), upper)
    lower = np.where(success, lower, np.maximum(lower, const))
    found = upper < FOUND
    const = np.where(found, (lower + upper) / 2, np.where(success, const, const * 10))
    return const, lower, upper


def abort_checks(it, interval: int, rule: str):
    """Host bool (S,): which of the iterations ``it`` (S,) (0-based, within the binary step) check
    abort early. ``"carliniL2"`` (Carlini's ``l2_attack.py``, the authors' ``carliniL2.py``):
    it % interval == 0, from iteration 0. ``"carliniL2_specific"`` (the authors' stage 2): it > 1
    and it % interval == 0, so the first check is at ``interval`` (1,000 of 10,000).
    Raises ValueError for another rule."""
    if rule not in ABORT_RULES:
        raise ValueError(f"abort_rule must be one of {ABORT_RULES}, got {rule!r}")
    it = np.asarray(it)
    on_interval = it % interval == 0
    return on_interval if rule == "carliniL2" else on_interval & (it > 1)


def aborts(loss, prev):
    """Device bool (S,): loss > 0.9999 × prev, the abort test at a check. loss (S,) in the model's
    dtype, prev (S,) float64 (the loss at the sample's previous check, +∞ before the first).
    Compared in float64, as the reference does (its ``prev * .9999`` is a float64)."""
    return loss.astype(np.float64) > 0.9999 * prev


class Slots:
    """The state of the S images being attacked, one row each: ``HOST`` on the host, ``DEVICE`` on
    the model's device (None where unused: the density fields without a density).

    sample: its index in the queue; step, it: binary step and iteration within it; cls: target or
    label; anchor, w0, delta, m, v: the distance's image, tanh-space start, offset, Adam moments;
    c; prev (float64): the loss at the previous abort check; step_success: a success of this step
    that counts for the binary search; best_d2, best_adv, best_margin, best_f2: the smallest-d2
    success over all steps, its image, and its margin and f2_raw as evaluated when it was kept;
    eta: η_t; fallback_f2, fallback_adv, fallback_margin: the smallest-f2_raw iterate past the
    margin (ties keep the last), its image and margin.
    """

    HOST = ("sample", "step", "it")
    DEVICE = ("cls", "anchor", "w0", "delta", "m", "v", "c", "prev", "step_success", "best_d2", "best_adv",
              "best_margin", "best_f2", "eta", "fallback_f2", "fallback_adv", "fallback_margin")

    def __init__(self, xp, size, shape, dtype, density: bool):
        self.sample, self.step, self.it = (np.zeros(size, np.int64) for _ in range(3))
        self.cls, self.step_success = xp.zeros(size, np.int64), xp.zeros(size, bool)
        self.prev = xp.zeros(size, np.float64)
        for name in ("anchor", "w0", "delta", "m", "v", "best_adv"):
            setattr(self, name, xp.zeros(shape, dtype))
        for name in ("c", "best_d2", "best_margin"):
            setattr(self, name, xp.zeros(size, dtype))
        for name in ("best_f2", "eta", "fallback_f2", "fallback_margin"):
            setattr(self, name, xp.zeros(size, dtype) if density else None)
        self.fallback_adv = xp.zeros(shape, dtype) if density else None

    def keep(self, mask, device_mask):
        """Drop the rows where ``mask`` is False (host and device copies of one mask)."""
        for name in self.HOST:
            setattr(self, name, getattr(self, name)[mask])
        for name in self.DEVICE:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[device_mask])

    def store(self, out, rows, rows_d):
        """Write into ``out`` the returned image, flags, margin and f2_raw of the finished samples
        in ``rows`` (host indices; ``rows_d`` the same on the device)."""
        samples = self.sample[rows]
        best_d2 = as_numpy(self.best_d2[rows_d]).astype(np.float64)
        success = np.isfinite(best_d2)
        out["success"][samples] = success
        out["best_l2"][samples] = np.where(success, np.sqrt(np.where(success, best_d2, 0)), np.nan)
        out["adversarial"][samples[success]] = as_numpy(self.best_adv[rows_d])[success]
        margin = np.where(success, as_numpy(self.best_margin[rows_d]).astype(np.float64), np.nan)
        if self.fallback_f2 is None:
            out["margin"][samples] = margin
            return
        fallback_f2 = as_numpy(self.fallback_f2[rows_d]).astype(np.float64)
        has_fallback = ~success & np.isfinite(fallback_f2)
        out["fallback"][samples] = has_fallback
        out["adversarial"][samples[has_fallback]] = as_numpy(self.fallback_adv[rows_d])[has_fallback]
        fallback_margin = as_numpy(self.fallback_margin[rows_d]).astype(np.float64)
        out["margin"][samples] = np.where(has_fallback, fallback_margin, margin)
        best_f2 = as_numpy(self.best_f2[rows_d]).astype(np.float64)
        out["f2_raw"][samples] = np.where(success, best_f2, np.where(has_fallback, fallback_f2, np.nan))
