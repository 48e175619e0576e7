"""Per-example detection metrics on prediction logits (N, L), computed in log space.

``logits`` are the prediction logits: s for CE networks, -s for RCE (``Classifier.forward``).
Both metrics are oriented so that higher means "more normal" (protocol §4).
"""
from __future__ import annotations

from rcenp.autograd import Tensor
from rcenp.backend import get_array_module


def _array(logits):
    logits = logits.data if isinstance(logits, Tensor) else logits
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"expected logits of shape (N, L) with L >= 2, got {logits.shape}")
    return logits


def _logsumexp(xp, a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (xp.log(xp.exp(a - m).sum(axis=axis, keepdims=True)) + m).squeeze(axis)


def confidence(logits):
    """max_i softmax(logits)_i = 1 / Σ_j exp(s_j - s_max) → (N,)."""
    logits = _array(logits)
    xp = get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return 1.0 / xp.exp(shifted).sum(axis=1)


def non_me(logits):
    """Non-maximal entropy (paper eq. 1) → (N,), in [0, log(L-1)].

    F̂_i = F_i / Σ_{j≠ŷ} F_j, so log F̂_i = s_i - logsumexp_{j≠ŷ} s_j: the softmax normaliser
    cancels and nothing underflows to log(0).
    """
    logits = _array(logits)
    xp = get_array_module(logits)
    n, num_classes = logits.shape
    top = logits.argmax(axis=1)
    others = xp.ones((n, num_classes), dtype=bool)
    others[xp.arange(n), top] = False
    rest = logits[others].reshape(n, num_classes - 1)
    log_f = rest - _logsumexp(xp, rest, 1)[:, None]
    return -(xp.exp(log_f) * log_f).sum(axis=1)
