"""Every op: forward against a plain NumPy float64 reference, backward by finite differences.

Shapes and values are drawn by hypothesis; inputs stay away from kinks (ReLU at 0, max ties,
clip bounds) where the derivative is one-sided.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcenp import functional as F
from rcenp.backend import as_numpy
from rcenp.testing import check_gradients

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


def away_from_zero(a, gap=1e-2):
    return np.where(np.abs(a) < gap, gap + np.abs(a), a)


def draw(xp, seed, shape, low=-2.0, high=2.0):
    return xp.asarray(np.random.default_rng(seed).uniform(low, high, shape))


@given(shape=shapes, seed=st.integers(0, 2**31), broadcast=st.booleans())
def test_arithmetic(xp, shape, seed, broadcast):
    a = draw(xp, seed, shape)
    b = draw(xp, seed + 1, (1,) * (len(shape) - 1) + shape[-1:] if broadcast else shape, 0.5, 2.0)
    an, bn = as_numpy(a), as_numpy(b)
    fns = {
        "add": (lambda a, b: a + b, an + bn), "sub": (lambda a, b: a - b, an - bn),
        "mul": (lambda a, b: a * b, an * bn), "div": (lambda a, b: a / b, an / bn),
        "rsub": (lambda a, b: 3.0 - a * b, 3.0 - an * bn), "pow": (lambda a, b: (b ** 3) * a, bn ** 3 * an),
        "maximum": (lambda a, b: F.maximum(a, b + 0.013), np.maximum(an, bn + 0.013)),
    }
    for name, (op, expected) in fns.items():
        out = op(F.add(a, 0.0), F.add(b, 0.0))
        np.testing.assert_allclose(as_numpy(out.data), expected, rtol=1e-12, err_msg=name)
        check_gradients(op, [a, b])


@given(shape=shapes, seed=st.integers(0, 2**31))
def test_unary(xp, shape, seed):
    x = draw(xp, seed, shape)
    pos = draw(xp, seed, shape, 0.1, 3.0)
    cases = [
        (F.exp, x, np.exp), (F.log, pos, np.log), (F.tanh, x, np.tanh), (F.neg, x, np.negative),
        (lambda t: F.clip(t, -0.5, 0.5), x, lambda a: np.clip(a, -0.5, 0.5)),
        (F.relu, xp.asarray(away_from_zero(as_numpy(x))), lambda a: np.maximum(a, 0)),
        (lambda t: F.leaky_relu(t, 0.1), xp.asarray(away_from_zero(as_numpy(x))), lambda a: np.where(a > 0, a, 0.1 * a)),
    ]
    for op, arg, ref in cases:
        np.testing.assert_allclose(as_numpy(op(arg).data), ref(as_numpy(arg)), rtol=1e-12)
    xn = as_numpy(x)
    clipped = xp.asarray(np.where(np.abs(np.abs(xn) - 0.5) < 1e-2, xn * 0.5, xn))  # off the clip bounds
    for op, arg in [(F.exp, x), (F.log, pos), (F.tanh, x), (lambda t: F.clip(t, -0.5, 0.5), clipped),
                    (F.relu, cases[5][1]), (lambda t: F.leaky_relu(t, 0.1), cases[6][1])]:
        check_gradients(op, [arg])


def test_leaky_relu_conventions(xp):
    x = xp.asarray(np.array([-2.0, 0.0, 3.0], np.float32))
    from rcenp.autograd import Tensor, grad
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
    check_gradients(lambda t: F.reshape(t, (-1,)), [x])
    check_gradients(lambda t: F.pad(t, [(1, 0)] + [(0, 2)] * (len(shape) - 1)), [x])
    check_gradients(lambda t: F.concatenate([t, t * 2.0], axis=len(shape) - 1), [x])
    index = xp.asarray(np.random.default_rng(seed).integers(0, shape[0], 5))
    check_gradients(lambda t: F.getitem(t, index), [x])  # repeated rows accumulate
    check_gradients(lambda t: t[..., :1], [x])


@given(n=st.integers(1, 4), d=st.integers(1, 4), k=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_matmul_linear(xp, n, d, k, seed):
    a, b = draw(xp, seed, (n, d)), draw(xp, seed + 1, (d, k))
    np.testing.assert_allclose(as_numpy(F.matmul(a, b).data), as_numpy(a) @ as_numpy(b), rtol=1e-12)
    check_gradients(F.matmul, [a, b])
    w, bias = draw(xp, seed + 2, (k, d)), draw(xp, seed + 3, (k,))
    np.testing.assert_allclose(as_numpy(F.linear(a, w, bias).data), as_numpy(a) @ as_numpy(w).T + as_numpy(bias), rtol=1e-12)
    check_gradients(F.linear, [a, w, bias])
    check_gradients(F.linear, [a, w])


@given(n=st.integers(1, 4), classes=st.integers(2, 6), seed=st.integers(0, 2**31), scale=st.sampled_from([1.0, 30.0]))
def test_softmax_family(xp, n, classes, seed, scale):
    s = draw(xp, seed, (n, classes)) * scale
    sn = as_numpy(s)
    ref_log = sn - sn.max(1, keepdims=True) - np.log(np.exp(sn - sn.max(1, keepdims=True)).sum(1, keepdims=True))
    np.testing.assert_allclose(as_numpy(F.log_softmax(s).data), ref_log, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(as_numpy(F.softmax(s).data), np.exp(ref_log), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(as_numpy(F.logsumexp(s, axis=1).data), sn.max(1) + np.log(np.exp(sn - sn.max(1, keepdims=True)).sum(1)), rtol=1e-12)
    for op in (F.log_softmax, F.softmax, lambda t: F.logsumexp(t, axis=1), lambda t: F.logsumexp(t, axis=0, keepdims=True)):
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
