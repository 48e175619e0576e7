"""Attack behaviour pinned by a mutation audit (2026-12-03): each test here failed on a planted,
plausible bug that the other attack tests let through (the IDs in the docstrings are the audit's):
BIM as the iterated closed form, linf of |δ|, C&W's exact tie and κ test, the recorded final margin,
C&W-wb's fallback and stage-2 wiring, the attacker points' seed, the 8- and 16-bit audits of a
targeted argmax attack and of C&W, the transfer run's substitute checks, and JSMA's zero-gradient
fraction (sign(0) = 0 in BIM: test_attacks_sign)."""
import importlib

import numpy as np
import pytest

from rcenp import attacks
from rcenp.attacks import cw_result
from rcenp.attacks.audit import attack_and_audit, quantize
from rcenp.attacks.core import distortions
from rcenp.attacks.cw import optimise
from rcenp.attacks.cw_loss import Density
from rcenp.attacks.transfer import CraftedRun
from rcenp.backend import make_rng
from tests.test_attacks_cw import box_images, linear_model
from tests.test_attacks_cw_wb import density_case, end_to_end_case
from tests.test_attacks_sign import softmax

cw_wb_module = importlib.import_module("rcenp.attacks.cw_wb")  # rcenp.attacks.cw_wb is the function


@pytest.mark.parametrize("objective", ["ce", "rce"])
@pytest.mark.parametrize("seed", range(6))
def test_bim_is_the_iterated_closed_form(objective, seed):
    """S3b S4b S10b (S1b): r projected steps of eps/r on CE of the fixed clean prediction."""
    model = linear_model(objective, seed % 3)
    x = box_images(seed, 8)
    eps, steps = 0.3, 4
    w, b = model.network.fc.weight.data, model.network.fc.bias.data
    sign = -1.0 if objective == "rce" else 1.0
    x0 = x.reshape(8, 16)
    y = (sign * (x0 @ w.T + b)).argmax(axis=1)
    lower, upper = np.maximum(x0 - eps, -0.5), np.minimum(x0 + eps, 0.5)
    adv = x0.copy()
    for _ in range(steps):
        p = softmax(sign * (adv @ w.T + b))
        p[np.arange(8), y] -= 1
        adv = np.minimum(np.maximum(adv + (eps / steps) * np.sign(sign * (p @ w)), lower), upper)
    result = attacks.bim(model, x, eps, steps=steps)
    np.testing.assert_array_equal(result.adversarial.reshape(8, 16), adv)


def test_linf_is_of_the_absolute_difference():
    """D5"""
    assert distortions(np.zeros((1, 4)), np.full((1, 4), -0.3))["linf"][0] == pytest.approx(0.3)


def test_cw_hinge_gradient_is_zero_at_an_exact_tie():
    """C16: at gap = 0 exactly (zero image, equal biases, kappa 0) the hinge passes no gradient and
    the distance term none either: the iterate never moves, no success."""
    model = linear_model("ce", 3, num_classes=3)
    model.network.fc.bias.data[:] = [1.0, 1.0, -5.0]
    x = np.zeros((1, 1, 4, 4))
    result = attacks.cw_l2(model, x, targets=np.array([1]), labels=np.array([0]), binary_steps=1,
                           max_iterations=20, learning_rate=0.1, abort_early=False)
    assert not result.success[0]
    from rcenp.attacks.cw_loss import Evaluation
    at_start = Evaluation(model, x, x, np.array([1]), np.array([1.0]), 0.0, True)   # the first iterate
    assert float(at_start.gap[0]) == 0.0 and at_start.network_gradient() is None   # nothing to move it
    assert float(at_start.d2[0]) == 0.0


def test_criterion_fails_a_tie():
    """C27"""
    model = linear_model("ce", 4, num_classes=2)
    model.network.fc.weight.data[1] = model.network.fc.weight.data[0]
    model.network.fc.bias.data[:] = 0.25
    x = box_images(4, 3)
    result = attacks.cw_l2(model, x, targets=np.ones(3, np.int64), labels=np.zeros(3, np.int64),
                           binary_steps=1, max_iterations=3)
    assert not result.criterion(x).any()


def test_final_margin_of_a_success_is_the_decisions_not_the_recompute(monkeypatch):
    """C26"""
    model = linear_model("ce", 5, scale=4.0)
    x = box_images(5, 6)
    kw = dict(binary_steps=2, max_iterations=50, learning_rate=0.05)
    plain = attacks.cw_l2(model, x, **kw)
    real = cw_result.margins
    monkeypatch.setattr(cw_result, "margins", lambda *a: (real(*a)[0], real(*a)[1] + 1.0))
    shifted = attacks.cw_l2(model, x, **kw)
    assert plain.success.any()
    for d0, d1, won in zip(plain.details, shifted.details, plain.success):
        if won:
            assert d0["final_margin"] == d1["final_margin"]


def test_fallback_is_the_smallest_f2_iterate(monkeypatch):
    """W5"""
    import rcenp.attacks.cw as cw_module
    model, x, targets, kwargs = density_case()
    points = np.random.default_rng(3).normal(0, 0.3, (4, 3, 6))
    density = Density(points, 1.0, np.full(4, -1e6))
    i = int(np.flatnonzero(optimise(model, x, x, targets, density=density, **kwargs)["fallback"])[0])
    x, targets = x[i:i + 1], targets[i:i + 1]
    seen = []
    Real = cw_module.Evaluation

    class Spy(Real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            if self.f2_raw is not None and self.gap[0] < 0:
                seen.append(float(self.f2_raw[0]))
    monkeypatch.setattr(cw_module, "Evaluation", Spy)
    out = optimise(model, x, x, targets, density=density, **kwargs)
    assert out["fallback"][0]
    assert out["f2_raw"][0] == min(seen)


@pytest.mark.filterwarnings("ignore::rcenp.attacks.EtaApproximationWarning")
def test_stage2_wiring(monkeypatch):
    """W8 W9b W13: stage 2 starts at stage 1's image, anchors at the clean image, uses the specific rule."""
    calls = []
    real = cw_wb_module.optimise

    def spy(model, start, anchor, classes, **kw):
        out = real(model, start, anchor, classes, **kw)
        calls.append((np.array(start), np.array(anchor), kw, out))
        return out
    monkeypatch.setattr(cw_wb_module, "optimise", spy)
    model, detector, x, result = end_to_end_case()
    calls.clear()
    model, detector, x, result = end_to_end_case()
    (s1, a1, k1, o1), (s2, a2, k2, o2) = calls
    np.testing.assert_array_equal(s2, o1["adversarial"])
    np.testing.assert_array_equal(a2, x)
    assert k2["abort_rule"] == "carliniL2_specific"


@pytest.mark.filterwarnings("ignore::rcenp.attacks.EtaApproximationWarning")
def test_default_anchor_is_clean_best_l2_is_l2_to_x():
    """W8 behaviourally"""
    model, detector, x, result = end_to_end_case()
    assert result.success.any()                      # else the loop below checks nothing
    for i, d in enumerate(result.details):
        if result.success[i]:
            assert d["best_l2"] == pytest.approx(result.l2[i], rel=1e-6)


@pytest.mark.filterwarnings("ignore::rcenp.attacks.EtaApproximationWarning")
def test_attacker_points_follow_the_documented_seed():
    """W11"""
    model, detector, x, result = end_to_end_case()
    points, _ = cw_wb_module.attack_kernel(detector, model, "attacker", 5, 3)
    full = np.asarray(detector.kernel_points, np.float64)
    rng = make_rng([3, 1])
    expected = np.stack([full[c, rng.choice(full.shape[1], size=5, replace=False)] for c in range(full.shape[0])])
    np.testing.assert_array_equal(points, expected)


def test_success_8bit_of_a_targeted_argmax_attack_is_the_target():
    """A4"""
    model = linear_model("ce", seed=2, scale=4.0)
    x = box_images(2, 40)
    index, labels = np.arange(40), model.predict(x)
    result, records = attack_and_audit(attacks.ilcm, model, None, x, labels, index, {"eps": 0.15, "steps": 3},
                                       batch_size=40)
    pred = model.predict(quantize(result.adversarial, 256).astype(np.float64))
    assert [r["success_8bit"] for r in records] == list(pred == result.target)
    assert ((pred != result.label) & (pred != result.target)).any(), "case too easy"


def test_success_16bit_is_the_criterion_after_16_bit_rounding(tmp_path):
    """A5"""
    model = linear_model("ce", seed=2, scale=4.0)
    x = box_images(2, 12)
    index, labels = np.arange(12), model.predict(x)
    result, records = attack_and_audit(attacks.cw_l2, model, None, x, labels, index,
                                       {"kappa": 1.0, "binary_steps": 5, "max_iterations": 100,
                                        "learning_rate": 0.05}, batch_size=5, png_dir=tmp_path)
    expect = result.criterion(quantize(result.adversarial, 65536).astype(np.float64))
    assert [r["success_16bit"] for r in records] == list(expect)
    assert [r["success_16bit"] for r in records] != [r["success_8bit"] for r in records]


def _crafted(adv, lines):
    run = CraftedRun.__new__(CraftedRun)
    run.arrays, run.lines = {"adversarial": adv}, lines
    return run


def test_one_off_margin_is_refused():
    """T4"""
    model = linear_model("ce", 1)
    adv = box_images(1, 4)
    targets = (model.predict(adv) + 1) % 5
    _, margin = cw_result.margins(model, adv, targets, True, 10)
    lines = [{"target": int(t), "label": 0, "final_margin_recomputed": float(m)} for t, m in zip(targets, margin)]
    assert _crafted(adv, lines).substitute_disagrees(model, 10) is None
    lines[2]["final_margin_recomputed"] += 0.01
    assert _crafted(adv, lines).substitute_disagrees(model, 10) is not None


def test_a_non_cw_run_with_another_prediction_is_refused():
    """T5"""
    model = linear_model("ce", 1)
    adv = box_images(1, 4)
    pred = model.predict(adv)
    lines = [{"adversarial_prediction": int(p)} for p in pred]
    assert _crafted(adv, lines).substitute_disagrees(model, 10) is None
    lines[1]["adversarial_prediction"] = (lines[1]["adversarial_prediction"] + 1) % 5
    assert _crafted(adv, lines).substitute_disagrees(model, 10) is not None


def test_papernot_zero_grad_fraction_is_of_the_target_gradient():
    """J14"""
    model = linear_model("ce", 7)
    x = box_images(7, 3) * 0.5
    t = (model.predict(x) + 1) % 5
    t[:] = t[0]
    model.network.fc.weight.data[t[0], :4] = 0
    t = np.where(model.predict(x) == t, (t + 1) % 5, t)
    result = attacks.jsma(model, x, 1.0, targets=t, variant="papernot", gamma=1.0, max_iterations=1)
    expect = np.array([(model.network.fc.weight.data[k] == 0).mean() for k in t])
    np.testing.assert_array_equal(result.zero_grad_fraction, expect)
