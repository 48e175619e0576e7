"""``AttackResult.criterion``: the attack's own success test on other images of the same samples,
which the audit applies after 8-bit rounding, so that ``success_8bit`` means what ``success``
means (C&W: the κ margin, not the argmax alone; C&W-wb: also f₂ ≤ 0)."""
import numpy as np
import pytest

from rcenp import attacks
from rcenp.attacks.audit import attack_and_audit, quantize
from rcenp.attacks.core import AttackResult
from rcenp.attacks.cw_wb import attack_kernel
from rcenp.detect.kde import log_kernel_density_reference
from tests.test_attacks_cw import box_images, linear_model
from tests.test_attacks_cw_wb import end_to_end_case

KAPPA = 1.0


def linear_margins(model, images, targets):
    """z_t − max_{i≠t} z_i of the linear test model, computed from its weights."""
    z = images.reshape(len(images), 16) @ model.network.fc.weight.data.T + model.network.fc.bias.data
    idx = np.arange(len(z))
    others = z.copy()
    others[idx, targets] = -np.inf
    return z[idx, targets] - others.max(axis=1)


def test_cw_criterion_is_the_kappa_margin_not_the_argmax():
    model = linear_model("ce", seed=2, scale=4.0)
    x = box_images(2, 12)
    result = attacks.cw_l2(model, x, kappa=KAPPA, binary_steps=5, max_iterations=100, learning_rate=0.05,
                           batch_size=5)
    assert result.success.all() and result.criterion(result.adversarial).all()
    # part of the way back to x (90% to 100% of δ): some still past the margin, some classified as
    # the target below it
    between = x + np.linspace(0.9, 1.0, 12)[:, None, None, None] * (result.adversarial - x)
    margin = linear_margins(model, between, result.target)
    below = (margin > 0) & (margin <= KAPPA)
    assert below.any() and (margin > KAPPA).any()
    np.testing.assert_array_equal(result.criterion(between), margin > KAPPA)
    # concatenated batches: each part's test on its own samples, with its own targets
    halves = AttackResult.concatenate([attacks.cw_l2(model, x[:5], kappa=KAPPA, binary_steps=5, max_iterations=100,
                                                     learning_rate=0.05, batch_size=5),
                                       attacks.cw_l2(model, x[5:], kappa=KAPPA, binary_steps=5, max_iterations=100,
                                                     learning_rate=0.05, batch_size=5)])
    np.testing.assert_array_equal(halves.criterion(between), linear_margins(model, between, halves.target) > KAPPA)
    assert (halves.target != result.target).any()  # (the second half drew its own targets)


def test_success_8bit_uses_the_attacks_criterion():
    model = linear_model("ce", seed=2, scale=4.0)
    x = box_images(2, 12)
    index, labels = np.arange(12), model.predict(x)
    result, records = attack_and_audit(attacks.cw_l2, model, None, x, labels, index,
                                       {"kappa": KAPPA, "binary_steps": 5, "max_iterations": 100,
                                        "learning_rate": 0.05}, batch_size=5)
    rounded = quantize(result.adversarial, 256).astype(np.float64)
    margin = linear_margins(model, rounded, result.target)
    assert [r["success_8bit"] for r in records] == list(margin > KAPPA)
    # the argmax alone would count every rounded image classified as its target
    argmax = model.predict(rounded) == result.target
    assert (argmax & (margin <= KAPPA)).any(), "no sample tells the two tests apart: make the case harder"


@pytest.mark.filterwarnings("ignore::rcenp.attacks.EtaApproximationWarning")   # the approximation on purpose
def test_cw_wb_criterion_also_needs_f2_at_most_zero():
    model, detector, x, result = end_to_end_case()
    points, eta = attack_kernel(detector, model, "attacker", 5, 3)
    joined = AttackResult.concatenate([result] * 50)   # the 4 samples' targets, 50 times
    targets = np.tile(result.target, 50)
    images = box_images(99, 200)
    z = model.network.fc(model.features(images)).data  # CE: the prediction logits are the logits
    idx = np.arange(len(z))
    others = z.copy()
    others[idx, targets] = -np.inf
    past_margin = z[idx, targets] - others.max(axis=1) > 0.5
    f2 = -log_kernel_density_reference(model.features(images).data, points, targets, detector.sigma2) - eta[targets]
    assert (past_margin & (f2 > 0)).any() and (past_margin & (f2 <= 0)).any()
    np.testing.assert_array_equal(joined.criterion(images), past_margin & (f2 <= 0))
    np.testing.assert_array_equal(result.criterion(result.adversarial), result.success)
