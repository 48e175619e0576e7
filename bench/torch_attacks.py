"""The paper's BIM and JSMA in plain PyTorch, written from the protocol (not from rcenp's code), for
``bench_attacks.py`` to run on the PyTorch twin of an rcenp model. Bench-only.

``model`` is any torch module mapping images (N, C, H, W) in [-0.5, 0.5] to *prediction* logits
(N, L): s for CE, -s for RCE (``torch_twin.Twin``), in eval mode. Both attacks return x_adv, a new
float tensor shaped like x, and leave x alone.
"""
from __future__ import annotations

if __name__ == "__main__":  # a module, not a command; said before torch's import, which may fail
    import sys

    from bench_host import not_a_command
    sys.exit(not_a_command(__file__))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LOW, HIGH = -0.5, 0.5


def bim(model, x, eps, steps=10):
    """Basic iterative method (protocol §5.1): ``steps`` steps of eps/steps along the sign of
    d CE(prediction logits, clean predicted label) / dx, each step clipped to the eps-ball
    around x (L-inf) and to the [-0.5, 0.5] box. eps in [-0.5, 0.5] units."""
    if eps < 0 or steps < 1:
        raise ValueError(f"bim needs eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    x = x.detach()
    with torch.no_grad():
        label = model(x).argmax(1)
    lower, upper = (x - eps).clamp(min=LOW), (x + eps).clamp(max=HIGH)
    alpha = eps / steps
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        # summed, not averaged: each image's gradient is its own, whatever the batch
        loss = F.cross_entropy(model(x_adv), label, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.minimum(torch.maximum(x_adv.detach() + alpha * grad.sign(), lower), upper)
    return x_adv


def _jsma_scores(dt, do, unsaturated):
    """pang2018 saliency (N, D): dt*|do| over candidates (unsaturated, dt >= 0, do <= 0); an image
    with no candidate scores dt - do over its unsaturated features. Excluded features: -inf."""
    excluded = torch.tensor(float("-inf"), dtype=dt.dtype)
    candidates = unsaturated & (dt >= 0) & (do <= 0)
    score = torch.where(candidates, dt * do.abs(), excluded)
    fallback = torch.where(unsaturated, dt - do, excluded)
    return torch.where(candidates.any(1, keepdim=True), score, fallback)


SALIENCIES = ("pang2018", "log_target")


def jsma(model, x, theta, max_iterations=100, saliency="pang2018"):
    """JSMA as the authors ran it (protocol §5.2, ``pair=False``), batched with a per-image stop.

    Target t = the least-likely class of the clean prediction (argmin of the prediction logits).
    Each iteration picks one feature per image, adds theta and clips to 0.5; features may be picked
    again until they reach 0.5. An image stops when its prediction is t, when none of its features
    is below 0.5, or after ``max_iterations``. theta in [-0.5, 0.5] units (the paper: theta = eps).

    ``saliency="pang2018"``, the protocol's words: on F = softmax(prediction logits), dt = dF_t/dx
    and do = d(sum_j F_j)/dx - dt (two backward passes); the pick is the first maximum of
    ``_jsma_scores``. Since sum_j F_j = 1, do is float noise minus dt, so that is the first maximum
    of dt over the features below 0.5, up to that noise and to F_t underflowing to 0 (then dt = 0
    and the picks walk the features in raster order). ``saliency="log_target"`` picks that maximum
    directly from d log F_t/dx (one backward pass, no underflow), as ``rcenp.attacks.jsma`` does.
    """
    if max_iterations < 0:
        raise ValueError(f"jsma needs max_iterations >= 0, got {max_iterations}")
    if saliency not in SALIENCIES:
        raise ValueError(f"saliency must be one of {SALIENCIES}, got {saliency!r}")
    n, shape = len(x), x.shape[1:]
    x_adv = x.detach().reshape(n, -1).clone()
    with torch.no_grad():
        target = model(x.detach()).argmin(1)
    active = torch.ones(n, dtype=torch.bool)
    for _ in range(max_iterations):
        rows = active.nonzero().squeeze(1)
        features = x_adv[rows].requires_grad_(True)
        logits = model(features.view(-1, *shape))
        t = target[rows]
        unsaturated = features.detach() < HIGH
        # this forward also gives the prediction of the previous iteration's image
        going = (logits.argmax(1) != t) & unsaturated.any(1)
        active[rows] = going
        if not going.any():
            break
        # finished rows are in the batch but get no step (their share of the backward is waste)
        if saliency == "pang2018":
            p = logits.softmax(1)
            (dt,) = torch.autograd.grad(p.gather(1, t[:, None]).sum(), features, retain_graph=True)
            (dsum,) = torch.autograd.grad(p.sum(), features)
            score = _jsma_scores(dt, dsum - dt, unsaturated)
        else:
            (dlog,) = torch.autograd.grad(logits.log_softmax(1).gather(1, t[:, None]).sum(), features)
            score = torch.where(unsaturated, dlog, torch.tensor(float("-inf"), dtype=dlog.dtype))
        pick = score.argmax(1)
        rows, pick = rows[going], pick[going]
        x_adv[rows, pick] = (x_adv[rows, pick] + theta).clamp(max=HIGH)
    return x_adv.view(n, *shape)
