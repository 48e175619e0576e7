"""The gradient-sign family: FGSM, BIM and ILCM (paper §2.3, evaluated in §4.3; protocol §5.1;
landscape §2.1-2.3).

All three take steps of size α along the sign of the input gradient of a cross-entropy on the
*prediction logits* z (s for CE, -s for RCE), and after every step project onto the ε-ball around
the clean image intersected with the [-0.5, 0.5] box:

    x⁰ = x,   xⁱ⁺¹ = Π(xⁱ ± α·sign(∇ₓ CE(z(xⁱ), T))),   Π = clip to [max(x-ε, -0.5), min(x+ε, 0.5)].

- FGSM: one step, α = ε, ascent (+) on CE of the label, i.e. away from the label.
- BIM: r steps of α = ε/r (the authors' code: r = 10, protocol §5.1), ascent, keeping the last iterate (BIM-B; the
  detection literature's BIM-A stops at the first misclassified iterate).
- ILCM: r steps of α = ε/r, *descent* (−) on CE of the least-likely class y_LL = argmin_i z_i of
  the clean image, chosen once (Kurakin et al.; on an RCE network this is argmin of the reversed
  logits, i.e. argmax of s — the raw argmin would be the predicted class and a no-op). The
  authors' released variant (``target_vector="pang2018-code"``) descends along another direction;
  see ``ilcm``.

The label of FGSM and BIM is, by default, the model's own clean prediction (the authors' choice,
which avoids label leaking); pass ``labels`` to attack given labels instead. A sample whose CE is
saturated has an exactly-zero gradient and does not move (sign(0) = 0); ``zero_grad_fraction``
reports that share of the clean gradient. Nothing here is random.
"""
from __future__ import annotations

import numpy as np

from rcenp.attacks.core import (
    BOX,
    UNTARGETED,
    AttackResult,
    finish,
    in_batches,
    in_eval_mode,
    one_hot,
    soft_target_gradient,
)
from rcenp.backend import as_numpy, get_array_module, to_device
from rcenp.checks import check_count, check_labels, check_positive
from rcenp.nn.module import check_images

ILCM_TARGETS = ("paper", "pang2018-code")


def fgsm(model, x, eps, labels=None, batch_size: int = 128) -> AttackResult:
    """Fast gradient sign method: x* = clip(x + ε·sign(∇ₓ CE(z(x), y))) (protocol §5.1).

    model: a ``Classifier``; x: (N, C, H, W) in [-0.5, 0.5]; eps: ε in (0, 1] in box units (0.1 is
    25.5 on 0-255); labels: (N,) ints, or None for the clean prediction; batch_size: images per
    batch, an integer ≥ 1. Raises ValueError for images outside the box, a wrong shape, an ε out
    of range or not a real number (a bool is not one), bad labels or a bad ``batch_size``.
    """
    return _sign_attack(model, x, eps, 1, labels, "untargeted", batch_size, "fgsm")


def bim(model, x, eps, steps: int = 10, labels=None, batch_size: int = 128) -> AttackResult:
    """Basic iterative method (BIM-B): ``steps`` FGSM steps of ε/steps, each projected onto the
    ε-ball ∩ box; the last iterate is returned (protocol §5.1: 10 steps). Arguments and errors as
    ``fgsm``, plus ``steps``: an integer from 1 to 2**63 - 1 (3.0 passes, 2.5 and True do not)."""
    return _sign_attack(model, x, eps, steps, labels, "untargeted", batch_size, "bim")


def ilcm(model, x, eps, steps: int = 10, target_vector: str = "paper", batch_size: int = 128) -> AttackResult:
    """Iterative least-likely class method: ``steps`` descent steps of ε/steps on CE towards
    y_LL = argmin of the clean prediction logits (protocol §5.1). Success = classified as y_LL.

    ``target_vector="paper"`` uses the one-hot e_LL: each step is x − α·sign(Jᵀ(p − e_LL)) before
    the projection Π, with p = softmax(z), z the prediction logits (N, L) of the current iterate
    and J = ∂z/∂x (one sample's Jacobian, (L, C·H·W)).

    ``"pang2018-code"`` reproduces the authors' released ``attacks/tgsm.py``. Its target vector T
    is +0.5 at y_LL and −0.5 elsewhere (the one-hot's on/off values are the box bounds, probably a
    porting slip when the box moved to [−0.5, 0.5]; protocol §5.1). The code takes
    ``tf.gradients`` of ``tf.nn.softmax_cross_entropy_with_logits(labels=T, logits=z)``. TensorFlow's
    kernel returns the logit gradient p − T whatever Σ_j T_j is, and the op's registered gradient
    passes it through (times the upstream gradient, 1 per sample). The released step is therefore
    x − α·sign(Jᵀ(p − T)) = x − α·sign(Jᵀ(p − e_LL) + ½·Jᵀ1): sign descent on
    CE(z, y_LL) + ½·Σ_j z_j, the paper's ILCM plus a term that lowers the sum of the prediction
    logits. This variant backpropagates that p − T (``soft_target_gradient(...,
    tf_logit_gradient=True)``). The exact derivative of the loss, (Σ_j T_j)·p − T =
    (1 − L/2)·p − T for L classes (protocol §5.1's "d loss/d s_j = -t_j - 4 p_j" for L = 10), is
    not what TensorFlow backpropagates and is not used here.

    Arguments and errors as ``bim`` (no labels), plus ValueError for an unknown ``target_vector``.
    """
    if target_vector not in ILCM_TARGETS:
        raise ValueError(f"target_vector must be one of {ILCM_TARGETS}, got {target_vector!r}")
    return _sign_attack(model, x, eps, steps, None, target_vector, batch_size, "ilcm")


@in_eval_mode
def _sign_attack(model, x, eps, steps, labels, mode, batch_size, name) -> AttackResult:
    x = check_images(model, x)
    eps = check_positive("eps", eps, upper=1.0)
    steps = check_count("steps", steps)
    num_classes = model.network.num_classes
    if labels is not None:
        labels = check_labels("labels", as_numpy(labels), len(x), num_classes)
    params = {"eps": eps, "steps": steps, "step_size": eps / steps,
              "labels": "clean prediction" if labels is None and mode == "untargeted" else
              ("given" if mode == "untargeted" else None)}
    if mode != "untargeted":
        params["target"] = "least likely (argmin of the clean prediction logits)"
        params["target_vector"] = mode

    def attack_batch(xb, yb):
        return _run(model, xb, eps, steps, yb, mode, name, params)

    return in_batches(attack_batch, model, x, batch_size, labels)


def _run(model, x, eps, steps, labels, mode, name, params) -> AttackResult:
    xp = get_array_module(x)
    num_classes = model.network.num_classes
    alpha = eps / steps
    lower, upper = xp.maximum(x - eps, BOX[0]), xp.minimum(x + eps, BOX[1])
    direction = 1.0 if mode == "untargeted" else -1.0
    chosen = {}

    def clean_targets(logits):
        """The loss's target matrix, fixed from the clean forward pass (step 0)."""
        prediction = logits.argmax(axis=1)
        chosen["clean_prediction"] = prediction
        if mode == "untargeted":
            chosen["label"] = prediction if labels is None else to_device(labels, model.device)
            return one_hot(xp, chosen["label"], num_classes, logits.dtype)
        target = logits.argmin(axis=1)
        chosen["label"], chosen["target"] = prediction, target
        matrix = one_hot(xp, target, num_classes, logits.dtype)
        return matrix if mode == "paper" else matrix - 0.5  # pang2018-code: +0.5 at y_LL, -0.5 elsewhere

    adversarial, targets, zero_fraction = x, clean_targets, None
    for step in range(steps):
        g, _ = soft_target_gradient(model, adversarial, targets, tf_logit_gradient=mode == "pang2018-code")
        if step == 0:
            zero_fraction = (g == 0).reshape(len(g), -1).mean(axis=1)
            targets = one_hot(xp, chosen.get("target", chosen["label"]), num_classes, g.dtype)
            if mode == "pang2018-code":
                targets = targets - 0.5
        adversarial = xp.minimum(xp.maximum(adversarial + (direction * alpha) * xp.sign(g), lower), upper)
    n = len(x)
    target = chosen.get("target", xp.full(n, UNTARGETED))
    return finish(model, x, adversarial, chosen["label"], target, np.full(n, steps), ["steps"] * n, zero_fraction,
                  chosen["clean_prediction"], name, params, targeted=mode != "untargeted")
