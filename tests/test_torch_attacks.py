"""The PyTorch BIM and JSMA of bench/torch_attacks.py against the protocol (§5.1, §5.2), on linear
models in float64 where the gradients are known. Skips without torch (a bench-only dependency)."""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from torch_attacks import bim, jsma  # noqa: E402

L, SHAPE = 10, (1, 4, 4)
D = int(np.prod(SHAPE))


class Linear(torch.nn.Module):
    """Prediction logits z = W·flatten(x) + b, float64."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(L, D, generator=g, dtype=torch.float64)
        self.b = torch.randn(L, generator=g, dtype=torch.float64)

    def forward(self, x):
        return x.reshape(len(x), -1) @ self.w.T + self.b


def _images(n, seed):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5


def _ce_gradient(model, x, labels):
    """d CE(z, labels) / dx of a linear model: Wᵀ(softmax(z) - onehot)."""
    p = model(x).softmax(1)
    return ((p - torch.nn.functional.one_hot(labels, L)) @ model.w).view_as(x)


@pytest.mark.parametrize("steps", [1, 10])
def test_bim_is_the_closed_form(steps):
    model, x = Linear(0), _images(32, 1)
    eps, label = 0.2, model(x).argmax(1)  # the clean prediction, fixed for every step
    lower, upper = (x - eps).clamp(min=-0.5), (x + eps).clamp(max=0.5)
    expected = x
    for _ in range(steps):
        expected = (expected + eps / steps * _ce_gradient(model, expected, label).sign()).clamp(lower, upper)
    x_adv = bim(model, x, eps, steps=steps)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-15)
    assert (x_adv - x).abs().max() <= eps + 1e-12 and x_adv.min() >= -0.5 and x_adv.max() <= 0.5
    assert (model(x_adv).argmax(1) != label).any()


def _jsma_reference(model, x, target, theta, max_iterations):
    """One image, written from the protocol's words: the full Jacobian of softmax, dt its target
    row, do the sum of the other rows; candidates < 0.5 with dt >= 0 and do <= 0."""
    x = x.clone().reshape(-1)
    for _ in range(max_iterations):
        z = model(x.view(1, *SHAPE))[0]
        if z.argmax() == target or not (x < 0.5).any():
            break
        jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, *SHAPE))[0].softmax(0), x)
        dt = jac[target]
        do = jac.sum(0) - dt
        free = x < 0.5
        candidates = free & (dt >= 0) & (do <= 0)
        if candidates.any():
            score = torch.where(candidates, dt * do.abs(), torch.tensor(-np.inf, dtype=x.dtype))
        else:
            score = torch.where(free, dt - do, torch.tensor(-np.inf, dtype=x.dtype))
        i = score.argmax()
        x[i] = min(float(x[i]) + theta, 0.5)
    return x.view(SHAPE)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jsma_matches_the_per_image_reference(seed):
    model, x = Linear(seed), _images(12, seed + 10)
    x_adv = jsma(model, x, 0.15, max_iterations=30)
    target = model(x).argmin(1)
    for i in range(len(x)):
        torch.testing.assert_close(x_adv[i], _jsma_reference(model, x[i], target[i], 0.15, 30), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_jsma_log_target_saliency_picks_as_pang2018(seed):
    """Away from F_t underflow, argmax d log F_t/dx is the protocol's pick (do = -dt + noise)."""
    model, x = Linear(seed), _images(24, seed + 20)
    torch.testing.assert_close(jsma(model, x, 0.1, 40, saliency="log_target"), jsma(model, x, 0.1, 40), rtol=0, atol=0)


def test_jsma_per_image_stop_and_moves():
    model, x = Linear(5), _images(40, 6)
    theta, iterations = 0.1, 25
    x_adv = jsma(model, x, theta, max_iterations=iterations)
    delta = (x_adv - x).reshape(len(x), -1)
    assert (delta >= 0).all() and x_adv.max() <= 0.5
    # each change is k*theta, or stops at 0.5; at most one feature per iteration
    steps = torch.where(x_adv.reshape(len(x), -1) < 0.5, delta / theta, torch.ceil(delta / theta - 1e-9))
    assert torch.allclose(steps, steps.round(), atol=1e-9)
    assert steps.round().sum(1).max() <= iterations
    reached = model(x_adv).argmax(1) == model(x).argmin(1)
    assert reached.any() and (~reached).any()  # the test exercises both kinds of stop
    # an image that reached the target made no step after it: its last step was the one that got there
    single = torch.stack([jsma(model, x[i:i + 1], theta, iterations)[0] for i in range(len(x))])
    torch.testing.assert_close(x_adv, single, rtol=0, atol=1e-12)


def test_jsma_zero_iterations_and_bad_arguments():
    model, x = Linear(0), _images(3, 0)
    assert torch.equal(jsma(model, x, 0.1, max_iterations=0), x)
    with pytest.raises(ValueError):
        jsma(model, x, 0.1, max_iterations=-1)
    with pytest.raises(ValueError, match="saliency"):
        jsma(model, x, 0.1, saliency="papernot")
    with pytest.raises(ValueError):
        bim(model, x, -0.1)
