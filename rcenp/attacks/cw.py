"""Carlini & Wagner's L2 attack (C&W-L2, and C&W-hc at κ = 10): paper §4.3, protocol §5.3,
landscape §2.6-2.7. Faithful to Carlini's ``nn_robust_attacks/l2_attack.py``.

For each image x (N, C, H, W) in the [-0.5, 0.5] box, in tanh space:

    x*(w) = ½·tanh(w),   w = w₀ + δ,   w₀ = arctanh(2x·0.999999),
    loss(δ) = ‖x* − x‖₂² + c·max(max_{i≠t} z_i − z_t + κ, 0)      (targeted, target t)
              ‖x* − x‖₂² + c·max(z_y − max_{i≠y} z_i + κ, 0)      (untargeted, label y)

with z the prediction logits (s for CE, −s for RCE) and the distance to the TRUE x (Carlini's
code and the authors' measure it to x's own reconstruction ½·tanh(w₀) ≈ 0.999999·x, a relative
difference of about 1e-6; landscape §2.6 recommends the true x). The max over
i ≠ t masks the target entry with −∞ (right for negative logits). δ is minimised by Adam,
algebraically as TensorFlow's ``AdamOptimizer`` (β₁ 0.9, β₂ 0.999, ε 1e-8, m = β₁m + (1−β₁)g,
v = β₂v + (1−β₂)g², lr_t = lr·√(1−β₂ᵗ)/(1−β₁ᵗ), δ −= lr_t·m/(√v + ε)) but not bit for bit: TF
updates m += (g − m)(1−β₁), v += (g² − v)(1−β₂) and accumulates β₁ᵗ, β₂ᵗ as float32 products,
where this takes m, v as above and lr_t from float64 powers. Per sample with its own t; δ and
Adam are reset at every binary step.

One iteration = one forward and one backward at the current iterate. Its logits decide whether
THAT (pre-update) iterate succeeds: targeted ⇔ z_t − max_{i≠t} z_i > κ, untargeted ⇔
max_{i≠y} z_i − z_y > κ (``Evaluation.margin``, in the model's dtype); a tie is a failure. A
success whose distance to x is below the best so far is recorded (the very image whose logits
were evaluated, with that margin). Then the Adam step follows. The hinge's gradient at its kink:
``rcenp.attacks.cw_loss.Evaluation.network_gradient``.

Binary search on c, per sample, after each binary step (reference rule, sentinel 1e10, see
``binary_search_update``); with ``binary_steps >= 10`` the last step uses c = upper (``repeat``).
The smallest-L2 success over all steps is returned; a sample without one returns the clean image,
``success`` False.

Abort early, per sample, at the checks of its current binary step (``abort_checks``):
``abort_rule="carliniL2"`` (Carlini's ``l2_attack.py`` and the authors' ``carliniL2.py``, used by
C&W and C&W-wb's stage 1) checks every ``max(1, max_iterations // 10)`` iterations from iteration
0; ``"carliniL2_specific"`` (C&W-wb's stage 2, the authors' ``carliniL2_specific.py``) only at
iterations > 1 that are multiples of that interval, so its first check is at the interval. At a
check, a sample ends the step when its own loss > 0.9999 × its loss at its previous check,
compared in float64 (``aborts``); the first check only records (the previous is +∞; the
references start from 1e20, 1e30 and Carlini's 1e6, the same unless a loss exceeds them). The
reference breaks BEFORE its bookkeeping, so the aborted iterate never counts for its binary
search. Here it does not count for ``step_success`` either, so c follows the reference's
trajectory; it is still considered for the returned best image (and the C&W-wb fallback), so the
returned L2 is at most the reference's. The reference sums the loss over the batch, so there a
sample's result depends on its batch-mates.

zero_grad_fraction: the fraction of exactly-zero entries of the hinges' gradient in x* at each
sample's first iterate (½·tanh(arctanh(2x·0.999999)), ≈ x), a gradient-masking signal. NaN where
no hinge is active there (``Evaluation.active``: the clean image already past the margin, or an
untargeted attack on a misclassified image), where that gradient is zero by construction.

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

import contextlib
import time

import numpy as np

from rcenp.attacks.core import AttackResult, in_eval_mode
from rcenp.attacks.cw_loss import Density, Evaluation
from rcenp.attacks.cw_result import assemble, margin_test
from rcenp.attacks.cw_search import ABORT_RULES, SENTINEL, Slots, abort_checks, aborts, binary_search_update
from rcenp.attacks.cw_snapshot import capture_state, restore_state, snapshot_key, state_problem
from rcenp.backend import as_numpy, get_array_module, make_rng, to_device
from rcenp.checks import check_count, check_labels, check_positive, check_real, check_steps
from rcenp.nn.module import check_images

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
TANH_SHRINK = 0.999999               # keeps arctanh finite on the box faces
PROGRESS_SECONDS = 30.0              # how often ``optimise`` reports to its ``progress`` callable


@in_eval_mode
def cw_l2(model, x, targets=None, labels=None, kappa: float = 0.0, initial_const: float = 1.0,
          binary_steps: int = 9, max_iterations: int = 10000, learning_rate: float = 0.01,
          abort_early: bool = True, seed: int = 0, batch_size: int = 100, progress=None,
          snapshot=None) -> AttackResult:
    """C&W-L2 (κ = 0) or C&W-hc (κ = 10) on the prediction logits (protocol §5.3).

    model: a ``Classifier``; x: (N, C, H, W) in [-0.5, 0.5]. labels: (N,) ints, or None for the
    clean prediction. targets: None draws, once for the whole x, a uniform class ≠ ``labels`` from
    ``numpy.random.default_rng(seed)``, so ≠ the clean prediction when labels is None; the authors'
    rule (protocol §5.3) is a class ≠ the TRUE label, which is what a caller passing the true labels gets. An (N,)
    int array gives the targets (each must differ from its label); ``"untargeted"`` attacks
    ``labels``. κ ≥ 0 is the margin in logits; the defaults are the paper's (9 binary steps, 10,000
    iterations, step size 0.01, §4.3: Adam lr 0.01 in the authors' code) with c₀ = 1.0 from their
    ``test_adv.py`` (protocol §5.3). ``batch_size`` is
    the number of streaming slots. Abort early follows ``abort_rule="carliniL2"`` (module docstring).

    Returns an ``AttackResult``: success is κ-aware (the recorded decision); distortions are to x;
    label holds the labels used (given, else the clean prediction); zero_grad_fraction is NaN
    where the hinge is inactive at the first iterate (module docstring). ``progress``: None, or a
    callable given a one-line status (images finished, binary step, iteration) every 30 s.
    ``snapshot``: None, or an ``rcenp.attacks.cw_snapshot.Snapshot`` that the optimisation saves
    to and resumes from (a kill loses at most ``snapshot.every`` seconds of work; the result is an
    uninterrupted run's). ``details`` per sample: "c" (c of each binary step), "step_success", "step_iterations" and
    "step_stop" ("abort early" / "max iterations") per step, "best_l2" (box units, None without a
    success), "final_margin" (logits: z_t − max_{i≠t} z_i, untargeted max_{i≠y} z_i − z_y; for a
    success, that of the returned iterate as evaluated when it was kept, in the model's dtype, so
    > κ; without one, that of the returned clean image, recomputed), "final_margin_recomputed"
    (the returned image's from a separate forward pass, its logits cast to float64: an audit, which
    in float32 can differ from the decision's in the last bits). The target is the result's
    ``target`` (−1 when untargeted).
    Raises ValueError for bad images, labels, targets or settings (each named; binary_steps and
    max_iterations are integers from 1 to 2**63 - 1).
    """
    x = check_images(model, x)
    settings = check_settings(kappa, initial_const, binary_steps, max_iterations, learning_rate, batch_size)
    labels, targets, clean_prediction, label_rule, target_rule = choose_targets(
        model, x, targets, labels, seed, batch_size)
    targeted = targets is not None
    params = {**settings, "abort_early": bool(abort_early), "abort_rule": "carliniL2", "labels": label_rule,
              "targets": target_rule}
    run = optimise(model, x, x, targets if targeted else labels, targeted=targeted,
                   abort_early=bool(abort_early), progress=progress, snapshot=snapshot, **settings)
    result = assemble(model, x, run, labels, targets, clean_prediction, "cw_l2", params, batch_size)
    result.criterion = margin_test(model, targets if targeted else labels, targeted, settings["kappa"], batch_size)
    return result


# ---- arguments ------------------------------------------------------------------------------------
def check_settings(kappa, initial_const, binary_steps, max_iterations, learning_rate, batch_size) -> dict:
    """The checked optimiser settings as a dict (ValueError naming the first bad one; the counts
    binary_steps, max_iterations and batch_size are integers from 1 to 2**63 - 1,
    ``rcenp.checks.check_count``)."""
    kappa = check_real("kappa", kappa)
    if kappa < 0:
        raise ValueError(f"kappa must be finite and >= 0, got {kappa}")
    return {"kappa": kappa, "initial_const": check_positive("initial_const", initial_const),
            "binary_steps": check_count("binary_steps", binary_steps),
            "max_iterations": check_count("max_iterations", max_iterations),
            "learning_rate": check_positive("learning_rate", learning_rate),
            "batch_size": check_count("batch_size", batch_size)}


def choose_targets(model, x, targets, labels, seed, batch_size):
    """(labels, targets or None, clean prediction, label rule, target rule), host int64 arrays.
    Random targets are ≠ the labels used (the given labels, else the clean prediction)."""
    n, num_classes = len(x), model.network.num_classes
    if n == 0:
        raise ValueError("no images to attack (N = 0)")
    if num_classes < 2:
        raise ValueError(f"C&W needs at least 2 classes, got {num_classes}")
    clean_prediction = as_numpy(model.predict_logits(x, check_steps("batch_size", batch_size)).argmax(axis=1))
    label_rule = "clean prediction" if labels is None else "given"
    labels = clean_prediction if labels is None else check_labels("labels", as_numpy(labels), n, num_classes)
    if isinstance(targets, str):
        if targets != "untargeted":
            raise ValueError(f"targets must be None, an (N,) int array or 'untargeted', got {targets!r}")
        return labels, None, clean_prediction, label_rule, "untargeted"
    if targets is None:
        if int(seed) != seed:
            raise ValueError(f"seed must be an integer, got {seed!r}")
        offsets = make_rng(int(seed)).integers(1, num_classes, size=n)
        return labels, (labels + offsets) % num_classes, clean_prediction, label_rule, f"random (seed {int(seed)})"
    targets = check_labels("targets", as_numpy(targets), n, num_classes)
    if (targets == labels).any():
        raise ValueError(f"targets equal the label at positions {np.flatnonzero(targets == labels)[:10].tolist()}")
    return labels, targets, clean_prediction, label_rule, "given"


def adam_learning_rate(learning_rate: float, t):
    """Adam's bias-corrected step size lr·√(1−β₂ᵗ)/(1−β₁ᵗ) at iteration(s) ``t`` ≥ 1 (an int64
    array or scalar), float64, computed for the ``t`` at hand rather than tabled for the whole
    budget (8 bytes an iteration: 74.5 GiB at 10,000,000,000). It is the expression the table
    was computed with, and gives each t the table's bits (tests/test_attack_bad_input.py)."""
    return learning_rate * np.sqrt(1 - BETA2 ** t) / (1 - BETA1 ** t)


# ---- the optimiser ----------------------------------------------------------------------------------
def optimise(model, start, anchor, classes, *, targeted, kappa, initial_const, binary_steps, max_iterations,
             learning_rate, abort_early, batch_size, abort_rule: str = "carliniL2", density: Density | None = None,
             progress=None, label: str = "C&W", snapshot=None) -> dict:
    """The streamed C&W optimisation (module docstring) of N images.

    start (N, C, H, W): where x* starts (w₀ = arctanh(2·start·0.999999)); anchor (N, C, H, W): the
    image of the distance term; classes (N,): targets (targeted) or labels. ``abort_rule``:
    "carliniL2" (checks from iteration 0) or "carliniL2_specific" (C&W-wb's stage 2: the first
    check at the interval, which only records), see ``abort_checks``. With ``density`` a success
    must also have f₂ ≤ 0, and the smallest-f2_raw iterate past the κ margin is kept as a fallback
    (ties keep the last, the authors' ``<=``).

    Returns host arrays (N,) unless said: adversarial (N, C, H, W) (the best success, else the
    fallback, else start), success, fallback (bool), best_l2 (NaN without success); margin and
    f2_raw of the kept iterate (the returned success or fallback) as evaluated when it was kept,
    in the model's dtype cast to float64 (NaN where nothing was kept; f2_raw NaN without density);
    zero_grad_fraction (of the hinges' gradient at each sample's first iterate; NaN where no hinge
    is active there); and per-sample lists c, step_success, iterations, step_stop.
    ``progress(text)``, when given, hears how far the run is every PROGRESS_SECONDS. ``snapshot``:
    an ``rcenp.attacks.cw_snapshot.Snapshot`` to save the state to (every ``snapshot.every``
    seconds and at the end) and to resume from, with an uninterrupted run's result.
    Raises ValueError for an unknown abort_rule.
    """
    if abort_rule not in ABORT_RULES:
        raise ValueError(f"abort_rule must be one of {ABORT_RULES}, got {abort_rule!r}")
    model.eval()
    device = model.device
    xp = get_array_module(model.network.parameters()[0].data)
    n = len(start)
    dtype = model.network.parameters()[0].data.dtype
    start_host, anchor_host = as_numpy(start).astype(dtype), as_numpy(anchor).astype(dtype)
    classes = np.asarray(classes, dtype=np.int64)
    interval = max(1, max_iterations // 10)

    const, lower, upper = np.full(n, initial_const), np.zeros(n), np.full(n, SENTINEL)
    out = {"adversarial": start_host.copy(), "success": np.zeros(n, bool), "fallback": np.zeros(n, bool),
           **{key: np.full(n, np.nan) for key in ("best_l2", "margin", "f2_raw", "zero_grad_fraction")},
           **{key: [[] for _ in range(n)] for key in ("c", "step_success", "iterations", "step_stop")}}

    def dev(array):
        return to_device(array, device)

    def begin_step(s: Slots, rows):
        rows_d = dev(rows)
        for name in ("delta", "m", "v"):
            getattr(s, name)[rows_d] = 0
        s.prev[rows_d] = np.inf
        s.step_success[rows_d] = False
        s.it[rows] = 0
        s.c[rows_d] = dev(const[s.sample[rows]].astype(dtype))

    def load(s: Slots, rows, samples):
        rows_d = dev(rows)
        s.sample[rows], s.step[rows] = samples, 0
        s.cls[rows_d] = dev(classes[samples])
        s.anchor[rows_d] = dev(anchor_host[samples])
        s.w0[rows_d] = xp.arctanh(dev(start_host[samples]) * (2 * TANH_SHRINK))
        s.best_d2[rows_d] = np.inf
        if density is not None:
            s.eta[rows_d] = density.eta[s.cls[rows_d]]
            s.fallback_f2[rows_d] = np.inf
        begin_step(s, rows)

    # the slots, filled with the first images of the queue, or as a snapshot left them
    size = min(batch_size, n)
    shape = (size,) + start_host.shape[1:]
    expand = (slice(None),) + (None,) * (len(shape) - 1)
    key = None if snapshot is None else snapshot_key(
        model, start_host, anchor_host, classes, {
            "targeted": bool(targeted), "kappa": kappa, "initial_const": initial_const, "binary_steps": binary_steps,
            "max_iterations": max_iterations, "learning_rate": learning_rate, "abort_early": bool(abort_early),
            "batch_size": batch_size, "abort_rule": abort_rule, "dtype": str(np.dtype(dtype))}, density)
    restored = None if snapshot is None else snapshot.open(key, lambda arrays: state_problem(
        arrays, n, start_host.shape[1:], dtype, density is not None, out), progress, label)
    if restored is None:
        s = Slots(xp, size, shape, dtype, density is not None)
        load(s, np.arange(size), np.arange(size))
        queued = size
    else:
        age = snapshot.age()
        s, queued = restore_state(restored[0], xp, device, dtype, density is not None, const, lower, upper, out)
        if progress is not None:
            progress(snapshot.resumed_line(label, age, s, queued, n, restored[1]))

    last_report = time.monotonic()
    with snapshot.interruptible() if snapshot is not None else contextlib.nullcontext():
        while len(s.sample):
            if snapshot is not None and (snapshot.interrupted or snapshot.due()):
                snapshot.save(key, capture_state(s, const, lower, upper, queued, out))
                if snapshot.interrupted:  # SIGINT or SIGTERM came during the last iteration
                    snapshot.raise_interrupt()
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
            success = ev.gap < 0                                # margin > κ; a tie is a failure
            if density is not None:                             # the fallback: past the margin, smallest f₂
                kept = success & (ev.f2_raw <= s.fallback_f2)   # ties keep the last, as the authors' <=
                s.fallback_f2 = xp.where(kept, ev.f2_raw, s.fallback_f2)
                s.fallback_margin = xp.where(kept, ev.margin, s.fallback_margin)
                xp.copyto(s.fallback_adv, adv, where=kept[expand])
                success &= ev.f2_raw <= 0
            better = success & (ev.d2 < s.best_d2)              # the aborted iterate included (docstring)
            s.best_d2 = xp.where(better, ev.d2, s.best_d2)
            s.best_margin = xp.where(better, ev.margin, s.best_margin)
            if density is not None:
                s.best_f2 = xp.where(better, ev.f2_raw, s.best_f2)
            xp.copyto(s.best_adv, adv, where=better[expand])

            # which samples end their binary step with this iterate (decided on the host)
            aborted = np.zeros(rows, bool)
            check = abort_checks(s.it, interval, abort_rule) if abort_early else np.zeros(rows, bool)
            if check.any():
                check_d = dev(check)
                aborted = as_numpy(check_d & aborts(ev.loss, s.prev))
                s.prev = xp.where(check_d, ev.loss.astype(np.float64), s.prev)
                if aborted.any():                               # the reference breaks before counting it
                    success &= ~dev(aborted)
            s.step_success |= success
            ended = aborted | (s.it + 1 >= max_iterations)
            fresh = (s.step == 0) & (s.it == 0)

            # the gradient in w, then Adam (rows that end their step are reset below, so they skip the
            # backward unless it is their first iterate, whose gradient gives zero_grad_fraction)
            idle = ended & ~fresh
            g_net = ev.network_gradient(dev(~idle) if idle.any() else None)
            if fresh.any():
                fresh_d = dev(fresh)
                zeros = np.full(int(fresh.sum()), np.nan)       # no hinge active: zero by construction
                if g_net is not None:
                    active = as_numpy(ev.active()[fresh_d])
                    fraction = as_numpy((g_net[fresh_d] == 0).reshape(len(zeros), -1).mean(axis=1))
                    zeros[active] = fraction[active]
                out["zero_grad_fraction"][s.sample[fresh]] = zeros
            g = 2 * ev.diff if g_net is None else g_net + 2 * ev.diff
            g *= 0.5 * (1 - th * th)                                    # d x*/d w
            s.m *= BETA1
            s.m += (1 - BETA1) * g
            s.v *= BETA2
            s.v += (1 - BETA2) * (g * g)
            lr_t = dev(adam_learning_rate(learning_rate, s.it + 1).astype(dtype))
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
            s.store(out, finished, dev(finished))
            refill = finished[:min(len(finished), n - queued)]
            if len(refill):
                load(s, refill, np.arange(queued, queued + len(refill)))
                queued += len(refill)
            dropped = finished[len(refill):]
            if len(dropped):
                keep = np.ones(rows, bool)
                keep[dropped] = False
                s.keep(keep, dev(keep))
        if snapshot is not None:
            snapshot.save(key, capture_state(s, const, lower, upper, queued, out), finished=True)
    if snapshot is not None and snapshot.interrupted:  # a signal after the last iteration's check
        snapshot.raise_interrupt()
    return out
