"""C&W-L2 (rcenp.attacks.cw): the reference algorithm on a linear model, the binary-search rule,
κ-aware success, masked max for negative logits, per-sample abort and streaming, targets, errors.
The tests taking ``xp`` run once on the host and once with the model on the GPU (CuPy); the
device run is also compared with the host run. C&W-wb has its own file (test_attacks_cw_wb.py)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcenp import attacks
from rcenp.attacks.cw import SENTINEL, binary_search_update
from rcenp.attacks.cw_search import FOUND
from rcenp.backend import as_numpy
from rcenp.models import resnet
from rcenp.nn import Module
from rcenp.nn.layers import Linear
from rcenp.objectives import Classifier


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


# A device (CuPy) run against a host computation of the same float64 arithmetic: cuBLAS (FMA, its
# own summation order) and CUDA's tanh round differently in the last bits, and Adam's step
# m/(√v + ε) magnifies a last-bit difference in a gradient entry near 0 up to ~1e7 times (ε = 1e-8),
# so a device run's images and float figures are held to 1e-9 (a fault moves them by ~1e-3 or
# more); its decisions (success, c, iterations, stops) must be the host's exactly.
DEVICE_ATOL = 1e-9


def image_atol(xp, host_atol=0.0):
    """The tolerance on images of a run on ``xp`` against host arithmetic (``DEVICE_ATOL``)."""
    return host_atol if xp is np else max(host_atol, DEVICE_ATOL)


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
    w, b = as_numpy(model.network.fc.weight.data), as_numpy(model.network.fc.bias.data)  # host float64
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
    after the first success, breaks the strict moves. The one exception is Carlini's: a success at
    c ≥ 1e9 sets upper = c, which is no bound (not below 1e9), so c stays (7 failures from c₀ = 100)."""
    c, lo, up = np.array([c0]), np.array([0.0]), np.array([SENTINEL])
    for won in outcomes:
        c1, lo1, up1 = binary_search_update(c, lo, up, [won])
        assert up1[0] <= up[0] and lo1[0] >= lo[0]
        assert lo1[0] <= c1[0] and (c1[0] <= up1[0] or up1[0] >= FOUND)
        if won and c[0] >= FOUND:  # upper = min(upper, c): past 1e10 the sentinel stays
            assert c1[0] == c[0] and up1[0] == min(up[0], c[0]) and lo1[0] == lo[0]
        elif won:
            assert c1[0] < c[0] and up1[0] == c[0] and lo1[0] == lo[0]
        else:
            assert c1[0] > c[0] and lo1[0] == c[0] and up1[0] == up[0]
        c, lo, up = c1, lo1, up1


def test_a_success_at_c_of_1e9_or_more_leaves_c_as_carlinis_rule_does():
    """Carlini's l2_attack.py: upper = min(upper, c), and c halves towards lower only if upper < 1e9."""
    c, lo, up = np.array([100.0]), np.array([0.0]), np.array([SENTINEL])
    for _ in range(7):
        c, lo, up = binary_search_update(c, lo, up, [False])
    assert c[0] == 1e9 and lo[0] == 1e8
    c, lo, up = binary_search_update(c, lo, up, [True])
    assert (c[0], lo[0], up[0]) == (1e9, 1e8, 1e9)
    c, lo, up = binary_search_update(c, lo, up, [False])  # upper 1e9 is still no bound: c × 10
    assert (c[0], lo[0], up[0]) == (1e10, 1e9, 1e9)


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
def test_matches_the_reference_algorithm_on_a_linear_model(xp, device, objective, targets, kappa, steps):
    """The streamed attack (the model and images on ``xp``'s device) against the host loop reference."""
    model = linear_model(objective, seed=1).to(device)
    x = box_images(1, 4)
    result = attacks.cw_l2(model, xp.asarray(x), targets=targets, kappa=kappa, binary_steps=steps, max_iterations=60,
                           learning_rate=0.05, batch_size=3)
    assert isinstance(result.adversarial, np.ndarray) and result.adversarial.dtype == np.float64
    targeted = targets is None
    for i in range(4):
        cls = result.target[i] if targeted else result.label[i]
        best, cs, wins, counts = reference_cw(model, x[i], cls, targeted, kappa, 1.0, steps, 60, 0.05)
        d = result.details[i]
        assert d["c"] == cs and d["step_success"] == wins and d["step_iterations"] == counts
        assert result.iterations[i] == sum(counts)
        assert result.success[i] == (best is not None)
        expected = x[i] if best is None else best.reshape(x[i].shape)
        np.testing.assert_allclose(result.adversarial[i], expected, rtol=0, atol=image_atol(xp, 1e-12))
    assert result.success.any()


@pytest.mark.parametrize("objective, kappa", [("ce", 0.0), ("rce", 1.0), ("ce", 1.0)])
def test_targeted_reaches_every_target_with_margin_kappa(xp, device, objective, kappa):
    """Every target reached past κ, by the host's own product with the weights (the model on ``xp``'s device)."""
    model = linear_model(objective, seed=2, scale=4.0).to(device)
    x = box_images(2, 12)
    result = attacks.cw_l2(model, xp.asarray(x), kappa=kappa, binary_steps=5, max_iterations=100, learning_rate=0.05,
                           batch_size=5)
    assert isinstance(result.adversarial, np.ndarray) and result.success.all()
    assert (result.target != result.label).all()
    z = result.adversarial.reshape(12, 16) @ as_numpy(model.network.fc.weight.data).T
    z = (-1 if objective == "rce" else 1) * (z + as_numpy(model.network.fc.bias.data))
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


def assert_same_runs(a, b, rows=None, atol=0.0):
    """Same decisions and c trajectories, bit for bit; the same images (these host cases happen to be
    bit for bit too); float64 figures equal up to the batch-size-dependent rounding of BLAS (e.g. a
    1-row product takes another kernel). ``atol`` > 0 (a device run, ``DEVICE_ATOL``): images and
    figures to that tolerance, decisions still exactly."""
    rows = range(len(a)) if rows is None else rows
    if atol:
        np.testing.assert_allclose(a.adversarial, b.adversarial[rows], rtol=0, atol=atol)
    else:
        np.testing.assert_array_equal(a.adversarial, b.adversarial[rows])
    np.testing.assert_array_equal(a.success, b.success[list(rows)])
    np.testing.assert_array_equal(a.target, b.target[list(rows)])
    for da, i in zip(a.details, rows):
        db = b.details[i]
        for key in ("c", "step_success", "step_iterations", "step_stop"):
            assert da[key] == db[key], (i, key)
        for key in ("best_l2", "final_margin"):
            assert (da[key] is None) == (db[key] is None)
            if da[key] is not None:
                np.testing.assert_allclose(da[key], db[key], rtol=1e-12, atol=max(atol, 1e-15))


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


def test_streaming_does_not_change_any_sample_resnet(xp, device):
    """float64 ResNet (on ``xp``'s device): alone == batched == streamed through 2 slots. On the GPU,
    CuPy's kernels (GEMMs, reductions) may sum in another order for another batch size: images to
    ``DEVICE_ATOL`` there, decisions exactly."""
    model = Classifier(resnet(8, 1, seed=3), "rce").astype(np.float64).eval().to(device)
    x = xp.asarray(box_images(7, 4, (1, 8, 8)))
    kwargs = dict(binary_steps=2, max_iterations=10, learning_rate=0.05)
    together = attacks.cw_l2(model, x, batch_size=4, **kwargs)
    streamed = attacks.cw_l2(model, x, batch_size=2, **kwargs)
    assert_same_runs(streamed, together, atol=image_atol(xp))
    for i in (0, 3):
        alone = attacks.cw_l2(model, x[i:i + 1], targets=together.target[i:i + 1], batch_size=1, **kwargs)
        assert_same_runs(alone, together, [i], atol=image_atol(xp))


def test_float32_model_runs_in_float32(xp, device):
    model = linear_model("ce", 8, np.float32, scale=4.0).to(device)
    x = box_images(8, 5, dtype=np.float32)
    result = attacks.cw_l2(model, xp.asarray(x), kappa=0.5, binary_steps=3, max_iterations=60, learning_rate=0.05)
    assert isinstance(result.adversarial, np.ndarray)
    assert result.adversarial.dtype == np.float32 and result.success.all()
    assert all(d["final_margin"] > 0.5 - 1e-5 for d in result.details)


@pytest.mark.parametrize("targeted, kappa", [(True, 0.02), (False, 0.05)])
def test_device_run_is_the_host_run(xp, device, targeted, kappa):
    """float64 ResNet-8, labels (the clean prediction) and targets given as host arrays (device
    labels when untargeted). Either backend: each success is, by the HOST model's own forward pass,
    classified past κ (as the target, or away from the label) at its recorded margin, with its
    recorded L2; each failure returns the clean image; both occur. On CuPy the device run is also
    the host run: the same decisions, c and stops; images, best_l2 and margins to ``DEVICE_ATOL``."""
    n = 5
    host = Classifier(resnet(8, 1, seed=11), "rce").astype(np.float64).eval()
    model = Classifier(resnet(8, 1, seed=11), "rce").astype(np.float64).eval().to(device)
    x = box_images(12, n, (1, 8, 8))
    labels = host.predict(x)
    if targeted:
        kwargs = dict(targets=(labels + 1 + np.arange(n) % 9) % 10, labels=labels)
    else:
        kwargs = dict(targets="untargeted", labels=xp.asarray(labels))
    settings = dict(kappa=kappa, initial_const=10.0, binary_steps=3, max_iterations=15, learning_rate=0.05,
                    batch_size=3)
    result = attacks.cw_l2(model, xp.asarray(x), **kwargs, **settings)
    assert isinstance(result.adversarial, np.ndarray) and result.adversarial.dtype == np.float64
    np.testing.assert_array_equal(result.label, labels)
    cls = result.target if targeted else labels
    z = host.predict_logits(result.adversarial)
    idx = np.arange(n)
    others = np.where(np.arange(10) == cls[:, None], -np.inf, z)
    margin = z[idx, cls] - others.max(axis=1)
    margin = margin if targeted else -margin
    s = result.success
    assert s.any() and not s.all()                               # both kinds of sample are checked
    assert (margin[s] > kappa).all() and (margin[~s] <= kappa).all()
    np.testing.assert_allclose([d["final_margin"] for d in result.details], margin, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose([result.details[i]["best_l2"] for i in idx[s]], result.l2[s], rtol=1e-12)
    np.testing.assert_array_equal(result.adversarial[~s], x[~s])
    assert all(result.details[i]["best_l2"] is None for i in idx[~s])
    if xp is not np:
        on_host = attacks.cw_l2(host, x, **{**kwargs, "labels": labels}, **settings)
        assert_same_runs(result, on_host, atol=DEVICE_ATOL)


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
