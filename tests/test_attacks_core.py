"""What the attacks share (rcenp.attacks.core): one error for each bad argument (the checks
themselves are tested in test_checks.py), eval mode and its restoration, and TensorFlow's logit
gradient p − T for the authors' ILCM variant."""
import numpy as np
import pytest

from rcenp import attacks
from rcenp.attacks import core
from rcenp.nn import Linear, Module
from rcenp.objectives import Classifier


class LinearNet(Module):
    """Logits W·vec(x) + b on (N, 1, 4, 4) images; records (its own, its layer's) training flag at
    every forward pass."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, 1
        self.fc = Linear(16, num_classes, rng=np.random.default_rng(0))
        self.fc.bias.data[...] = np.random.default_rng(1).normal(0, 0.3, num_classes)
        self.modes = []

    def forward(self, x):
        self.modes.append((self.training, self.fc.training))
        return self.fc(x.reshape(x.shape[0], 16))


def images(n=3):
    return np.random.default_rng(0).uniform(-0.5, 0.5, (n, 1, 4, 4)).astype(np.float32)


BAD_CALLS = [
    # (attack, keyword arguments, the argument the message must name)
    *[("fgsm", {"eps": v}, "eps") for v in (None, True, "0.1", float("nan"), float("inf"))],
    *[("bim", {"steps": v}, "steps") for v in (None, True, float("nan"), float("inf"), 2.5, 0, "3")],
    *[("ilcm", {"steps": v}, "steps") for v in (None, True, float("inf"))],
    *[("ilcm", {"eps": v}, "eps") for v in (True, None)],
    *[("fgsm", {"batch_size": v}, "batch_size") for v in (None, True, 0, 2.5, float("inf"))],
    *[("jsma", {"theta": v}, "theta") for v in (None, True, "0.1", float("nan"))],
    *[("jsma", {"theta": v, "variant": "papernot"}, "theta") for v in (None, True, "0.1", float("nan"),
                                                                        float("inf"))],
    *[("jsma", {"theta": 1.0, "variant": "papernot", "gamma": v}, "gamma") for v in (True, "0.5", float("nan"))],
    *[("jsma", {"max_iterations": v}, "max_iterations") for v in (True, float("inf"), float("nan"), 2.5)],
    *[("jsma", {"max_iterations": v, "theta": 1.0, "variant": "papernot", "gamma": 1.0}, "max_iterations")
      for v in (True, float("inf"))],
    *[("jsma", {"batch_size": v}, "batch_size") for v in (None, True, 0, 2.5)],
    ("jsma", {"batch_size": 0, "targets": np.array([1, 1, 1])}, "batch_size"),  # before the clean prediction
]


@pytest.mark.parametrize("name, kwargs, argument", BAD_CALLS, ids=[f"{c[0]}-{c[1]!r}" for c in BAD_CALLS])
def test_every_bad_argument_raises_a_value_error_naming_it(name, kwargs, argument):
    """Issue 14: None, bools, strings, NaN, ±inf and non-integral counts are a ValueError that names
    the argument, never a TypeError, an OverflowError or int()'s message; True is not 1."""
    model = Classifier(LinearNet(), "ce").eval()
    first = {"fgsm": "eps", "bim": "eps", "ilcm": "eps", "jsma": "theta"}[name]
    args = {first: 0.1, **kwargs}
    with pytest.raises(ValueError, match=f"^{argument} must be"):
        getattr(attacks, name)(model, images(), **args)


# ---- eval mode, restored -----------------------------------------------------------------------
def linear_prediction(model, x):
    """A LinearNet's clean prediction, computed here without a forward pass of the model."""
    fc = model.network.fc
    return (x.reshape(len(x), 16) @ fc.weight.data.T + fc.bias.data).argmax(axis=1)


ATTACKS = [
    ("fgsm", lambda m, x: attacks.fgsm(m, x, 0.1)),
    ("bim", lambda m, x: attacks.bim(m, x, 0.1, steps=2)),
    ("ilcm", lambda m, x: attacks.ilcm(m, x, 0.1, steps=2)),
    ("ilcm-code", lambda m, x: attacks.ilcm(m, x, 0.1, steps=2, target_vector="pang2018-code")),
    ("jsma", lambda m, x: attacks.jsma(m, x, 0.5, max_iterations=2)),
    ("jsma-targets", lambda m, x: attacks.jsma(m, x, 0.5, targets=(linear_prediction(m, x) + 1) % 5,
                                                max_iterations=2)),
    ("jsma-papernot", lambda m, x: attacks.jsma(m, x, 1.0, variant="papernot", gamma=0.5)),
    ("cw", lambda m, x: attacks.cw_l2(m, x, binary_steps=2, max_iterations=5)),
]


@pytest.mark.parametrize("name, run", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_an_attack_runs_in_eval_mode_and_gives_back_train_mode(name, run):
    model = Classifier(LinearNet(), "ce")
    x = images()
    model.eval()
    expected = run(model, x)
    model.network.modes.clear()
    model.train()
    result = run(model, x)
    assert model.network.modes and not any(any(m) for m in model.network.modes)  # every forward in eval
    assert all(m.training for m in model.modules())
    np.testing.assert_array_equal(result.adversarial, expected.adversarial)
    model.eval()
    run(model, x)
    assert not any(m.training for m in model.modules())


def test_mixed_modes_are_restored_module_by_module():
    model = Classifier(LinearNet(), "ce").train()
    model.network.fc.eval()
    attacks.bim(model, images(), 0.1, steps=2)
    assert (model.training, model.network.training, model.network.fc.training) == (True, True, False)


def test_modes_are_restored_when_an_attack_raises():
    model = Classifier(LinearNet(), "ce")
    x = images()
    clean = np.asarray(model.eval().predict(x))
    model.train()
    with pytest.raises(ValueError, match="clean prediction"):  # raised after jsma's eval-mode predict
        attacks.jsma(model, x, 0.5, targets=clean)
    assert model.network.modes[-1] == (False, False)
    assert all(m.training for m in model.modules())


def test_the_shared_helpers_restore_the_mode():
    model = Classifier(LinearNet(), "ce").train()
    x = images()
    core.prediction_logits(model, x)
    core.soft_target_gradient(model, x, np.eye(5, dtype=np.float32)[[0, 1, 2]])
    core.soft_target_gradient(model, x, np.eye(5, dtype=np.float32)[[0, 1, 2]] - 0.5, tf_logit_gradient=True)
    assert all(m.training for m in model.modules())
    assert model.network.modes == [(False, False)] * 3


def test_tf_logit_gradient_backpropagates_softmax_minus_t():
    """On a linear model the input gradient is Wᵀ·g for the logit gradient g: (ΣT)·p - T exactly,
    p - T with tf_logit_gradient (they agree when the rows of T sum to 1)."""
    model = Classifier(LinearNet(), "ce").astype(np.float64)
    x = images().astype(np.float64)
    w, b = model.network.fc.weight.data, model.network.fc.bias.data
    z = x.reshape(3, 16) @ w.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    t = np.eye(5)[[4, 0, 2]] - 0.5
    exact, _ = core.soft_target_gradient(model, x, t)
    tf, logits = core.soft_target_gradient(model, x, t, tf_logit_gradient=True)
    np.testing.assert_allclose(logits, z, rtol=1e-12)
    np.testing.assert_allclose(exact.reshape(3, 16), (t.sum(axis=1, keepdims=True) * p - t) @ w, atol=1e-12)
    np.testing.assert_allclose(tf.reshape(3, 16), (p - t) @ w, atol=1e-12)
    one_hot = np.eye(5)[[4, 0, 2]]
    np.testing.assert_allclose(core.soft_target_gradient(model, x, one_hot)[0],
                               core.soft_target_gradient(model, x, one_hot, tf_logit_gradient=True)[0], atol=1e-15)



def test_an_attack_result_prints_as_one_line():
    model = Classifier(LinearNet(), "ce").eval()
    result = attacks.fgsm(model, images(), 0.1)
    text = repr(result)
    assert text.startswith("AttackResult(attack='fgsm', n=") and "\n" not in text and len(text) < 200
    assert f"success_rate={result.success_rate:.3f}" in text


def test_accuracy_needs_one_integer_label_per_image():
    """A single label against four results used to broadcast and answer 0.0."""
    model = Classifier(LinearNet(), "ce").eval()
    result = attacks.fgsm(model, images(4), 0.1)
    assert result.accuracy(result.prediction) == 1.0
    assert result.accuracy(list(result.prediction)) == 1.0
    for bad in (result.prediction[:1], result.prediction[:, None], result.prediction.astype(float)):
        with pytest.raises(ValueError, match=r"true_labels must be \(4,\) integers"):
            result.accuracy(bad)


def test_concatenate_refuses_results_of_different_attacks_or_settings():
    model = Classifier(LinearNet(), "ce").eval()
    a, b = attacks.fgsm(model, images(2), 0.1), attacks.fgsm(model, images(3), 0.1)
    assert len(core.AttackResult.concatenate([a, b])) == 5
    for other in (attacks.bim(model, images(2), 0.1), attacks.fgsm(model, images(2), 0.2)):
        with pytest.raises(ValueError, match="different attacks or settings"):
            core.AttackResult.concatenate([a, other])


def test_results_compare_by_identity():
    """The dataclass's generated == compared array fields and raised 'ambiguous truth value'."""
    model = Classifier(LinearNet(), "ce").eval()
    a = attacks.fgsm(model, images(2), 0.1)
    assert a == a and a != attacks.fgsm(model, images(2), 0.1)


@pytest.mark.parametrize("name", ["fgsm", "bim", "ilcm", "jsma", "cw_l2", "cw_wb"])
def test_an_attack_on_something_other_than_a_classifier_says_so(name):
    """None, or the (model, manifest) pair rcenp.models.load returns, used to be an AttributeError."""
    model = Classifier(LinearNet(), "ce")
    for wrong, hint in ((None, "got NoneType$"), ((model, {}), r"got tuple: rcenp.models.load returns \(model, manifest\)")):
        with pytest.raises(TypeError, match="model must be an rcenp Classifier .*" + hint):
            getattr(attacks, name)(wrong, images(), *{"cw_l2": (), "jsma": (), "cw_wb": (None,)}.get(name, (0.1,)))


def test_distortions_need_one_shape():
    x = images(3)
    with pytest.raises(ValueError, match="one shape"):
        attacks.distortions(x, x[:2])
