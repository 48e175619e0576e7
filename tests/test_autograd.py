"""The autograd engine itself: accumulation, rcenp.grad, no_grad, graph release, deep graphs."""
import gc
import weakref

import numpy as np
import pytest

import rcenp
from rcenp import functional as F
from rcenp.autograd import Function, Tensor, grad
from rcenp.backend import as_numpy


def test_backward_accumulates_into_leaves(xp):
    a = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    b = Tensor(xp.asarray([3.0, 4.0]), requires_grad=True)
    (a * b + a).sum().backward()
    np.testing.assert_array_equal(as_numpy(a.grad), [4.0, 5.0])
    np.testing.assert_array_equal(as_numpy(b.grad), [1.0, 2.0])
    (a * 2.0).sum().backward()  # a second backward accumulates
    np.testing.assert_array_equal(as_numpy(a.grad), [6.0, 7.0])


def test_shared_subexpression_gets_all_contributions(xp):
    x = Tensor(xp.asarray(3.0), requires_grad=True)
    y = x * x
    z = y * y + y  # x^4 + x^2
    z.backward()
    assert as_numpy(x.grad) == pytest.approx(4 * 27 + 6)


def test_grad_leaves_dot_grad_untouched(xp):
    w = Tensor(xp.asarray(np.ones((3, 2))), requires_grad=True)
    x = Tensor(xp.asarray(np.arange(6.0).reshape(2, 3)), requires_grad=True)
    loss = F.sum(F.matmul(x, w) ** 2)
    gx = grad(loss, x)
    assert w.grad is None and x.grad is None
    expected = 2 * (as_numpy(x.data) @ np.ones((3, 2))) @ np.ones((3, 2)).T
    np.testing.assert_allclose(as_numpy(gx), expected)


def test_grad_of_several_inputs_and_unused_input(xp):
    a = Tensor(xp.asarray(2.0), requires_grad=True)
    b = Tensor(xp.asarray(5.0), requires_grad=True)
    unused = Tensor(xp.asarray([1.0, 1.0]), requires_grad=True)
    ga, gb, gu = grad(a * b * a, [a, b, unused], allow_unused=True)
    assert float(ga) == 20.0 and float(gb) == 4.0
    np.testing.assert_array_equal(as_numpy(gu), [0.0, 0.0])


def test_grad_refuses_an_unused_input_and_keeps_the_graph(xp):
    """An attack differentiating with respect to a tensor the loss was not computed from would
    silently get zeros and never move; rcenp.grad says so, before releasing anything."""
    a = Tensor(xp.asarray(2.0), requires_grad=True)
    unused = Tensor(xp.asarray([1.0, 1.0]), requires_grad=True)
    y = a * a
    with pytest.raises(ValueError, match=r"input\(s\) \[1\] not used in the graph.*allow_unused=True"):
        grad(y, [a, unused])
    assert float(grad(y, a)) == 4.0  # the graph survived the refusal
    copy = Tensor(xp.asarray(2.0), requires_grad=True)
    with pytest.raises(ValueError, match="not used in the graph"):
        grad(copy.detach() * copy.detach(), copy)
    with rcenp.no_grad():
        z = a * a
    with pytest.raises(ValueError, match="not used in the graph"):
        grad(z, a)
    np.testing.assert_array_equal(as_numpy(grad(z, a, allow_unused=True)), 0.0)


def test_grad_refuses_an_input_that_does_not_require_a_gradient(xp):
    a = Tensor(xp.asarray(2.0), requires_grad=True)
    frozen = Tensor(xp.asarray(3.0))
    y = a * frozen
    for inputs in (frozen, [a, frozen], frozen.data):
        with pytest.raises(ValueError, match="does not require a gradient"):
            grad(y, inputs, allow_unused=True)  # no opt-in for this one: it is always a mistake
    assert float(grad(y, a)) == 3.0


def test_grad_of_the_output_itself(xp):
    x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    y = x * 3.0
    gy, gx = grad(y, [y, x], grad_output=xp.asarray([1.0, 10.0]))
    np.testing.assert_array_equal(as_numpy(gy), [1.0, 10.0])
    np.testing.assert_array_equal(as_numpy(gx), [3.0, 30.0])
    np.testing.assert_array_equal(as_numpy(grad(x, x)), [1.0, 1.0])


def test_grad_with_respect_to_an_intermediate(xp):
    x = Tensor(xp.asarray(3.0), requires_grad=True)
    h = x * 2.0
    y = h * h + x
    gh, gx = grad(y, [h, x])
    assert float(gh) == 12.0 and float(gx) == 25.0  # dy/dx = 2h*2 + 1


def test_no_grad_records_nothing(xp):
    x = Tensor(xp.asarray([1.0]), requires_grad=True)
    with rcenp.no_grad():
        y = x * 2.0
        with rcenp.enable_grad():
            z = x * 3.0
    assert y.creator is None and not y.requires_grad
    assert z.creator is not None
    assert rcenp.is_grad_enabled()


def test_grad_mode_is_per_thread():
    """A no_grad block in one thread does not reach another, nor does its end undo the other's:
    with one process-wide flag, two threads' interleaved blocks (A enters, B enters, A leaves, B
    leaves) left recording off for good."""
    import threading

    entered, leave = threading.Event(), threading.Event()
    seen = {}

    def other():
        with rcenp.no_grad():
            seen["inside"] = rcenp.is_grad_enabled()
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    entered.wait(10)
    assert rcenp.is_grad_enabled() and seen["inside"] is False   # its block is its own
    with rcenp.no_grad():
        leave.set()
        thread.join(10)
        assert not rcenp.is_grad_enabled()                        # its end leaves ours as it was
    assert rcenp.is_grad_enabled()
    x = Tensor(np.ones(2), requires_grad=True)
    assert (x * 2.0).creator is not None


def test_graph_is_released_after_backward(xp):
    x = Tensor(xp.asarray(np.ones((4, 4))), requires_grad=True)
    h = F.exp(x * 2.0)
    ref = weakref.ref(h)
    loss = F.sum(F.tanh(h))
    del h
    gc.collect()
    assert ref() is not None  # held by the graph until backward
    loss.backward()
    gc.collect()
    assert ref() is None
    assert loss.creator.inputs == ()


def test_retain_graph_allows_a_second_backward(xp):
    x = Tensor(xp.asarray(2.0), requires_grad=True)
    y = x * x
    y.backward(retain_graph=True)
    y.backward()
    assert float(x.grad) == 8.0


def test_deep_graph_needs_no_recursion(xp):
    x = Tensor(xp.asarray(1.0), requires_grad=True)
    y = x
    for _ in range(20_000):  # far deeper than Python's recursion limit
        y = y * 1.0
    y.backward()
    assert float(x.grad) == 1.0


def test_scalars_take_the_tensor_dtype(xp):
    x = Tensor(xp.asarray(np.ones(3, np.float32)))
    assert (x * 0.1).dtype == np.float32 and (2 - x).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32  # Python floats default to float32


def test_function_sees_needs_input_grad(xp):
    class Probe(Function):
        def forward(self, a, b):
            return a + b

        def backward(self, gy):
            self.seen = self.needs_input_grad
            return gy, gy

    probe = Probe()
    a = Tensor(xp.asarray(1.0), requires_grad=True)
    out = probe(a, xp.asarray(2.0))
    out.backward()
    assert probe.seen == (True, False)


def test_only_floating_point_tensors_can_require_gradients(xp):
    """An integer leaf's gradient came back truncated: d(2.5·t)/dt gave [2, 2, 2]."""
    for data in (xp.arange(3), xp.asarray([True, False]), 3):
        with pytest.raises(ValueError, match=r"only floating-point Tensors can require gradients, got dtype "
                                             r"(int|bool).*astype\(np.float32\)"):
            Tensor(data, requires_grad=True)
    labels = Tensor(xp.arange(3))  # integer Tensors that need no gradient (labels, indices) stay fine
    assert labels.dtype.kind == "i" and not labels.requires_grad
    t = Tensor(xp.arange(3).astype(np.float32), requires_grad=True)
    np.testing.assert_array_equal(as_numpy(grad((t * 2.5).sum(), t)), [2.5, 2.5, 2.5])


def test_a_released_graph_refuses_another_backward_pass(xp):
    """A second backward() used to add nothing, a backward() after grad() left .grad None, and a
    second grad() blamed no_grad() and suggested allow_unused=True (zeros)."""
    released = r"already used by a backward pass.*retain_graph=True"
    x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward: this graph was " + released):
        loss.backward()
    with pytest.raises(RuntimeError, match="rcenp.grad: this graph was " + released):
        grad(loss, x, allow_unused=True)
    np.testing.assert_array_equal(as_numpy(x.grad), [2.0, 4.0])

    y = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    loss = (y * y).sum()
    np.testing.assert_array_equal(as_numpy(grad(loss, y)), [2.0, 4.0])
    with pytest.raises(RuntimeError, match=released):
        loss.backward()
    with pytest.raises(RuntimeError, match=released):
        grad(loss, y)
    assert y.grad is None

    # a graph released only in part: h's history went with the first loss; nothing is accumulated
    z = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    h = z * z
    (h * 2.0).sum().backward()
    second = (h * 3.0).sum() + (z * 5.0).sum()
    with pytest.raises(RuntimeError, match=released):
        second.backward()
    np.testing.assert_array_equal(as_numpy(z.grad), [4.0, 8.0])  # untouched by the refused pass


def test_backward_on_a_tensor_without_a_gradient_raises(xp):
    """It silently changed nothing (a loss computed under no_grad, say); PyTorch raises too."""
    from rcenp.grad_mode import no_grad
    w = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    with no_grad():
        loss = (w * w).sum()
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        loss.backward()
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        Tensor(xp.asarray(1.0)).backward()
    assert w.grad is None


def test_grad_goes_ahead_where_the_released_part_is_off_its_path(xp):
    """A probe on features whose own history an earlier backward released: grad needs only the
    live part (as PyTorch allows); a path through the released part is still refused."""
    a = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    h = a * a
    h.sum().backward()
    b = Tensor(xp.asarray([3.0, 4.0]), requires_grad=True)
    probe = (h * b).sum()
    np.testing.assert_array_equal(as_numpy(grad(probe, b, retain_graph=True)), [1.0, 4.0])
    np.testing.assert_array_equal(as_numpy(grad(probe, h, retain_graph=True)), [3.0, 4.0])  # h itself is live
    with pytest.raises(RuntimeError, match=r"rcenp.grad: this graph was already used .*detach\(\)"):
        grad(probe, [b, a])
    with pytest.raises(RuntimeError, match="backward: this graph was already used"):
        probe.backward()
    assert b.grad is None
    detached = (h.detach() * b).sum()  # the hint: cut what is not differentiated
    detached.backward()
    np.testing.assert_array_equal(as_numpy(b.grad), [1.0, 4.0])


def test_retain_graph_keeps_the_graph_for_grad_and_backward(xp):
    x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    loss = (x * x * x).sum()
    for _ in range(2):
        np.testing.assert_array_equal(as_numpy(grad(loss, x, retain_graph=True)), [3.0, 12.0])
    loss.backward(retain_graph=True)
    np.testing.assert_array_equal(as_numpy(grad(loss, x)), [3.0, 12.0])  # releases
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()
    np.testing.assert_array_equal(as_numpy(x.grad), [3.0, 12.0])


def test_grad_output_must_have_the_output_shape(xp):
    x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    with pytest.raises(ValueError, match=r"rcenp.grad: grad_output must have the output's shape \(2,\), got \(3,\)"):
        grad(x * 2.0, x, grad_output=xp.ones(3))
    with pytest.raises(ValueError, match=r"backward: grad must have the output's shape \(\), got \(2,\)"):
        (x * 2.0).sum().backward(xp.ones(2))
    with pytest.raises(ValueError, match=r"shape \(2,\), got \(1,\)"):
        x.backward(xp.ones(1))  # a leaf too
    assert x.grad is None
    with pytest.raises(TypeError, match="output must be a Tensor, got float64"):
        grad(np.float64(1.0), x)
    np.testing.assert_array_equal(as_numpy(grad(x * 2.0, x, grad_output=xp.asarray([1.0, 3.0]))), [2.0, 6.0])


def test_grad_output_from_either_device(xp):
    """A host grad_output for a GPU graph (or the reverse) failed later, inside an op's backward."""
    from rcenp.backend import to_device

    for device in ("cpu", "cuda" if xp.__name__ == "cupy" else "cpu"):
        x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
        gy = to_device(np.asarray([1.0, 3.0]), device)
        assert type(grad(x * 2.0, x, grad_output=gy)) is type(x.data)
        np.testing.assert_array_equal(as_numpy(grad(x * 2.0, x, grad_output=gy)), [2.0, 6.0])
        (x * 2.0).backward(gy)
        assert type(x.grad) is type(x.data)
        np.testing.assert_array_equal(as_numpy(x.grad), [2.0, 6.0])


def test_float_and_numpy_conversion(xp):
    assert float(Tensor(xp.asarray([2.5]))) == 2.5
    assert float(Tensor(xp.asarray(1.5), requires_grad=True) * 2.0) == 3.0
    with pytest.raises(TypeError, match=r"one-element Tensor, got shape \(2,\)"):
        float(Tensor(xp.asarray([1.0, 2.0])))
    x = Tensor(xp.asarray([1.0, 2.0]), requires_grad=True)
    with pytest.raises(TypeError, match="requires a gradient.*numpy"):
        np.asarray(x)  # np.exp(x), np.where(.., x, ..) would silently cut x from the graph
    with pytest.raises(TypeError, match="requires a gradient"):
        np.exp(x)
    plain = Tensor(xp.asarray([1.0, 2.0]))
    if xp is np:
        array = np.asarray(plain)
        assert array.dtype == np.float64 and array.tolist() == [1.0, 2.0]
        assert np.asarray(plain, dtype=np.float32).dtype == np.float32
    else:
        with pytest.raises(TypeError, match="on the GPU"):
            np.asarray(plain)


def test_numpy_operands_still_give_tensors():
    """ndarray (op) Tensor keeps dispatching to the Tensor's reflected operator, graph and all."""
    x = Tensor(np.asarray([1.0, 2.0]), requires_grad=True)
    a = np.asarray([3.0, 4.0])
    for out in (a * x, a + x, a - x, a / x, np.float64(2.0) * x):
        assert isinstance(out, Tensor) and out.creator is not None
    a += x
    assert isinstance(a, Tensor) and a.creator is not None
    np.testing.assert_array_equal(grad((np.asarray([3.0, 4.0]) * x).sum(), x), [3.0, 4.0])
