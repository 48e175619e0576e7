"""SGD: heavy-ball momentum, weight decay on kernels only, schedules, and exact state round trips."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcenp import Tensor
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


def _params():
    return [Parameter(np.ones((2, 2)), decay=True), Parameter(np.zeros(2))]


@pytest.mark.parametrize("name, value", [
    ("lr", float("nan")), ("lr", float("inf")), ("lr", -1), ("lr", 0.0), ("lr", True), ("lr", "0.1"), ("lr", None),
    ("momentum", -5), ("momentum", 1.0), ("momentum", float("nan")), ("momentum", True),
    ("weight_decay", -1), ("weight_decay", float("inf")), ("weight_decay", float("nan")), ("weight_decay", False),
])
def test_bad_hyperparameters_raise_naming_the_argument(name, value):
    config = {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, name: value}
    with pytest.raises(ValueError, match=name):
        SGD(_params(), **config)
    opt = SGD(_params(), 0.1)
    with pytest.raises(ValueError, match=name):  # a later setting, as train.py's schedule sets lr
        setattr(opt, name, value)
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.1, 0.9, 2e-4)


def test_boundary_hyperparameters_are_accepted():
    opt = SGD(_params(), lr=np.float32(1e-8), momentum=0, weight_decay=0)
    assert (opt.lr, opt.momentum, opt.weight_decay) == (float(np.float32(1e-8)), 0.0, 0.0)
    opt.lr = 0.01  # the schedule's setting
    assert opt.lr == 0.01


def test_bad_params_raise():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError, match="params is empty"):
        SGD([], 0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        SGD(p, 0.1)
    with pytest.raises(TypeError, match=r"params\[1\] must be a Tensor"):
        SGD([p, np.ones(2)], 0.1)
    with pytest.raises(TypeError, match="iterable"):
        SGD(3, 0.1)
    with pytest.raises(ValueError, match=r"params\[1\] appears twice"):
        SGD([p, p], 0.1)
    with pytest.raises(ValueError, match="does not require gradients"):
        SGD([Tensor(np.ones(2))], 0.1)


def test_module_instead_of_parameters_gets_a_hint():
    from rcenp.nn import Linear
    with pytest.raises(TypeError, match=r"module\.parameters\(\)"):
        SGD(Linear(2, 3), 0.1)


def test_schedule_values_are_checked():
    for values in ([0.1, 0.0], [0.1, -0.01], [0.1, float("nan")]):
        with pytest.raises(ValueError, match=r"values\[1\]"):
            PiecewiseConstant([5], values)


def test_load_state_dict_checks_keys_and_shapes_before_changing_anything():
    params = _params()
    opt = SGD(params, 0.1)
    params[0].grad, params[1].grad = np.ones((2, 2)), np.ones(2)
    opt.step()
    before = opt.state_dict()
    with pytest.raises(ValueError, match="velocity.7"):
        opt.load_state_dict({"velocity.0": np.zeros((2, 2)), "velocity.7": np.zeros(2)})
    with pytest.raises(ValueError, match=r"velocity.1: shape \(3,\)"):
        opt.load_state_dict({"velocity.0": np.zeros((2, 2)), "velocity.1": np.zeros(3)})
    after = opt.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
