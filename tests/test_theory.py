"""The paper's mathematics as properties: Theorem 2, Lemma 1, eq. 3 and eq. 4."""
import math

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from rcenp import functional as F
from rcenp.autograd import Tensor, grad
from rcenp.backend import as_numpy
from rcenp.metrics import confidence, non_me
from rcenp.models import resnet
from rcenp.objectives import Classifier
from rcenp.ops.loss import reverse_label

RCE = Classifier(resnet(8, 1, num_classes=12, seed=0), "rce")   # only its logit reversal is used below


def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@st.composite
def near_reverse_label(draw):
    """Logits s with ||softmax(s) - R_y||_inf <= alpha, for alpha << 1/L."""
    num_classes = draw(st.integers(3, 12))
    y = draw(st.integers(0, num_classes - 1))
    alpha = draw(st.floats(1e-7, 0.1 / num_classes ** 2))
    # perturb R_y inside the alpha box while staying a probability vector
    raw = np.array(draw(st.lists(st.floats(-1, 1), min_size=num_classes, max_size=num_classes)))
    p_y = alpha * draw(st.floats(0.0, 1.0, exclude_min=True))
    others = np.delete(raw, y)
    others = others - others.mean()
    scale = np.abs(others).max()
    room = alpha - p_y / (num_classes - 1)  # the shift below moves each entry by p_y/(L-1)
    others = others / scale * room if scale > 0 else others
    others = others + (1 - p_y) / (num_classes - 1)  # sums to 1 - p_y
    p = np.insert(others, y, p_y)
    assume(np.all(p > 0))
    assert np.abs(p - reverse_label(np.array([y]), num_classes, np.float64)[0]).max() <= alpha * (1 + 1e-9)
    shift = draw(st.floats(-50, 50))
    return np.log(p) + shift, y, alpha, num_classes


@given(case=near_reverse_label())
def test_theorem2_bounds(case):
    """Theorem 2 on the probabilities rcenp predicts with: softmax of an RCE classifier's prediction
    logits (−s), and its confidence."""
    s, y, alpha, num_classes = case
    prediction_logits = RCE.prediction_logits(Tensor(s[None, :]))
    reversed_p = as_numpy(F.softmax(prediction_logits).data)[0]
    one_hot = np.eye(num_classes)[y]
    assert np.abs(reversed_p - one_hot).max() <= alpha * (num_classes - 1) ** 2
    rest = np.delete(reversed_p, y)
    assert rest.max() - rest.min() <= 2 * alpha ** 2 * (num_classes - 1) ** 2
    assert float(confidence(prediction_logits.data)[0]) >= 1 - alpha * (num_classes - 1) ** 2


@st.composite
def logits(draw, min_classes=3, max_rows=1):
    """(N, L) logits in [-30, 30], N in [1, max_rows]."""
    num_classes = draw(st.integers(min_classes, 12))
    rows = draw(st.integers(1, max_rows))
    row = st.lists(st.floats(-30, 30), min_size=num_classes, max_size=num_classes)
    return np.array(draw(st.lists(row, min_size=rows, max_size=rows)))


@given(s=logits())
def test_lemma1_non_me_range(s):
    value = float(non_me(s)[0])
    assert -1e-12 <= value <= math.log(s.shape[1] - 1) + 1e-12


@given(s=logits(), level=st.floats(-20, 20))
def test_lemma1_maximum_exactly_when_non_maximal_equal(s, level):
    top = int(s.argmax())
    assume(s[0, top] > level + 1e-3)
    equal = s.copy()
    equal[0, np.arange(s.shape[1]) != top] = level
    assert float(non_me(equal)[0]) == np.float64(math.log(s.shape[1] - 1)) or \
        abs(float(non_me(equal)[0]) - math.log(s.shape[1] - 1)) < 1e-12
    rest = np.delete(s[0], top)
    if rest.max() - rest.min() > 1e-3:
        assert float(non_me(s)[0]) < math.log(s.shape[1] - 1) - 1e-12


@given(s=logits(), shift=st.floats(-10, 10))
def test_lemma1_constant_along_the_manifold(s, shift):
    """Moving along ∩ db̃_ij (all non-maximal logits shifted together, i, j ≠ ŷ) keeps non-ME."""
    top = int(s.argmax())
    moved = s.copy()
    moved[0, np.arange(s.shape[1]) != top] += shift
    assume(int(moved.argmax()) == top and np.sort(moved[0])[-1] - np.sort(moved[0])[-2] > 1e-9)
    np.testing.assert_allclose(non_me(moved), non_me(s), rtol=1e-10, atol=1e-12)


@given(s=logits(max_rows=5))
def test_non_me_is_eq1_row_by_row(s):
    """Eq. 1 from its definition, F̂_i = F_i / Σ_{j≠ŷ} F_j over the non-maximal classes, for each
    row of a batch whose rows have their own top classes (an audit found one-row tests blind to
    a bug that used row 0's top class everywhere)."""
    p = softmax(s)
    top = s.argmax(1)
    rest = np.where(np.arange(s.shape[1]) == top[:, None], 0.0, p)
    rest = rest / rest.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = -np.where(rest > 0, rest * np.log(rest), 0.0).sum(1)
    np.testing.assert_allclose(non_me(s), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(confidence(s), p.max(1), rtol=1e-12)


def test_metrics_survive_underflow():
    s = np.array([[0.0, -5000.0, -20.0, 3000.0]], np.float32)
    assert np.isfinite(non_me(s)).all() and np.isfinite(confidence(s)).all()
    assert confidence(s)[0] == 1.0
    np.testing.assert_allclose(non_me(np.zeros((2, 5), np.float32)), math.log(4), rtol=1e-6)


@given(num_classes=st.integers(2, 10), lam=st.floats(1e-3, 20.0), y=st.integers(0, 9))  # λ=0: P⁰ = 1_y, minimiser at infinity
def test_eq3_minimiser_of_smoothed_ce_is_p_lambda(num_classes, lam, y):
    y = y % num_classes
    p = np.full(num_classes, lam / ((num_classes - 1) * (lam + 1)))
    p[y] = 1 / (lam + 1)
    s = Tensor(np.log(p)[None, :], requires_grad=True)
    g = grad(F.smoothed_cross_entropy(s, np.array([y]), lam), s)
    np.testing.assert_allclose(as_numpy(g), 0.0, atol=1e-12)  # stationary point, and CE^λ is convex in s
    loss = float(F.smoothed_cross_entropy(np.log(p)[None, :], np.array([y]), lam).data)
    other = np.log(p)[None, :] + np.random.default_rng(y).normal(0, 0.3, (1, num_classes))
    assert loss <= float(F.smoothed_cross_entropy(other, np.array([y]), lam).data) + 1e-12


@given(s=logits(min_classes=2, max_rows=4), data=st.data())
def test_eq4_rce_is_ce_against_reverse_label(s, data):
    """RCE = −R_yᵀ log softmax(s), batch mean, with R_y built here from eq. 4's definition
    (1/(L−1) everywhere but 0 at y), not taken from the code under test; gradient (softmax(s) − R_y)/N."""
    n, num_classes = s.shape
    y = np.array(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    r = np.full((n, num_classes), 1 / (num_classes - 1))
    r[np.arange(n), y] = 0.0
    np.testing.assert_array_equal(reverse_label(y, num_classes, np.float64), r)
    log_p = s - s.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    expected = -(r * log_p).sum(1).mean()
    np.testing.assert_allclose(float(F.reverse_cross_entropy(s, y).data), expected, rtol=1e-12)
    g = grad(F.reverse_cross_entropy(Tensor(s, requires_grad=True), y), [])  # no inputs: no work
    assert g == []
    t = Tensor(s, requires_grad=True)
    np.testing.assert_allclose(as_numpy(grad(F.reverse_cross_entropy(t, y), t)), (softmax(s) - r) / n,
                               rtol=1e-10, atol=1e-14)


def test_reversed_prediction_is_argmin():
    """An RCE classifier predicts argmin of its raw logits s (§3.2: argmax of softmax(−s)); CE argmax."""
    net = resnet(8, 1, seed=4).astype(np.float64).eval()   # a seed whose argmin and argmax each vary
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 1, 8, 8))
    s = net(Tensor(x)).data
    rce, ce = Classifier(net, "rce"), Classifier(net, "ce")
    assert len(set(s.argmin(1))) > 1 and len(set(s.argmax(1))) > 1 and (s.argmin(1) != s.argmax(1)).all()
    np.testing.assert_array_equal(rce.predict(x), s.argmin(1))
    np.testing.assert_array_equal(ce.predict(x), s.argmax(1))
    np.testing.assert_array_equal(as_numpy(F.softmax(rce.predict_logits(x)).data).argmax(1), s.argmin(1))
