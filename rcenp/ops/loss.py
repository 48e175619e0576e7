"""Classification losses on logits s (N, L) and integer labels y (N,), averaged over the batch.

All three are -Tᵀ log softmax(s) for a per-example target vector T:
- cross-entropy: T = 1_y;
- reverse cross-entropy (paper eq. 4): T = R_y, zero at y and 1/(L-1) elsewhere;
- smoothed cross-entropy CE^λ (eq. 2): T = 1_y + λ R_y.
The gradient with respect to the logits is (Σ T)·softmax(s) - T (softmax - R_y for RCE, protocol
§2), divided by N for the batch mean.

Each raises ValueError unless the labels are integers of shape (N,) in [0, L - 1] (an
out-of-range label would otherwise match no class and silently drop out of the loss).
"""
from __future__ import annotations

from rcenp.autograd import Function, Tensor, as_array
from rcenp.backend import device_of, get_array_module, to_device
from rcenp.checks import check_labels
from rcenp.ops.activation import log_softmax_array


def one_hot(labels, num_classes, dtype):
    xp = get_array_module(labels)
    return (xp.arange(num_classes) == labels[:, None]).astype(dtype)


def reverse_label(labels, num_classes, dtype):
    """R_y (N, L): 0 at the true class, 1/(L-1) elsewhere."""
    return (1.0 - one_hot(labels, num_classes, dtype)) / (num_classes - 1)


class SoftTargetCrossEntropy(Function):
    """mean_n ( -T_nᵀ log softmax(s_n) ) for a constant target T (N, L)."""

    def __init__(self, targets):
        self.targets = targets

    def forward(self, logits):
        xp = get_array_module(logits)
        self.log_p = log_softmax_array(logits, axis=1)
        n = logits.shape[0]
        return xp.asarray(-(self.targets * self.log_p).sum() / n, dtype=logits.dtype)

    def backward(self, gy):
        xp = get_array_module(gy)
        t = self.targets
        mass = t.sum(axis=1, keepdims=True)
        return (mass * xp.exp(self.log_p) - t) * (gy / t.shape[0])


def _check(logits, labels):
    """The checked labels on the logits' device (host labels with GPU logits, or the reverse)."""
    labels = check_labels("labels", as_array(labels), logits.shape[0], logits.shape[1])
    return to_device(labels, device_of(logits))


def cross_entropy(logits, labels) -> Tensor:
    """mean_n -log softmax(s_n)[y_n]."""
    labels = _check(logits, labels)
    return SoftTargetCrossEntropy(one_hot(labels, logits.shape[1], logits.dtype))(logits)


def reverse_cross_entropy(logits, labels) -> Tensor:
    """Paper eq. 4: mean_n -R_{y_n}ᵀ log softmax(s_n) (train on s; predict with -s)."""
    labels = _check(logits, labels)
    return SoftTargetCrossEntropy(reverse_label(labels, logits.shape[1], logits.dtype))(logits)


def smoothed_cross_entropy(logits, labels, lam) -> Tensor:
    """Paper eq. 2: CE^λ = CE - λ R_yᵀ log softmax(s); its minimiser is P^λ (eq. 3)."""
    labels = _check(logits, labels)
    num_classes = logits.shape[1]
    targets = one_hot(labels, num_classes, logits.dtype) + lam * reverse_label(labels, num_classes, logits.dtype)
    return SoftTargetCrossEntropy(targets.astype(logits.dtype))(logits)
