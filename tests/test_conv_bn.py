"""Convolution and batch normalisation: forward against naive float64 loops, finite-difference
gradients on hypothesis-drawn shapes, strides and paddings, and the layout/mode conventions."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rcenp import functional as F
from rcenp.autograd import Tensor, grad
from rcenp.backend import as_numpy
from rcenp.testing import check_gradients


def naive_conv(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, co, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp_[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return y if b is None else y + b[None, :, None, None]


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), 7))
    w = draw(st.integers(max(1, kw - 2 * pw), 7))
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 4)), co=draw(st.integers(1, 4)), h=h, w=w,
                k=(kh, kw), stride=(sh, sw), padding=(ph, pw), bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


@given(case=conv_cases())
def test_conv2d_forward_and_gradients(xp, case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"]))
    w = rng.standard_normal((case["co"], case["c"]) + case["k"])
    b = rng.standard_normal(case["co"]) if case["bias"] else None
    stride, padding = case["stride"], case["padding"]
    args = [xp.asarray(a) for a in (x, w) + ((b,) if b is not None else ())]
    y = F.conv2d(*args[:2], args[2] if b is not None else None, stride=stride, padding=padding)
    np.testing.assert_allclose(as_numpy(y.data), naive_conv(x, w, b, stride, padding), rtol=1e-10, atol=1e-12)
    op = (lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding)) if b is not None else \
        (lambda x, w: F.conv2d(x, w, stride=stride, padding=padding))
    check_gradients(op, args)


@pytest.mark.parametrize("shape,stride,bias", [((2, 3, 6, 6), 1, True), ((2, 3, 7, 5), 2, False),
                                               ((64, 16, 12, 12), 1, False)])   # the last one host-chunked
def test_conv2d_residual_has_the_bits_of_a_separate_sum_and_passes_gy_to_the_residual(xp, shape, stride, bias):
    rng = np.random.default_rng(3)
    x = xp.asarray(rng.standard_normal(shape).astype(np.float32))
    w = xp.asarray(rng.standard_normal((4, shape[1], 3, 3)).astype(np.float32))
    b = xp.asarray(rng.standard_normal(4).astype(np.float32)) if bias else None
    plain = F.conv2d(x, w, b, stride=stride, padding=1).data
    r = Tensor(xp.asarray(rng.standard_normal(plain.shape).astype(np.float32)), requires_grad=True)
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    fused = F.conv2d(xt, wt, b, stride=stride, padding=1, residual=r)
    separate = F.conv2d(xt, wt, b, stride=stride, padding=1) + r
    np.testing.assert_array_equal(as_numpy(fused.data), as_numpy(plain + r.data))
    gy = xp.asarray(rng.standard_normal(plain.shape).astype(np.float32))
    for got, want in zip(grad(fused, [xt, wt, r], grad_output=gy), grad(separate, [xt, wt, r], grad_output=gy)):
        np.testing.assert_array_equal(as_numpy(got), as_numpy(want))


@pytest.mark.parametrize("residual_shape", [(2, 3, 3, 3), (2, 3, 1, 1), (1, 3, 3, 1)])  # broadcasts as + does
def test_conv2d_residual_gradients_in_float64(xp, residual_shape):
    rng = np.random.default_rng(4)
    x, w, r = (xp.asarray(rng.standard_normal(s)) for s in ((2, 2, 5, 5), (3, 2, 3, 3), residual_shape))
    y = F.conv2d(x, w, stride=2, padding=1, residual=r)
    np.testing.assert_array_equal(as_numpy(y.data), as_numpy((F.conv2d(x, w, stride=2, padding=1) + r).data))
    check_gradients(lambda x, w, r: F.conv2d(x, w, stride=2, padding=1, residual=r), [x, w, r])


def test_conv2d_rejects_a_residual_of_another_shape_or_dtype(xp):
    x, w = xp.zeros((1, 2, 5, 5), np.float32), xp.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="residual"):
        F.conv2d(x, w, padding=1, residual=xp.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="residual"):
        F.conv2d(x, w, padding=1, residual=xp.zeros((3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="residual"):
        F.conv2d(x, w, padding=1, residual=xp.zeros((1, 3, 5, 5), np.float64))


@given(h=st.integers(1, 6), w=st.integers(1, 6), kw=st.integers(1, 4), c=st.integers(1, 3),
       pads=st.tuples(*[st.integers(0, 3)] * 4))
def test_kernel_rows_gathered_from_the_input_equal_those_of_the_padded_input(h, w, kw, c, pads):
    from rcenp.ops.conv import _kernel_rows

    top, left, bottom, right = pads
    ow = left + w + right - kw + 1
    assume(ow >= 1)
    x = np.random.default_rng(h * w).standard_normal((2, h, w, c)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    expected = np.stack([padded[:, :, j:j + kw].reshape(2, -1, kw * c) for j in range(ow)], axis=2)
    np.testing.assert_array_equal(_kernel_rows(x, pads, kw, ow), expected)
    np.testing.assert_array_equal(_kernel_rows(x.transpose(0, 2, 1, 3).copy().transpose(0, 2, 1, 3),
                                               pads, kw, ow), expected)   # not channels-last: padded first


def test_conv2d_output_is_channels_last_and_float32(xp):
    x = xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    w = xp.asarray(np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32))
    y = F.conv2d(x, w, padding=1).data
    assert y.dtype == np.float32 and y.shape == (2, 4, 8, 8)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    ref = naive_conv(as_numpy(x).astype(np.float64), as_numpy(w).astype(np.float64), None, (1, 1), (1, 1))
    np.testing.assert_allclose(as_numpy(y), ref, rtol=2e-5, atol=2e-5)


def test_conv2d_rejects_bad_shapes(xp):
    with pytest.raises(ValueError, match="channels"):
        F.conv2d(xp.zeros((1, 2, 5, 5)), xp.zeros((3, 4, 3, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        F.conv2d(xp.zeros((1, 2, 2, 2)), xp.zeros((3, 2, 3, 3)))


def test_frozen_weight_skips_weight_gradient(xp):
    """rcenp.grad with respect to the input only: the conv must not compute dW."""
    x = Tensor(xp.asarray(np.ones((1, 1, 4, 4))), requires_grad=True)
    w = Tensor(xp.asarray(np.ones((1, 1, 3, 3))), requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    fn = y.creator
    seen = []
    original = type(fn).backward
    type(fn).backward = lambda self, gy: (seen.append(self.needs_input_grad), original(self, gy))[1]
    try:
        grad(F.sum(y), x)
    finally:
        type(fn).backward = original
    assert seen == [(True, False)]


@st.composite
def bn_cases(draw):
    four_d = draw(st.booleans())
    n = draw(st.integers(2, 4))
    c = draw(st.integers(1, 4))
    shape = (n, c, draw(st.integers(1, 3)), draw(st.integers(1, 3))) if four_d else (n, c)
    return shape, draw(st.integers(0, 2**31)), draw(st.booleans())


@given(case=bn_cases())
def test_batch_norm_both_modes(xp, case):
    shape, seed, channels_last = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2 + 0.5
    if channels_last and len(shape) == 4:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    gamma, beta = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    expected = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-3) * gamma.reshape(bshape) + beta.reshape(bshape)
    rm, rv = xp.asarray(np.zeros(shape[1])), xp.asarray(np.ones(shape[1]))
    y = F.batch_norm(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), rm, rv, training=True)
    np.testing.assert_allclose(as_numpy(y.data), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(as_numpy(rm), 0.1 * mean, rtol=1e-12)          # decay 0.9 from 0
    np.testing.assert_allclose(as_numpy(rv), 0.9 + 0.1 * var, rtol=1e-12)     # biased variance
    check_gradients(lambda x, g, b: F.batch_norm(x, g, b, training=True), [xp.asarray(x), xp.asarray(gamma), xp.asarray(beta)])
    # eval mode: running statistics are constants
    rm_e, rv_e = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    y = F.batch_norm(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), xp.asarray(rm_e), xp.asarray(rv_e), training=False)
    expected = (x - rm_e.reshape(bshape)) / np.sqrt(rv_e.reshape(bshape) + 1e-3) * gamma.reshape(bshape) + beta.reshape(bshape)
    np.testing.assert_allclose(as_numpy(y.data), expected, rtol=1e-10, atol=1e-12)
    check_gradients(lambda x, g, b: F.batch_norm(x, g, b, xp.asarray(rm_e), xp.asarray(rv_e), training=False),
                    [xp.asarray(x), xp.asarray(gamma), xp.asarray(beta)])


@given(case=bn_cases(), slope=st.sampled_from([0.0, 0.1, 0.5]))
def test_batch_norm_with_fused_activation_gradients(xp, case, slope):
    shape, seed, _ = case
    rng = np.random.default_rng(seed)
    x, gamma, beta = rng.standard_normal(shape) * 2 + 0.5, rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    args = [xp.asarray(x), xp.asarray(gamma), xp.asarray(beta)]
    check_gradients(lambda x, g, b: F.batch_norm(x, g, b, training=True, slope=slope), args)
    check_gradients(lambda x, g, b: F.batch_norm(x, g, b, xp.asarray(rm), xp.asarray(rv), training=False, slope=slope), args)


@pytest.mark.parametrize("kernel,padding", [((3, 2), (1, 0)), ((2, 3), (0, 2))])
def test_kernel_row_path_in_float64_against_naive_loops(monkeypatch, kernel, padding):
    """Forward, dx and dW by kernel rows (KW*C >= 8 for x and dy), exact to float64 rounding."""
    import rcenp.ops.conv as conv

    taken = []
    by_rows = conv._by_rows
    monkeypatch.setattr(conv, "_by_rows", lambda *a: taken.append(by_rows(*a)) or taken[-1])
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((4, 4) + kernel)
    y = F.conv2d(x, w, padding=padding)
    np.testing.assert_allclose(y.data, naive_conv(x, w, None, (1, 1), padding), rtol=1e-10, atol=1e-12)
    check_gradients(lambda x, w: F.conv2d(x, w, padding=padding), [x, w])
    assert taken and all(taken)


@pytest.mark.parametrize("kernel,padding", [((3, 3), 1), ((2, 3), (0, 2)), ((5, 1), 2)])
def test_kernel_row_gemms_agree_with_im2col_in_float32(monkeypatch, kernel, padding):
    """Host stride-1 convs sum over kernel rows (a split of the im2col GEMM's K): forward, dx and
    dW agree with the single im2col GEMM to float32 rounding, chunked as in training."""
    import rcenp.ops.conv as conv

    rng = np.random.default_rng(3)
    x = np.ascontiguousarray(rng.standard_normal((48, 12, 12, 16), dtype=np.float32)).transpose(0, 3, 1, 2)
    w = (rng.standard_normal((24, 16) + kernel) / np.sqrt(16 * kernel[0] * kernel[1])).astype(np.float32)
    monkeypatch.setattr(conv, "_CHUNK_BYTES", 1 << 19)  # several images per chunk, 48 in all

    def run():
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, padding=padding)
        seed = np.cos(np.arange(y.data.size, dtype=np.float32)).reshape(y.shape)
        return [y.data] + grad(y, [xt, wt], grad_output=seed)

    by_rows = run()
    monkeypatch.setattr(conv, "_by_rows", lambda kernel, stride, c: False)
    im2col = run()
    for a, b in zip(by_rows, im2col):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max())
    assert not np.array_equal(by_rows[0], im2col[0])  # two summation orders: both paths really ran


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (64, 16, 24, 24)])   # small; host-chunked (2.4 MB)
@pytest.mark.parametrize("training", [True, False])
def test_fused_activation_is_bit_identical_to_leaky_after_batch_norm(xp, shape, training):
    rng = np.random.default_rng(1)
    x = np.ascontiguousarray(rng.standard_normal(shape).transpose(0, 2, 3, 1), np.float32).transpose(0, 3, 1, 2)
    gamma, beta = rng.uniform(0.5, 2, shape[1]).astype(np.float32), rng.standard_normal(shape[1]).astype(np.float32)
    seed_grad = xp.asarray(rng.standard_normal(shape).astype(np.float32))
    beta[0], x[0, 0, 0, 0] = 0.0, 0.0  # in eval mode (zero running mean) an output exactly at the kink

    def run(fused):
        stats = [xp.zeros(shape[1], np.float32), xp.ones(shape[1], np.float32)]  # running mean, var
        xt, g, b = (Tensor(xp.asarray(a), requires_grad=True) for a in (x, gamma, beta))
        if fused:
            y = F.batch_norm(xt, g, b, *stats, training=training, slope=0.1)
        else:
            y = F.leaky_relu(F.batch_norm(xt, g, b, *stats, training=training), 0.1)
        return [y.data, *stats] + grad(y, [xt, g, b], grad_output=seed_grad)

    for a, b in zip(run(True), run(False)):
        assert np.array_equal(as_numpy(a), as_numpy(b))


@pytest.mark.parametrize("training", [True, False])
def test_tiled_lanes_give_the_same_bits_as_broadcasting(training, monkeypatch):
    """Channels-last arrays take the tiled (n·H, W·C) path; it must equal (C, 1, 1) broadcasting."""
    import rcenp.ops.norm as norm

    rng = np.random.default_rng(2)
    x = np.ascontiguousarray(rng.standard_normal((8, 12, 12, 16)), np.float32).transpose(0, 3, 1, 2)
    gamma, beta = rng.uniform(0.5, 2, 16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    seed_grad = np.ascontiguousarray(rng.standard_normal((8, 12, 12, 16)), np.float32).transpose(0, 3, 1, 2)

    def run():
        xt = Tensor(x, requires_grad=True)
        g, b = Tensor(gamma, requires_grad=True), Tensor(beta, requires_grad=True)
        stats = [np.zeros(16, np.float32), np.ones(16, np.float32)]
        y = F.batch_norm(xt, g, b, *stats, training=training, slope=0.1)
        return [y.data, *stats] + grad(y, [xt, g, b], grad_output=seed_grad)

    assert norm._Lanes(x, seed_grad).on
    tiled = run()

    class Broadcasting(norm._Lanes):
        def __init__(self, *arrays):
            super().__init__(*arrays)
            self.on = False

    monkeypatch.setattr(norm, "_Lanes", Broadcasting)
    for a, b in zip(tiled, run()):
        assert np.array_equal(a, b)


def test_batch_norm_eval_needs_running_stats(xp):
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(xp.zeros((2, 3)), xp.ones(3), xp.zeros(3), training=False)


@pytest.mark.parametrize("stride", [1, 2])  # kernel-row GEMMs; im2col and col2im
def test_host_chunked_paths_match_single_pass(monkeypatch, stride):
    """Large inputs take the chunked multi-threaded host path; it must agree with one pass."""
    import rcenp.ops.conv as conv
    import rcenp.ops.layout as layout

    rng = np.random.default_rng(0)
    x = np.ascontiguousarray(rng.standard_normal((64, 16, 16, 16))).transpose(0, 3, 1, 2)  # channels-last, 2.1 MB
    w = rng.standard_normal((16, 16, 3, 3))
    gamma, beta = rng.uniform(0.5, 2, 16), rng.standard_normal(16)
    seed_grad = rng.standard_normal((64, 16, 16 // stride, 16 // stride))

    def run():
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        g, b = Tensor(gamma, requires_grad=True), Tensor(beta, requires_grad=True)
        h = F.leaky_relu(F.batch_norm(xt, g, b, training=True), 0.1)
        out = F.conv2d(h, wt, stride=stride, padding=1)
        grads = grad(out, [xt, wt, g, b], grad_output=seed_grad)
        return [out.data] + grads

    monkeypatch.setattr(conv, "_CHUNK_BYTES", 1 << 16)  # many conv chunks
    chunked = run()
    assert layout.host_chunked(x)
    monkeypatch.setattr(conv, "_CHUNK_BYTES", 1 << 40)
    monkeypatch.setattr("rcenp.ops.layout.host_chunked", lambda *a: False)  # BN and activations: one pass
    single = run()
    for a, b in zip(chunked, single):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (64, 16, 24, 24)])   # small; host-chunked (2.4 MB)
@pytest.mark.parametrize("slope", [None, 0.1])
def test_eval_input_gradient_alone_equals_the_full_backward(xp, shape, slope):
    """An attack asks for dx only; eval BN then skips the per-channel sums and must give the same dx."""
    rng = np.random.default_rng(5)
    x = np.ascontiguousarray(rng.standard_normal(shape).transpose(0, 2, 3, 1), np.float32).transpose(0, 3, 1, 2)
    gamma, beta = rng.uniform(0.5, 2, shape[1]).astype(np.float32), rng.standard_normal(shape[1]).astype(np.float32)
    stats = [xp.asarray(rng.standard_normal(shape[1]).astype(np.float32)),
             xp.asarray(rng.uniform(0.5, 2, shape[1]).astype(np.float32))]
    seed_grad = xp.asarray(rng.standard_normal(shape).astype(np.float32))
    xt, g, b = (Tensor(xp.asarray(a), requires_grad=True) for a in (x, gamma, beta))

    def backward(wrt):
        y = F.batch_norm(xt, g, b, *stats, training=False, slope=slope)
        return grad(y, wrt, grad_output=seed_grad)[0]

    assert np.array_equal(as_numpy(backward([xt])), as_numpy(backward([xt, g, b])))


def test_an_eval_graph_keeps_its_running_mean_through_a_later_training_pass(xp):
    """The audit: eval-mode BN kept a live reference to running_mean for dgamma, so a training
    pass between an eval forward and its backward changed that backward's result."""
    rng = np.random.default_rng(3)
    x, x2 = (xp.asarray(rng.standard_normal((6, 3, 4, 4))) for _ in range(2))
    gamma_value, beta_value = xp.asarray(rng.uniform(0.5, 2, 3)), xp.asarray(rng.standard_normal(3))

    def eval_gamma_grad(interleave):
        mean, var = xp.full(3, 0.3), xp.ones(3)
        gamma, beta = Tensor(gamma_value, requires_grad=True), Tensor(beta_value, requires_grad=True)
        y = F.batch_norm(Tensor(x), gamma, beta, mean, var, training=False)
        if interleave:
            F.batch_norm(Tensor(x2), Tensor(gamma_value), Tensor(beta_value), mean, var, training=True)
        (y * y).sum().backward()
        return gamma.grad

    xp.testing.assert_array_equal(eval_gamma_grad(True), eval_gamma_grad(False))


@pytest.mark.parametrize("eps, decay", [(1e-5, 0.99), (0.5, 0.0)])
def test_batch_norm_with_other_eps_and_decay(xp, eps, decay):
    """eps and decay reach the forward, the running statistics and both modes' gradients."""
    rng = np.random.default_rng(7)
    x, gamma, beta = rng.standard_normal((3, 2, 2, 3)) * 2 + 0.5, rng.uniform(0.5, 2, 2), rng.standard_normal(2)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    b = (1, -1, 1, 1)
    rm, rv = xp.asarray(np.full(2, 0.3)), xp.asarray(np.full(2, 1.5))
    y = F.batch_norm(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), rm, rv, training=True, decay=decay, eps=eps)
    expected = (x - mean.reshape(b)) / np.sqrt(var.reshape(b) + eps) * gamma.reshape(b) + beta.reshape(b)
    np.testing.assert_allclose(as_numpy(y.data), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(as_numpy(rm), decay * 0.3 + (1 - decay) * mean, rtol=1e-12)
    np.testing.assert_allclose(as_numpy(rv), decay * 1.5 + (1 - decay) * var, rtol=1e-12)
    args = [xp.asarray(x), xp.asarray(gamma), xp.asarray(beta)]
    check_gradients(lambda x, g, b: F.batch_norm(x, g, b, training=True, eps=eps), args)
    stats = xp.asarray(rng.standard_normal(2)), xp.asarray(rng.uniform(0.5, 2, 2))
    m, v = (as_numpy(a).reshape(b) for a in stats)
    np.testing.assert_allclose(as_numpy(F.batch_norm(*args, *stats, training=False, eps=eps).data),
                               (x - m) / np.sqrt(v + eps) * gamma.reshape(b) + beta.reshape(b), rtol=1e-10, atol=1e-12)
    check_gradients(lambda x, g, b: F.batch_norm(x, g, b, *stats, training=False, eps=eps), args)
