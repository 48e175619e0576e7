"""Every op: forward against a plain NumPy float64 reference, backward by finite differences.

Shapes and values are drawn by hypothesis; inputs stay away from kinks (ReLU at 0, max ties,
clip bounds) where the derivative is one-sided. ``check_gradients`` itself is tested first: it
must reject a wrong gradient and a backward that computes in float32.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcenp import functional as F
from rcenp.autograd import Function, Tensor, grad
from rcenp.backend import as_numpy
from rcenp.testing import check_gradients

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


def away_from_zero(a, gap=1e-2):
    return np.where(np.abs(a) < gap, gap + np.abs(a), a)


def draw(xp, seed, shape, low=-2.0, high=2.0):
    return xp.asarray(np.random.default_rng(seed).uniform(low, high, shape))


def lower_rank(data, shape):
    """A strict suffix of ``shape`` (down to ``()``), some of its axes drawn as 1: broadcasts up to ``shape``."""
    suffix = shape[data.draw(st.integers(1, len(shape)), label="dropped leading axes"):]
    ones = data.draw(st.lists(st.booleans(), min_size=len(suffix), max_size=len(suffix)), label="size-1 axes")
    return tuple(1 if one else n for n, one in zip(suffix, ones))


class _Double(Function):
    """2x, with a backward that is deliberately off (``scale``) or computed in ``dtype``."""

    def __init__(self, scale=1.0, dtype=None):
        self.scale, self.dtype = scale, dtype

    def forward(self, x):
        return 2.0 * x

    def backward(self, gy):
        g = gy * (2.0 * self.scale)
        return g if self.dtype is None else g.astype(self.dtype)


def test_check_gradients_rejects_wrong_and_float32_gradients(xp):
    x = draw(xp, 0, (3, 2))
    check_gradients(lambda t: _Double()(t), [x])
    with pytest.raises(AssertionError, match="analytic .* vs numeric"):
        check_gradients(lambda t: _Double(scale=1 + 1e-4)(t), [x])
    # float32 rounding (~6e-8 relative) is far inside rtol=1e-5: only the dtype check catches it
    with pytest.raises(AssertionError, match="input 0: analytic gradient of dtype float32"):
        check_gradients(lambda t: _Double(dtype=np.float32)(t), [x])
    with pytest.raises(AssertionError, match="input 1: analytic gradient of dtype float32"):
        check_gradients(lambda a, b: a * 3.0 + _Double(dtype=np.float32)(b), [x, x])


@given(shape=shapes, seed=st.integers(0, 2**31), data=st.data())
def test_arithmetic(xp, shape, seed, data):
    """Same shapes; a size-1 axis of the same rank; and a lower-rank operand (a strict suffix of the
    other's shape, e.g. (2, 3, 4) with (3, 1), or a 0-d array) on either side."""
    low = lower_rank(data, shape)
    same_rank = (1,) * (len(shape) - 1) + shape[-1:]
    for a_shape, b_shape in [(shape, shape), (shape, same_rank), (shape, low), (low, shape)]:
        check_arithmetic(xp, seed, a_shape, b_shape)


def check_arithmetic(xp, seed, a_shape, b_shape):
    a = draw(xp, seed, a_shape)
    b = draw(xp, seed + 1, b_shape, 0.5, 2.0)
    an, bn = as_numpy(a), as_numpy(b)
    fns = {
        "add": (lambda a, b: a + b, an + bn), "sub": (lambda a, b: a - b, an - bn),
        "mul": (lambda a, b: a * b, an * bn), "div": (lambda a, b: a / b, an / bn),
        "rsub": (lambda a, b: 3.0 - a * b, 3.0 - an * bn), "pow": (lambda a, b: (b ** 3) * a, bn ** 3 * an),
        "maximum": (lambda a, b: F.maximum(a, b + 0.013), np.maximum(an, bn + 0.013)),
    }
    for name, (op, expected) in fns.items():
        out = op(F.add(a, 0.0), F.add(b, 0.0))
        np.testing.assert_allclose(as_numpy(out.data), expected, rtol=1e-12, err_msg=f"{name} {a_shape} {b_shape}")
        check_gradients(op, [a, b])


@given(shape=shapes, seed=st.integers(0, 2**31))
def test_unary(xp, shape, seed):
    x = draw(xp, seed, shape)
    pos = draw(xp, seed, shape, 0.1, 3.0)
    cases = [
        (F.exp, x, np.exp), (F.log, pos, np.log), (F.tanh, x, np.tanh), (F.neg, x, np.negative),
        (lambda t: F.clip(t, -0.5, 0.5), x, lambda a: np.clip(a, -0.5, 0.5)),
        (lambda t: F.clip(t, hi=0.5), x, lambda a: np.minimum(a, 0.5)),
        (lambda t: F.clip(t, lo=-0.5), x, lambda a: np.maximum(a, -0.5)),
        (lambda t: F.clip(t, None, 0.5), x, lambda a: np.minimum(a, 0.5)),
        (F.relu, xp.asarray(away_from_zero(as_numpy(x))), lambda a: np.maximum(a, 0)),
        (lambda t: F.leaky_relu(t, 0.1), xp.asarray(away_from_zero(as_numpy(x))), lambda a: np.where(a > 0, a, 0.1 * a)),
    ]
    for op, arg, ref in cases:
        np.testing.assert_allclose(as_numpy(op(arg).data), ref(as_numpy(arg)), rtol=1e-12)
    xn = as_numpy(x)
    clipped = xp.asarray(np.where(np.abs(np.abs(xn) - 0.5) < 1e-2, xn * 0.5, xn))  # off the clip bounds
    for op, arg in [(F.exp, x), (F.log, pos), (F.tanh, x), (F.neg, x), (lambda t: -t, x),
                    (lambda t: F.clip(t, -0.5, 0.5), clipped), (lambda t: F.clip(t, hi=0.5), clipped),
                    (lambda t: F.clip(t, lo=-0.5), clipped), (lambda t: F.clip(t, None, 0.5), clipped),
                    (F.relu, cases[8][1]), (lambda t: F.leaky_relu(t, 0.1), cases[9][1])]:
        check_gradients(op, [arg])


def test_clip_with_one_bound_passes_the_gradient_on_the_open_side(xp):
    """With hi=None nothing is clipped above, with lo=None nothing below: the gradient is 1 there."""
    x = xp.asarray(np.array([-3.0, -0.2, 0.2, 3.0]))
    t = Tensor(x, requires_grad=True)
    assert list(as_numpy(grad(F.clip(t, lo=-0.5), t, grad_output=xp.ones(4)))) == [0.0, 1.0, 1.0, 1.0]
    assert list(as_numpy(grad(F.clip(t, hi=0.5), t, grad_output=xp.ones(4)))) == [1.0, 1.0, 1.0, 0.0]


@given(shape=shapes, seed=st.integers(0, 2**31))
def test_power(xp, shape, seed):
    """Fractional exponents on a positive base; integer exponents (odd, even, negative) on a negative one."""
    pos = draw(xp, seed, shape, 0.2, 2.0)
    neg = draw(xp, seed + 1, shape, -2.0, -0.2)
    for base, p in [(pos, 0.5), (pos, 1.5), (pos, -0.5), (pos, 2.5),
                    (neg, 2), (neg, 3), (neg, -1), (neg, -2), (neg, 2.0)]:
        np.testing.assert_allclose(as_numpy(F.power(base, p).data), np.power(as_numpy(base), p),
                                   rtol=1e-12, err_msg=str(p))
        check_gradients(lambda t: F.power(t, p), [base])
        check_gradients(lambda t: t ** p, [base])


@given(shape=shapes, seed=st.integers(0, 2**31), data=st.data())
def test_where(xp, shape, seed, data):
    """where(condition, a, b): both branches taken, the condition and either operand possibly of
    lower rank (broadcast), gradients to a only where the condition holds and to b elsewhere."""
    rng = np.random.default_rng(seed)
    cond_shape = lower_rank(data, shape) if data.draw(st.booleans(), label="broadcast condition") else shape
    a_shape, b_shape = data.draw(st.sampled_from([(shape, shape), (shape, lower_rank(data, shape)),
                                                  (lower_rank(data, shape), shape)]), label="operand shapes")
    cond = rng.random(cond_shape) < 0.5
    if cond.size > 1:
        cond.flat[0], cond.flat[-1] = True, False  # both branches within one call
    a, b = draw(xp, seed + 1, a_shape), draw(xp, seed + 2, b_shape)
    an, bn = as_numpy(a), as_numpy(b)
    for c in (cond, ~cond):  # each branch on every element (a one-element condition too)
        expected = np.where(c, an, bn)
        for condition in (xp.asarray(c), Tensor(xp.asarray(c))):
            out = F.where(condition, a, b)
            np.testing.assert_array_equal(as_numpy(out.data), expected)
        for host in (c.tolist(), c):  # a nested list or a host mask, with operands on either device
            np.testing.assert_array_equal(as_numpy(F.where(host, a, b).data), expected)
        cx = xp.asarray(c)
        check_gradients(lambda a, b: F.where(cx, a, b), [a, b])
        check_gradients(lambda a, b: F.where(cx, a, b), [a, b], wrt=[0])
        check_gradients(lambda a, b: F.where(cx, a, b), [a, b], wrt=[1])


def test_where_gradient_goes_to_the_branch_taken(xp):
    a = Tensor(xp.asarray(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])), requires_grad=True)
    b = Tensor(xp.asarray(np.array([10.0, 20.0, 30.0])), requires_grad=True)  # broadcast over rows
    cond = xp.asarray(np.array([[True, False, True], [False, False, True]]))
    out = F.where(cond, a, b)
    np.testing.assert_array_equal(as_numpy(out.data), [[1.0, 20.0, 3.0], [10.0, 20.0, 6.0]])
    ga, gb = grad(out, [a, b], grad_output=xp.asarray(np.arange(1.0, 7.0).reshape(2, 3)))
    np.testing.assert_array_equal(as_numpy(ga), [[1.0, 0.0, 3.0], [0.0, 0.0, 6.0]])
    np.testing.assert_array_equal(as_numpy(gb), [4.0, 2.0 + 5.0, 0.0])


def test_leaky_relu_conventions(xp):
    x = xp.asarray(np.array([-2.0, 0.0, 3.0], np.float32))
    t = Tensor(x, requires_grad=True)
    g = as_numpy(grad(F.leaky_relu(t, 0.1), t, grad_output=xp.ones(3, np.float32)))
    assert g.dtype == np.float32 and list(g) == [np.float32(0.1), np.float32(0.1), 1.0]  # exact, slope at 0
    g = as_numpy(grad(F.relu(t), t, grad_output=xp.ones(3, np.float32)))
    assert list(g) == [0.0, 0.0, 1.0]


@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple), seed=st.integers(0, 2**31),
       data=st.data())
def test_reductions_and_shapes(xp, shape, seed, data):
    x = xp.asarray(np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape) * 0.1 + 0.05)
    axis = data.draw(st.one_of(st.none(), st.integers(0, len(shape) - 1),
                               st.just(tuple(range(len(shape) - 1)))))
    keep = data.draw(st.booleans())
    xn = as_numpy(x)
    for op, ref in [(F.sum, np.sum), (F.mean, np.mean), (F.max, np.max)]:
        out = op(x, axis=axis, keepdims=keep)
        np.testing.assert_allclose(as_numpy(out.data), ref(xn, axis=axis, keepdims=keep), rtol=1e-12)
        check_gradients(lambda t: op(t, axis=axis, keepdims=keep), [x])
    perm = tuple(np.random.default_rng(seed).permutation(len(shape)))
    check_gradients(lambda t: F.transpose(t, perm), [x])
    np.testing.assert_array_equal(as_numpy(F.transpose(x).data), xn.T)         # axes None: reversed
    np.testing.assert_array_equal(as_numpy(Tensor(x).T.data), xn.T)
    check_gradients(F.transpose, [x])
    check_gradients(lambda t: t.T, [x])
    widths = [(1, 0)] + [(0, 2)] * (len(shape) - 1)
    np.testing.assert_array_equal(as_numpy(F.pad(x, widths, value=-0.5).data),
                                  np.pad(xn, widths, constant_values=-0.5))
    check_gradients(lambda t: F.pad(t, widths, value=-0.5), [x])
    check_gradients(lambda t: F.reshape(t, (-1,)), [x])
    check_gradients(lambda t: F.pad(t, [(1, 0)] + [(0, 2)] * (len(shape) - 1)), [x])
    check_gradients(lambda t: F.concatenate([t, t * 2.0], axis=len(shape) - 1), [x])
    index = xp.asarray(np.random.default_rng(seed).integers(0, shape[0], 5))
    check_gradients(lambda t: F.getitem(t, index), [x])  # repeated rows accumulate
    check_gradients(lambda t: t[..., :1], [x])


@pytest.mark.parametrize("value", [2.0, -2.0])
def test_leaky_relu_of_a_0d_tensor(xp, value):
    """It raised IndexError: its chunks are slices of axis 0, which a 0-d array lacks."""
    t = Tensor(xp.asarray(np.float64(value)), requires_grad=True)
    y = F.leaky_relu(t, 0.1)
    assert y.shape == () and float(as_numpy(y.data)) == (value if value > 0 else 0.1 * value)
    assert float(as_numpy(grad(y, t))) == (1.0 if value > 0 else 0.1)
    check_gradients(lambda u: F.leaky_relu(u, 0.1) * 3.0, [xp.asarray(np.float64(value))])


@pytest.mark.parametrize("op, ref", [(F.sum, np.sum), (F.mean, np.mean), (F.max, np.max)])
@pytest.mark.parametrize("axis", [2, -3, (0, 2), (0, 0), (1, -1)])
def test_reductions_refuse_an_axis_numpy_refuses(xp, op, ref, axis):
    """a % ndim quietly reduced another axis (mean over axis 2 of a matrix averaged axis 0)."""
    x = xp.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError) as numpy_error:
        ref(as_numpy(x), axis=axis)
    with pytest.raises(numpy_error.type):   # AxisError out of range, ValueError repeated
        op(Tensor(x), axis=axis)
    np.testing.assert_array_equal(as_numpy(op(Tensor(x), axis=(-1, 0)).data), ref(as_numpy(x), axis=(1, 0)))


@given(shape=st.lists(st.integers(1, 3), min_size=2, max_size=3).map(tuple), seed=st.integers(0, 2**31),
       data=st.data())
def test_concatenate_three_sizes(xp, shape, seed, data):
    """Three distinct tensors of different sizes along a non-leading axis (given as positive or
    negative): each gradient is its own slice of the output's."""
    axis = data.draw(st.integers(1, len(shape) - 1), label="axis")
    axis = data.draw(st.sampled_from([axis, axis - len(shape)]), label="axis sign")
    sizes = data.draw(st.permutations([1, 2, 3]), label="sizes")
    at = axis % len(shape)
    parts = [draw(xp, seed + i, shape[:at] + (m,) + shape[at + 1:]) for i, m in enumerate(sizes)]
    out = F.concatenate(parts, axis=axis)
    np.testing.assert_array_equal(as_numpy(out.data), np.concatenate([as_numpy(p) for p in parts], axis=axis))
    check_gradients(lambda a, b, c: F.concatenate([a, b, c], axis=axis), parts)
    check_gradients(lambda a, b, c: F.concatenate([a, b, c], axis=axis), parts, wrt=[1])


@given(n=st.integers(1, 4), d=st.integers(1, 4), k=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_matmul_linear(xp, n, d, k, seed):
    a, b = draw(xp, seed, (n, d)), draw(xp, seed + 1, (d, k))
    np.testing.assert_allclose(as_numpy(F.matmul(a, b).data), as_numpy(a) @ as_numpy(b), rtol=1e-12)
    check_gradients(F.matmul, [a, b])
    w, bias = draw(xp, seed + 2, (k, d)), draw(xp, seed + 3, (k,))
    np.testing.assert_allclose(as_numpy(F.linear(a, w, bias).data), as_numpy(a) @ as_numpy(w).T + as_numpy(bias), rtol=1e-12)
    check_gradients(F.linear, [a, w, bias])
    check_gradients(F.linear, [a, w])


@given(batch=st.integers(1, 3), n=st.integers(1, 4), d=st.integers(1, 4), k=st.integers(1, 4),
       seed=st.integers(0, 2**31))
def test_matmul_batched_and_broadcast(xp, batch, n, d, k, seed):
    """Batched (B, N, D) @ (B, D, K), and a 2-D (or batch-1) operand broadcast against a batch
    (NumPy matmul semantics; the backward sums the broadcast axes away)."""
    for a_shape, b_shape in [((2, 3, 4), (2, 4, 5)), ((batch, n, d), (batch, d, k)), ((n, d), (batch, d, k)),
                             ((batch, n, d), (d, k)), ((1, n, d), (batch, d, k)), ((2, batch, n, d), (batch, d, k))]:
        a, b = draw(xp, seed, a_shape), draw(xp, seed + 1, b_shape)
        np.testing.assert_allclose(as_numpy(F.matmul(a, b).data), np.matmul(as_numpy(a), as_numpy(b)), rtol=1e-12)
        check_gradients(F.matmul, [a, b])


def ref_log_softmax(s):
    z = s - s.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def draw_logits(xp, seed, n, classes, scale):
    rng = np.random.default_rng(seed)
    s = xp.asarray(rng.uniform(-2.0, 2.0, (n, classes)) * scale)
    return s, xp.asarray(rng.integers(0, classes, n))


@given(n=st.integers(2, 5), classes=st.integers(2, 6), seed=st.integers(0, 2**31), scale=st.sampled_from([1.0, 10.0]))
def test_cross_entropy(xp, n, classes, seed, scale):
    s, y = draw_logits(xp, seed, n, classes, scale)
    sn, yn = as_numpy(s), as_numpy(y)
    expected = -ref_log_softmax(sn)[np.arange(n), yn].mean()
    np.testing.assert_allclose(float(F.cross_entropy(s, y).data), expected, rtol=1e-12)
    check_gradients(lambda t: F.cross_entropy(t, y), [s])
    check_gradients(lambda t: F.reverse_cross_entropy(t, y), [s])


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5, 2.0])
@given(n=st.integers(2, 5), classes=st.integers(2, 6), seed=st.integers(0, 2**31), scale=st.sampled_from([1.0, 10.0]))
def test_smoothed_cross_entropy(xp, lam, n, classes, seed, scale):
    """CE^λ = mean_n -(1_y + λ R_y)ᵀ log softmax(s_n), R_y = 1/(L-1) off y and 0 at y (loss.py)."""
    s, y = draw_logits(xp, seed, n, classes, scale)
    sn, yn = as_numpy(s), as_numpy(y)
    onehot = np.zeros((n, classes))
    onehot[np.arange(n), yn] = 1.0
    reverse = np.full((n, classes), 1.0 / (classes - 1))
    reverse[np.arange(n), yn] = 0.0
    expected = -((onehot + lam * reverse) * ref_log_softmax(sn)).sum() / n
    out = F.smoothed_cross_entropy(s, y, lam)
    assert out.dtype == np.float64 and out.shape == ()
    np.testing.assert_allclose(float(out.data), expected, rtol=1e-12)
    if lam == 0.0:
        assert float(out.data) == float(F.cross_entropy(s, y).data)
    check_gradients(lambda t: F.smoothed_cross_entropy(t, y, lam), [s])


@given(n=st.integers(1, 4), classes=st.integers(2, 6), seed=st.integers(0, 2**31), scale=st.sampled_from([1.0, 30.0]))
def test_softmax_family(xp, n, classes, seed, scale):
    s = draw(xp, seed, (n, classes)) * scale
    sn = as_numpy(s)
    ref_log = ref_log_softmax(sn)
    np.testing.assert_allclose(as_numpy(F.log_softmax(s).data), ref_log, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(F.softmax(s).data), np.exp(ref_log), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(as_numpy(F.logsumexp(s, axis=1).data), sn.max(1) + np.log(np.exp(sn - sn.max(1, keepdims=True)).sum(1)), rtol=1e-12)
    for op in (F.log_softmax, F.softmax, lambda t: F.logsumexp(t, axis=1), lambda t: F.logsumexp(t, axis=0, keepdims=True)):
        check_gradients(op, [s])
    # over the other axis: its forward against the reference on the transpose, and its backward
    np.testing.assert_allclose(as_numpy(F.log_softmax(s, axis=0).data), ref_log_softmax(sn.T).T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(F.softmax(s, axis=0).data), np.exp(ref_log_softmax(sn.T).T), rtol=1e-12,
                               atol=1e-300)
    for op in (lambda t: F.log_softmax(t, axis=0), lambda t: F.softmax(t, axis=0)):
        check_gradients(op, [s])


def test_log_softmax_does_not_underflow(xp):
    s = xp.asarray(np.array([[0.0, -2000.0, 1000.0]], np.float32))
    out = as_numpy(F.log_softmax(s).data)
    assert np.all(np.isfinite(out)) and out[0, 1] == np.float32(-3000.0)


@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(2, 6), w=st.integers(2, 6),
       k=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_pooling(xp, n, c, h, w, k, seed):
    x = draw(xp, seed, (n, c, h, w))
    k = min(k, h, w)
    xn = as_numpy(x)
    oh, ow = h // k, w // k
    ref = xn[:, :, :oh * k, :ow * k].reshape(n, c, oh, k, ow, k).mean(axis=(3, 5))
    np.testing.assert_allclose(as_numpy(F.avg_pool2d(x, k).data), ref, rtol=1e-12)
    check_gradients(lambda t: F.avg_pool2d(t, k), [x])
    if min(h, w) >= 2:
        check_gradients(lambda t: F.avg_pool2d(t, 2, 1), [x])  # overlapping windows
    np.testing.assert_allclose(as_numpy(F.global_avg_pool2d(x).data), xn.mean(axis=(2, 3)), rtol=1e-12)
    check_gradients(F.global_avg_pool2d, [x])


def test_pooling_rejects_oversized_window(xp):
    with pytest.raises(ValueError, match="larger than input"):
        F.avg_pool2d(xp.zeros((1, 1, 2, 2)), 3)


def test_losses_take_labels_from_either_device(xp):
    """Host labels with GPU logits (or the reverse) give the loss of labels on the logits' device."""
    from scipy.special import log_softmax

    logits = np.random.default_rng(0).standard_normal((4, 3))
    labels = np.asarray([0, 2, 1, 2])
    log_p = log_softmax(logits, axis=1)
    reverse = (1.0 - np.eye(3)[labels]) / 2                    # R_y, L = 3 (paper Eq. 4)
    for loss, expected in ((F.cross_entropy, -log_p[np.arange(4), labels].mean()),
                           (F.reverse_cross_entropy, -(reverse * log_p).sum(axis=1).mean())):
        for pair in ((xp.asarray(logits), labels), (logits, xp.asarray(labels)), (xp.asarray(logits), xp.asarray(labels))):
            value = loss(Tensor(pair[0]), pair[1]).data
            assert type(value) is type(pair[0])                # on the logits' device
            np.testing.assert_allclose(float(as_numpy(value)), expected, rtol=1e-12)


INDICES = [(np.array([0, 3]),), (np.array([4]),), (np.array([-4]),), (np.array([-5]),),
           (slice(None), np.array([5])), (slice(None), np.array([-5, 4])), (Ellipsis, np.array([6])),
           (Ellipsis, np.array([5])), (np.ones((4, 5), bool), np.array([6])), (np.ones((4, 5), bool), np.array([5])),
           (None, 1, np.array([5])), (None, 1, np.array([4])), (np.array([1]), Ellipsis, np.array([-7])),
           (np.array([[0], [3]]), np.array([0, 4]), 2), (np.array([], np.int64),)]


@pytest.mark.parametrize("index", INDICES, ids=range(len(INDICES)))
def test_getitem_refuses_an_array_index_out_of_range_on_either_device(xp, index):
    """CuPy wraps an out-of-range integer-array index around where NumPy raises IndexError; the
    check names the same indices NumPy refuses, on a (4, 5, 6) array."""
    from rcenp.ops.shape import check_array_indices

    shape = (4, 5, 6)
    host = np.arange(120.0).reshape(shape)
    try:
        expected = host[index]
    except IndexError:
        expected = None
    with pytest.raises(IndexError) if expected is None else contextlib.nullcontext():
        check_array_indices(shape, index)
    device_index = tuple(xp.asarray(p) if isinstance(p, np.ndarray) else p for p in index)
    x = Tensor(xp.asarray(host))
    if expected is None:
        with pytest.raises(IndexError, match="out of bounds"):
            F.getitem(x, device_index)
    else:
        np.testing.assert_array_equal(as_numpy(F.getitem(x, device_index).data), expected)
