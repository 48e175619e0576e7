"""SGD: heavy-ball momentum, weight decay on kernels only, schedules, and exact state round trips."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcenp.nn import Parameter
from rcenp.optim import SCHEDULES, SGD, PiecewiseConstant


@given(steps=st.integers(1, 6), lr=st.floats(1e-3, 0.5), seed=st.integers(0, 1000))
def test_matches_the_tensorflow_momentum_rule(steps, lr, seed):
    rng = np.random.default_rng(seed)
    w = Parameter(rng.normal(size=(3, 2)), decay=True)
    b = Parameter(rng.normal(size=2), decay=False)
    opt = SGD([w, b], lr=lr, momentum=0.9, weight_decay=2e-4)
    w_ref, b_ref = w.data.copy(), b.data.copy()
    vw, vb = np.zeros_like(w_ref), np.zeros_like(b_ref)
    for _ in range(steps):
        gw, gb = rng.normal(size=w.shape), rng.normal(size=b.shape)
        w.grad, b.grad = gw.copy(), gb.copy()
        opt.step()
        vw = 0.9 * vw + (gw + 2e-4 * w_ref)
        vb = 0.9 * vb + gb  # no decay on biases / BN
        w_ref, b_ref = w_ref - lr * vw, b_ref - lr * vb
    np.testing.assert_allclose(w.data, w_ref, rtol=1e-12)
    np.testing.assert_allclose(b.data, b_ref, rtol=1e-12)


def test_state_round_trip_is_exact():
    rng = np.random.default_rng(0)
    make = lambda: [Parameter(np.ones((2, 2), np.float32), decay=True)]  # noqa: E731
    p1, p2 = make(), make()
    o1, o2 = SGD(p1, 0.1), SGD(p2, 0.1)
    grads = [rng.normal(size=(2, 2)).astype(np.float32) for _ in range(4)]
    for g in grads[:2]:
        p1[0].grad = g
        o1.step()
    p2[0].data[...] = p1[0].data
    o2.load_state_dict(o1.state_dict())
    for g in grads[2:]:
        p1[0].grad, p2[0].grad = g, g.copy()
        o1.step()
        o2.step()
    assert np.array_equal(p1[0].data, p2[0].data)


def test_skips_parameters_without_gradient():
    p = Parameter(np.ones(2))
    SGD([p], 0.1).step()
    np.testing.assert_array_equal(p.data, [1.0, 1.0])


def test_schedules_follow_the_protocol():
    mnist, cifar = SCHEDULES["mnist"], SCHEDULES["cifar10"]
    assert [mnist(s) for s in (0, 9_999, 10_000, 14_999, 15_000, 19_999, 20_000)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0001]
    assert [cifar(s) for s in (0, 39_999, 40_000, 60_000, 80_000, 90_000)] == [0.1, 0.1, 0.01, 0.001, 0.0001, 0.0001]
    with pytest.raises(ValueError):
        PiecewiseConstant([2, 1], [0.1, 0.2, 0.3])
