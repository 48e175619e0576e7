"""The ``AttackResult`` of a C&W optimisation (``rcenp.attacks.cw.optimise``), shared by C&W-L2,
C&W-hc and C&W-wb: the per-sample records, the margins of the returned images from a separate
forward pass, and C&W's success test for other images of the same samples (the 8-bit audit's).
"""
from __future__ import annotations

import numpy as np

from rcenp.attacks.core import UNTARGETED, AttackResult, distortions
from rcenp.backend import as_numpy


def margins(model, images, classes, targeted, batch_size):
    """(prediction (N,), margin (N,)) of host images: z_t − max_{i≠t} z_i (targeted) or
    max_{i≠y} z_i − z_y (untargeted), from a separate forward pass, its logits cast to float64."""
    z = as_numpy(model.predict_logits(images, batch_size)).astype(np.float64)
    idx = np.arange(len(z))
    masked = z.copy()
    masked[idx, classes] = -np.inf
    margin = z[idx, classes] - masked.max(axis=1)
    return z.argmax(axis=1), (margin if targeted else -margin)


def margin_test(model, classes, targeted, kappa, batch_size):
    """C&W's success test for other images of the same samples (``AttackResult.criterion``):
    images (N, C, H, W) → (N,) bool, margin > κ by ``margins`` (a fresh forward pass)."""
    def test(images):
        return margins(model, images, classes, targeted, batch_size)[1] > kappa
    return test


def assemble(model, clean, run, labels, targets, clean_prediction, attack, params, batch_size,
             extra_details=None) -> AttackResult:
    """The ``AttackResult`` of an ``optimise`` run (distortions to ``clean``). run["adversarial"]
    must be the returned images; "final_margin" is run["margin"] where it is finite (the kept
    iterate's, as decided), else the recomputed margin of the returned image."""
    clean = as_numpy(clean)
    targeted = targets is not None
    n = len(clean)
    adversarial = run["adversarial"]               # the model's dtype, like every AttackResult
    prediction, recomputed = margins(model, adversarial, targets if targeted else labels, targeted, batch_size)
    decided = np.where(np.isnan(run["margin"]), recomputed, run["margin"])
    details = []
    for i in range(n):
        record = {"c": run["c"][i], "step_success": run["step_success"][i], "step_iterations": run["iterations"][i],
                  "step_stop": run["step_stop"][i]}
        best = run["best_l2"][i]
        record.update(best_l2=None if np.isnan(best) else float(best), final_margin=float(decided[i]),
                      final_margin_recomputed=float(recomputed[i]))
        if extra_details is not None:
            record.update(extra_details[i])
        details.append(record)
    success = run["success"]
    return AttackResult(
        adversarial=adversarial, success=success.copy(), prediction=prediction.astype(np.int64),
        clean_prediction=np.asarray(clean_prediction, np.int64), label=np.asarray(labels, np.int64),
        target=np.asarray(targets, np.int64) if targeted else np.full(n, UNTARGETED, np.int64),
        iterations=np.array([sum(r["step_iterations"]) for r in details], np.int64),
        stop_reason=np.where(success, "success", "no success").astype(str),
        zero_grad_fraction=run["zero_grad_fraction"].astype(np.float64),
        **distortions(clean, adversarial), attack=attack, params=params, details=details)
