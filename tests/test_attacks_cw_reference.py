"""C&W and C&W-wb against the reference code's details (rcenp.attacks.cw, cw_search, cw_loss, cw_wb):
abort-early timing of each stage, the aborted iterate and the binary search, the float64 abort
comparison, the fallback's ties, the f₂ kink, the recorded f₂ and margin of the kept iterate, and
zero_grad_fraction where the hinge is inactive. Float64 toy models unless said."""
import importlib

import numpy as np
import pytest

from rcenp import attacks
from rcenp.attacks.cw import optimise
from rcenp.attacks.cw_loss import Density, Evaluation
from rcenp.attacks.cw_search import abort_checks, aborts
from rcenp.detect.detector import Detector
from rcenp.objectives import Classifier
from tests.test_attacks_cw import box_images, linear_model, reference_cw
from tests.test_attacks_cw_wb import FeatureNet

cw_wb_module = importlib.import_module("rcenp.attacks.cw_wb")  # the package exports the function cw_wb


def ramp_model(bias):
    """Two classes on (N, 1, 4, 4) images: z₀ = 0, z₁ = Σ pixels + bias. From x = 0 with target 1
    the hinge is active (margin = bias < 0) and Adam's first step, ≈ lr·sign(g) in every pixel,
    overshoots past the margin."""
    model = linear_model("ce", 0, num_classes=2)
    model.network.fc.weight.data[...] = np.stack([np.zeros(16), np.ones(16)])
    model.network.fc.bias.data[...] = [0.0, bias]
    return model


def constant_model(seed, dtype=np.float64):
    """FeatureNet with zero hidden weights and random biases: every image has the features
    tanh(b) and the same logits, so neither the margin nor f₂ moves with x*."""
    network = FeatureNet(seed)
    network.hidden.weight.data[...] = 0
    network.hidden.bias.data[...] = np.random.default_rng(seed).normal(0, 1, 6)
    network.fc.bias.data[...] = np.random.default_rng(seed + 1).normal(0, 1, 4)
    return Classifier(network, "rce").astype(dtype).eval()


SETTINGS = dict(targeted=True, kappa=0.0, initial_const=1.0, abort_early=True, batch_size=1)


# ---- abort early ------------------------------------------------------------------------------------
def test_abort_checks_of_each_rule():
    it = np.arange(45)
    np.testing.assert_array_equal(np.flatnonzero(abort_checks(it, 10, "carliniL2")), [0, 10, 20, 30, 40])
    np.testing.assert_array_equal(np.flatnonzero(abort_checks(it, 10, "carliniL2_specific")), [10, 20, 30, 40])
    np.testing.assert_array_equal(np.flatnonzero(abort_checks(it[:5], 1, "carliniL2_specific")), [2, 3, 4])
    with pytest.raises(ValueError, match="abort_rule"):
        abort_checks(it, 10, "tf")
    with pytest.raises(ValueError, match="abort_rule"):
        optimise(ramp_model(-0.01), np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 4)), [1], binary_steps=1,
                 max_iterations=5, learning_rate=0.1, abort_rule="tf", **SETTINGS)


def test_stage2_rule_first_check_only_records():
    """The loss rises between iteration 0 and the first interval (10 of 100): the carliniL2 rule
    aborts there (11 iterations), the carliniL2_specific rule only records there, so its earliest
    abort is at iteration 20; both match the loop written out."""
    model, x = ramp_model(-0.01), np.zeros((1, 1, 4, 4))
    runs = {}
    for rule in ("carliniL2", "carliniL2_specific"):
        runs[rule] = optimise(model, x, x, np.array([1]), binary_steps=2, max_iterations=100, learning_rate=0.1,
                              abort_rule=rule, **SETTINGS)
        best, cs, wins, counts = reference_cw(model, x[0], 1, True, 0.0, 1.0, 2, 100, 0.1, abort_rule=rule)
        run = runs[rule]
        assert run["c"][0] == cs and run["step_success"][0] == wins and run["iterations"][0] == counts
        np.testing.assert_allclose(run["adversarial"][0].reshape(-1), best, rtol=0, atol=1e-12)
    assert runs["carliniL2"]["iterations"][0] == [11, 11]
    specific = runs["carliniL2_specific"]
    assert specific["step_stop"][0] == ["abort early"] * 2
    assert all(n >= 21 and (n - 1) % 10 == 0 for n in specific["iterations"][0])


def test_the_aborted_iterate_does_not_count_for_the_binary_search():
    """max_iterations 5 (checks every iteration): iteration 0 fails (loss 0.1), iteration 1 has
    overshot past the margin with loss d2 = 4·tanh²(0.5) ≈ 0.85 > 0.1 and aborts. It is the step's
    only success: as in the reference (which breaks before its bookkeeping) the step counts as a
    failure and c rises 1 → 10; the iterate is still returned as the best image."""
    model, x = ramp_model(-0.1), np.zeros((1, 1, 4, 4))
    two = optimise(model, x, x, np.array([1]), binary_steps=2, max_iterations=5, learning_rate=0.5, **SETTINGS)
    assert two["c"][0] == [1.0, 10.0] and two["step_success"][0][0] is False
    assert two["iterations"][0][0] == 2 and two["step_stop"][0][0] == "abort early"
    _, cs, wins, counts = reference_cw(model, x[0], 1, True, 0.0, 1.0, 2, 5, 0.5)
    assert two["c"][0] == cs and two["step_success"][0] == wins and two["iterations"][0] == counts
    one = optimise(model, x, x, np.array([1]), binary_steps=1, max_iterations=5, learning_rate=0.5, **SETTINGS)
    assert one["step_success"][0] == [False] and one["success"][0]
    np.testing.assert_allclose(one["adversarial"][0], np.full((1, 4, 4), 0.5 * np.tanh(0.5)), rtol=1e-6)
    np.testing.assert_allclose(one["best_l2"][0], 2 * np.tanh(0.5), rtol=1e-6)


def test_abort_comparison_is_float64():
    """At float32 losses equal to float32(0.9999 × prev), a float32 comparison never aborts; the
    reference's float64 product says 'abort' wherever float32 rounded the product up."""
    prev = np.linspace(1, 2, 1001, dtype=np.float32)
    loss = np.float32(0.9999) * prev
    in_float32 = loss > 0.9999 * prev
    decided = aborts(loss, prev.astype(np.float64))
    np.testing.assert_array_equal(decided, loss.astype(np.float64) > 0.9999 * prev.astype(np.float64))
    assert decided.any() and not in_float32.any()


# ---- C&W-wb's f₂ ------------------------------------------------------------------------------------
def test_fallback_ties_keep_the_last_iterate():
    """Constant features and logits: every iterate is past the margin with the same f2_raw > 0, so
    all tie for the fallback; the authors' ``<=`` keeps the last one evaluated (iteration 4 of the
    one step), here an Adam path on the distance alone, written out."""
    model = constant_model(3)
    z = model(box_images(0, 1)).data[0]
    target = int(z.argmax())
    start, anchor = box_images(20, 1) * 0.8, box_images(21, 1) * 0.8
    density = Density(np.random.default_rng(3).normal(0, 0.3, (4, 3, 6)), 1.0, np.full(4, -1e6))
    out = optimise(model, start, anchor, np.array([target]), targeted=True, kappa=0.0, initial_const=1.0,
                   binary_steps=1, max_iterations=5, learning_rate=0.05, abort_early=False, batch_size=1,
                   density=density)
    assert out["fallback"][0] and not out["success"][0]
    w0 = np.arctanh(2 * start[0] * 0.999999)
    delta, m, v = np.zeros_like(w0), np.zeros_like(w0), np.zeros_like(w0)
    for it in range(5):
        th = np.tanh(w0 + delta)
        adv = th / 2
        g = 2 * (adv - anchor[0]) * 0.5 * (1 - th * th)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        delta = delta - 0.05 * np.sqrt(1 - 0.999 ** (it + 1)) / (1 - 0.9 ** (it + 1)) * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(out["adversarial"][0], adv, rtol=0, atol=1e-12)
    assert np.abs(adv - np.tanh(w0) / 2).max() > 1e-3                # not the first iterate


def test_f2_gradient_passes_at_its_kink():
    """f2_raw exactly 0: TF's maximum(log_density_ratio, 0.0) passes the gradient there, so the
    network gradient is the active one's (the margin hinge is off, κ = −100)."""
    model = Classifier(FeatureNet(4), "rce").astype(np.float64).eval()
    adv = box_images(22, 2) * 0.9
    cls, c = np.array([1, 3]), np.array([0.5, 2.0])
    points = np.random.default_rng(4).normal(0, 0.5, (4, 5, 6))
    density = Density(points, 0.1 / 0.26, np.zeros(4))
    log_kd = Evaluation(model, adv, adv, cls, c, -100.0, True, density, np.zeros(2)).log_kd.data
    at_kink = Evaluation(model, adv, adv, cls, c, -100.0, True, density, -log_kd)
    assert (at_kink.f2_raw == 0).all()
    active = Evaluation(model, adv, adv, cls, c, -100.0, True, density, -log_kd - 1.0)
    np.testing.assert_array_equal(at_kink.network_gradient(), active.network_gradient())
    assert at_kink.active().all()


@pytest.mark.filterwarnings("ignore::rcenp.attacks.EtaApproximationWarning")   # the approximation on purpose
def test_reported_f2_and_margin_are_the_decisions_float32(monkeypatch):
    """float32, constant features, η₆₄ a quarter ulp below the float32 −log KD v: η rounds to v in
    float32, so the decision's f2_raw = v − v = 0 and every iterate succeeds; a float64 recompute
    finds f₂ = v − η₆₄ > 0. The reported f2, f2_raw and final_margin are the decision's."""
    model = constant_model(5, np.float32)
    x = box_images(23, 1).astype(np.float32)
    target = int(model(x).data.argmax())
    labels = np.array([(target + 1) % 4])
    detector = Detector(model)
    detector.kernel_points = np.random.default_rng(5).normal(0, 0.5, (4, 5, 6)).astype(np.float32)
    points = detector.kernel_points.astype(np.float64)
    density = Density(detector.kernel_points, detector.sigma2, np.zeros(4, np.float32))
    v = -Evaluation(model, x, x, np.array([target]), np.ones(1, np.float32), 0.0, True, density,
                    np.zeros(1, np.float32)).log_kd.data[0]
    eta = float(v) - 0.25 * float(np.spacing(v))
    assert np.float32(eta) == v and float(v) - eta > 0
    monkeypatch.setattr(cw_wb_module, "attack_kernel", lambda *args, **kwargs: (points, np.full(4, eta)))
    stages = dict(stage1=dict(kappa=0.0, binary_steps=1, max_iterations=3),
                  stage2=dict(kappa=0.0, initial_const=1.0, binary_steps=2, max_iterations=3))
    result = attacks.cw_wb(model, x, detector, targets=np.array([target]), labels=labels, kernel="detector",
                           **stages)
    d = result.details[0]
    assert result.success[0] and result.stop_reason[0] == "success"
    assert d["f2"] == 0 and d["f2_raw"] <= 0 and d["final_margin"] >= 0.0
    assert d["f2_recomputed"] > 0                                      # what the report used to say


@pytest.mark.parametrize("seed", [0, 1])
def test_every_success_reports_f2_at_most_0_and_margin_at_least_kappa(seed):
    """float32 end to end with the exact η (successes sit on both boundaries)."""
    model = Classifier(FeatureNet(seed), "rce").astype(np.float32).eval()
    images = box_images(100 + seed, 80).astype(np.float32)
    labels = np.arange(80) % 4
    detector = Detector(model).fit(images, labels, per_class=12, seed=seed)
    stages = dict(stage1=dict(kappa=0.5, binary_steps=2, max_iterations=30),
                  stage2=dict(kappa=0.5, initial_const=1.0, binary_steps=4, max_iterations=60))
    result = attacks.cw_wb(model, box_images(15 + seed, 20).astype(np.float32), detector, attacker_points=5,
                           learning_rate=0.02, seed=seed, train_features=model.features(images).data,
                           train_labels=labels, **stages)
    assert result.success.sum() >= 10
    for d, won in zip(result.details, result.success):
        if won:
            assert d["f2"] == 0 and d["final_margin"] >= 0.5 and d["f2_raw"] <= 0
    assert result.params["eta_exact"] and result.params["stage2"]["abort_rule"] == "carliniL2_specific"


# ---- zero_grad_fraction -------------------------------------------------------------------------------
def test_zero_grad_fraction_is_nan_where_the_hinge_is_inactive():
    """Targeted at the class the image already has with margin > κ, or untargeted away from a label
    the image does not have: the hinge is off at the first iterate, its gradient zero by
    construction: NaN. A constant-logit model with the hinge on: a real all-zero gradient, 1.0."""
    model = linear_model("ce", 11, scale=4.0)
    x = box_images(24, 4)
    z = model(x).data
    prediction = z.argmax(axis=1)
    other = (prediction + 1) % 5
    targets = np.where(np.arange(4) < 2, prediction, other)
    labels = np.where(np.arange(4) < 2, other, prediction)
    kwargs = dict(binary_steps=1, max_iterations=3, learning_rate=0.05)
    targeted = attacks.cw_l2(model, x, targets=targets, labels=labels, kappa=0.0, **kwargs)
    assert np.isnan(targeted.zero_grad_fraction[:2]).all()
    assert (targeted.zero_grad_fraction[2:] == 0).all()
    untargeted = attacks.cw_l2(model, x, targets="untargeted", labels=labels, **kwargs)
    assert np.isnan(untargeted.zero_grad_fraction[:2]).all() and (untargeted.zero_grad_fraction[2:] == 0).all()
    flat = constant_model(6)
    y = box_images(25, 2)
    p = flat(y).data.argmax(axis=1)
    masked = attacks.cw_l2(flat, y, targets=(p + 1) % 4, labels=p, **kwargs)
    np.testing.assert_array_equal(masked.zero_grad_fraction, [1.0, 1.0])
