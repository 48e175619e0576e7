"""The Jacobian-based saliency map attack, JSMA (paper §2.3, evaluated in §4.3; protocol §5.2;
landscape §2.5).

A targeted L0 attack. Each iteration differentiates the prediction logits z (s for CE, -s for RCE)
of the current image, picks the feature(s) whose change most helps the target class t, adds θ to
them and clips to the [-0.5, 0.5] box. Two variants:

``variant="pang2018"``: the authors' released ``attacks/jsma.py`` with ``pair=False``, which made the
paper's JSMA column (protocol §5.2).
- Saliency on the softmax F = softmax(z): dt = ∂F_t/∂x, do = ∂(Σ_{j≠t} F_j)/∂x. Candidates are the
  features still below 0.5 with dt ≥ 0 and do ≤ 0, scored dt·|do|; with no candidate, the score is
  dt − do over all features below 0.5.
- θ (the swept ε) is added to the one best feature, then clipped. A feature may be picked again
  until it saturates.
- Stop when the image is classified as t, after ``max_iterations`` (the code's 100), or when no
  feature is below 0.5 ("saturated").

Its "others" term is degenerate (landscape §2.5, pitfall 1). Σ_j F_j ≡ 1, so in exact arithmetic
∂(Σ_j F_j)/∂x = 0 and do = −dt. The mask then reduces to dt ≥ 0, the score to dt² and the fallback
to 2·dt. Both pick argmax_i dt_i over the unsaturated features, which is greedy ascent on F_t, one
feature at a time. This module computes that exact-arithmetic argmax directly, with one backward
pass per iteration, of log F_t instead of F_t. ∂log F_t/∂x = dt/F_t has the same signs and the
same per-image argmax.

Differences from the released code, which runs in float32:
- Its ∂(Σ_j F_j)/∂x is not 0. TensorFlow's softmax gradient gives Jᵀ((1 − Σ_j F_j)·F), with J the
  logit Jacobian ∂z/∂x (L, D) and Σ_j F_j the float32 sum, which for about half of the images
  differs from 1 by a few float32 spacings (6e-8 each below 1, 1.2e-7 above). dt =
  Jᵀ(F_t·(e_t − F)) is proportional to F_t, so when F_t ≲ 1e-7 (typical for the least-likely
  target) the residue is as large as dt or larger and drives the mask and the score: there the
  released code's picks often differ from argmax dt. At F_t ≳ 1e-5 the residue is far below dt
  and the picks agree (``test_released_float32_residue_drives_picks_at_tiny_target_probability``).
- Where F_t underflows to 0 in float32 (F_t < 1e-38), the released dt is an all-zero map: every
  candidate scores 0 and the code takes the first candidate in raster order. ∂log F_t/∂x does
  not underflow.
- The released code attacks one image at a time (``tf.map_fn``); this module batches them (below).

``variant="papernot"``: Papernot et al. (2016), Algorithm 3, on logits (JSMA-Z, as cleverhans and
AdverTorch do).
- α_i = ∂z_t/∂x_i and β_i = Σ_{j≠t} ∂z_j/∂x_i, from two backward passes of one forward pass.
- The search domain Γ starts as the features below 0.5 (θ > 0) or above −0.5 (θ < 0, the mirrored
  attack).
- Every pair p < q in Γ is scored: A = α_p + α_q, B = β_p + β_q, kept when A > 0 and B < 0
  (A < 0 and B > 0 when θ < 0). The pair with the largest −A·B wins. Pairs are scored in blocks of
  rows (``PAIR_BLOCK`` elements), never as a d × d table.
- θ is added to both features, which are clipped and removed from Γ.
- Stop at the target, when |Γ| < 2 ("saturated"), after ⌊γ·d/2⌋ iterations ("max iterations"), or
  when no pair qualifies ("no candidate"). A "no candidate" image fails; cleverhans would keep
  modifying feature 0 (landscape pitfall 3).
- Papernot et al. use θ = 1; γ defaults to 0.1, as in the detection benchmarks (Feinman et al.).

Shared by both variants:
- The target is the least-likely class argmin_i z_i of the clean image, unless ``targets`` is given.
  On an RCE network that is argmax of s.
- Images are attacked in batches. An image stops changing once it is done, and each iteration's
  forward and backward passes run only on the images still active. Whether an image has reached its
  target is read from the logits of the gradient pass, so no extra forward pass is made.
- In exact arithmetic an image's picks are its own. In float32 a batched forward pass can round
  differently at different batch sizes (about 4e-6 on the shipped MNIST model's logits), and the
  active sub-batch shrinks as batch-mates finish, so a nearly tied pick can depend on the
  batch-mates and on ``batch_size``. Results are reproducible for the same inputs and
  ``batch_size``; the float64 tests find them identical alone, batched and shuffled.
- The model runs in eval mode; every module's ``training`` flag is restored on exit.
- Nothing is random. Feature ties go to the lowest index of the (C, H, W) flattening; the
  authors' TensorFlow code flattens (H, W, C), so on CIFAR an exact tie can pick another
  channel (exact float ties are rare).
"""
from __future__ import annotations

import math

import numpy as np

from rcenp.attacks.core import (
    BOX,
    AttackResult,
    finish,
    in_batches,
    in_eval_mode,
    one_hot,
    with_module_notes,
)
from rcenp.autograd import Tensor, grad
from rcenp.backend import as_numpy, get_array_module, to_device
from rcenp.checks import check_labels, check_positive, check_real, check_steps
from rcenp.nn.module import check_images
from rcenp.ops.activation import log_softmax_array

VARIANTS = ("pang2018", "papernot")
PANG2018_ITERATIONS = 100  # the authors' epoch_jsma
PAPERNOT_GAMMA = 0.1
PAIR_BLOCK = 1 << 21  # elements (images × rows × features) scored at once in the pair search


@in_eval_mode
def jsma(model, x, theta, targets=None, max_iterations=None, variant: str = "pang2018", gamma=None,
         batch_size: int = 128) -> AttackResult:
    """Targeted JSMA on a ``Classifier``'s prediction logits (protocol §5.2, landscape §2.5).

    model: a ``Classifier``. x: (N, C, H, W) in [-0.5, 0.5]; D = C·H·W features. theta: the change
    per pick in box units. "pang2018" needs 0 < θ ≤ 1 (the authors' code sweeps θ = ε = 0.02 … 0.2, protocol §5.1–5.2). "papernot"
    needs 0 < |θ| ≤ 1, and a negative θ runs the mirrored, decreasing attack. targets: (N,) ints, or
    None for the least-likely class of the clean prediction. A given target must differ from the
    clean prediction. max_iterations: the limit on picks. With "pang2018" it defaults to the
    authors' 100. With "papernot" the limit is ⌊γ·D/2⌋ pairs, lowered to ``max_iterations`` when
    that is given. gamma: "papernot" only; the largest fraction of the features that may change,
    in (0, 1], default 0.1. Both variants: the notes below (the module docstring).

    Returns an ``AttackResult`` where success means classified as the target, and ``stop_reason``
    is one of "target reached", "max iterations", "saturated" or "no candidate". ``iterations``
    counts picks (single features for "pang2018", pairs for "papernot"). ``zero_grad_fraction`` is
    the share of exactly-zero entries of the clean image's saliency gradient.

    The model runs in eval mode; every module's ``training`` flag is restored on exit.

    Raises ValueError for images outside the box or of the wrong shape, a θ, γ, ``max_iterations``
    or ``batch_size`` out of range or not a real number (a bool is not one; ``max_iterations`` and
    ``batch_size`` must be integral), γ given with "pang2018", an unknown variant, or bad targets
    (wrong shape, out of range, or equal to the clean prediction).
    """
    x = check_images(model, x)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    batch_size = check_steps("batch_size", batch_size)
    features = math.prod(x.shape[1:])
    if variant == "pang2018":
        theta = check_positive("theta", theta, upper=1.0)
        if gamma is not None:
            raise ValueError("gamma applies to variant='papernot' only (pang2018 stops after max_iterations)")
        limit = PANG2018_ITERATIONS if max_iterations is None else check_steps("max_iterations", max_iterations)
    else:
        theta = check_real("theta", theta)
        if theta == 0 or abs(theta) > 1:
            raise ValueError(f"theta must be non-zero with |theta| <= 1 for variant='papernot', got {theta}")
        gamma = PAPERNOT_GAMMA if gamma is None else check_positive("gamma", gamma, upper=1.0)
        limit = math.floor(gamma * features / 2)
        if limit < 1:
            raise ValueError(f"gamma = {gamma} allows no pair of the {features} features (floor(gamma*D/2) = 0)")
        if max_iterations is not None:
            limit = min(limit, check_steps("max_iterations", max_iterations))
    if targets is not None:
        targets = check_labels("targets", as_numpy(targets), len(x), model.network.num_classes)
        clean = as_numpy(model.predict(x, batch_size=batch_size))
        same = np.flatnonzero(targets == clean)
        if len(same):
            raise ValueError(f"targets equal the clean prediction for {len(same)} image(s) (first: index {same[0]}, "
                             f"class {targets[same[0]]}); a targeted attack needs another class")
    params = {"variant": variant, "theta": theta, "gamma": gamma, "max_iterations": limit,
              "target": "least likely (argmin of the clean prediction logits)" if targets is None else "given",
              "saliency": "d log softmax_t / dx (single feature)" if variant == "pang2018" else
              "logit Jacobian, pairs (alpha > 0, beta < 0, mirrored for theta < 0)"}

    def attack_batch(xb, tb):
        tb = None if tb is None else to_device(tb, model.device)
        return _run(model, xb, theta, tb, limit, variant == "papernot", params)

    return in_batches(attack_batch, model, x, batch_size, targets)


jsma = with_module_notes(jsma, __doc__)  # help(rcenp.attacks.jsma) shows the module's notes too


def _run(model, x, theta, targets, limit, pairs, params) -> AttackResult:
    """Attack one batch of device images (N, C, H, W); ``targets`` (N,) on the device or None. The
    model must already be in eval mode (``jsma`` holds it there)."""
    xp = get_array_module(x)
    n, shape = len(x), x.shape[1:]
    adversarial = x.reshape(n, -1).copy()
    domain = adversarial < BOX[1] if theta > 0 else adversarial > BOX[0]  # features that may still change
    iterations = np.zeros(n, np.int64)
    stop_reason = np.full(n, "max iterations", dtype=object)
    active = np.arange(n)  # host indices of the images still being attacked
    for step in range(limit):
        rows = to_device(active, model.device)
        images = Tensor(adversarial[rows].reshape((len(active),) + shape), requires_grad=True)
        logits = model(images)
        z = logits.data
        if step == 0:
            clean_prediction = z.argmax(axis=1)
            targets = z.argmin(axis=1) if targets is None else targets
        target = targets[rows]
        reached = as_numpy(z.argmax(axis=1) == target)
        saturated = as_numpy(domain[rows].sum(axis=1) < (2 if pairs else 1)) & ~reached
        t_hot = one_hot(xp, target, z.shape[1], z.dtype)
        if pairs:
            alpha = grad(logits, images, grad_output=t_hot, retain_graph=True).reshape(len(active), -1)
            beta = grad(logits, images, grad_output=1 - t_hot).reshape(len(active), -1)
            saliency = alpha
        else:  # ∂ log F_t / ∂x: grad_output = e_t − softmax(z)
            saliency = grad(logits, images, grad_output=t_hot - xp.exp(log_softmax_array(z, axis=1)))
            saliency = saliency.reshape(len(active), -1)
        if step == 0:
            zero_grad_fraction = (saliency == 0).mean(axis=1)
        stop_reason[active[reached]] = "target reached"
        stop_reason[active[saturated]] = "saturated"
        going = ~(reached | saturated)
        active, keep = active[going], to_device(np.flatnonzero(going), model.device)
        if not len(active):
            break
        rows = rows[keep]
        if pairs:
            sign = 1.0 if theta > 0 else -1.0
            p, q, found = _best_pairs(sign * alpha[keep], sign * beta[keep], domain[rows])
            found_host = as_numpy(found)
            stop_reason[active[~found_host]] = "no candidate"
            active, keep = active[found_host], xp.flatnonzero(found)
            rows, picks = rows[keep], (p[keep], q[keep])
        else:
            score = xp.where(domain[rows], saliency[keep], -xp.inf)
            picks = (score.argmax(axis=1),)
        for feature in picks:
            adversarial[rows, feature] = xp.clip(adversarial[rows, feature] + theta, *BOX)
            domain[rows, feature] = False if pairs else adversarial[rows, feature] < BOX[1]
        iterations[active] += 1
        if not len(active):
            break
    result = finish(model, x, adversarial.reshape(x.shape), clean_prediction, targets, iterations, stop_reason,
                    zero_grad_fraction, clean_prediction, "jsma", params, targeted=True)
    # An image that reached its target on its last allowed pick stopped as "max iterations".
    result.stop_reason = np.where(result.success, "target reached", result.stop_reason)
    return result


def _best_pairs(alpha, beta, domain):
    """Papernot's pair choice for each row of (M, D) α, β and the boolean search domain Γ.

    Returns (p, q, found), each (M,): the pair p < q in Γ maximising −(α_p + α_q)(β_p + β_q) among
    those with α_p + α_q > 0 and β_p + β_q < 0 (the first such pair in row-major order on ties), and
    whether any pair qualified. Row blocks [s, e) are scored against columns s+1 … D−1 only, so the
    search costs about M·D²/2 scores and PAIR_BLOCK elements of memory per block.
    """
    xp = get_array_module(alpha)
    m, d = alpha.shape
    best = xp.full(m, -1.0, dtype=alpha.dtype)  # a qualifying pair scores ≥ 0
    best_p = xp.zeros(m, dtype=np.int64)
    best_q = xp.zeros(m, dtype=np.int64)
    index = xp.arange(d)
    block = max(1, PAIR_BLOCK // max(1, m * d))
    each = xp.arange(m)
    for start in range(0, d - 1, block):
        stop = min(start + block, d - 1)
        p, q = slice(start, stop), slice(start + 1, d)
        a = alpha[:, p, None] + alpha[:, None, q]
        b = beta[:, p, None] + beta[:, None, q]
        ok = (a > 0) & (b < 0) & domain[:, p, None] & domain[:, None, q] & (index[q][None, :] > index[p][:, None])
        score = xp.where(ok, a * -b, -1.0).reshape(m, -1)
        k = score.argmax(axis=1)
        value = score[each, k]
        better = value > best
        columns = d - start - 1
        best = xp.where(better, value, best)
        best_p = xp.where(better, start + k // columns, best_p)
        best_q = xp.where(better, start + 1 + k % columns, best_q)
    return best_p, best_q, best >= 0
