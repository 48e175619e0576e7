"""C&W-wb (rcenp.attacks.cw_wb, paper §4.4): f₂ and its gradient against float64 finite differences
(underflow regime included), η as the class median of −log KD, the smallest-f₂ fallback, end to end,
errors. The tests taking ``xp`` run once on the host and once with the model on the GPU (CuPy)."""
import numpy as np
import pytest

from rcenp import attacks
from rcenp import functional as F
from rcenp.attacks.cw import optimise
from rcenp.attacks.cw_loss import Density, Evaluation
from rcenp.attacks.cw_wb import attack_kernel, eta_from_neg_log_kd, neg_log_kd_reference
from rcenp.backend import as_numpy, to_device
from rcenp.detect.detector import Detector
from rcenp.detect.kde import log_kernel_density_reference
from rcenp.nn import Module
from rcenp.nn.layers import Linear
from rcenp.objectives import Classifier
from rcenp.testing import numerical_grads
from tests.test_attacks_cw import DEVICE_ATOL, box_images, image_atol


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


def feature_model(objective="ce", seed=0, on="cpu"):
    """A float64 FeatureNet classifier in eval mode on device ``on``."""
    return Classifier(FeatureNet(seed), objective).astype(np.float64).eval().to(on)


def fitted_detector(model, seed=0, per_class=12):  # on the model's device
    images = box_images(100 + seed, 80)
    return Detector(model).fit(images, np.arange(80) % 4, per_class=per_class, seed=seed)


@pytest.mark.parametrize("regime", ["active", "inactive", "underflow"])
def test_cw_wb_loss_gradient_matches_finite_differences(xp, device, regime):
    """f₂ and the margin hinge through the network, float64 central differences. 'underflow': RCE's
    σ² and kernel points far from every feature, where mean(exp(−d²/σ²)) is exactly 0 even in float64
    (the authors' log(1e-30 + mean exp) has a zero gradient there); log space stays exact. Model,
    iterates, kernel points and the per-row arrays on ``xp``'s device, as ``optimise`` passes them
    (there log KD takes CuPy's fused kernel)."""
    model = feature_model("rce", 1, device)
    rng = np.random.default_rng(1)
    points = rng.normal(0, 0.5, (4, 5, 6)) + (30.0 if regime == "underflow" else 0.0)
    sigma2 = 0.1 / 0.26
    eta = np.full(4, {"active": -5.0, "inactive": 1e3, "underflow": 0.0}[regime])
    density = Density(xp.asarray(points), sigma2, xp.asarray(eta))
    adv, anchor = box_images(11, 3) * 0.9, box_images(12, 3) * 0.9
    cls, c = np.array([0, 2, 3]), np.array([0.7, 1.3, 2.0])

    def evaluate(a):
        return Evaluation(model, a, xp.asarray(anchor), xp.asarray(cls), xp.asarray(c), 0.3, True, density,
                          xp.asarray(eta[cls]))

    ev = evaluate(xp.asarray(adv))
    f2_raw = as_numpy(ev.f2_raw)
    z = as_numpy(model.features(xp.asarray(adv)).data)
    if regime == "underflow":
        d2 = ((z[:, None, :] - points[cls]) ** 2).sum(axis=2)
        assert (np.exp(-d2 / sigma2).mean(axis=1) == 0).all()
        assert np.isfinite(f2_raw).all()
    assert ((f2_raw > 0) == (regime != "inactive")).all()
    np.testing.assert_allclose(-f2_raw - eta[cls], log_kernel_density_reference(z, points, cls, sigma2), rtol=1e-12)
    g_net = as_numpy(ev.network_gradient())
    if regime != "inactive":  # f₂ active in every row: its gradient through the network is not trivial
        assert (np.abs(g_net).reshape(3, -1).max(axis=1) > 1.0).all()
    analytic = g_net + 2 * as_numpy(ev.diff)
    numeric = as_numpy(numerical_grads(lambda a: evaluate(a).loss, [xp.array(adv)], xp.ones(3))[0])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("objective", ["ce", "rce"])
def test_untargeted_loss_gradient_is_the_finite_difference(xp, device, objective):
    """The untargeted hinge c·max(z_y − max_{i≠y} z_i + κ, 0) and the distance, through the network
    (prediction logits −s for RCE), against central differences in float64."""
    model = feature_model(objective, 3, device)
    adv, anchor = box_images(21, 3) * 0.9, box_images(22, 3) * 0.9
    labels, c = np.array([0, 2, 3]), np.array([0.7, 1.3, 2.0])

    def evaluate(a):
        return Evaluation(model, a, xp.asarray(anchor), xp.asarray(labels), xp.asarray(c), 50.0, False)

    ev = evaluate(xp.asarray(adv))
    assert (as_numpy(ev.gap) > 0).all()             # κ = 50: the hinge is active in every row
    analytic = as_numpy(ev.network_gradient()) + 2 * as_numpy(ev.diff)
    numeric = as_numpy(numerical_grads(lambda a: evaluate(a).loss, [xp.array(adv)], xp.ones(3))[0])
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


def density_case():
    """A feature model, 5 box images, targets one class up, and optimise()'s settings."""
    model = feature_model("ce", 3)
    x = box_images(14, 5)
    kwargs = dict(targeted=True, kappa=0.2, initial_const=1.0, binary_steps=3, max_iterations=30,
                  learning_rate=0.05, abort_early=True, batch_size=2)
    return model, x, (model.predict(x) + 1) % 4, kwargs


def test_density_term_with_a_loose_eta_changes_nothing():
    """η = +10⁶: f₂ = 0 everywhere, so the density run is plain C&W, decision for decision."""
    model, x, targets, kwargs = density_case()
    density = Density(np.zeros((4, 3, 6)), 1.0, np.full(4, 1e6))
    plain = optimise(model, x, x, targets, **kwargs)
    dense = optimise(model, x, x, targets, density=density, **kwargs)
    for key in ("success", "adversarial", "best_l2"):
        np.testing.assert_array_equal(dense[key], plain[key])
    assert dense["c"] == plain["c"] and dense["iterations"] == plain["iterations"]
    assert plain["success"].any() and not dense["fallback"].any()


def test_unreachable_density_keeps_the_smallest_f2_iterate_past_the_margin():
    model, x, targets, kwargs = density_case()
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


STAGES = dict(stage1=dict(kappa=0.5, binary_steps=2, max_iterations=30),
              stage2=dict(kappa=0.5, initial_const=1.0, binary_steps=3, max_iterations=30))


def end_to_end_case(on="cpu"):
    """(model, detector, x (4 images, host), C&W-wb's result on them: attacker kernel of 5 points,
    seed 3), the model and detector on device ``on``, the images given to the attack on it too."""
    model = feature_model("ce", 6, on)
    detector = fitted_detector(model, 6)
    x = box_images(15, 4)
    result = attacks.cw_wb(model, to_device(x, on), detector, attacker_points=5, learning_rate=0.05, seed=3,
                           batch_size=3, **STAGES)
    return model, detector, x, result


@pytest.mark.filterwarnings("ignore::rcenp.attacks.EtaApproximationWarning")   # the approximation on purpose
def test_cw_wb_end_to_end(xp, device):
    """Both stages on ``xp``'s device; on CuPy also the host run's decisions and images."""
    model, detector, x, result = end_to_end_case(device)
    assert isinstance(result.adversarial, np.ndarray) and result.adversarial.dtype == np.float64
    stages = STAGES
    model.train()
    again = attacks.cw_wb(model, xp.asarray(x), detector, attacker_points=5, learning_rate=0.05, seed=3, batch_size=2,
                          **stages)
    assert all(m.training for m in model.modules())   # the caller's mode is given back
    model.eval()
    # the same decisions; the images to rounding (the KD's per-class blocks, hence its GEMMs, follow the batch)
    assert [d["c"] for d in again.details] == [d["c"] for d in result.details]
    np.testing.assert_allclose(again.adversarial, result.adversarial, rtol=0, atol=image_atol(xp, 1e-12))
    if xp is not np:  # the device run is the host run: the same decisions, the images to DEVICE_ATOL
        on_host = end_to_end_case()[3]
        np.testing.assert_array_equal(result.success, on_host.success)
        np.testing.assert_array_equal(result.stop_reason, on_host.stop_reason)
        np.testing.assert_array_equal(result.target, on_host.target)
        for key in ("c", "step_success", "step_iterations", "step_stop"):
            assert [d[key] for d in result.details] == [d[key] for d in on_host.details], key
            assert [d["stage1"][key] for d in result.details] == [d["stage1"][key] for d in on_host.details], key
        np.testing.assert_allclose(result.adversarial, on_host.adversarial, rtol=0, atol=DEVICE_ATOL)
        for key in ("f2_raw", "neg_log_kd", "final_margin"):
            np.testing.assert_allclose([d[key] for d in result.details], [d[key] for d in on_host.details],
                                       rtol=1e-9, atol=DEVICE_ATOL)
    points, eta = attack_kernel(detector, model, "attacker", 5, 3)
    z = model.features(xp.asarray(result.adversarial)).data
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
    other = attacks.cw_wb(model, xp.asarray(x), detector, kernel="detector", anchor="stage1", learning_rate=0.05,
                          seed=3, **stages)
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
    (dict(train_features=np.zeros((4, 6)), train_labels=np.array([0.0, 1.0, 2.0, 3.0])), "train_labels must be integers"),
    (dict(train_features=np.zeros((4, 6)), train_labels=np.array([0, 1, 2, 4])), r"train_labels must lie in \[0, 3\] for 4 classes"),
])
def test_cw_wb_bad_arguments(kwargs, message):
    model = feature_model("ce", 7)
    detector = fitted_detector(model, 7)
    with pytest.raises(ValueError, match=message):
        attacks.cw_wb(model, box_images(16, 2), detector, **{"attacker_points": 5, **kwargs})


def test_cw_wb_needs_a_fitted_detector_of_the_same_objective():
    model = feature_model("ce", 8)
    with pytest.raises(TypeError, match="detector must be an rcenp.detect.Detector .* got NoneType"):
        attacks.cw_wb(model, box_images(17, 2), None)
    with pytest.raises(ValueError, match="fit it"):
        attacks.cw_wb(model, box_images(17, 2), Detector(model))
    with pytest.raises(ValueError, match="fitted for an RCE"):
        attacks.cw_wb(model, box_images(17, 2), fitted_detector(feature_model("rce", 8)))


def test_cw_wb_refuses_another_models_detector_and_takes_a_copy_of_its_own():
    """The trial: a detector fitted for another model of the same objective was used silently,
    its kernel points (that model's features) scored against this model's."""
    model, other = feature_model("ce", 8), feature_model("ce", 9)
    detector = fitted_detector(other, 8)
    stages = dict(binary_steps=1, max_iterations=2)
    with pytest.raises(ValueError, match="the detector scores another model"):
        attacks.cw_wb(model, box_images(17, 2), detector, attacker_points=5, stage1=stages, stage2=stages,
                      train_features=np.zeros((4, 6)), train_labels=np.arange(4))
    twin = feature_model("ce", 8)          # the same weights in another object: the detector's features
    twin.load_state_dict(other.state_dict())
    result = attacks.cw_wb(twin, box_images(17, 2), detector, attacker_points=5, stage1=stages, stage2=stages,
                           train_features=np.zeros((4, 6)), train_labels=np.arange(4))
    assert len(result.success) == 2


def test_cw_wb_and_jsma_help_shows_their_modules_notes():
    """``rcenp.attacks.cw_wb`` and ``.jsma`` name the functions, hiding the modules their
    docstrings refer to: the module docstrings are appended."""
    import importlib

    for name in ("cw_wb", "jsma"):
        module_doc = importlib.import_module(f"rcenp.attacks.{name}").__doc__
        doc = getattr(attacks, name).__doc__
        assert "Notes (the module's docstring):" in doc
        assert " ".join(module_doc.split()) in " ".join(doc.split())


def test_eta_is_kept_for_the_same_inputs_and_computed_again_for_others(monkeypatch):
    """`rcenp attack` asks for η once per batch: the last one is kept, keyed by every input."""
    import importlib

    module = importlib.import_module("rcenp.attacks.cw_wb")  # (rcenp.attacks.cw_wb is the function)
    model = feature_model("ce", 6)
    detector = fitted_detector(model, 6)
    calls = []
    reference = module.neg_log_kd_reference
    monkeypatch.setattr(module, "neg_log_kd_reference", lambda *a, **k: calls.append(1) or reference(*a, **k))
    module._LAST_ETA.clear()
    points, eta = attack_kernel(detector, model, "detector", 5, 3)
    computed = len(calls)
    again = attack_kernel(detector, model, "detector", 5, 3)
    assert len(calls) == computed == 4                     # one pass per class, and none the second time
    np.testing.assert_array_equal(again[1], eta)
    again[1][0] = 99.0                                     # the caller's copy, not the kept one
    np.testing.assert_array_equal(attack_kernel(detector, model, "detector", 5, 3)[1], eta)
    attack_kernel(detector, model, "attacker", 5, 3)       # other points: computed again
    assert len(calls) == 8
    detector.kernel_points[0, 0] += 0.5                    # the same detector, its points changed in place
    changed = attack_kernel(detector, model, "detector", 5, 3)[1]
    assert len(calls) == 12 and changed[0] != eta[0]
    module._LAST_ETA.clear()
    np.testing.assert_array_equal(attack_kernel(detector, model, "detector", 5, 3)[1], changed)
