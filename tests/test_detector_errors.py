"""The detector's Python API refuses what would give a silent wrong answer, each with one clear error.

From a first-time user's trial: a refitted detector kept its old T; ``fit`` paired images and labels
of different lengths; ``calibrate`` on too few images set T = -inf (accept everything); and raw
Python/NumPy errors for an empty batch, ``batch_size=0``, ``Detector(None)``, a string threshold,
and a negative σ² that was only refused at scoring.
"""
import json
import math

import numpy as np
import pytest

from rcenp.checkpoint import CheckpointError
from rcenp.cli import main
from rcenp.detect.calibrate import min_calibration_images
from rcenp.detect.detector import CALIBRATION_INFO, Detector
from tests.test_detector import data, model  # noqa: F401  (the module fixtures: a ResNet-8 RCE, 300 box images)


def count_feature_passes(monkeypatch):
    seen, real = [], Detector.features_and_logits

    def counting(self, images, *args, **kwargs):
        seen.append(len(images))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Detector, "features_and_logits", counting)
    return seen


# ---- 1. fit leaves the detector uncalibrated ------------------------------------------------------

def test_refitting_a_calibrated_detector_clears_its_threshold_and_calibration_record(model, data):
    images, labels = data
    det = Detector(model).fit(images[:200], labels[:200], per_class=5, seed=1).calibrate(images[200:], 0.1)
    det.info.update(calibration="images 200-299", kernel_from="first 200 training images")  # as rcenp detect --fit
    assert det.threshold is not None
    det.fit(images[:100], labels[:100], per_class=3, seed=2)
    assert det.threshold is None and det.kernel_points.shape == (10, 3, 64)
    assert det.info == {"kernel_per_class": 3, "kernel_seed": 2, "fitted_on": 100}
    assert json.loads(det.describe()) == {"metric": "kd", "threshold": None, "sigma2": det.sigma2, **det.info}
    assert "threshold=uncalibrated" in repr(det)
    with pytest.raises(ValueError, match=r"no threshold \(never calibrated, or fit\(\) cleared it\).*calibrate"):
        det.predict(images[:2])
    det.calibrate(images[200:], 0.1)                     # calibrated again: predict works
    assert det.predict(images[:2])[0].shape == (2,) and det.info["calibration_n"] == 100
    assert not {"calibration", "kernel_from"} & set(det.info)


def test_refitting_the_shipped_detector_clears_its_threshold(data):
    """The trial: ``load_detector`` then ``fit`` kept T = -2.8676 and describe() mixed 'fitted_on: 500'
    with the shipped 'kernel_from: first 60000 training images' and its 5,000-image calibration."""
    from rcenp import detect, models

    shipped, _ = models.load("mnist-resnet32-rce")
    det = detect.load_detector("mnist-resnet32-rce", shipped)
    assert det.threshold is not None and "kernel_from" in det.info and "calibration_n" in det.info
    assert repr(det).startswith("Detector(objective='rce', metric='kd', sigma2=0.384615, kernel_points=10×")
    images, labels = data
    det.fit(images[:100], labels[:100], per_class=2)
    assert det.threshold is None and set(det.info) == {"kernel_per_class", "kernel_seed", "fitted_on"}
    assert not set(CALIBRATION_INFO) & set(json.loads(det.describe()))
    with pytest.raises(ValueError, match="calibrate"):
        det.predict(images[:2])


def test_a_failed_fit_leaves_the_detector_as_it_was(model, data):
    images, labels = data
    det = Detector(model).fit(images[:200], labels[:200], per_class=5).calibrate(images[200:], 0.1)
    before = det.threshold, dict(det.info), det.kernel_points.copy()
    with pytest.raises(ValueError):
        det.fit(images[:100], labels[:90], per_class=1)
    with pytest.raises(ValueError, match="fewer than per_class"):
        det.fit(images[:20], labels[:20], per_class=5)
    assert (det.threshold, det.info) == before[:2]
    np.testing.assert_array_equal(det.kernel_points, before[2])


def test_recalibrating_replaces_the_whole_calibration_record(model, data):
    images, _ = data
    det = Detector(model, "confidence").calibrate(images[:100], 0.1)
    det.info.update(calibration="a random half of the test split", data="mnist/test")   # as rcenp detect --fit
    det.calibrate(images[100:300], 0.05)
    assert det.info["calibration_n"] == 200 and det.info["target_fpr"] == 0.05
    assert "calibration" not in det.info and "data" not in det.info


# ---- 2. fit checks that images and labels match ----------------------------------------------------

@pytest.mark.parametrize("n_images, n_labels, per_class", [(300, 250, 1), (250, 300, 1), (60, 50, 2)])
def test_fit_refuses_images_and_labels_of_different_lengths(model, data, n_images, n_labels, per_class):
    images, labels = data
    det = Detector(model)
    with pytest.raises(ValueError, match=f"same length: got {n_images} images and {n_labels} labels"):
        det.fit(images[:n_images], labels[:n_labels], per_class=per_class)
    assert det.kernel_points is None and det.info == {}


def test_fit_refuses_labels_that_are_not_one_dimensional(model, data):
    images, labels = data
    with pytest.raises(ValueError, match=r"got 20 images and labels of shape \(20, 1\)"):
        Detector(model).fit(images[:20], labels[:20, None], per_class=1)
    with pytest.raises(ValueError, match="per_class must be a positive integer, got 2.5"):
        Detector(model).fit(images[:100], labels[:100], per_class=2.5)
    with pytest.raises(ValueError, match="box"):
        Detector(model).fit(images[:100] + 0.5, labels[:100], per_class=1)   # every image is checked


# ---- 3. calibrate never sets T = -inf ----------------------------------------------------------------

def test_calibrate_on_too_few_images_says_how_many_it_needs_before_scoring(model, data, monkeypatch):
    images, _ = data
    det = Detector(model, "confidence", threshold=0.5)
    seen = count_feature_passes(monkeypatch)
    with pytest.raises(ValueError, match=r"calibrate needs at least 20 clean images at target_fpr=0.05 .*got 4"):
        det.calibrate(images[:4])
    with pytest.raises(ValueError, match="at least 10 clean images at target_fpr=0.1 .*got 9"):
        det.calibrate(images[:9], 0.1)
    assert seen == [] and det.threshold == 0.5 and det.info == {}     # refused before any scoring; T kept
    det.calibrate(images[:10], 0.1)                                   # exactly enough
    assert math.isfinite(det.threshold) and det.info["calibration_rejection_rate"] == 0.1


@pytest.mark.parametrize("rate, match", [(0, r"\(0, 1\]"), (0.0, r"\(0, 1\]"), (1.5, r"\(0, 1\]"),
                                         (float("nan"), "target_fpr must be a number, got nan"),
                                         (float("inf"), "target_fpr must be finite, got inf")])
def test_calibrate_refuses_a_rate_outside_0_1(model, data, rate, match):
    with pytest.raises(ValueError, match=match):
        Detector(model, "confidence").calibrate(data[0][:50], rate)


def test_calibrate_refuses_a_string_rate(model, data):
    with pytest.raises(ValueError, match=r"target_fpr must be a real number \(not a bool\), got '0.05' of type str"):
        Detector(model, "confidence").calibrate(data[0][:50], "0.05")


def test_calibrate_refuses_ties_that_leave_minus_infinity(model, data):
    same = np.repeat(data[0][:1], 20, axis=0)    # 20 copies: every score ties, k = 2 cannot be met
    det = Detector(model, "confidence")
    with pytest.raises(ValueError, match=r"T = -inf: ties at the lowest confidence scores of the 20 clean images"):
        det.calibrate(same, 0.1)
    assert det.threshold is None and det.info == {}


@pytest.mark.parametrize("rate, least", [(0.05, 20), (0.1, 10), (0.3, 4), (1 / 3, 3), (0.29, 4), (1.0, 1),
                                         (0.001, 1000), (0.07, 15)])
def test_min_calibration_images_is_where_calibrate_threshold_first_rejects(rate, least):
    from rcenp.detect.calibrate import calibrate_threshold

    assert min_calibration_images(rate) == least
    assert calibrate_threshold(np.arange(float(least)), rate) > -math.inf
    if least > 1:
        assert calibrate_threshold(np.arange(float(least - 1)), rate) == -math.inf


# ---- 4. one clear error for each bad argument ----------------------------------------------------------

@pytest.mark.parametrize("bad", [None, "mnist-resnet32-rce", np.zeros((2, 1, 28, 28), np.float32)])
def test_detector_needs_a_classifier(bad):
    with pytest.raises(TypeError, match="model must be an rcenp Classifier .*got " + type(bad).__name__):
        Detector(bad)


@pytest.mark.parametrize("bad", ["mnist-resnet32-rce", ("model", "manifest")])
def test_loading_a_detector_needs_a_classifier_before_reading_files(bad, tmp_path):
    from rcenp.detect import load_detector

    with pytest.raises(TypeError, match="model must be an rcenp Classifier .*got " + type(bad).__name__):
        load_detector("mnist-resnet32-rce", bad)
    with pytest.raises(TypeError, match="model must be an rcenp Classifier"):
        Detector.load(tmp_path / "nothing-here", bad)


def test_detector_refuses_the_bare_network(model):
    with pytest.raises(TypeError, match="got ResNet"):
        Detector(model.network)


@pytest.mark.parametrize("threshold, match", [
    ("0.5", "threshold must be a real number .*, got '0.5' of type str"),
    (True, "threshold must be a real number .*, got True of type bool"),
    (np.array([0.5]), r"threshold must be a real number .*, got array\(\[0.5\]\) of type ndarray"),
    (float("nan"), "threshold must be a number, got nan"),
])
def test_detector_refuses_a_bad_threshold_when_given_and_when_assigned(model, threshold, match):
    with pytest.raises(ValueError, match=match):
        Detector(model, "confidence", threshold=threshold)
    det = Detector(model, "confidence", threshold=0.5)
    with pytest.raises(ValueError, match=match):
        det.threshold = threshold
    assert det.threshold == 0.5


def test_detector_takes_numpy_and_infinite_thresholds(model):
    assert Detector(model, "confidence", threshold=np.float32(0.5)).threshold == 0.5
    assert type(Detector(model, "confidence", threshold=np.float32(0.5)).threshold) is float
    assert Detector(model, "confidence", threshold=-math.inf).threshold == -math.inf   # explicit: accept all


@pytest.mark.parametrize("sigma2, match", [
    (-1.0, "sigma2 must be positive, got -1.0"),
    (0, "sigma2 must be positive, got 0.0"),
    (math.inf, "sigma2 must be finite, got inf"),
    (float("nan"), "sigma2 must be a number, got nan"),
    ("0.1", "sigma2 must be a real number .*, got '0.1' of type str"),
])
def test_detector_refuses_a_bad_sigma2_where_it_is_given(model, sigma2, match):
    with pytest.raises(ValueError, match=match):
        Detector(model, sigma2=sigma2)
    det = Detector(model)
    with pytest.raises(ValueError, match=match):
        det.sigma2 = sigma2
    assert det.sigma2 == pytest.approx(0.1 / 0.26)


def test_an_empty_batch_is_named(model, data):
    images, labels = data
    det = Detector(model, "confidence").calibrate(images[:100], 0.1)
    for call in (det.predict, det.scores, det.features_and_logits):
        with pytest.raises(ValueError, match=r"images is empty \(shape \(0, 1, 28, 28\)\): no images to score"):
            call(images[:0])
    with pytest.raises(ValueError, match="calibrate needs at least 10 clean images at target_fpr=0.1 .*got 0"):
        det.calibrate(images[:0], 0.1)


@pytest.mark.parametrize("batch_size, match", [(0, "must be a positive integer, got 0"),
                                               (-5, "must be a positive integer, got -5"),
                                               (2.5, "must be a positive integer, got 2.5"),
                                               (None, "must be a real number .*, got None of type NoneType")])
def test_a_bad_batch_size_is_named(model, data, batch_size, match):
    with pytest.raises(ValueError, match="batch_size " + match):
        Detector(model).features_and_logits(data[0][:4], batch_size=batch_size)


def test_repr_shows_objective_sigma2_points_and_threshold(model, data):
    images, labels = data
    det = Detector(model)
    assert repr(det) == ("Detector(objective='rce', metric='kd', sigma2=0.384615, kernel_points=none, "
                         "threshold=uncalibrated)")
    det.fit(images[:200], labels[:200], per_class=5).calibrate(images[200:], 0.1)
    assert repr(det) == (f"Detector(objective='rce', metric='kd', sigma2=0.384615, kernel_points=10×5×64, "
                         f"threshold={det.threshold:.6g})")


def test_docstrings_state_the_errors():
    for method in (Detector, Detector.fit, Detector.calibrate, Detector.predict, Detector.scores,
                   Detector.features_and_logits):
        assert "Raises" in method.__doc__ or "ValueError" in method.__doc__, method
    assert "uncalibrated" in Detector.fit.__doc__ and "same N" in Detector.fit.__doc__
    assert "never set" in Detector.calibrate.__doc__


# ---- the saved file and the command line --------------------------------------------------------------

def test_a_manifest_with_a_bad_threshold_is_a_damaged_manifest_on_one_line(model, data, tmp_path, capsys):
    from rcenp.train import TrainConfig, save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run, model, None, TrainConfig(depth=8, objective="rce"), 1, {"note": "test"})
    Detector(model, "confidence").calibrate(data[0][:100], 0.05).save(run / "detector")
    manifest = json.loads((run / "detector.json").read_text())
    manifest["threshold"] = "high"
    (run / "detector.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"damaged detector manifest \(threshold must be a real number"):
        Detector.load(run / "detector", model)
    np.savez(tmp_path / "batch.npz", images=data[0][:1])
    assert main(["detect", str(run), "--images", str(tmp_path / "batch.npz")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rcenp detect: error:") and "damaged detector manifest" in lines[0]
    assert captured.out == "" and "Traceback" not in captured.err
