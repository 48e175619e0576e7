"""What every attack shares: the input gradient, batching and ``AttackResult``.

Conventions (protocol §5, landscape §2.0):
- An attack sees a ``Classifier`` only through its *prediction logits* (s for CE, -s for RCE;
  ``Classifier.forward``), in eval mode (inference BN), so an RCE network is never attacked on its
  raw logits, which would invert every objective.
- Images are (N, C, H, W) float arrays in the [-0.5, 0.5] box. Work runs on the model's device;
  results come back as host NumPy arrays.
- Gradients are taken with ``rcenp.grad`` (no parameter ``.grad`` is touched) of a loss *summed*
  over the batch, so the loss's scale does not depend on the batch size and, in exact arithmetic,
  a sample's gradient is its own. The floating-point result is not exactly independent of the
  batch: a batched float32 forward pass can round differently at different batch sizes (about
  4e-6 on the shipped MNIST model's logits, tests/test_attacks_jsma.py), so a nearly tied decision
  (a JSMA pick, a sign(·) of a nearly zero gradient entry) can depend on the batch-mates. JSMA's
  active sub-batch also shrinks as its batch-mates finish. Results are reproducible for the same
  inputs and ``batch_size``; the float64 tests find them identical alone, batched and shuffled.
- The attacks run the model in eval mode and restore every module's own ``training`` flag on exit,
  also when they raise (``eval_mode``).
- Distortion is reported in two units: ‖δ‖₂ on the [-0.5, 0.5] box, and the paper's
  ‖δ‖₂/√d on the 0-255 scale (= 255·RMS(δ), protocol §5), plus ‖δ‖∞ and ‖δ‖₀.
"""
from __future__ import annotations

import dataclasses
import functools
import textwrap
from typing import Callable

import numpy as np

from rcenp.autograd import Tensor, grad
from rcenp.backend import as_numpy, get_array_module, to_device
from rcenp.checks import check_steps
from rcenp.grad_mode import no_grad
from rcenp.nn.module import PIXEL_BOX, check_model, eval_mode
from rcenp.ops.activation import log_softmax_array

BOX = PIXEL_BOX
UNTARGETED = -1


@dataclasses.dataclass(eq=False)
class AttackResult:
    """The outcome of one attack on N images (all host NumPy arrays; ``==`` is identity, as the
    fields are arrays).

    Fields whose meaning is attack-specific are defined in each attack's docstring; the list
    below gives the common frame and the cases that differ.

    - adversarial (N, C, H, W) in the box, in the model's dtype (float32 unless cast).
    - success (N,) bool, as each attack defines it. FGSM, BIM: not classified as ``label``. ILCM,
      JSMA: classified as ``target``. C&W: κ-aware (its margin test, which a plain argmax check
      does not reproduce for κ > 0), and C&W-wb's also needs f₂ ≤ 0 (``rcenp.attacks.cw``,
      ``rcenp.attacks.cw_wb``).
    - prediction (N,) int64 on the adversarial input; clean_prediction (N,) int64.
    - label (N,) int64. FGSM, BIM: the class attacked away from (the clean prediction unless
      labels are given). ILCM, JSMA: the clean prediction. C&W: the labels it was given.
    - target (N,) int64, -1 (``UNTARGETED``) when untargeted.
    - iterations (N,) int64, in the attack's unit (sign attacks: gradient steps; JSMA: picks;
      C&W: optimiser iterations over all binary steps); stop_reason (N,) str: "steps" (FGSM, BIM,
      ILCM: every step taken); "success" / "no success" (C&W), also "f2 > 0" (C&W-wb's fallback);
      "target reached", "max iterations", "saturated" or "no candidate" (JSMA).
    - zero_grad_fraction (N,) float64: the fraction of exactly-zero entries of the attack's input
      gradient at its first iterate (a gradient-masking signal, landscape §2.10). That iterate is
      the clean image for the sign attacks and JSMA; C&W measures at its tanh-box image
      ½·tanh(arctanh(2x·0.999999)) ≈ 0.999999·x and reports NaN where its hinge is inactive
      there (see ``rcenp.attacks.cw``).
    - distortions l2 (box units), l2_paper (‖δ‖₂/√d on 0-255), linf, l0: 0 where the attack
      returns the clean image (a C&W failure), so average ``l2_paper[success]`` for the paper's
      mean minimal distortion. They are float64 differences of the float32 images, so an ε-attack's
      linf can exceed ε by float32 rounding (FGSM at ε = 0.1: 0.10000000149, float32(0.1)).

    ``attack`` and ``params`` name the attack and its settings; ``details``, when given, holds one
    JSON-ready dict per sample with attack-specific audit entries (C&W's c trajectory, ...).
    ``criterion``, when given, applies the attack's own success test to other images of the same
    samples (images (N, C, H, W) → (N,) bool), so that success after 8-bit rounding means what
    ``success`` means (C&W: the κ margin; C&W-wb: also f₂ ≤ 0); None: the argmax test above.
    """

    adversarial: np.ndarray
    success: np.ndarray
    prediction: np.ndarray
    clean_prediction: np.ndarray
    label: np.ndarray
    target: np.ndarray
    iterations: np.ndarray
    stop_reason: np.ndarray
    zero_grad_fraction: np.ndarray
    l2: np.ndarray
    l2_paper: np.ndarray
    linf: np.ndarray
    l0: np.ndarray
    attack: str = ""
    params: dict = dataclasses.field(default_factory=dict)
    details: list | None = None
    criterion: Callable | None = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.success)

    def __repr__(self) -> str:
        """One line: the attack, N, the image shape, the success rate and the mean ‖δ‖₂/√d
        (0-255) of the successes; the arrays are the fields."""
        won = self.l2_paper[self.success] if len(self) else self.l2_paper
        distortion = f"{float(won.mean()):.2f}" if won.size else "n/a"
        return (f"AttackResult(attack={self.attack!r}, n={len(self)}, images={tuple(self.adversarial.shape[1:])}, "
                f"success_rate={self.success_rate:.3f}, mean_l2_paper_of_successes={distortion})")

    @property
    def success_rate(self) -> float:
        return float(self.success.mean()) if len(self) else float("nan")

    def accuracy(self, true_labels) -> float:
        """Fraction of adversarial inputs still classified as ``true_labels`` (N,) integers (accuracy
        under attack). Raises ValueError for labels of another shape or dtype."""
        labels = np.asarray(as_numpy(true_labels))
        if labels.shape != (len(self),) or labels.dtype.kind not in "iu":
            raise ValueError(f"true_labels must be ({len(self)},) integers, one per attacked image, "
                             f"got shape {labels.shape} {labels.dtype}")
        return float((self.prediction == labels).mean()) if len(self) else float("nan")

    def records(self) -> list[dict]:
        """One JSON-ready dict per sample (the per-sample audit)."""
        keys = ("success", "prediction", "clean_prediction", "label", "target", "iterations", "stop_reason",
                "zero_grad_fraction", "l2", "l2_paper", "linf", "l0")
        columns = {k: getattr(self, k).tolist() for k in keys}
        records = [{k: columns[k][i] for k in keys} for i in range(len(self))]
        for record, extra in zip(records, self.details or ()):
            clash = sorted(set(extra) & set(keys))
            if clash:  # a detail must not silently replace a common field (C&W's per-step counts did)
                raise ValueError(f"{self.attack}: per-sample details {clash} would replace AttackResult fields")
            record.update(extra)
        return records

    @classmethod
    def concatenate(cls, parts: list["AttackResult"]) -> "AttackResult":
        """The results of consecutive batches of one attack run, as one result (in order). Raises
        ValueError for no parts, or for parts of different attacks or settings."""
        if not parts:
            raise ValueError("nothing to concatenate")
        for part in parts[1:]:
            if part.attack != parts[0].attack or not _same(part.params, parts[0].params):
                raise ValueError(f"cannot concatenate results of different attacks or settings: "
                                 f"{parts[0].attack!r} {parts[0].params} and {part.attack!r} {part.params}")
        arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
                  for f in dataclasses.fields(cls) if f.name not in ("attack", "params", "details", "criterion")}
        details = None if parts[0].details is None else [d for p in parts for d in p.details]
        criterion = _joined_criterion(parts) if all(p.criterion is not None for p in parts) else None
        return cls(**arrays, attack=parts[0].attack, params=parts[0].params, details=details, criterion=criterion)


def _joined_criterion(parts):
    """One ``criterion`` for concatenated ``parts``: each part's test on its own samples."""
    bounds = np.cumsum([0] + [len(p) for p in parts])

    def criterion(images):
        return np.concatenate([p.criterion(images[lo:hi]) for p, lo, hi in zip(parts, bounds, bounds[1:])])
    return criterion


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except ValueError:  # arrays inside: no single truth value
        return False


def distortions(clean, adversarial) -> dict:
    """Per-sample l2 (box units), l2_paper (‖δ‖₂/√d on 0-255), linf and l0 (N,) float64/int64 (host)
    of two image arrays of one shape (N, ...); ValueError for two shapes."""
    if np.shape(clean) != np.shape(adversarial):
        raise ValueError(f"clean and adversarial images must have one shape, got {np.shape(clean)} and "
                         f"{np.shape(adversarial)}")
    delta = (np.asarray(adversarial, np.float64) - np.asarray(clean, np.float64)).reshape(len(clean), -1)
    l2 = np.sqrt((delta ** 2).sum(axis=1))
    d = max(delta.shape[1], 1)
    return {"l2": l2, "l2_paper": 255.0 * l2 / np.sqrt(d), "linf": np.abs(delta).max(axis=1, initial=0.0),
            "l0": (delta != 0).sum(axis=1).astype(np.int64)}


# ---- the model as an attack sees it --------------------------------------------------------------
def with_module_notes(attack, notes: str | None):
    """``attack`` with its module's docstring ``notes`` appended to its own. ``rcenp.attacks``
    exports ``jsma`` and ``cw_wb`` under their modules' names, which hides those modules from
    ``help()``; their docstrings, which the functions' refer to, are then read here."""
    if attack.__doc__ and notes:  # docstrings are None under python -OO
        attack.__doc__ += "\n    Notes (the module's docstring):\n\n" + textwrap.indent(notes, "    ")
    return attack


def in_eval_mode(attack):
    """Decorator for a public attack ``attack(model, ...)``: its whole body runs in
    ``eval_mode(model)``, so the caller's train/eval modes come back however it ends. Raises
    TypeError when ``model`` is not a ``Classifier`` (``rcenp.nn.module.check_model``)."""
    @functools.wraps(attack)
    def wrapped(model, *args, **kwargs):
        check_model(model)
        with eval_mode(model):
            return attack(model, *args, **kwargs)
    return wrapped


def prediction_logits(model, x):
    """Prediction logits (N, L) of a device array, in eval mode (the model's modes are restored),
    no graph."""
    with eval_mode(model), no_grad():
        return model(x).data


def soft_target_gradient(model, x, targets, tf_logit_gradient: bool = False):
    """(∇ₓ Σ_n -T_nᵀ log softmax(z_n), z) for the prediction logits z = model(x) (N, L), in eval
    mode (the model's modes are restored).

    ``targets`` is the constant target matrix T (N, L) (one-hot for CE on a label), or a function
    of the logits array returning it, so a target chosen from this very forward pass (the clean
    prediction, the least-likely class) costs no extra forward. The loss is summed over the batch,
    so its scale does not depend on the batch size. Its logit gradient is the exact derivative
    (Σ_j T_nj)·softmax(z_n) − T_n (``rcenp.ops.loss``).

    ``tf_logit_gradient=True`` backpropagates softmax(z_n) − T_n instead, whatever Σ_j T_nj is:
    the gradient TensorFlow's ``tf.nn.softmax_cross_entropy_with_logits`` returns and registers
    (its kernel's backprop output, passed through by the op's gradient). The two agree when every
    row of T sums to 1. Returns device arrays: the input gradient (N, C, H, W) and the logits
    (N, L) of ``x``.
    """
    from rcenp.ops.loss import SoftTargetCrossEntropy

    xp = get_array_module(x)
    with eval_mode(model):
        images = Tensor(x, requires_grad=True)
        logits = model(images)
        matrix = targets(logits.data) if callable(targets) else targets
        if tf_logit_gradient:
            gx = grad(logits, images, grad_output=xp.exp(log_softmax_array(logits.data, axis=1)) - matrix)
        else:
            loss = SoftTargetCrossEntropy(matrix)(logits)
            gx = grad(loss, images, grad_output=xp.asarray(x.shape[0], dtype=logits.dtype))
    return gx, logits.data


def one_hot(xp, labels, num_classes: int, dtype):
    return (xp.arange(num_classes)[None, :] == labels[:, None]).astype(dtype)


def to_model_device(model, array):
    return to_device(array, model.device)


def finish(model, clean, adversarial, label, target, iterations, stop_reason, zero_grad_fraction, clean_prediction,
           attack: str, params: dict, targeted: bool, details: list | None = None) -> AttackResult:
    """Assemble an ``AttackResult`` from device arrays (predicts the adversarial input once)."""
    prediction = as_numpy(prediction_logits(model, adversarial).argmax(axis=1)).astype(np.int64)
    label, target = as_numpy(label).astype(np.int64), as_numpy(target).astype(np.int64)
    success = prediction == target if targeted else prediction != label
    adv_host = as_numpy(adversarial)  # the model's dtype: float32, or float64 for a float64 model
    return AttackResult(adversarial=adv_host, success=success, prediction=prediction,
                        clean_prediction=as_numpy(clean_prediction).astype(np.int64), label=label, target=target,
                        iterations=as_numpy(iterations).astype(np.int64), stop_reason=np.asarray(stop_reason, dtype=str),
                        zero_grad_fraction=as_numpy(zero_grad_fraction).astype(np.float64),
                        **distortions(as_numpy(clean), adv_host), attack=attack, params=params, details=details)


def in_batches(attack_batch, model, x, batch_size: int, *per_sample) -> AttackResult:
    """Run ``attack_batch(x_b, *per_sample_b) -> AttackResult`` over batches of ``batch_size``.

    ``per_sample`` arrays (or None) are sliced alongside ``x``; the results are concatenated.
    """
    batch_size = check_steps("batch_size", batch_size)
    if len(x) == 0:
        raise ValueError("no images to attack (N = 0)")
    parts = []
    for start in range(0, len(x), batch_size):
        stop = start + batch_size
        extra = [None if a is None else a[start:stop] for a in per_sample]
        parts.append(attack_batch(to_model_device(model, x[start:stop]), *extra))
    return AttackResult.concatenate(parts)
