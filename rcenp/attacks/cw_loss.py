"""The C&W objective of a batch of iterates, evaluated in one forward pass, with its gradient in x*
on demand: C&W-L2's distance + c·hinge (paper §4.3, protocol §5.3) and C&W-wb's density term
(paper §4.4, protocol §5.4). The optimiser around it is ``rcenp.attacks.cw.optimise``.
"""
from __future__ import annotations

from rcenp.autograd import Tensor, grad
from rcenp.backend import get_array_module
from rcenp.detect.kde import log_kernel_density


class Density:
    """C&W-wb's extra term f₂ = max(−log KD(Z(x*)) − η_t, 0) under class t's kernel points.

    kernel_points (L, M, D) and eta (L,) on the model's device; sigma2 the kernel's σ²."""

    def __init__(self, kernel_points, sigma2, eta):
        self.kernel_points, self.sigma2, self.eta = kernel_points, float(sigma2), eta


class Evaluation:
    """The C&W loss of S iterates x* (S, C, H, W) in ONE forward pass; the gradient on demand.

    loss = d2 + c·hinge (+ c·max(f2_raw, 0)), with d2 = ‖x* − anchor‖², hinge = max(gap, 0),
    gap = κ − margin, margin = z_t − max_{i≠t} z_i (targeted; untargeted max_{i≠y} z_i − z_y),
    f2_raw = −log KD(Z(x*); class t) − η_t. ``cls``, ``c``, ``eta`` are (S,) device arrays; every
    attribute is an (S,) array in the model's dtype (margin, gap, d2, loss, f2_raw), the very
    values the optimiser's decisions use.
    """

    def __init__(self, model, adv, anchor, cls, c, kappa, targeted, density=None, eta=None):
        xp = get_array_module(adv)
        self.targeted, self.c = targeted, c
        self.images = Tensor(adv, requires_grad=True)
        if density is None:
            self.logits, self.log_kd = model(self.images), None
        else:
            features = model.features(self.images)
            self.logits = model.prediction_logits(model.network.fc(features))
            self.log_kd = log_kernel_density(features, density.kernel_points, cls, density.sigma2)
        z = self.logits.data
        self.is_cls = xp.arange(z.shape[1])[None, :] == cls[:, None]
        masked = xp.where(self.is_cls, -xp.inf, z)      # the max over i ≠ t, right for negative logits
        self.best_other = masked.argmax(axis=1)
        other = xp.take_along_axis(masked, self.best_other[:, None], axis=1)[:, 0]
        z_cls = xp.take_along_axis(z, cls[:, None], axis=1)[:, 0]
        self.margin = z_cls - other if targeted else other - z_cls
        self.gap = kappa - self.margin                  # success ⇔ gap < 0 ⇔ margin > κ
        self.diff = adv - anchor
        self.d2 = (self.diff * self.diff).reshape(len(adv), -1).sum(axis=1)
        self.loss = self.d2 + c * xp.maximum(self.gap, 0)
        self.f2_raw = None
        if density is not None:
            self.f2_raw = -self.log_kd.data - eta
            self.loss += c * xp.maximum(self.f2_raw, 0)

    def active(self):
        """(S,) device bool: where a hinge passes a gradient, i.e. gap > 0, or f2_raw ≥ 0 (with a
        density). Elsewhere the network gradient is zero by construction."""
        on = self.gap > 0
        return on if self.f2_raw is None else on | (self.f2_raw >= 0)

    def network_gradient(self, rows=None):
        """∂(c·hinge + c·f₂)/∂x* (S, C, H, W) for the rows where ``rows`` (device bool, default all)
        is True, zero elsewhere; None when that is zero everywhere. One backward pass.

        At a kink (measure zero) the gradient follows TensorFlow's ``maximum(x, y)``, which sends
        it to x when x ≥ y, as the authors' graphs do: the margin hinge ``maximum(0.0, gap)`` gives
        0 at gap = 0, the density hinge ``maximum(log_density_ratio, 0.0)``
        (``carliniL2_specific.py``) passes the f₂ gradient at f2_raw = 0."""
        xp = get_array_module(self.gap)
        weight = self.c * (self.gap > 0)
        weight_kd = None if self.f2_raw is None else -self.c * (self.f2_raw >= 0)
        if rows is not None:
            weight = xp.where(rows, weight, 0)
            weight_kd = None if weight_kd is None else xp.where(rows, weight_kd, 0)
        if not bool((weight != 0).any() or (weight_kd is not None and (weight_kd != 0).any())):
            return None
        pick = (xp.arange(self.is_cls.shape[1])[None, :] == self.best_other[:, None]).astype(weight.dtype)
        g_logits = (weight if self.targeted else -weight)[:, None] * (pick - self.is_cls)
        if weight_kd is None:
            return grad(self.logits, self.images, grad_output=g_logits)
        return grad((self.logits * g_logits).sum() + (self.log_kd * weight_kd).sum(), self.images)
