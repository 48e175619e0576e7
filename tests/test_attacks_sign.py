"""FGSM, BIM and ILCM (rcenp.attacks.sign): closed forms, box and ball, targets, the released tgsm.py's
logit gradient (TensorFlow's p - T), batch independence."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcenp import attacks
from rcenp import functional as F
from rcenp.models import resnet
from rcenp.nn import Module
from rcenp.nn.layers import Linear
from rcenp.objectives import Classifier


class LinearNet(Module):
    """Logits s = W·vec(x) + b on (N, 1, 4, 4) images: FGSM has a closed form here."""

    def __init__(self, seed=0, num_classes=5):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, 1
        self.fc = Linear(16, num_classes, rng=np.random.default_rng(seed))
        self.fc.bias.data[...] = np.random.default_rng(seed + 1).normal(0, 0.3, num_classes)

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], 16))


def linear_model(objective="ce", seed=0):
    return Classifier(LinearNet(seed), objective).astype(np.float64).eval()


def box_images(rng, n, shape=(1, 4, 4), dtype=np.float64):
    x = rng.uniform(-0.5, 0.5, (n,) + shape)
    x[:, :, 0, 0] = 0.5    # pixels on the box's faces must stay inside it
    x[:, :, 0, 1] = -0.5
    return x.astype(dtype)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("objective", ["ce", "rce"])
@given(seed=st.integers(0, 2**16), eps=st.floats(0.01, 1.0))
def test_fgsm_on_a_linear_model_equals_the_closed_form(objective, seed, eps):
    model = linear_model(objective, seed % 7)
    x = box_images(np.random.default_rng(seed), 6)
    w, b = model.network.fc.weight.data, model.network.fc.bias.data
    sign = -1.0 if objective == "rce" else 1.0                 # prediction logits z = ±(W x + b)
    z = sign * (x.reshape(6, 16) @ w.T + b)
    y = z.argmax(axis=1)
    p = softmax(z)
    p[np.arange(6), y] -= 1.0
    gradient = sign * (p @ w)                                   # ∇ₓ CE(z, ŷ) = ±Wᵀ(softmax(z) - e_ŷ)
    expected = np.clip(x.reshape(6, 16) + eps * np.sign(gradient), -0.5, 0.5).reshape(x.shape)
    result = attacks.fgsm(model, x, eps)
    np.testing.assert_array_equal(result.adversarial, expected)
    np.testing.assert_array_equal(result.clean_prediction, y)
    np.testing.assert_array_equal(result.success, result.prediction != y)


@given(seed=st.integers(0, 2**16), eps=st.floats(0.001, 1.0), steps=st.integers(1, 6),
       which=st.sampled_from(["fgsm", "bim", "ilcm"]))
def test_outputs_stay_in_the_box_and_the_eps_ball(seed, eps, steps, which):
    model = linear_model("rce" if seed % 2 else "ce", seed % 5)
    x = box_images(np.random.default_rng(seed), 5)
    kwargs = {} if which == "fgsm" else {"steps": steps}
    result = getattr(attacks, which)(model, x, eps, **kwargs)
    adv = result.adversarial.astype(np.float64)
    assert adv.min() >= -0.5 and adv.max() <= 0.5
    # float64 model: |x* - x| <= eps up to one rounding of x* (2^-53 relative, at most 2^-54 here)
    assert np.abs(adv - x).max() <= eps + 2.0 ** -52
    np.testing.assert_allclose(result.linf, np.abs(adv - x).reshape(5, -1).max(axis=1))


@given(seed=st.integers(0, 2**16), eps=st.floats(0.01, 0.5))
def test_bim_with_one_step_is_fgsm(seed, eps):
    model = linear_model("ce", seed % 5)
    x = box_images(np.random.default_rng(seed), 4)
    one, fast = attacks.bim(model, x, eps, steps=1), attacks.fgsm(model, x, eps)
    np.testing.assert_array_equal(one.adversarial, fast.adversarial)
    np.testing.assert_array_equal(one.prediction, fast.prediction)


@pytest.mark.parametrize("objective", ["ce", "rce"])
def test_ilcm_targets_the_least_likely_class_of_the_prediction_logits(objective):
    model = linear_model(objective, 3)
    x = box_images(np.random.default_rng(0), 20)
    s = x.reshape(20, 16) @ model.network.fc.weight.data.T + model.network.fc.bias.data
    # the least likely class under F = softmax(z): argmin of s for CE, argmax of s for RCE (z = -s)
    expected = s.argmax(axis=1) if objective == "rce" else s.argmin(axis=1)
    result = attacks.ilcm(model, x, 0.3)
    np.testing.assert_array_equal(result.target, expected)
    assert (result.target != result.clean_prediction).all()
    np.testing.assert_array_equal(result.success, result.prediction == result.target)


def test_paper_ilcm_reaches_its_target_on_a_linear_model():
    model = linear_model("ce", 1)
    x = box_images(np.random.default_rng(1), 50)
    paper = attacks.ilcm(model, x, 1.0, steps=10)
    code = attacks.ilcm(model, x, 1.0, steps=10, target_vector="pang2018-code")
    np.testing.assert_array_equal(paper.target, code.target)
    assert paper.success.mean() >= 0.9   # an unbounded paper ILCM on a linear model reaches its target


class TanhNet(Module):
    """s = W₂·tanh(W₁·vec(x) + b₁) + b₂ on (N, 1, 4, 4) images: a curved network whose Jacobian
    the test writes out by the chain rule."""

    def __init__(self, seed, num_classes, hidden=6):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.num_classes, self.in_channels = num_classes, 1
        self.fc1 = Linear(16, hidden, rng=rng)
        self.fc2 = Linear(hidden, num_classes, rng=rng)
        self.fc1.bias.data[...] = rng.normal(0, 0.3, hidden)
        self.fc2.weight.data[...] *= 3.0      # spread the logits, so softmax is far from uniform
        self.fc2.bias.data[...] = rng.normal(0, 0.3, num_classes)

    def forward(self, x):
        return self.fc2(F.tanh(self.fc1(x.reshape(x.shape[0], 16))))


def released_tgsm(model, x, eps, steps, exact_derivative=False):
    """The released attacks/tgsm.py on a TanhNet Classifier, in float64 NumPy: T = +0.5 at the
    least-likely class, -0.5 elsewhere; the logit gradient TensorFlow backpropagates for
    softmax_cross_entropy_with_logits(labels=T), p - T; x <- clip(x - (eps/steps)·sign(Jᵀ(p - T))).
    ``exact_derivative`` uses the loss's true logit gradient (ΣT)·p - T instead (what rcenp did
    before)."""
    net, sign = model.network, (-1.0 if model.objective == "rce" else 1.0)
    w1, b1, w2, b2 = (a.data for a in (net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias))
    flat = x.reshape(len(x), 16)
    lower, upper = np.maximum(flat - eps, -0.5), np.minimum(flat + eps, 0.5)
    adv, targets = flat.copy(), None
    for _ in range(steps):
        h = np.tanh(adv @ w1.T + b1)
        z = sign * (h @ w2.T + b2)                                 # prediction logits (N, L)
        if targets is None:
            targets = np.eye(z.shape[1])[z.argmin(axis=1)] - 0.5   # fixed from the clean image
        p = softmax(z)
        logit_grad = targets.sum(axis=1, keepdims=True) * p - targets if exact_derivative else p - targets
        gx = sign * (((logit_grad @ w2) * (1 - h ** 2)) @ w1)        # Jᵀ(logit_grad), J = ∂z/∂x
        adv = np.clip(adv - (eps / steps) * np.sign(gx), lower, upper)
    return adv.reshape(x.shape)


@pytest.mark.parametrize("num_classes", [2, 5, 10])
@pytest.mark.parametrize("objective", ["ce", "rce"])
@given(seed=st.integers(0, 2**16), eps=st.floats(0.05, 1.0), steps=st.integers(1, 6))
def test_ilcm_code_variant_backpropagates_tensorflows_p_minus_t(objective, num_classes, seed, eps, steps):
    """target_vector="pang2018-code" equals a direct float64 emulation of the released tgsm.py,
    whose logit gradient is TensorFlow's softmax(z) - T, not the loss's derivative (ΣT)·p - T."""
    model = Classifier(TanhNet(seed % 11, num_classes), objective).astype(np.float64).eval()
    x = box_images(np.random.default_rng(seed), 8)
    result = attacks.ilcm(model, x, eps, steps=steps, target_vector="pang2018-code")
    np.testing.assert_array_equal(result.adversarial, released_tgsm(model, x, eps, steps))
    assert result.params["target_vector"] == "pang2018-code"


def test_ilcm_code_variant_differs_from_the_exact_derivative():
    """The emulation above discriminates: on these images, differentiating the loss exactly
    ((ΣT)·p - T = -4p - T for 10 classes, protocol §5.1) moves some pixel the other way."""
    model = Classifier(TanhNet(3, 10), "ce").astype(np.float64).eval()
    x = box_images(np.random.default_rng(3), 8)
    code = attacks.ilcm(model, x, 0.3, steps=3, target_vector="pang2018-code").adversarial
    np.testing.assert_array_equal(code, released_tgsm(model, x, 0.3, 3))
    assert not np.array_equal(code, released_tgsm(model, x, 0.3, 3, exact_derivative=True))


def test_given_labels_are_attacked_instead_of_the_prediction():
    model = linear_model("ce", 2)
    x = box_images(np.random.default_rng(2), 8)
    clean = attacks.fgsm(model, x, 0.2)
    labels = (clean.clean_prediction + 1) % 5
    given_labels = attacks.fgsm(model, x, 0.2, labels=labels)
    np.testing.assert_array_equal(given_labels.label, labels)
    assert not np.array_equal(given_labels.adversarial, clean.adversarial)


def test_a_sample_does_not_depend_on_its_batch_mates():
    """In float64 a sample's result is the same alone, in any batch, or in any position; in float32
    the batched forward can round differently (last bits), which sign() hides almost always."""
    model = Classifier(resnet(8, 1, seed=3), "rce").astype(np.float64).eval()
    x = box_images(np.random.default_rng(3), 6, (1, 28, 28))
    together = attacks.bim(model, x, 0.1, steps=3, batch_size=6)
    split = attacks.bim(model, x[::-1], 0.1, steps=3, batch_size=4)
    for i in range(6):
        alone = attacks.bim(model, x[i:i + 1], 0.1, steps=3)
        np.testing.assert_array_equal(alone.adversarial[0], together.adversarial[i])
        np.testing.assert_array_equal(split.adversarial[5 - i], together.adversarial[i])
    again = attacks.bim(model, x, 0.1, steps=3, batch_size=6)
    np.testing.assert_array_equal(again.adversarial, together.adversarial)


def test_distortion_units():
    model = linear_model("ce", 0)
    x = np.zeros((2, 1, 4, 4))
    result = attacks.fgsm(model, x, 0.1)
    delta = result.adversarial.astype(np.float64).reshape(2, -1)
    np.testing.assert_allclose(result.l2, np.linalg.norm(delta, axis=1))
    np.testing.assert_allclose(result.l2_paper, 255 * np.sqrt((delta ** 2).mean(axis=1)))
    np.testing.assert_array_equal(result.l0, (delta != 0).sum(axis=1))


@pytest.mark.parametrize("attack", [attacks.fgsm, lambda model, x, eps: attacks.bim(model, x, eps, steps=3)])
def test_zero_gradient_fraction_reports_a_saturated_loss(attack):
    """sign(0) = 0: a saturated sample does not move, in one step or several (BIM: a mutation audit
    found sign(0) = +1 in its loop unnoticed)."""
    model = linear_model("ce", 0).astype(np.float32)
    model.network.fc.weight.data[...] *= 1e4
    x = box_images(np.random.default_rng(7), 3, dtype=np.float32)
    s = np.sort(x.reshape(3, 16) @ model.network.fc.weight.data.T, axis=1)
    assert (s[:, -1] - s[:, -2] > 200).all()    # exp(-gap) underflows in float32: softmax is one-hot
    result = attack(model, x, 0.3)
    np.testing.assert_array_equal(result.zero_grad_fraction, 1.0)
    np.testing.assert_array_equal(result.adversarial, x)


@pytest.mark.parametrize("bad, message", [
    (dict(x=np.zeros((2, 16))), "shape"),
    (dict(x=np.full((2, 1, 4, 4), 0.6)), "box"),
    (dict(x=np.full((2, 1, 4, 4), np.nan)), "NaN"),
    (dict(x=np.zeros((2, 3, 4, 4))), "channels"),
    (dict(x=np.zeros((2, 1, 4, 4), np.uint8)), "floats"),
    (dict(x=np.zeros((2, 1, 4, 4), np.float32)), "astype"),
    (dict(eps=0.0), "eps"),
    (dict(eps=1.5), "eps"),
    (dict(labels=np.array([0, 9])), "labels"),
    (dict(labels=np.array([0.0, 1.0])), "labels"),
    (dict(x=np.zeros((0, 1, 4, 4))), "no images"),
])
def test_bad_arguments_raise_a_clear_value_error(bad, message):
    model = linear_model("ce", 0)
    args = dict(x=np.zeros((2, 1, 4, 4)), eps=0.1, labels=None)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        attacks.fgsm(model, args["x"], args["eps"], labels=args["labels"])


def test_attacks_run_on_the_model_device_and_leave_parameter_grads_alone(xp, device):
    from rcenp.backend import device_of

    model = Classifier(resnet(8, 1, seed=0), "ce").to(device).eval()
    x = box_images(np.random.default_rng(0), 3, (1, 28, 28), np.float32)
    for p in model.parameters():
        p.grad = None
    result = attacks.bim(model, x, 0.1, steps=2)
    assert isinstance(result.adversarial, np.ndarray) and device_of(model.parameters()[0]) == device
    assert all(p.grad is None for p in model.parameters())
    host = Classifier(resnet(8, 1, seed=0), "ce").eval()
    np.testing.assert_allclose(result.adversarial, attacks.bim(host, x, 0.1, steps=2).adversarial, atol=1e-6)
