"""The authors' ResNet: structure against an independent float64 reference, state-dict layout,
initialisation, train/eval BN, gradients of the whole network, and the objective wrapper."""
import math

import numpy as np
import pytest

from rcenp import functional as F
from rcenp import nn
from rcenp.autograd import Function, Tensor
from rcenp.backend import as_numpy, to_device
from rcenp.models import resnet
from rcenp.models.resnet import ResNet
from rcenp.objectives import Classifier
from rcenp.testing import check_directional, check_gradients
from tests.test_conv_bn import naive_conv


def reference_forward(state, x, n, slope=0.1):
    """Plain NumPy float64 pre-activation ResNet in eval mode, written from protocol §1.1."""
    act = lambda t: np.where(t > 0, t, slope * t)  # noqa: E731

    def bn(t, key):
        shape = (1, -1, 1, 1)
        return ((t - state[key + ".running_mean"].reshape(shape)) / np.sqrt(state[key + ".running_var"].reshape(shape) + 1e-3)
                * state[key + ".weight"].reshape(shape) + state[key + ".bias"].reshape(shape))

    h = naive_conv(x, state["stem.weight"], None, (1, 1), (1, 1))
    in_ch = 16
    for s, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
        for u in range(n):
            key = f"stage{s}.unit{u}"
            st = stride if u == 0 else 1
            if s == 1 and u == 0:
                h = act(bn(h, key + ".bn1"))
                shortcut, branch = h, h
            else:
                shortcut, branch = h, act(bn(h, key + ".bn1"))
            branch = naive_conv(branch, state[key + ".conv1.weight"], None, (st, st), (1, 1))
            branch = naive_conv(act(bn(branch, key + ".bn2")), state[key + ".conv2.weight"], None, (1, 1), (1, 1))
            if in_ch != width:
                nb, c, hh, ww = shortcut.shape
                shortcut = shortcut[:, :, :hh // 2 * 2, :ww // 2 * 2].reshape(nb, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5))
                pad = (width - in_ch) // 2
                shortcut = np.pad(shortcut, ((0, 0), (pad, pad), (0, 0), (0, 0)))
            h = branch + shortcut
            in_ch = width
    z = act(bn(h, "bn")).mean(axis=(2, 3))
    return z @ state["fc.weight"].T + state["fc.bias"], z


def randomised(model, seed):
    """Give BN non-trivial running statistics and affine parameters, so the test sees them."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith("running_mean") or k.endswith(".bias"):
            state[k] = rng.normal(0, 0.2, v.shape).astype(v.dtype)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2, v.shape).astype(v.dtype)
        elif "bn" in k and k.endswith("weight"):
            state[k] = rng.uniform(0.5, 1.5, v.shape).astype(v.dtype)
    model.load_state_dict(state)
    return model


def test_state_dict_keys_in_forward_order():
    model = resnet(32, 3)
    keys = list(model.state_dict())
    bn = ["weight", "bias", "running_mean", "running_var"]
    expected = ["stem.weight"]
    for s in (1, 2, 3):
        for u in range(5):
            p = f"stage{s}.unit{u}."
            expected += [p + "bn1." + b for b in bn] + [p + "conv1.weight"] + [p + "bn2." + b for b in bn] + [p + "conv2.weight"]
    expected += ["bn." + b for b in bn] + ["fc.weight", "fc.bias"]
    assert keys == expected
    assert sum(p.size for p in model.parameters()) == 464_154
    assert [n for n, _ in model.named_parameters()] == [k for k in keys if "running" not in k]
    assert len(resnet(56, 1).units) == 27  # n = 9 units per stage


def test_initialisation_matches_the_protocol():
    model = resnet(32, 3, seed=3)
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith("conv1.weight") or k.endswith("conv2.weight") or k == "stem.weight":
            expected = math.sqrt(2.0 / (9 * v.shape[0]))
            assert abs(v.std() - expected) < 0.15 * expected, k
    bound = math.sqrt(3 / 64)
    assert np.abs(state["fc.weight"]).max() <= bound and np.abs(state["fc.weight"]).max() > 0.9 * bound
    assert (state["fc.bias"] == 0).all() and (state["bn.weight"] == 1).all() and (state["bn.running_var"] == 1).all()
    assert all(p.decay == (p.ndim > 1) for p in model.parameters())  # decay on kernels only


@pytest.mark.parametrize("activation", ["leaky_relu", "relu"])
def test_forward_matches_independent_reference(xp, device, activation):
    model = randomised(resnet(8, 1, activation=activation, seed=1), seed=2).astype(np.float64).eval()
    model.to(device)
    x = np.random.default_rng(4).normal(size=(2, 1, 8, 8))
    logits = as_numpy(model(xp.asarray(x)).data)
    z = as_numpy(model.features(xp.asarray(x)).data)
    ref_logits, ref_z = reference_forward(model.state_dict(), x, 1, slope=0.1 if activation == "leaky_relu" else 0.0)
    np.testing.assert_allclose(z, ref_z, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-10, atol=1e-12)


def test_rejects_bad_depth_and_activation():
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet(30)
    with pytest.raises(ValueError, match="activation"):
        resnet(8, activation="gelu")
    for depth in (32.0, "32", True):  # 32.0 and "32" failed with Python's bare TypeError
        with pytest.raises(ValueError, match="depth must be 6n\\+2 with n >= 1, an integer"):
            resnet(depth)
    for slope in (1.0, -0.1, float("nan")):  # was raised only at the first forward
        with pytest.raises(ValueError, match="slope must be in \\[0, 1\\)"):
            ResNet(8, 1, slope=slope)
    assert ResNet(8, 1, activation="relu", slope=1.0).slope == 1.0  # relu has no slope to check
    net = ResNet(np.int64(8), np.int32(1))  # NumPy integers are integers
    assert (net.depth, net.in_channels) == (8, 1) and type(net.depth) is int


@pytest.mark.parametrize("objective", ["rce", "ce"])
@pytest.mark.parametrize("training", [True, False])
def test_whole_network_gradient_float64(xp, device, training, objective):
    """Directional finite differences through a ResNet-8 with the RCE or CE loss, in both BN modes."""
    model = randomised(resnet(8, 1, seed=5), seed=6).astype(np.float64).train(training)
    model.to(device)
    clf = Classifier(model, objective)
    x = Tensor(xp.asarray(np.random.default_rng(7).normal(size=(3, 1, 8, 8))), requires_grad=True)
    labels = xp.asarray(np.array([1, 4, 9]))
    if training:  # keep the running statistics fixed across the finite-difference evaluations
        running = {k: v for k, v in model.state_dict().items() if "running" in k}

        def loss():
            model.load_state_dict(running, strict=False)
            return clf.loss(x, labels)
    else:
        def loss():
            return clf.loss(x, labels)
    check_directional(loss, [x] + model.parameters(), eps=1e-6, rtol=1e-6)


def test_train_mode_updates_running_stats_and_eval_uses_them():
    model = resnet(8, 1, seed=0)
    x = np.random.default_rng(0).normal(1.0, 2.0, (4, 1, 8, 8)).astype(np.float32)
    before = model.state_dict()
    model.train()(x)
    after = model.state_dict()
    assert not np.allclose(before["stage1.unit0.bn1.running_mean"], after["stage1.unit0.bn1.running_mean"])
    model.eval()
    a, b = model(x[:2]).data, model(x[:2]).data
    np.testing.assert_array_equal(a, b)
    assert model.state_dict()["stage1.unit0.bn1.running_mean"].tolist() == after["stage1.unit0.bn1.running_mean"].tolist()
    np.testing.assert_allclose(model(x[:1]).data, model(x[:2]).data[:1], rtol=1e-5, atol=1e-6)  # eval: per-example


def graph_functions(root):
    """Every Function of ``root``'s graph."""
    found, stack, seen = [], [root.creator], set()
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        found.append(fn)
        stack.extend(t.creator for t in fn.inputs)
    return found


def float_dtypes(fn):
    """dtypes of the float arrays a Function holds: its inputs and what it kept for backward."""
    arrays = [t.data for t in fn.inputs] + list(getattr(fn, "saved", ()))
    arrays += [v for v in vars(fn).values() if hasattr(v, "dtype") and hasattr(v, "shape")]
    return {str(a.dtype) for a in arrays if a.dtype.kind == "f"}


@pytest.mark.parametrize("training", [True, False])
def test_float64_model_is_float64_end_to_end(xp, device, training):
    """A float64 gradient check must be one: every forward value, every array kept for backward,
    every gradient and the BN statistics stay float64 (nothing computes in float32)."""
    model = randomised(resnet(8, 1, seed=5), seed=6).astype(np.float64).train(training).to(device)
    clf = Classifier(model, "rce")
    x = Tensor(xp.asarray(np.random.default_rng(7).normal(size=(3, 1, 8, 8))), requires_grad=True)
    loss = clf.loss(x, xp.asarray(np.array([1, 4, 9])))
    functions = graph_functions(loss)
    assert len(functions) > 20
    for fn in functions:
        assert float_dtypes(fn) == {"float64"}, type(fn).__name__
    grads = []
    for fn in functions:
        def checked(gy, fn=fn, backward=fn.backward):
            gxs = backward(gy)
            gxs = gxs if isinstance(gxs, tuple) else (gxs,)
            grads.append((type(fn).__name__, {str(g.dtype) for g in (gy, *gxs) if g is not None}))
            return gxs
        fn.backward = checked
    loss.backward()
    assert loss.dtype == np.float64 and len(grads) == len(functions)
    assert [g for g in grads if g[1] != {"float64"}] == []
    assert {str(t.grad.dtype) for t in [x] + model.parameters()} == {"float64"}
    assert {str(v.dtype) for v in model.state_dict().values()} == {"float64"}


def test_gradient_checks_refuse_to_run_below_float64():
    class ToFloat32(Function):
        def forward(self, x):
            return x.astype(np.float32)

        def backward(self, gy):
            return gy.astype(np.float64)

    with pytest.raises(AssertionError, match="float32 from float64 inputs"):
        check_gradients(lambda t: ToFloat32()(t), [np.ones(3)])
    w = Tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(AssertionError, match="float64 tensors"):
        check_directional(lambda: F.sum(w * w), [w])
    v = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(AssertionError, match="loss of dtype float32"):
        check_directional(lambda: F.sum(ToFloat32()(v)), [v])


def test_input_dtype_must_match_the_parameters():
    model = resnet(8, 1, seed=0).eval()
    x = np.zeros((2, 1, 8, 8))
    for call in (model, model.features, Classifier(model, "ce"), Classifier(model, "rce").predict):
        with pytest.raises(ValueError, match=r"input dtype float64 .* model.astype\(np.float64\)"):
            call(x)
    with pytest.raises(ValueError, match=r"uint8 .* floats in \[-0.5, 0.5\]"):
        model(x.astype(np.uint8))
    model.astype(np.float64)
    assert model(Tensor(x)).dtype == np.float64
    with pytest.raises(ValueError, match=r"input dtype float32 .* np.asarray\(x, np.float64\)"):
        model(x.astype(np.float32))


def test_load_state_dict_refuses_another_dtype():
    a = resnet(8, 1, seed=0)
    b = resnet(8, 1, seed=1)
    before = b.state_dict()
    wide = {k: v.astype(np.float64) for k, v in a.state_dict().items()}
    with pytest.raises(ValueError, match=r"stem.weight: dtype float64 does not match the module's float32.*"
                                         r"module.astype\(np.float64\)"):
        b.load_state_dict(wide)
    assert all(np.array_equal(v, before[k]) for k, v in b.state_dict().items())  # nothing half-loaded
    b.astype(np.float64).load_state_dict(wide)
    assert all(np.array_equal(v, wide[k]) and v.dtype == np.float64 for k, v in b.state_dict().items())
    ints = dict(a.state_dict(), **{"fc.bias": np.zeros(10, np.int64)})
    with pytest.raises(ValueError, match="fc.bias: dtype int64"):
        resnet(8, 1).load_state_dict(ints)


def test_state_dict_round_trip_and_shape_errors():
    a, b = resnet(8, 1, seed=0), resnet(8, 1, seed=1)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(a.eval()(x).data, b.eval()(x).data)
    bad = a.state_dict()
    bad["fc.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="fc.weight"):
        b.load_state_dict(bad)
    del bad["fc.weight"]
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict(bad)


def test_classifier_reverses_logits_for_rce():
    net = resnet(8, 1, seed=0).eval()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, size=(5, 1, 8, 8)).astype(np.float32)  # predict checks the box
    s = net(x).data
    ce, rce = Classifier(net, "ce"), Classifier(net, "rce")
    np.testing.assert_array_equal(ce(x).data, s)
    np.testing.assert_array_equal(rce(x).data, -s)
    np.testing.assert_array_equal(rce.predict(x), s.argmin(axis=1))
    np.testing.assert_array_equal(ce.predict(x, batch_size=2), s.argmax(axis=1))
    assert float(rce.loss(x, np.zeros(5, np.int64)).data) == pytest.approx(float(F.reverse_cross_entropy(s, np.zeros(5, np.int64)).data), rel=1e-6)
    with pytest.raises(ValueError, match="objective"):
        Classifier(net, "mse")


def test_device_moves_round_trip(xp, device):
    from rcenp.backend import device_of

    model = resnet(8, 1, seed=0)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    expected = model.eval()(x).data
    model.to(device)
    assert all(device_of(p) == device for p in model.parameters())
    np.testing.assert_allclose(as_numpy(model(to_device(x, device)).data), expected, rtol=1e-5, atol=1e-6)
    model.to("cpu")                                                   # and back: the same weights, bit for bit
    assert all(device_of(p) == "cpu" for p in model.parameters())
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    np.testing.assert_array_equal(model(x).data, expected)


def test_predict_uses_inference_bn_in_training_mode_and_keeps_the_mode_and_statistics():
    """The audit: predict_logits on a model in training mode used batch statistics (results that
    depended on the batching) and overwrote the running statistics."""
    model = Classifier(resnet(8, 1, seed=1), "ce").train()
    before = model.network.state_dict()
    x = np.random.default_rng(0).random((10, 1, 28, 28), dtype=np.float32) - 0.5
    by_three, whole = model.predict_logits(x, 3), model.predict_logits(x, 10)
    assert model.training
    assert all(np.array_equal(before[k], v) for k, v in model.network.state_dict().items())
    np.testing.assert_allclose(by_three, whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole, model.eval().predict_logits(x, 10), rtol=0, atol=0)


# ---- no silent traps for a library user (a fresh user's trial) ------------------------------------
@pytest.mark.parametrize("scale, message", [
    (lambda x: x + 0.5, r"box \[-0.5, 0.5\], got range \[0, 1\]"),  # images in [0, 1]
    (lambda x: (x + 0.5) * 255, r"box \[-0.5, 0.5\], got range \[0, 255\]"),  # 0-255
    (lambda x: np.where(x > 0.4, np.nan, x).astype(np.float32), "NaN or infinity"),
    (lambda x: np.nextafter(x, np.float32(1)), r"got range \[-0.49999997, 0.50000006\]"),  # the edge shows
])
def test_predict_refuses_pixels_outside_the_box(scale, message):
    """Data scaled to [0, 1] or 0-255 used to be classified without a word (the shipped RCE model
    said [4 4 4 4] for 7 2 1 0); the attacks and the detector already refused it."""
    model = Classifier(resnet(8, 1, seed=0), "ce").eval()
    x = np.linspace(-0.5, 0.5, 2 * 28 * 28, dtype=np.float32).reshape(2, 1, 28, 28)
    model.predict(x)
    with pytest.raises(ValueError, match=message):
        model.predict(scale(x))
    with pytest.raises(ValueError, match=message):
        model.predict_logits(scale(x))


def test_a_model_refuses_images_of_other_channels_in_words():
    """'images have 1 channels' (a fresh user's trial: MNIST images given to a CIFAR-10 model)."""
    model = Classifier(resnet(8, 3, seed=0), "ce").eval()
    with pytest.raises(ValueError, match=r"^images have 1 channel; this model takes 3"):
        model.predict(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"^images have 2 channels; this model takes 3"):
        model.predict(np.zeros((1, 2, 32, 32), np.float32))


def test_a_loaded_model_refuses_images_of_another_size():
    """A ResNet computes on any H, W divisible by 4: a 32x32 image gave the shipped MNIST model a
    prediction without a word (a fresh user's trial). A loaded model knows its data set's shape;
    a model built by hand takes any size, as before."""
    import rcenp

    model = rcenp.models.load("mnist-resnet32-rce")[0]
    assert model.image_shape == (1, 28, 28)
    assert model.predict(np.zeros((2, 1, 28, 28), np.float32)).shape == (2,)
    for shape in ((2, 1, 32, 32), (2, 1, 8, 8)):
        with pytest.raises(ValueError, match=r"^images are 1x\d+x\d+ \(C x H x W\); this model was trained on "
                                             r"1x28x28 images$"):
            model.predict(np.zeros(shape, np.float32))
        for call in (model, model.raw_logits, model.features):   # the graph-building calls too
            with pytest.raises(ValueError, match="this model was trained on 1x28x28 images"):
                call(rcenp.Tensor(np.zeros(shape, np.float32), requires_grad=True))
    assert Classifier(resnet(8, 1, seed=0), "ce").predict(np.zeros((2, 1, 8, 8), np.float32)).shape == (2,)


def test_the_graph_calls_refuse_a_list_with_the_fix():
    """``model(list)`` raised AttributeError ('list' object has no attribute 'shape') from inside
    the network; ``predict`` already converted or refused it with a hint."""
    model = Classifier(resnet(8, 1, seed=0), "ce")
    images = np.zeros((2, 1, 8, 8), np.float32).tolist()
    for call in (model, model.raw_logits, model.features, lambda x: model.loss(x, np.zeros(2, np.int64))):
        with pytest.raises(TypeError, match=r"^images must be a Tensor or an array \(N, C, H, W\), got list; for a "
                                            r"nested list of pixels pass np\.asarray\(x, np\.float32\)$"):
            call(images)
    assert model(np.asarray(images, np.float32)).shape == (2, 10)


def test_predict_batch_size_must_be_a_positive_integer():
    model = Classifier(resnet(8, 1, seed=0), "ce")
    x = np.zeros((3, 1, 8, 8), np.float32)
    for same in (np.int64(2), 2.0):   # rcenp.checks.check_steps: an integral value of any real type
        np.testing.assert_array_equal(model.predict(x, batch_size=same), model.predict(x, batch_size=3))
    for bad in (0, -1, 2.5, True, "2", None):
        with pytest.raises(ValueError, match="^batch_size must be"):
            model.predict(x, batch_size=bad)


@pytest.mark.parametrize("loss", ["cross_entropy", "reverse_cross_entropy", "smoothed_cross_entropy"])
@pytest.mark.parametrize("bad", [10, -1, 100])
def test_losses_refuse_labels_outside_the_classes(loss, bad):
    """An out-of-range label matched no class: its sample dropped out of the loss and its gradient."""
    s = np.zeros((4, 10), np.float32)
    fn = getattr(F, loss)
    args = (0.5,) if loss == "smoothed_cross_entropy" else ()
    fn(s, np.array([7, 2, 1, 9]), *args)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\] for 10 classes"):
        fn(s, np.array([7, 2, 1, bad]), *args)


def test_model_astype_refuses_integer_and_half_precision():
    model = Classifier(resnet(8, 1, seed=0), "ce")
    before = model.state_dict()
    for dtype in (np.int32, np.float16, bool):
        with pytest.raises(ValueError, match="float32 or float64"):
            model.astype(dtype)
    assert all(np.array_equal(before[k], v) and before[k].dtype == v.dtype for k, v in model.state_dict().items())
    assert model.astype(np.float64).state_dict()["network.fc.weight"].dtype == np.float64


@pytest.mark.parametrize("shape, message", [
    ((1, 28, 28), r"shape \(N, 1, H, W\) for this network, got \(1, 28, 28\)"),
    ((2, 3, 28, 28), r"shape \(N, 1, H, W\) for this network, got \(2, 3, 28, 28\)"),
    ((2, 1, 14, 14), "multiples of 4 .* got 14x14"),
    ((2, 1, 2, 2), "multiples of 4 .* got 2x2"),
])
def test_the_network_names_a_wrong_image_shape(shape, message):
    """A 3-D input used to fail in unpacking, and 14x14 images deep inside a residual sum."""
    model = Classifier(resnet(8, 1, seed=0), "ce")
    x = np.zeros(shape, np.float32)
    for call in (model, model.features, model.raw_logits):
        with pytest.raises(ValueError, match=message):
            call(x)


def test_a_classifier_says_what_it_is():
    model = Classifier(resnet(8, 1, num_classes=4, seed=0), "rce")
    assert repr(model) == "Classifier(ResNet-8, objective='rce', classes=4, float32, cpu, training mode)"
    assert "float64" in repr(model.astype(np.float64).eval()) and "eval mode" in repr(model)


def test_the_network_checks_its_sizes_and_says_what_it_is():
    assert repr(resnet(8, 1, num_classes=4)) == "ResNet(depth=8, in_channels=1, num_classes=4, activation=leaky_relu(0.1))"
    for kwargs, name in ((dict(in_channels=0), "in_channels"), (dict(num_classes=1), "num_classes"),
                         (dict(in_channels=1.0), "in_channels")):
        with pytest.raises(ValueError, match=f"{name} must be an integer"):
            resnet(8, **kwargs)


def test_a_half_precision_input_is_told_to_cast_the_input_not_the_model():
    """model.astype(np.float16) is refused, so the message must not suggest it."""
    model = Classifier(resnet(8, 1, seed=0), "ce")
    with pytest.raises(ValueError, match=r"cast the input with np.asarray\(x, np.float32\)$"):
        model(np.zeros((1, 1, 8, 8), np.float16))


@pytest.mark.parametrize("shape, hint", [
    ((1, 28, 28), "; one image (C, H, W): x[None]"),
    ((3, 28, 28), "; grey images (N, H, W): x[:, None]"),
    ((3, 28, 28, 1), "; channels-last (N, H, W, C) images: x.transpose(0, 3, 1, 2)"),
    ((28, 28, 1), "; one channels-last image (H, W, C): x.transpose(2, 0, 1)[None]"),
    ((28, 28), "; one grey image (H, W): x[None, None]"),
    ((28,), ""),
])
def test_a_mis_shaped_batch_is_told_how_to_reshape(shape, hint):
    """The trial: the errors named the expected shape but not the usual fix (a fresh user's
    single image, grey images without their channel axis, channels-last arrays)."""
    model = Classifier(resnet(8, 1, seed=0), "ce")
    with pytest.raises(ValueError) as info:
        model.predict(np.zeros(shape, np.float32))
    assert str(info.value).endswith(hint) and ("x[" in str(info.value) or "transpose" in str(info.value)) == bool(hint)


def test_a_list_of_pixels_is_told_to_use_asarray():
    model = Classifier(resnet(8, 1, seed=0), "ce")
    with pytest.raises(ValueError, match=r"float64 .*: cast the input with np.asarray\(x, np.float32\), or the model"):
        model.predict(np.zeros((1, 1, 8, 8)).tolist())


@pytest.mark.parametrize("scale, hint", [
    (lambda x: (x + 0.5) * 255, "; pixels in 0-255: x / 255 - 0.5"),
    (lambda x: x + 0.5, "; pixels in [0, 1]: x - 0.5"),
    (lambda x: x * 2, ""),                                           # not an unshifted range: no guess
])
def test_pixels_outside_the_box_are_told_the_usual_scaling(scale, hint):
    model = Classifier(resnet(8, 1, seed=0), "ce")
    x = np.linspace(-0.5, 0.5, 2 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8)
    with pytest.raises(ValueError) as info:
        model.predict(scale(x))
    assert str(info.value).startswith("images must lie in the box") and str(info.value).endswith(f"]{hint}")


@pytest.mark.parametrize("make, match", [
    (lambda: nn.Conv2d(3, 0), "out_channels must be a positive integer, got 0"),   # was ZeroDivisionError
    (lambda: nn.Conv2d(2.5, 4), "in_channels must be a positive integer, got 2.5"),
    (lambda: nn.Conv2d(3, 4, kernel_size=-1), "kernel_size must be a positive integer"),
    (lambda: nn.Linear(0, 10), "in_features must be a positive integer, got 0"),
    (lambda: nn.Linear(64, True), "out_features"),
    (lambda: nn.BatchNorm2d(0), "channels must be a positive integer, got 0"),
    (lambda: nn.BatchNorm2d(16, decay=1.5), r"decay must lie in \[0, 1\], got 1.5"),
    (lambda: nn.BatchNorm2d(16, eps=0.0), "eps"),
])
def test_layers_refuse_sizes_that_are_not_positive_integers(make, match):
    with pytest.raises(ValueError, match=match):
        make()
