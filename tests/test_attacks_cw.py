"""C&W-L2 and C&W-wb (rcenp.attacks.cw, cw_wb): the reference algorithm on a linear model, the
binary-search rule, κ-aware success, masked max for negative logits, per-sample abort and streaming,
targets, errors; f₂ and its gradient (underflow regime included), η, the fallback, end to end."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcenp import attacks
from rcenp import functional as F
from rcenp.attacks.cw import SENTINEL, binary_search_update, optimise
from rcenp.attacks.cw_loss import Density, Evaluation
from rcenp.attacks.cw_wb import attack_kernel, eta_from_neg_log_kd, neg_log_kd_reference
from rcenp.detect.detector import Detector
from rcenp.detect.kde import log_kernel_density_reference
from rcenp.models import resnet
from rcenp.nn import Module
from rcenp.nn.layers import Linear
from rcenp.objectives import Classifier
from rcenp.testing import numerical_grads


class LinearNet(Module):
    """Logits s = W·vec(x) + b on (N, 1, 4, 4) images."""

    def __init__(self, seed=0, num_classes=5, scale=1.0, shift=0.0):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, 1
        self.fc = Linear(16, num_classes, rng=np.random.default_rng(seed))
        self.fc.weight.data[...] *= scale
        self.fc.bias.data[...] = np.random.default_rng(seed + 1).normal(0, 0.3, num_classes) + shift

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], 16))


def linear_model(objective="ce", seed=0, dtype=np.float64, **kwargs):
    return Classifier(LinearNet(seed, **kwargs), objective).astype(dtype).eval()


def box_images(seed, n, shape=(1, 4, 4), dtype=np.float64):
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, (n,) + shape)
    x[:, :, 0, 0] = 0.5        # pixels on the box's faces
    x[:, :, 0, 1] = -0.5
    return x.astype(dtype)


def reference_cw(model, x, cls, targeted, kappa, c0, steps, iterations, lr, abort_early=True,
                 abort_rule="carliniL2"):
    """Carlini's l2_attack.py for ONE image of a linear model, written out loop by loop (float64,
    closed-form gradient), with this project's documented choices: distance to the true x, per-sample
    abort, κ-aware success with ties failing. As in the reference, the iterate at which the step
    aborts does not count for the binary search (``won``); unlike it, it is still considered for the
    returned image. ``abort_rule="carliniL2_specific"``: checks only at iterations > 1 (the authors'
    stage 2)."""
    w, b = model.network.fc.weight.data, model.network.fc.bias.data
    sign = -1.0 if model.objective == "rce" else 1.0
    x = x.reshape(-1)
    w0 = np.arctanh(2 * x * 0.999999)
    c, lower, upper = c0, 0.0, 1e10
    interval = max(1, iterations // 10)
    best_d2, best, cs, wins, counts = np.inf, None, [], [], []
    for step in range(steps):
        if steps >= 10 and step == steps - 1:
            c = upper
        delta, m, v, prev, won = np.zeros(16), np.zeros(16), np.zeros(16), np.inf, False
        for it in range(iterations):
            th = np.tanh(w0 + delta)
            adv = th / 2
            z = sign * (w @ adv + b)
            others = np.where(np.arange(len(z)) == cls, -np.inf, z)
            j = int(np.argmax(others))
            gap = (z[j] - z[cls] if targeted else z[cls] - z[j]) + kappa
            d2 = float(((adv - x) ** 2).sum())
            loss = d2 + c * max(gap, 0.0)
            if gap < 0 and d2 < best_d2:
                best_d2, best = d2, adv.copy()
            if abort_early and it % interval == 0 and (abort_rule == "carliniL2" or it > 1):
                if loss > 0.9999 * prev:
                    break
                prev = loss
            won = won or gap < 0
            gz = np.zeros(len(z))
            if gap > 0:
                gz[j], gz[cls] = (c, -c) if targeted else (-c, c)
            g = (sign * (w.T @ gz) + 2 * (adv - x)) * 0.5 * (1 - th * th)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            delta = delta - lr * np.sqrt(1 - 0.999 ** (it + 1)) / (1 - 0.9 ** (it + 1)) * m / (np.sqrt(v) + 1e-8)
        counts.append(it + 1)
        cs.append(c)
        wins.append(won)
        c, lower, upper = (float(a[0]) for a in binary_search_update([c], [lower], [upper], [won]))
    return best, cs, wins, counts


# ---- the binary search -------------------------------------------------------------------------
def test_binary_search_worked_example():
    c, lo, up = np.array([1.0]), np.array([0.0]), np.array([SENTINEL])
    trajectory = []
    for won in (False, True, True, False, True):
        c, lo, up = binary_search_update(c, lo, up, [won])
        trajectory.append((c[0], lo[0], up[0]))
    assert trajectory == [(10.0, 1.0, SENTINEL), (5.5, 1.0, 10.0), (3.25, 1.0, 5.5), (4.375, 3.25, 5.5),
                          (3.8125, 3.25, 4.375)]


@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=30), c0=st.floats(1e-3, 1e3))
def test_binary_search_invariants(outcomes, c0):
    """lower ≤ c ≤ upper (once an upper bound is known), upper never grows, lower never shrinks, and
    c moves strictly: down after a success, up after a failure. ART's aliasing bug, which freezes c
    after the first success, breaks the strict moves."""
    c, lo, up = np.array([c0]), np.array([0.0]), np.array([SENTINEL])
    for won in outcomes:
        c1, lo1, up1 = binary_search_update(c, lo, up, [won])
        assert up1[0] <= up[0] and lo1[0] >= lo[0]
        assert lo1[0] <= c1[0] and (c1[0] <= up1[0] or up1[0] == SENTINEL)
        if won:
            assert c1[0] < c[0] and up1[0] == c[0] and lo1[0] == lo[0]
        else:
            assert c1[0] > c[0] and lo1[0] == c[0] and up1[0] == up[0]
        c, lo, up = c1, lo1, up1


def test_binary_search_is_elementwise():
    rng = np.random.default_rng(0)
    c, lo, up = rng.uniform(1, 5, 6), rng.uniform(0, 1, 6), np.array([SENTINEL, 8, 9, SENTINEL, 7, 6.0])
    won = np.array([True, False, True, False, True, False])
    together = binary_search_update(c, lo, up, won)
    for i in range(6):
        alone = binary_search_update(c[i:i + 1], lo[i:i + 1], up[i:i + 1], won[i:i + 1])
        for a, b in zip(together, alone):
            assert a[i] == b[0]


# ---- the algorithm -----------------------------------------------------------------------------
@pytest.mark.parametrize("objective, targets, kappa, steps", [
    ("ce", None, 0.0, 4), ("rce", None, 1.0, 4), ("ce", "untargeted", 0.5, 3), ("rce", None, 0.0, 10)])
def test_matches_the_reference_algorithm_on_a_linear_model(objective, targets, kappa, steps):
    model = linear_model(objective, seed=1)
    x = box_images(1, 4)
    result = attacks.cw_l2(model, x, targets=targets, kappa=kappa, binary_steps=steps, max_iterations=60,
                           learning_rate=0.05, batch_size=3)
    targeted = targets is None
    for i in range(4):
        cls = result.target[i] if targeted else result.label[i]
        best, cs, wins, counts = reference_cw(model, x[i], cls, targeted, kappa, 1.0, steps, 60, 0.05)
        d = result.details[i]
        assert d["c"] == cs and d["step_success"] == wins and d["step_iterations"] == counts
        assert result.iterations[i] == sum(counts)
        assert result.success[i] == (best is not None)
        expected = x[i] if best is None else best.reshape(x[i].shape)
        np.testing.assert_allclose(result.adversarial[i], expected, rtol=0, atol=1e-12)
    assert result.success.any()


@pytest.mark.parametrize("objective, kappa", [("ce", 0.0), ("rce", 1.0), ("ce", 1.0)])
def test_targeted_reaches_every_target_with_margin_kappa(objective, kappa):
    model = linear_model(objective, seed=2, scale=4.0)
    x = box_images(2, 12)
    result = attacks.cw_l2(model, x, kappa=kappa, binary_steps=5, max_iterations=100, learning_rate=0.05,
                           batch_size=5)
    assert result.success.all()
    assert (result.target != result.label).all()
    z = result.adversarial.reshape(12, 16) @ model.network.fc.weight.data.T
    z = (-1 if objective == "rce" else 1) * (z + model.network.fc.bias.data)
    idx = np.arange(12)
    others = z.copy()
    others[idx, result.target] = -np.inf
    margin = z[idx, result.target] - others.max(axis=1)
    assert (margin > kappa).all()
    np.testing.assert_allclose([d["final_margin"] for d in result.details], margin, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.prediction, result.target)
    assert result.adversarial.min() >= -0.5 and result.adversarial.max() <= 0.5
    best = np.array([d["best_l2"] for d in result.details])
    np.testing.assert_allclose(result.l2, best, rtol=1e-12)                  # the returned image is the best
    assert list(result.stop_reason) == ["success"] * 12


def test_negative_logits_use_a_masked_max():
    """Shifting every logit by -100 changes no decision: (1 - onehot)·z would make 'other' 0, above
    every logit, and no target could ever be reached."""
    x = box_images(3, 5)
    plain = attacks.cw_l2(linear_model("ce", 3), x, binary_steps=3, max_iterations=40, learning_rate=0.05)
    shifted = attacks.cw_l2(linear_model("ce", 3, shift=-100.0), x, binary_steps=3, max_iterations=40,
                            learning_rate=0.05)
    assert plain.success.all() and shifted.success.all()
    np.testing.assert_array_equal(shifted.target, plain.target)
    np.testing.assert_allclose(shifted.adversarial, plain.adversarial, atol=1e-6)
    assert [d["c"] for d in shifted.details] == [d["c"] for d in plain.details]


def test_a_tie_is_a_failure_and_a_failure_returns_the_clean_image():
    model = linear_model("ce", 4, num_classes=2)
    model.network.fc.weight.data[1] = model.network.fc.weight.data[0]
    model.network.fc.bias.data[:] = 0.25               # z_0 == z_1 for every input: never past the margin
    x = box_images(4, 3)
    result = attacks.cw_l2(model, x, targets=np.ones(3, np.int64), labels=np.zeros(3, np.int64),
                           binary_steps=3, max_iterations=10)
    assert not result.success.any()
    np.testing.assert_array_equal(result.adversarial, x)
    assert [d["best_l2"] for d in result.details] == [None] * 3
    assert [d["final_margin"] for d in result.details] == [0.0] * 3
    assert [d["c"] for d in result.details] == [[1.0, 10.0, 100.0]] * 3
    assert list(result.stop_reason) == ["no success"] * 3


def test_abort_early_is_per_sample_and_can_be_switched_off():
    model = linear_model("ce", 5, scale=4.0)
    x = box_images(5, 6)
    on = attacks.cw_l2(model, x, binary_steps=3, max_iterations=200, learning_rate=0.05)
    off = attacks.cw_l2(model, x, binary_steps=3, max_iterations=200, learning_rate=0.05, abort_early=False)
    assert all(d["step_iterations"] == [200] * 3 and d["step_stop"] == ["max iterations"] * 3 for d in off.details)
    assert any("abort early" in d["step_stop"] for d in on.details)
    for d in on.details:
        for n, stop in zip(d["step_iterations"], d["step_stop"]):
            assert stop == "max iterations" and n == 200 or stop == "abort early" and (n - 1) % 20 == 0
    assert len({tuple(d["step_iterations"]) for d in on.details}) > 1      # samples stop on their own


def test_progress_reports_and_changes_nothing(monkeypatch):
    """With progress, every iteration's status reaches the callable (PROGRESS_SECONDS = 0 here) and
    the result is the run without it, bit for bit."""
    from rcenp.attacks import cw

    model = linear_model("rce", 6, scale=3.0)
    x = box_images(6, 8)
    quiet = attacks.cw_l2(model, x, binary_steps=2, max_iterations=20, learning_rate=0.05, batch_size=3)
    monkeypatch.setattr(cw, "PROGRESS_SECONDS", 0.0)
    heard = []
    loud = attacks.cw_l2(model, x, binary_steps=2, max_iterations=20, learning_rate=0.05, batch_size=3,
                         progress=heard.append)
    assert_same_runs(loud, quiet)
    assert len(heard) >= max(sum(d["step_iterations"]) for d in quiet.details)  # one report per pass
    assert heard[0] == "C&W: 0/8 images finished; 3 in work, binary step 1-1 of 2, iteration up to 0 of 20"
    assert heard[-1].startswith("C&W: 7/8 images finished; 1 in work, binary step 2-2 of 2")


def assert_same_runs(a, b, rows=None):
    """Same decisions and c trajectories, bit for bit; the same images (these cases happen to be bit for
    bit too); float64 figures equal up to the batch-size-dependent rounding of BLAS (e.g. a 1-row
    product takes another kernel)."""
    rows = range(len(a)) if rows is None else rows
    np.testing.assert_array_equal(a.adversarial, b.adversarial[rows])
    np.testing.assert_array_equal(a.target, b.target[list(rows)])
    for da, i in zip(a.details, rows):
        db = b.details[i]
        for key in ("c", "step_success", "step_iterations", "step_stop"):
            assert da[key] == db[key], (i, key)
        for key in ("best_l2", "final_margin"):
            assert (da[key] is None) == (db[key] is None)
            if da[key] is not None:
                np.testing.assert_allclose(da[key], db[key], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_streaming_does_not_change_any_sample_linear(batch_size):
    model = linear_model("rce", 6, scale=3.0)
    x = box_images(6, 8)
    reference = attacks.cw_l2(model, x, binary_steps=4, max_iterations=50, learning_rate=0.05, batch_size=8)
    result = attacks.cw_l2(model, x, binary_steps=4, max_iterations=50, learning_rate=0.05, batch_size=batch_size)
    assert_same_runs(result, reference)
    alone = attacks.cw_l2(model, x[5:6], targets=reference.target[5:6], binary_steps=4, max_iterations=50,
                          learning_rate=0.05)
    assert_same_runs(alone, reference, [5])
    assert len({tuple(d["step_iterations"]) for d in reference.details}) > 1   # the slots really are refilled


def test_streaming_does_not_change_any_sample_resnet():
    """float64 ResNet: alone == batched == streamed through 2 slots."""
    model = Classifier(resnet(8, 1, seed=3), "rce").astype(np.float64).eval()
    x = box_images(7, 4, (1, 8, 8))
    kwargs = dict(binary_steps=2, max_iterations=10, learning_rate=0.05)
    together = attacks.cw_l2(model, x, batch_size=4, **kwargs)
    streamed = attacks.cw_l2(model, x, batch_size=2, **kwargs)
    assert_same_runs(streamed, together)
    for i in (0, 3):
        alone = attacks.cw_l2(model, x[i:i + 1], targets=together.target[i:i + 1], batch_size=1, **kwargs)
        assert_same_runs(alone, together, [i])


def test_float32_model_runs_in_float32():
    model = linear_model("ce", 8, np.float32, scale=4.0)
    x = box_images(8, 5, dtype=np.float32)
    result = attacks.cw_l2(model, x, kappa=0.5, binary_steps=3, max_iterations=60, learning_rate=0.05)
    assert result.adversarial.dtype == np.float32 and result.success.all()
    assert all(d["final_margin"] > 0.5 - 1e-5 for d in result.details)


# ---- targets, seeds, errors ----------------------------------------------------------------------
def test_random_targets_differ_from_labels_and_follow_the_seed():
    model = linear_model("ce", 9)
    x = box_images(9, 40)
    kwargs = dict(binary_steps=1, max_iterations=1)
    first = attacks.cw_l2(model, x, seed=11, **kwargs)
    again = attacks.cw_l2(model, x, seed=11, batch_size=7, **kwargs)
    other = attacks.cw_l2(model, x, seed=12, **kwargs)
    labels = np.arange(40) % 5
    given = attacks.cw_l2(model, x, labels=labels, seed=11, **kwargs)
    np.testing.assert_array_equal(first.target, again.target)
    np.testing.assert_array_equal(first.adversarial, again.adversarial)
    assert (first.target != first.clean_prediction).all() and (first.label == first.clean_prediction).all()
    assert (given.target != labels).all() and (given.label == labels).all()
    assert (first.target != other.target).any()
    assert set(first.target) == set(range(5))
    assert first.params["targets"] == "random (seed 11)" and first.params["labels"] == "clean prediction"


def test_given_targets_and_untargeted():
    model = linear_model("ce", 10, scale=4.0)
    x = box_images(10, 4)
    clean = model.predict(x)
    targets = (clean + 2) % 5
    result = attacks.cw_l2(model, x, targets=targets, binary_steps=3, max_iterations=60, learning_rate=0.05)
    np.testing.assert_array_equal(result.target, targets)
    np.testing.assert_array_equal(result.prediction[result.success], targets[result.success])
    untargeted = attacks.cw_l2(model, x, targets="untargeted", binary_steps=3, max_iterations=60,
                               learning_rate=0.05)
    assert (untargeted.target == -1).all() and untargeted.success.all()
    assert (untargeted.prediction != clean).all()
    assert all("target" not in d and d["final_margin"] > 0 for d in untargeted.details)


@pytest.mark.parametrize("kwargs, message", [
    (dict(targets="nope"), "targets must be"),
    (dict(targets=np.zeros(3, np.int64), labels=np.zeros(3, np.int64)), "targets equal the label"),
    (dict(targets=np.full(3, 7)), "targets must lie in"),
    (dict(labels=np.zeros(2, np.int64)), "labels must have shape"),
    (dict(kappa=-1.0), "kappa"),
    (dict(kappa=float("nan")), "kappa"),
    (dict(kappa=None), "kappa"),
    (dict(kappa=True), "kappa"),
    (dict(initial_const=0.0), "initial_const"),
    (dict(binary_steps=0), "binary_steps"),
    (dict(max_iterations=2.5), "max_iterations"),
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        attacks.cw_l2(linear_model("ce", 0), box_images(0, 3), **kwargs)


def test_bad_images_raise():
    model = linear_model("ce", 0)
    with pytest.raises(ValueError, match="box"):
        attacks.cw_l2(model, box_images(0, 2) + 0.1)
    with pytest.raises(ValueError, match="N = 0"):
        attacks.cw_l2(model, np.zeros((0, 1, 4, 4)))


# ---- C&W-wb ------------------------------------------------------------------------------------
class FeatureNet(Module):
    """Z = tanh(V·vec(x)) (6 features), logits s = W·Z + b, on (N, 1, 4, 4) images."""

    def __init__(self, seed=0, num_classes=4):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, 1
        self.hidden = Linear(16, 6, rng=np.random.default_rng(seed))
        self.hidden.weight.data[...] *= 3
        self.fc = Linear(6, num_classes, rng=np.random.default_rng(seed + 1))
        self.fc.weight.data[...] *= 3

    def features(self, x):
        return F.tanh(self.hidden(x.reshape(x.shape[0], 16)))

    def forward(self, x):
        return self.fc(self.features(x))


def feature_model(objective="ce", seed=0):
    return Classifier(FeatureNet(seed), objective).astype(np.float64).eval()


def fitted_detector(model, seed=0, per_class=12):
    images = box_images(100 + seed, 80)
    return Detector(model).fit(images, np.arange(80) % 4, per_class=per_class, seed=seed)


@pytest.mark.parametrize("regime", ["active", "inactive", "underflow"])
def test_cw_wb_loss_gradient_matches_finite_differences(regime):
    """f₂ and the margin hinge through the network, float64 central differences. 'underflow': RCE's
    σ² and kernel points far from every feature, where mean(exp(−d²/σ²)) is exactly 0 even in float64
    (the authors' log(1e-30 + mean exp) has a zero gradient there); log space stays exact."""
    model = feature_model("rce", 1)
    rng = np.random.default_rng(1)
    points = rng.normal(0, 0.5, (4, 5, 6)) + (30.0 if regime == "underflow" else 0.0)
    sigma2 = 0.1 / 0.26
    eta = np.full(4, {"active": -5.0, "inactive": 1e3, "underflow": 0.0}[regime])
    density = Density(points, sigma2, eta)
    adv, anchor = box_images(11, 3) * 0.9, box_images(12, 3) * 0.9
    cls, c = np.array([0, 2, 3]), np.array([0.7, 1.3, 2.0])

    def evaluate(a):
        return Evaluation(model, a, anchor, cls, c, 0.3, True, density, eta[cls])

    ev = evaluate(adv)
    if regime == "underflow":
        z = model.features(adv).data
        d2 = ((z[:, None, :] - points[cls]) ** 2).sum(axis=2)
        assert (np.exp(-d2 / sigma2).mean(axis=1) == 0).all()
        assert np.isfinite(ev.f2_raw).all()
    assert ((ev.f2_raw > 0) == (regime != "inactive")).all()
    np.testing.assert_allclose(-ev.f2_raw - eta[cls], log_kernel_density_reference(
        model.features(adv).data, points, cls, sigma2), rtol=1e-12)
    analytic = ev.network_gradient() + 2 * ev.diff
    numeric = numerical_grads(lambda a: evaluate(a).loss, [adv.copy()], np.ones(3))[0]
    assert (np.abs(analytic).reshape(3, -1).max(axis=1) > 1.0).all()
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


def test_network_gradient_rows_and_zero():
    model = feature_model("ce", 2)
    adv = box_images(13, 3) * 0.9
    cls, c = np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0])
    full = Evaluation(model, adv, adv, cls, c, 0.0, True).network_gradient()
    part = Evaluation(model, adv, adv, cls, c, 0.0, True).network_gradient(np.array([True, False, True]))
    np.testing.assert_array_equal(part[[0, 2]], full[[0, 2]])
    assert (part[1] == 0).all()
    assert Evaluation(model, adv, adv, cls, c, -100.0, True).network_gradient() is None   # no hinge active


def test_density_term_with_a_loose_eta_changes_nothing():
    """η = +10⁶: f₂ = 0 everywhere, so the density run is plain C&W, decision for decision."""
    model = feature_model("ce", 3)
    x = box_images(14, 5)
    targets = (model.predict(x) + 1) % 4
    kwargs = dict(targeted=True, kappa=0.2, initial_const=1.0, binary_steps=3, max_iterations=30,
                  learning_rate=0.05, abort_early=True, batch_size=2)
    density = Density(np.zeros((4, 3, 6)), 1.0, np.full(4, 1e6))
    plain = optimise(model, x, x, targets, **kwargs)
    dense = optimise(model, x, x, targets, density=density, **kwargs)
    for key in ("success", "adversarial", "best_l2"):
        np.testing.assert_array_equal(dense[key], plain[key])
    assert dense["c"] == plain["c"] and dense["iterations"] == plain["iterations"]
    assert plain["success"].any() and not dense["fallback"].any()


def test_unreachable_density_keeps_the_smallest_f2_iterate_past_the_margin():
    model = feature_model("ce", 3)
    x = box_images(14, 5)
    targets = (model.predict(x) + 1) % 4
    kwargs = dict(targeted=True, kappa=0.2, initial_const=1.0, binary_steps=3, max_iterations=30,
                  learning_rate=0.05, abort_early=True, batch_size=2)
    points = np.random.default_rng(3).normal(0, 0.3, (4, 3, 6))
    density = Density(points, 1.0, np.full(4, -1e6))                  # f₂ > 0 everywhere
    dense = optimise(model, x, x, targets, density=density, **kwargs)
    assert not dense["success"].any() and np.isnan(dense["best_l2"]).all()
    assert all(c == [1.0, 10.0, 100.0] for c in dense["c"])            # every step fails
    assert dense["fallback"].any()
    z = model(dense["adversarial"]).data
    margin = z[np.arange(5), targets] - np.where(np.arange(4) == targets[:, None], -np.inf, z).max(axis=1)
    assert (margin[dense["fallback"]] > 0.2).all()
    np.testing.assert_array_equal(dense["adversarial"][~dense["fallback"]], x[~dense["fallback"]])


def test_neg_log_kd_reference_and_leave_one_out():
    rng = np.random.default_rng(4)
    points, queries = rng.normal(0, 1, (7, 3)), rng.normal(0, 1, (5, 3))
    np.testing.assert_allclose(neg_log_kd_reference(queries, points, 0.5, block=2),
                               -log_kernel_density_reference(queries, points[None], np.zeros(5, int), 0.5))
    loo = neg_log_kd_reference(points, points, 0.5, leave_one_out=True, block=3)
    for k in range(7):
        others = np.delete(points, k, axis=0)
        expected = -log_kernel_density_reference(points[k:k + 1], others[None], np.zeros(1, int), 0.5)[0]
        np.testing.assert_allclose(loo[k], expected, rtol=1e-12)


def matlab_eta(neg_log_kd):
    """−log(median KD) with the median taken of the KDs themselves, as MATLAB's median does (the
    mean of the two middle values for an even count): median_for_attack.m."""
    return -np.log(np.median(np.exp(-np.asarray(neg_log_kd))))


@pytest.mark.parametrize("kernel, given", [("attacker", False), ("detector", False), ("attacker", True),
                                           ("detector", True)])
def test_eta_is_minus_log_of_the_class_median_kd(kernel, given):
    """η_t = −log(MATLAB median of KD): for an even count the mean of the two middle KDs, which is
    not the median of −log KD. The training set has 11 features of classes 0, 1 (odd) and 10 of
    classes 2, 3 (even); the leave-one-out estimate scores 12 points (even), the attacker's 7 (odd)."""
    model = feature_model("ce", 5)
    detector = fitted_detector(model, 5)
    full = detector.kernel_points
    train = np.random.default_rng(5).normal(0, 0.5, (42, 6))
    train_labels = np.arange(42) % 4
    points, eta = attack_kernel(detector, model, kernel, 5, 7, *((train, train_labels) if given else ()))
    again, _ = attack_kernel(detector, model, kernel, 5, 7)
    np.testing.assert_array_equal(points, again)
    assert points.shape == ((4, 5, 6) if kernel == "attacker" else full.shape)
    for c in range(4):
        members = [any((p == q).all() for q in full[c]) for p in points[c]]
        assert all(members)                                            # the attacker's points are the detector's
        if given:
            queries = train[train_labels == c]
            assert len(queries) == (11 if c < 2 else 10)
            scores = -log_kernel_density_reference(queries, points[c][None], np.zeros(len(queries), int), 1 / 0.26)
        elif kernel == "attacker":
            rest = np.array([q for q in full[c] if not any((q == p).all() for p in points[c])])
            assert len(rest) == 7
            scores = -log_kernel_density_reference(rest, points[c][None], np.zeros(7, int), 1 / 0.26)
        else:
            scores = [-log_kernel_density_reference(full[c][k:k + 1], np.delete(full[c], k, 0)[None], [0], 1 / 0.26)[0]
                      for k in range(12)]
        np.testing.assert_allclose(eta[c], matlab_eta(scores), rtol=1e-12)
        if len(scores) % 2 == 0:                                       # not the median of −log KD
            assert abs(eta[c] - np.median(scores)) > 1e-6


def test_eta_from_neg_log_kd_is_matlabs_median_in_log_space():
    """Hand values: KDs 0.1, 0.2, 0.4, 0.8 → median 0.3, η = −log 0.3 (the median of −log KD would
    be −log √0.08). Odd count: the middle one. Deep in the underflow regime (−log KD ≈ 2000 nats,
    where exp underflows to 0 in float64) the log-space rule stays exact."""
    kd = np.array([0.8, 0.1, 0.4, 0.2])
    np.testing.assert_allclose(eta_from_neg_log_kd(-np.log(kd)), -np.log(0.3), rtol=1e-14)
    np.testing.assert_allclose(eta_from_neg_log_kd(-np.log(kd[:3])), -np.log(0.4), rtol=1e-14)
    far = 2000.0 - np.log(kd)                                          # KD × e⁻²⁰⁰⁰
    np.testing.assert_allclose(eta_from_neg_log_kd(far), 2000.0 - np.log(0.3), rtol=1e-14)
    with pytest.raises(ValueError, match="at least one"):
        eta_from_neg_log_kd([])


def test_cw_wb_without_training_features_warns_of_the_approximate_eta():
    """The approximation is documented but not the paper's η: a library caller is told, once per call."""
    import warnings

    model = feature_model("ce", 6)
    detector = fitted_detector(model, 6)
    x = box_images(15, 2)
    stages = dict(stage1=dict(binary_steps=1, max_iterations=2), stage2=dict(binary_steps=1, max_iterations=2))
    with pytest.warns(attacks.EtaApproximationWarning, match="pass the model's training features") as heard:
        loose = attacks.cw_wb(model, x, detector, attacker_points=5, **stages)
    assert len(heard) == 1 and heard[0].filename == __file__   # points at the caller's line
    assert loose.params["eta_exact"] is False
    train = np.random.default_rng(5).normal(0, 0.5, (40, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error", attacks.EtaApproximationWarning)
        exact = attacks.cw_wb(model, x, detector, attacker_points=5, train_features=train,
                              train_labels=np.arange(40) % 4, **stages)
    assert exact.params["eta_exact"] is True


@pytest.mark.filterwarnings("ignore::rcenp.attacks.EtaApproximationWarning")   # the approximation on purpose
def test_cw_wb_end_to_end():
    model = feature_model("ce", 6)
    detector = fitted_detector(model, 6)
    x = box_images(15, 4)
    stages = dict(stage1=dict(kappa=0.5, binary_steps=2, max_iterations=30),
                  stage2=dict(kappa=0.5, initial_const=1.0, binary_steps=3, max_iterations=30))
    result = attacks.cw_wb(model, x, detector, attacker_points=5, learning_rate=0.05, seed=3, batch_size=3, **stages)
    model.train()
    again = attacks.cw_wb(model, x, detector, attacker_points=5, learning_rate=0.05, seed=3, batch_size=2, **stages)
    assert all(m.training for m in model.modules())   # the caller's mode is given back
    model.eval()
    # the same decisions; the images to rounding (the KD's per-class blocks, hence its GEMMs, follow the batch)
    assert [d["c"] for d in again.details] == [d["c"] for d in result.details]
    np.testing.assert_allclose(again.adversarial, result.adversarial, rtol=0, atol=1e-12)
    points, eta = attack_kernel(detector, model, "attacker", 5, 3)
    z = model.features(result.adversarial).data
    neg = -log_kernel_density_reference(z, points, result.target, detector.sigma2)
    for i, d in enumerate(result.details):
        assert d["eta_t"] == eta[result.target[i]]
        np.testing.assert_allclose(d["neg_log_kd"], neg[i], rtol=1e-9)
        assert d["f2_recomputed"] == max(d["neg_log_kd"] - d["eta_t"], 0.0)
        assert d["f2"] == max(d["f2_raw"], 0.0)
        np.testing.assert_allclose(d["f2_raw"], d["neg_log_kd"] - d["eta_t"], rtol=1e-9, atol=1e-9)  # float64
        np.testing.assert_allclose(d["final_margin"], d["final_margin_recomputed"], rtol=1e-9, atol=1e-9)
        assert result.iterations[i] == sum(d["step_iterations"]) + sum(d["stage1"]["step_iterations"])
        if result.success[i]:
            assert d["f2"] == 0 and d["f2_raw"] <= 0 and d["final_margin"] > 0.5 and result.stop_reason[i] == "success"
        else:
            assert result.stop_reason[i] in ("f2 > 0", "no success")
        for n, stop in zip(d["step_iterations"], d["step_stop"]):       # stage 2's first check only records
            assert stop == "max iterations" or n >= 2 * 3 + 1
        assert len(d["c"]) == 3 and len(d["stage1"]["c"]) == 2
    assert result.success.any()
    np.testing.assert_allclose(result.l2, np.linalg.norm((result.adversarial - x).reshape(4, -1), axis=1), rtol=1e-6)
    other = attacks.cw_wb(model, x, detector, kernel="detector", anchor="stage1", learning_rate=0.05, seed=3,
                          **stages)
    assert other.params["kernel"] == "detector" and other.params["attacker_points"] == 12


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel="both"), "kernel must be"),
    (dict(anchor="x"), "anchor must be"),
    (dict(attacker_points=13), "exceeds"),
    (dict(attacker_points=12), "train_features"),
    (dict(targets="untargeted"), "targeted"),
    (dict(stage1=dict(steps=3)), "unknown settings"),
    (dict(stage2=dict(kappa=-1)), "kappa"),
    (dict(train_features=np.zeros((4, 6))), "both"),
    (dict(train_features=np.zeros((4, 5)), train_labels=np.zeros(4, int)), "train_features must be"),
])
def test_cw_wb_bad_arguments(kwargs, message):
    model = feature_model("ce", 7)
    detector = fitted_detector(model, 7)
    with pytest.raises(ValueError, match=message):
        attacks.cw_wb(model, box_images(16, 2), detector, **{"attacker_points": 5, **kwargs})


def test_cw_wb_needs_a_fitted_detector_of_the_same_objective():
    model = feature_model("ce", 8)
    with pytest.raises(ValueError, match="fit it"):
        attacks.cw_wb(model, box_images(17, 2), Detector(model))
    with pytest.raises(ValueError, match="fitted for a RCE"):
        attacks.cw_wb(model, box_images(17, 2), fitted_detector(feature_model("rce", 8)))
