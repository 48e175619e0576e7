"""Carlini & Wagner's L2 attack (C&W-L2, and C&W-hc at κ = 10): paper §4.3, protocol §5.3,
landscape §2.6-2.7. Faithful to Carlini's ``nn_robust_attacks/l2_attack.py``.

For each image x (N, C, H, W) in the [-0.5, 0.5] box, in tanh space:

    x*(w) = ½·tanh(w),   w = w₀ + δ,   w₀ = arctanh(2x·0.999999),
    loss(δ) = ‖x* − x‖₂² + c·max(max_{i≠t} z_i − z_t + κ, 0)      (targeted, target t)
              ‖x* − x‖₂² + c·max(z_y − max_{i≠y} z_i + κ, 0)      (untargeted, label y)

with z the prediction logits (s for CE, −s for RCE) and the distance to the TRUE x. The max over
i ≠ t masks the target entry with −∞ (right for negative logits). δ is minimised by Adam exactly as
TensorFlow's ``AdamOptimizer`` (β₁ 0.9, β₂ 0.999, ε 1e-8, lr_t = lr·√(1−β₂ᵗ)/(1−β₁ᵗ),
δ −= lr_t·m/(√v + ε)), per sample with its own t. δ and Adam are reset at every binary step.

One iteration = one forward and one backward at the current iterate. Its logits decide whether
THAT (pre-update) iterate succeeds: targeted ⇔ z_t − κ > max_{i≠t} z_i, untargeted ⇔
z_y + κ < max_{i≠y} z_i; a tie is a failure. A success whose distance to x is below the best so far
is recorded (the very image whose logits were evaluated). Then the Adam step follows. The hinge's
gradient is zero at its kink (TensorFlow's ``maximum(0, ·)``).

Binary search on c, per sample, after each binary step (reference rule, sentinel 1e10, see
``binary_search_update``); with ``binary_steps >= 10`` the last step uses c = upper (``repeat``).
The smallest-L2 success over all steps is returned; a sample without one returns the clean image,
``success`` False.

Abort early, per sample: every ``max(1, max_iterations // 10)`` iterations of its current binary
step (from iteration 0), a sample ends the step when its own loss > 0.9999 × its loss at the
previous check (the first previous is +∞). The iterate evaluated at that check is still
considered for the best (the reference breaks just before; recording it can only lower the L2).
The reference sums the loss over the batch, so there a sample's result depends on its batch-mates.

Streaming: ``batch_size`` slots each hold one image with its own state (binary step, iteration,
Adam m, v, δ, c, bounds, best). A sample ending a binary step starts its next one in place; a
sample ending its last step hands its slot to the next image of the queue, so the batch stays
full; once the queue is empty, finished slots are dropped (the batch shrinks). Every iteration
therefore costs exactly one forward + backward per unfinished image. No per-sample quantity mixes
samples: a sample's decisions and iterates are those it would have alone, up to the rounding of the
batched forward and backward, which BLAS may do differently for different batch sizes (last bits;
in float64 this never changed a decision in the tests, in float32 it can on a razor-thin margin).

Costs: iterations ≤ binary_steps × max_iterations forward+backward per image (9 × 10,000 for the
paper's settings), plus one forward per image for the clean prediction and one for the returned
image's logits.
"""
from __future__ import annotations

import time

import numpy as np

from rcenp.attacks.core import (
    AttackResult,
    UNTARGETED,
    check_images,
    check_labels,
    check_positive,
    check_steps,
    distortions,
)
from rcenp.attacks.cw_loss import Density, Evaluation
from rcenp.backend import as_numpy, get_array_module, make_rng, to_device

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
SENTINEL, FOUND = 1e10, 1e9          # c's initial upper bound; an upper bound below FOUND is real
TANH_SHRINK = 0.999999               # keeps arctanh finite on the box faces
PROGRESS_SECONDS = 30.0              # how often ``optimise`` reports to its ``progress`` callable


def binary_search_update(const, lower, upper, success):
    """One binary-search update of c per sample (Carlini's rule; arrays (N,) → new arrays (N,)).

    success in this step: upper = min(upper, c), then c = (lower + upper)/2 if upper < 1e9;
    failure: lower = max(lower, c), then c = (lower + upper)/2 if upper < 1e9, else c × 10.
    So c never grows after a success and never shrinks after a failure, and lower ≤ c always.
    """
    const, lower, upper = (np.array(a, dtype=np.float64) for a in (const, lower, upper))
    success = np.asarray(success, dtype=bool)
    upper = np.where(success, np.minimum(upper, const), upper)
    lower = np.where(success, lower, np.maximum(lower, const))
    found = upper < FOUND
    const = np.where(found, (lower + upper) / 2, np.where(success, const, const * 10))
    return const, lower, upper


def cw_l2(model, x, targets=None, labels=None, kappa: float = 0.0, initial_const: float = 1.0,
          binary_steps: int = 9, max_iterations: int = 10000, learning_rate: float = 0.01,
          abort_early: bool = True, seed: int = 0, batch_size: int = 100, progress=None) -> AttackResult:
    """C&W-L2 (κ = 0) or C&W-hc (κ = 10) on the prediction logits (protocol §5.3).

    model: a ``Classifier``; x: (N, C, H, W) in [-0.5, 0.5]. labels: (N,) ints, or None for the
    clean prediction. targets: None draws, once for the whole x, a uniform class ≠ label from
    ``numpy.random.default_rng(seed)`` (the paper's random target); an (N,) int array gives them
    (each must differ from its label); ``"untargeted"`` attacks ``labels``. κ ≥ 0 is the margin in
    logits; the defaults are the paper's (c₀ = 1.0 as in the authors' ``test_adv.py``, 9 binary
    steps, 10,000 iterations, Adam lr 0.01). ``batch_size`` is the number of streaming slots.

    Returns an ``AttackResult``: success is κ-aware (the recorded decision); distortions are to x;
    label holds the labels used (given, else the clean prediction). ``progress``: None, or a
    callable given a one-line status (images finished, binary step, iteration) every 30 s.
    ``details`` per sample: "c" (c of each binary step), "step_success", "iterations" and
    "step_stop" ("abort early" / "max iterations") per step, "best_l2" (box units, None without a
    success), "final_margin" (z_t − max_{i≠t} z_i of the returned image; untargeted
    max_{i≠y} z_i − z_y; success needs > κ), "target" (None when untargeted).
    Raises ValueError for bad images, labels, targets or settings.
    """
    x = check_images(model, x)
    settings = check_settings(kappa, initial_const, binary_steps, max_iterations, learning_rate, batch_size)
    labels, targets, clean_prediction, label_rule, target_rule = choose_targets(
        model, x, targets, labels, seed, batch_size)
    targeted = targets is not None
    params = {**settings, "abort_early": bool(abort_early), "labels": label_rule, "targets": target_rule}
    run = optimise(model, x, x, targets if targeted else labels, targeted=targeted,
                   abort_early=bool(abort_early), progress=progress, **settings)
    return assemble(model, x, run, labels, targets, clean_prediction, "cw_l2", params, batch_size)


# ---- arguments ------------------------------------------------------------------------------------
def check_settings(kappa, initial_const, binary_steps, max_iterations, learning_rate, batch_size) -> dict:
    """The checked optimiser settings as a dict (ValueError naming the first bad one)."""
    kappa = float(kappa)
    if not np.isfinite(kappa) or kappa < 0:
        raise ValueError(f"kappa must be finite and >= 0, got {kappa}")
    return {"kappa": kappa, "initial_const": check_positive("initial_const", initial_const),
            "binary_steps": check_steps("binary_steps", binary_steps),
            "max_iterations": check_steps("max_iterations", max_iterations),
            "learning_rate": check_positive("learning_rate", learning_rate),
            "batch_size": check_steps("batch_size", batch_size)}


def choose_targets(model, x, targets, labels, seed, batch_size):
    """(labels, targets or None, clean prediction, label rule, target rule), host int64 arrays."""
    n, num_classes = len(x), model.network.num_classes
    if n == 0:
        raise ValueError("no images to attack (N = 0)")
    if num_classes < 2:
        raise ValueError(f"C&W needs at least 2 classes, got {num_classes}")
    clean_prediction = as_numpy(model.predict_logits(x, check_steps("batch_size", batch_size)).argmax(axis=1))
    label_rule = "clean prediction" if labels is None else "given"
    labels = clean_prediction if labels is None else check_labels("labels", labels, n, num_classes)
    if isinstance(targets, str):
        if targets != "untargeted":
            raise ValueError(f"targets must be None, an (N,) int array or 'untargeted', got {targets!r}")
        return labels, None, clean_prediction, label_rule, "untargeted"
    if targets is None:
        if int(seed) != seed:
            raise ValueError(f"seed must be an integer, got {seed!r}")
        offsets = make_rng(int(seed)).integers(1, num_classes, size=n)
        return labels, (labels + offsets) % num_classes, clean_prediction, label_rule, f"random (seed {int(seed)})"
    targets = check_labels("targets", targets, n, num_classes)
    if (targets == labels).any():
        raise ValueError(f"targets equal the label at positions {np.flatnonzero(targets == labels)[:10].tolist()}")
    return labels, targets, clean_prediction, label_rule, "given"


# ---- the optimiser ----------------------------------------------------------------------------------
class _Slots:
    """The state of the S images being attacked, one row each (host: sample, step, it)."""

    HOST = ("sample", "step", "it")
    DEVICE = ("cls", "anchor", "w0", "delta", "m", "v", "c", "prev", "step_success", "best_d2", "best_adv",
              "eta", "best_f2", "fallback_adv")

    def keep(self, mask, device_mask):
        """Drop the rows where ``mask`` is False (host and device copies of one mask)."""
        for name in self.HOST:
            setattr(self, name, getattr(self, name)[mask])
        for name in self.DEVICE:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[device_mask])


def optimise(model, start, anchor, classes, *, targeted, kappa, initial_const, binary_steps, max_iterations,
             learning_rate, abort_early, batch_size, density: Density | None = None, progress=None,
             label: str = "C&W") -> dict:
    """The streamed C&W optimisation (module docstring) of N images.

    start (N, C, H, W): where x* starts (w₀ = arctanh(2·start·0.999999)); anchor (N, C, H, W): the
    image of the distance term; classes (N,): targets (targeted) or labels. With ``density`` a
    success must also have f₂ ≤ 0, and the smallest-f₂ iterate past the κ margin is kept as a
    fallback. Returns host arrays: adversarial (the best success, else the fallback, else start),
    success, fallback (bool), best_l2 (NaN without success), zero_grad_fraction (of the network
    gradient at each sample's first iterate), and per-sample lists c, step_success, iterations,
    step_stop. ``progress(text)``, when given, hears how far the run is every PROGRESS_SECONDS.
    """
    model.eval()
    device = model.device
    xp = get_array_module(model.network.parameters()[0].data)
    n = len(start)
    dtype = model.network.parameters()[0].data.dtype
    start_host, anchor_host = as_numpy(start).astype(dtype), as_numpy(anchor).astype(dtype)
    classes = np.asarray(classes, dtype=np.int64)
    t = np.arange(1, max_iterations + 1)
    lr_table = learning_rate * np.sqrt(1 - BETA2 ** t) / (1 - BETA1 ** t)
    interval = max(1, max_iterations // 10)

    const, lower, upper = np.full(n, initial_const), np.zeros(n), np.full(n, SENTINEL)
    out = {"adversarial": start_host.copy(), "success": np.zeros(n, bool), "fallback": np.zeros(n, bool),
           "best_l2": np.full(n, np.nan), "zero_grad_fraction": np.zeros(n),
           **{key: [[] for _ in range(n)] for key in ("c", "step_success", "iterations", "step_stop")}}

    def dev(array):
        return to_device(array, device)

    def begin_step(s: _Slots, rows):
        rows_d = dev(rows)
        for name in ("delta", "m", "v"):
            getattr(s, name)[rows_d] = 0
        s.prev[rows_d] = np.inf
        s.step_success[rows_d] = False
        s.it[rows] = 0
        s.c[rows_d] = dev(const[s.sample[rows]].astype(dtype))

    def load(s: _Slots, rows, samples):
        rows_d = dev(rows)
        s.sample[rows], s.step[rows] = samples, 0
        s.cls[rows_d] = dev(classes[samples])
        s.anchor[rows_d] = dev(anchor_host[samples])
        s.w0[rows_d] = xp.arctanh(dev(start_host[samples]) * (2 * TANH_SHRINK))
        s.best_d2[rows_d] = np.inf
        if density is not None:
            s.eta[rows_d] = density.eta[s.cls[rows_d]]
            s.best_f2[rows_d] = np.inf
        begin_step(s, rows)

    # the slots, filled with the first images of the queue
    size = min(batch_size, n)
    shape = (size,) + start_host.shape[1:]
    expand = (slice(None),) + (None,) * (len(shape) - 1)
    s = _Slots()
    s.sample, s.step, s.it = (np.zeros(size, np.int64) for _ in range(3))
    s.cls, s.step_success = xp.zeros(size, np.int64), xp.zeros(size, bool)
    for name in ("anchor", "w0", "delta", "m", "v", "best_adv"):
        setattr(s, name, xp.zeros(shape, dtype))
    for name in ("c", "prev", "best_d2"):
        setattr(s, name, xp.zeros(size, dtype))
    s.eta = s.best_f2 = s.fallback_adv = None
    if density is not None:
        s.eta, s.best_f2, s.fallback_adv = xp.zeros(size, dtype), xp.zeros(size, dtype), xp.zeros(shape, dtype)
    load(s, np.arange(size), np.arange(size))
    queued = size

    last_report = time.monotonic()
    while len(s.sample):
        rows = len(s.sample)
        if progress is not None and time.monotonic() - last_report >= PROGRESS_SECONDS:
            last_report = time.monotonic()
            finished = queued - rows
            progress(f"{label}: {finished}/{n} images finished; {rows} in work, binary step "
                     f"{s.step.min() + 1}-{s.step.max() + 1} of {binary_steps}, iteration up to {s.it.max()} of "
                     f"{max_iterations}")
        th = xp.tanh(s.w0 + s.delta)
        adv = th * 0.5
        ev = Evaluation(model, adv, s.anchor, s.cls, s.c, kappa, targeted, density, s.eta)
        success = ev.gap < 0                                # a tie is a failure
        if density is not None:                             # the fallback: past the margin, smallest f₂
            kept = success & (ev.f2_raw < s.best_f2)
            s.best_f2 = xp.where(kept, ev.f2_raw, s.best_f2)
            xp.copyto(s.fallback_adv, adv, where=kept[expand])
            success &= ev.f2_raw <= 0
        better = success & (ev.d2 < s.best_d2)
        s.best_d2 = xp.where(better, ev.d2, s.best_d2)
        xp.copyto(s.best_adv, adv, where=better[expand])
        s.step_success |= success

        # which samples end their binary step with this iterate (decided on the host)
        aborted = np.zeros(rows, bool)
        check = (s.it % interval == 0) if abort_early else np.zeros(rows, bool)
        if check.any():
            check_d = dev(check)
            aborted = as_numpy(check_d & (ev.loss > 0.9999 * s.prev))
            s.prev = xp.where(check_d, ev.loss, s.prev)
        ended = aborted | (s.it + 1 >= max_iterations)
        fresh = (s.step == 0) & (s.it == 0)

        # the gradient in w, then Adam (rows that end their step are reset below, so they skip the
        # backward unless it is their first iterate, whose gradient gives zero_grad_fraction)
        idle = ended & ~fresh
        g_net = ev.network_gradient(dev(~idle) if idle.any() else None)
        if fresh.any():
            zeros = 1.0 if g_net is None else as_numpy(
                (g_net[dev(fresh)] == 0).reshape(int(fresh.sum()), -1).mean(axis=1))
            out["zero_grad_fraction"][s.sample[fresh]] = zeros
        g = 2 * ev.diff if g_net is None else g_net + 2 * ev.diff
        g *= 0.5 * (1 - th * th)                                    # d x*/d w
        s.m *= BETA1
        s.m += (1 - BETA1) * g
        s.v *= BETA2
        s.v += (1 - BETA2) * (g * g)
        lr_t = dev(lr_table[s.it].astype(dtype))
        s.delta -= lr_t[expand] * s.m / (xp.sqrt(s.v) + ADAM_EPS)
        s.it += 1
        if not ended.any():
            continue

        # the binary-search bookkeeping of the samples whose step ended
        done_rows = np.flatnonzero(ended)
        samples = s.sample[done_rows]
        won = as_numpy(s.step_success[dev(done_rows)])
        for r, i, w in zip(done_rows, samples, won):
            out["c"][i].append(float(const[i]))
            out["step_success"][i].append(bool(w))
            out["iterations"][i].append(int(s.it[r]))
            out["step_stop"][i].append("abort early" if aborted[r] else "max iterations")
        const[samples], lower[samples], upper[samples] = binary_search_update(
            const[samples], lower[samples], upper[samples], won)
        s.step[done_rows] += 1
        going_on = done_rows[s.step[done_rows] < binary_steps]
        if len(going_on):
            if binary_steps >= 10:                          # the reference's `repeat`
                last = s.sample[going_on[s.step[going_on] == binary_steps - 1]]
                const[last] = upper[last]
            begin_step(s, going_on)
        finished = done_rows[s.step[done_rows] >= binary_steps]
        if not len(finished):
            continue
        _store(out, s, finished, density, dev)
        refill = finished[:min(len(finished), n - queued)]
        if len(refill):
            load(s, refill, np.arange(queued, queued + len(refill)))
            queued += len(refill)
        dropped = finished[len(refill):]
        if len(dropped):
            keep = np.ones(rows, bool)
            keep[dropped] = False
            s.keep(keep, dev(keep))
    return out


def _store(out, s: _Slots, rows, density, dev):
    """Write the returned image and flags of the samples in ``rows``, which have finished."""
    rows_d = dev(rows)
    samples = s.sample[rows]
    best_d2 = as_numpy(s.best_d2[rows_d]).astype(np.float64)
    success = np.isfinite(best_d2)
    best = as_numpy(s.best_adv[rows_d])
    out["success"][samples] = success
    out["best_l2"][samples] = np.where(success, np.sqrt(np.where(success, best_d2, 0)), np.nan)
    out["adversarial"][samples[success]] = best[success]
    if density is not None:
        has_fallback = ~success & np.isfinite(as_numpy(s.best_f2[rows_d]))
        out["fallback"][samples] = has_fallback
        out["adversarial"][samples[has_fallback]] = as_numpy(s.fallback_adv[rows_d])[has_fallback]


# ---- the result ---------------------------------------------------------------------------------------
def margins(model, images, classes, targeted, batch_size):
    """(prediction (N,), margin (N,)) of host images: z_t − max_{i≠t} z_i (targeted) or
    max_{i≠y} z_i − z_y (untargeted), in float64 from the prediction logits."""
    z = as_numpy(model.predict_logits(images, batch_size)).astype(np.float64)
    idx = np.arange(len(z))
    masked = z.copy()
    masked[idx, classes] = -np.inf
    margin = z[idx, classes] - masked.max(axis=1)
    return z.argmax(axis=1), (margin if targeted else -margin)


def assemble(model, clean, run, labels, targets, clean_prediction, attack, params, batch_size,
             extra_details=None) -> AttackResult:
    """The ``AttackResult`` of an ``optimise`` run (distortions to ``clean``)."""
    clean = as_numpy(clean)
    targeted = targets is not None
    n = len(clean)
    adversarial = run["adversarial"]               # the model's dtype, like every AttackResult
    prediction, margin = margins(model, adversarial, targets if targeted else labels, targeted, batch_size)
    details = []
    for i in range(n):
        record = {key: run[key][i] for key in ("c", "step_success", "iterations", "step_stop")}
        best = run["best_l2"][i]
        record.update(best_l2=None if np.isnan(best) else float(best), final_margin=float(margin[i]),
                      target=int(targets[i]) if targeted else None)
        if extra_details is not None:
            record.update(extra_details[i])
        details.append(record)
    success = run["success"]
    return AttackResult(
        adversarial=adversarial, success=success.copy(), prediction=prediction.astype(np.int64),
        clean_prediction=np.asarray(clean_prediction, np.int64), label=np.asarray(labels, np.int64),
        target=np.asarray(targets, np.int64) if targeted else np.full(n, UNTARGETED, np.int64),
        iterations=np.array([sum(r["iterations"]) for r in details], np.int64),
        stop_reason=np.where(success, "success", "no success").astype(str),
        zero_grad_fraction=run["zero_grad_fraction"].astype(np.float64),
        **distortions(clean, adversarial), attack=attack, params=params, details=details)
