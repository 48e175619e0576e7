"""ROC/AUC under the authors' protocol, bootstrap intervals, the sample rule and thresholds."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from rcenp.detect.calibrate import calibrate_threshold, rejection_rate
from rcenp.detect.roc import (
    bootstrap_auc_ci,
    paper_pairs,
    paper_sample_rule,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)

tied = st.lists(st.integers(-4, 4).map(float) | st.sampled_from([-math.inf, math.inf]),
                min_size=1, max_size=30)
distinct = st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=60, unique=True)


def brute_force_auc(normal, adversarial, tie_value):
    pairs = [(1.0 if s > t else tie_value if s == t else 0.0) for s in normal for t in adversarial]
    return sum(pairs) / len(pairs)


# ---- AUC ------------------------------------------------------------------------------------

@given(normal=tied, adversarial=tied)
def test_auc_equals_pair_count(xp, normal, adversarial):
    for ties, tie_value in (("half", 0.5), ("strict", 0.0)):
        expected = brute_force_auc(normal, adversarial, tie_value)
        got = roc_auc(xp.asarray(normal), xp.asarray(adversarial), ties=ties)
        assert got == pytest.approx(expected, abs=1e-12)


@given(normal=tied, adversarial=tied)
def test_auc_half_is_mann_whitney_u(normal, adversarial):
    u = stats.mannwhitneyu(normal, adversarial, alternative="greater").statistic
    assert roc_auc(normal, adversarial) == pytest.approx(u / (len(normal) * len(adversarial)))


@given(scores=distinct, data=st.data())
def test_auc_of_negated_scores_is_one_minus(scores, data):
    cut = data.draw(st.integers(1, len(scores) - 1))
    normal, adversarial = np.array(scores[:cut]), np.array(scores[cut:])
    for ties in ("half", "strict"):
        assert roc_auc(-normal, -adversarial, ties) == pytest.approx(
            1 - roc_auc(normal, adversarial, ties), abs=1e-12)


@given(normal=st.lists(st.integers(-50, 50), min_size=1, max_size=30),
       adversarial=st.lists(st.integers(-50, 50), min_size=1, max_size=30))
def test_auc_invariant_to_strictly_increasing_maps(normal, adversarial):
    """Maps that keep every comparison of these integers, ties included."""
    normal, adversarial = np.array(normal, float), np.array(adversarial, float)
    for ties in ("half", "strict"):
        auc = roc_auc(normal, adversarial, ties)
        for f in (lambda x: 3 * x - 7, np.exp, np.arctan, lambda x: x**3):
            assert roc_auc(f(normal), f(adversarial), ties) == auc


def test_auc_known_cases():
    assert roc_auc([2, 3, 4], [0, 1]) == 1.0
    assert roc_auc([0, 1], [2, 3, 4]) == 0.0                  # never symmetrised
    assert roc_auc([1, 1], [1, 1, 1]) == 0.5
    assert roc_auc([1, 1], [1, 1, 1], ties="strict") == 0.0
    assert roc_auc([1, 2, 3], [0, 2, 5]) == pytest.approx(4.5 / 9)
    assert roc_auc([1, 2, 3], [0, 2, 5], ties="strict") == pytest.approx(4 / 9)
    assert roc_auc([-np.inf, np.inf], [0.0]) == 0.5


@pytest.mark.parametrize("bad, match", [([], "empty"), ([1.0, np.nan], "NaN"),
                                        ([[1.0], [2.0]], "1-D")])
def test_auc_rejects_bad_scores(bad, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(bad, [1.0])
    with pytest.raises(ValueError, match=match):
        roc_auc([1.0], bad)


def test_auc_rejects_unknown_tie_rule():
    with pytest.raises(ValueError, match="ties"):
        roc_auc([1.0], [0.0], ties="average")


# ---- ROC curve ------------------------------------------------------------------------------

@given(normal=tied, adversarial=tied)
def test_roc_curve_area_is_auc(normal, adversarial):
    fpr, tpr, thresholds = roc_curve(normal, adversarial)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert thresholds[0] == np.inf and (np.diff(thresholds[1:]) < 0).all()
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(normal, adversarial), abs=1e-12)
    for t, x, y in zip(thresholds[1:], fpr[1:], tpr[1:]):
        assert x == np.mean(np.array(adversarial) >= t) and y == np.mean(np.array(normal) >= t)


def test_tpr_at_fpr():
    normal, adversarial = [5, 6, 7, 8], [1, 2, 3, 6]
    assert tpr_at_fpr(normal, adversarial, 0.0) == 0.5          # t = 7: no adversarial accepted
    assert tpr_at_fpr(normal, adversarial, 0.24) == 0.5
    assert tpr_at_fpr(normal, adversarial, 0.25) == 1.0         # t = 5 accepts 6 of adversarial
    assert tpr_at_fpr(normal, adversarial, 1.0) == 1.0
    with pytest.raises(ValueError):
        tpr_at_fpr(normal, adversarial, 1.5)


# ---- bootstrap ------------------------------------------------------------------------------

@pytest.mark.parametrize("paired", [False, True])
def test_bootstrap_interval(paired):
    rng = np.random.default_rng(0)
    normal, adversarial = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 300)
    low, high = bootstrap_auc_ci(normal, adversarial, n_boot=300, seed=1, paired=paired)
    auc = roc_auc(normal, adversarial)
    assert low < auc < high and high - low < 0.15
    assert (low, high) == bootstrap_auc_ci(normal, adversarial, n_boot=300, seed=1, paired=paired)
    narrow = bootstrap_auc_ci(normal, adversarial, n_boot=300, level=0.5, seed=1, paired=paired)
    assert low < narrow[0] < narrow[1] < high
    true_auc = stats.norm.cdf(1 / math.sqrt(2))                 # P(N(1,1) > N(0,1))
    assert low < true_auc < high


def test_the_paired_bootstrap_resamples_pairs():
    """Scores that move together (an image and its own attacked version): resampling pairs keeps
    that dependence, resampling each side alone does not. The pair's between-image spread cancels
    in the paired interval, which is therefore far narrower here; were ``paired`` ignored, the two
    would be the same."""
    rng = np.random.default_rng(4)
    image = rng.normal(0.0, 3.0, 200)                                  # shared, between-image spread
    normal, adversarial = image + rng.normal(0.5, 0.3, 200), image + rng.normal(0.0, 0.3, 200)
    paired = bootstrap_auc_ci(normal, adversarial, n_boot=300, seed=1, paired=True)
    unpaired = bootstrap_auc_ci(normal, adversarial, n_boot=300, seed=1, paired=False)
    assert paired[1] - paired[0] < 0.5 * (unpaired[1] - unpaired[0])   # 0.018 against 0.121
    assert paired[0] <= roc_auc(normal, adversarial) <= paired[1] and unpaired[0] <= roc_auc(normal, adversarial) <= unpaired[1]


def test_bootstrap_degenerate_and_invalid():
    assert bootstrap_auc_ci([1, 1, 1], [1, 1, 1], n_boot=20) == (0.5, 0.5)
    with pytest.raises(ValueError, match="equal lengths"):
        bootstrap_auc_ci([1, 2, 3], [1, 2], paired=True)
    with pytest.raises(ValueError, match="level"):
        bootstrap_auc_ci([1, 2], [1, 2], level=1.0)


# ---- sample rule ----------------------------------------------------------------------------

def test_paper_sample_rule_and_pairs():
    true = np.array([0, 1, 2, 3, 4])
    clean = np.array([0, 1, 9, 3, 4])                           # index 2 misclassified clean
    adv = np.array([5, 1, 5, 7, 8])                             # index 1 attack failed
    mask = paper_sample_rule(true, clean, adv)
    np.testing.assert_array_equal(mask, [True, False, False, True, True])
    normal, adversarial, n = paper_pairs(np.arange(5.0), -np.arange(5.0), true, clean, adv)
    np.testing.assert_array_equal(normal, [0, 3, 4])
    np.testing.assert_array_equal(adversarial, [0, -3, -4])
    assert n == 3
    with pytest.raises(ValueError):
        paper_sample_rule(true, clean[:4], adv)


# ---- threshold calibration ------------------------------------------------------------------

def test_calibration_known_cases():
    scores = np.arange(1.0, 101.0)
    assert calibrate_threshold(scores, 0.05) == 5.0
    assert rejection_rate(scores, 5.0) == 0.05
    assert calibrate_threshold(scores, 0.29) == 29.0            # 0.29·100 = 28.999… in floats
    assert calibrate_threshold(scores, 0.009) == -math.inf      # k = 0: reject nothing
    assert calibrate_threshold(scores, 1.0) == 100.0
    ties = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert calibrate_threshold(ties, 0.2) == -math.inf          # 3 copies of 1 exceed k = 2
    assert calibrate_threshold(ties, 0.4) == 1.0                # 2 straddles k = 4: step to 1
    assert calibrate_threshold(ties, 0.5) == 2.0


@given(scores=st.lists(st.integers(0, 20).map(float), min_size=1, max_size=80),
       target=st.floats(0.0, 1.0))
def test_calibration_is_the_largest_admissible_threshold(scores, target):
    threshold = calibrate_threshold(scores, target)
    assert rejection_rate(scores, threshold) <= target
    larger = [s for s in scores if s > threshold]
    if larger:
        assert rejection_rate(scores, min(larger)) > target


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_calibration_reaches_target_on_held_out_data(seed, target):
    """F(T) of T = s_(k) is Beta(k, n − k + 1); the held-out rejection count given T is
    Binomial(n_test, F(T)). Both must fall inside their 99.9 % intervals."""
    n, n_test = 2000, 50_000
    rng = np.random.default_rng(seed)
    threshold = calibrate_threshold(rng.normal(size=n), target)
    k = math.floor(target * n + 1e-9)
    population_rate = stats.norm.cdf(threshold)
    low, high = stats.beta.ppf([0.0005, 0.9995], k, n - k + 1)
    assert low <= population_rate <= high
    held_out = rejection_rate(rng.normal(size=n_test), threshold)
    low, high = stats.binom.ppf([0.0005, 0.9995], n_test, population_rate) / n_test
    assert low <= held_out <= high
    assert abs(held_out - target) < 4 * math.sqrt(target * (1 - target) / n) + 1 / n


@given(target=st.floats(1e-4, 1.0))
def test_min_calibration_images_is_the_first_n_that_rejects_one(target):
    """Detector.calibrate refuses fewer images than this before scoring: below it T = -inf."""
    from rcenp.detect.calibrate import min_calibration_images

    n = min_calibration_images(target)
    assert calibrate_threshold(np.arange(float(n)), target) > -math.inf
    assert n == 1 or calibrate_threshold(np.arange(float(n - 1)), target) == -math.inf


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError):
        calibrate_threshold([], 0.05)
    with pytest.raises(ValueError):
        calibrate_threshold([1.0, np.nan], 0.05)
    with pytest.raises(ValueError):
        calibrate_threshold([1.0], 1.5)


# ---- the authors' K-density, emulated -----------------------------------------------------------

def test_strict_reproduces_the_tie_rule_only():
    """roc_auc's docstring claims the authors' tie rule, not their (underflowing) K-density scores."""
    from rcenp.detect import roc

    doc = " ".join(roc.roc_auc.__doc__.split())
    assert "tie rule only" in doc and "authors_kd_auc" in doc
    assert "KD underflowing to 0" not in doc


def test_authors_kd_auc_saturates_below_the_underflow_point():
    """exp(log KD) in float64 is 0 below ln 2⁻¹⁰⁷⁵ ≈ −745.13 and the smallest subnormal just above;
    scores straddling that point tie (strict: a loss) only in the authors-emulated AUC."""
    from rcenp.detect import roc

    assert np.exp(-745.0) > 0 and np.exp(-745.2) == 0           # the underflow point, as documented
    normal = np.array([-744.0, -745.5, -760.0, -10.0])
    adversarial = np.array([-745.2, -746.0, -900.0, -20.0])
    # log space keeps them apart: -744 beats 3, -745.5 beats 2, -760 beats 1, -10 beats 4
    assert roc_auc(normal, adversarial, "strict") == pytest.approx(10 / 16)
    # the authors' KD: normal (e^-744 subnormal, 0, 0, e^-10), adversarial (0, 0, 0, e^-20):
    # e^-744 beats the three zeros, the two zero normals beat nothing, e^-10 beats all four
    assert roc.authors_kd_auc(normal, adversarial) == pytest.approx(7 / 16)
    assert roc.authors_kd_auc(normal, adversarial) == brute_force_auc(np.exp(normal), np.exp(adversarial), 0.0)
    # far from the underflow the two agree
    assert roc.authors_kd_auc(normal + 700, adversarial + 700) == roc_auc(normal, adversarial, "strict")
    with pytest.raises(ValueError, match="NaN"):
        roc.authors_kd_auc([np.nan], [0.0])


def test_bootstrap_strict_ties_uses_the_same_resamples():
    saturated = np.ones(30)
    assert bootstrap_auc_ci(saturated, saturated, n_boot=50, paired=True) == (0.5, 0.5)
    assert bootstrap_auc_ci(saturated, saturated, n_boot=50, paired=True, ties="strict") == (0.0, 0.0)
    rng = np.random.default_rng(3)
    normal, adversarial = rng.integers(0, 3, 40).astype(float), rng.integers(0, 3, 40).astype(float)
    half = bootstrap_auc_ci(normal, adversarial, n_boot=200, seed=5, paired=True)
    strict = bootstrap_auc_ci(normal, adversarial, n_boot=200, seed=5, paired=True, ties="strict")
    assert strict[0] <= half[0] and strict[1] <= half[1]        # same resamples: strict ≤ half in each
    continuous = rng.normal(size=40), rng.normal(size=40)         # no ties: strict = half resample by resample,
    assert bootstrap_auc_ci(*continuous, n_boot=200, seed=5, paired=True) == \
        bootstrap_auc_ci(*continuous, n_boot=200, seed=5, paired=True, ties="strict")  # so equal intervals
    with pytest.raises(ValueError, match="ties"):
        bootstrap_auc_ci(normal, adversarial, ties="mid")


def test_the_detector_refuses_images_off_the_box_and_gives_back_the_mode():
    from rcenp.detect.detector import Detector
    from rcenp.models import resnet
    from rcenp.objectives import Classifier

    model = Classifier(resnet(8, 1, seed=0), "ce")
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (20, 1, 28, 28)).astype(np.float32)
    det = Detector(model).fit(x, np.arange(20) % 10, per_class=2)
    assert model.training and all(m.training for m in model.modules())   # fitting ran in eval mode, gave it back
    for bad, message in ((x + 0.5, "box"), (x[0], "shape"), (x * 255, "box"), (x.astype(np.float64), "dtype")):
        with pytest.raises(ValueError, match=message):
            det.scores(bad)
