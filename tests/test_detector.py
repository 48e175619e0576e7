"""The thresholding detector and ``rcenp detect``: fit, calibrate, predict, persist, bad input."""
import json

import numpy as np
import pytest

from rcenp.cli import main
from rcenp.detect.cli import fit_detector, read_images
from rcenp.detect.detector import NOT_SURE, Detector
from rcenp.metrics import confidence, non_me
from rcenp.models import resnet
from rcenp.objectives import Classifier


@pytest.fixture(scope="module")
def model():
    return Classifier(resnet(8, 1, seed=0), "rce").eval()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(-0.5, 0.5, (300, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 300)


def test_fit_calibrate_predict_and_round_trip(model, data, tmp_path):
    images, labels = data
    det = Detector(model, "kd").fit(images[:200], labels[:200], per_class=5, seed=1)
    assert det.kernel_points.shape == (10, 5, 64)
    det.calibrate(images[200:], target_fpr=0.1)
    assert det.info["calibration_rejection_rate"] <= 0.1
    predicted, scores = det.predict(images[200:])
    rejected = scores["kd"] <= det.threshold
    assert (predicted[rejected] == NOT_SURE).all()
    assert (predicted[~rejected] == scores["prediction"][~rejected]).all()
    assert np.isfinite(scores["kd"]).all() and np.isfinite(scores["non_me"]).all()
    det.save(tmp_path / "det")
    again = Detector.load(tmp_path / "det", model)
    assert again.threshold == det.threshold and again.metric == "kd"
    np.testing.assert_array_equal(again.predict(images[200:])[0], predicted)
    with pytest.raises(Exception, match="detector fitted for an RCE model, not this CE one"):
        Detector.load(tmp_path / "det", Classifier(model.network, "ce"))


def test_scores_are_the_papers_metrics_under_the_predicted_class(model, data):
    """Each score recomputed in float64 from the model's features and raw logits: log KD over the
    kernel points of the PREDICTED class (paper §3.3: KD(x) = (1/|X_ŷ|) Σ k(z, z_i) over class ŷ's
    training features, k = exp(−‖z − z_i‖²/σ²)) by brute force, confidence and non-ME of the
    prediction logits (−s for RCE). An audit found the unit tests blind to scoring under another
    class."""
    images, labels = data
    det = Detector(model, "kd").fit(images[:200], labels[:200], per_class=5, seed=1)
    scores = det.scores(images[200:260])
    z = model.features(images[200:260]).data.astype(np.float64)
    p_logits = -model.network(images[200:260]).data.astype(np.float64)       # RCE: the reversed logits
    predicted = p_logits.argmax(1)
    np.testing.assert_array_equal(scores["prediction"], predicted)
    points = det.kernel_points.astype(np.float64)
    d2 = ((z[:, None, :] - points[predicted]) ** 2).sum(-1)                 # (N, M) to class ŷ's points
    log_kd = np.log(np.exp(-d2 / det.sigma2).mean(1))
    np.testing.assert_allclose(scores["kd"], log_kd, rtol=1e-5, atol=1e-5)
    other = np.log(np.exp(-((z[:, None, :] - points[(predicted + 1) % 10]) ** 2).sum(-1) / det.sigma2).mean(1))
    assert np.abs(scores["kd"] - other).max() > 1e-3                      # the class matters here
    # the metrics themselves are checked against eq. 1 and max softmax in test_theory
    np.testing.assert_allclose(scores["confidence"], confidence(p_logits), rtol=1e-5)
    np.testing.assert_allclose(scores["non_me"], non_me(p_logits), rtol=1e-4, atol=1e-6)


# A float32 detector against the same weights in float64 (``exact`` below), on either device: the
# ResNet-8 forward leaves its features (entries up to 0.21 with these images) within 8e-8 of
# float64's on the host, and the scores within 2e-8 (confidence ~0.11), 2e-7 (log KD ~-0.01) and
# 4.4e-7 (non-ME ~2.2, 2 ulps); FLOAT32 allows about 10 times that. Two backends each within it of
# float64 are within twice it of each other (DEVICE); TF32 GEMMs (10-bit mantissas, ~5e-4 relative
# rounding) would exceed it many times over. The data keep every decision clear of DEVICE: the
# prediction logits' top two lie 1e-3 apart at least, and the log KD scores 5e-5 apart at T.
FLOAT32 = dict(rtol=1e-6, atol=2e-6)
DEVICE = dict(rtol=2e-6, atol=4e-6)


def test_detector_on_each_backend_scores_the_papers_metrics_and_the_device_fit_is_the_host_fit(xp, device, data, tmp_path):
    """``Detector`` with its model on ``xp``'s device and device images: kernel points of the
    chosen training images, the three scores under the predicted class (recomputed in float64 by
    brute force, as in test_scores_are_the_papers_metrics_under_the_predicted_class, from a float64
    copy of the weights), T = the k-th smallest calibration score (k = 10 of 100 at 10%), NOT SURE
    exactly at or below T, and a save/load round trip onto the model's device. On CuPy the device
    fit is also the host fit (scores and T to DEVICE, the same answers), and stays so when the
    model is moved to the host after the fit (which once raised TypeError)."""
    from rcenp.backend import as_numpy, device_of
    from rcenp.detect.kde import kernel_point_indices

    images, labels = data
    model = Classifier(resnet(8, 1, seed=0), "rce").eval().to(device)
    exact = Classifier(resnet(8, 1, seed=0), "rce").astype(np.float64).eval()
    det = Detector(model, "kd").fit(xp.asarray(images[:200]), xp.asarray(labels[:200]), per_class=5, seed=1)
    assert device_of(det.kernel_points) == device and det.kernel_points.dtype == np.float32
    chosen = kernel_point_indices(labels[:200], per_class=5, seed=1, num_classes=10).ravel()
    points = exact.features(images[:200][chosen].astype(np.float64)).data.reshape(10, 5, 64)
    np.testing.assert_allclose(as_numpy(det.kernel_points), points, **FLOAT32)

    clean = xp.asarray(images[200:])                     # 100 held-out images: T rejects 10 of them
    det.calibrate(clean, target_fpr=0.1)
    predicted, scores = det.predict(clean)
    x = images[200:].astype(np.float64)
    z, p_logits = exact.features(x).data, -exact.network(x).data     # RCE: the reversed logits
    top_two = np.sort(p_logits, axis=1)[:, -2:]
    assert (top_two[:, 1] - top_two[:, 0]).min() > 100 * DEVICE["atol"]  # no prediction within rounding of a tie
    label = p_logits.argmax(1)
    np.testing.assert_array_equal(scores["prediction"], label)
    softmax = np.exp(p_logits - p_logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(scores["confidence"], softmax.max(1), **FLOAT32)
    rest = np.delete(softmax, label + 10 * np.arange(len(x)))          # eq. 1: the other classes, renormalised
    rest = rest.reshape(len(x), 9) / rest.reshape(len(x), 9).sum(1, keepdims=True)
    np.testing.assert_allclose(scores["non_me"], -(rest * np.log(rest)).sum(1), **FLOAT32)
    d2 = ((z[:, None, :] - points[label]) ** 2).sum(-1)              # to the predicted class's points
    log_kd = np.log(np.exp(-d2 / det.sigma2).mean(1))
    np.testing.assert_allclose(scores["kd"], log_kd, **FLOAT32)
    other = np.log(np.exp(-((z[:, None, :] - points[(label + 1) % 10]) ** 2).sum(-1) / det.sigma2).mean(1))
    assert np.abs(log_kd - other).max() > 100 * DEVICE["atol"]     # another class's points would be seen

    ranked = np.sort(scores["kd"])
    assert det.threshold == ranked[9] and min(ranked[10] - ranked[9], ranked[9] - ranked[8]) > 4 * DEVICE["atol"]
    assert det.info["calibration_rejection_rate"] == 0.1
    np.testing.assert_array_equal(predicted, np.where(scores["kd"] > det.threshold, label, NOT_SURE))
    assert (predicted == NOT_SURE).sum() == 10
    for metric in ("confidence", "non_me"):     # T: the most rejections within 10% (ties may give fewer)
        by_metric = Detector(model, metric).calibrate(clean, target_fpr=0.1)
        answers, metric_scores = by_metric.predict(clean)
        s, t = metric_scores[metric], by_metric.threshold
        assert t in s and (s <= t).sum() <= 10 < (s <= s[s > t].min()).sum()
        np.testing.assert_array_equal(answers, np.where(s > t, label, NOT_SURE))
    det.save(tmp_path / "det")
    again = Detector.load(tmp_path / "det", model)
    assert device_of(again.kernel_points) == device and again.threshold == det.threshold
    np.testing.assert_array_equal(as_numpy(again.kernel_points), as_numpy(det.kernel_points))
    np.testing.assert_array_equal(again.predict(clean)[0], predicted)

    if xp is not np:
        host = Classifier(resnet(8, 1, seed=0), "rce").eval()
        on_host = Detector(host, "kd").fit(images[:200], labels[:200], per_class=5, seed=1).calibrate(images[200:], 0.1)
        host_predicted, host_scores = on_host.predict(images[200:])
        np.testing.assert_allclose(as_numpy(det.kernel_points), on_host.kernel_points, **DEVICE)
        for key in ("confidence", "non_me", "kd"):
            np.testing.assert_allclose(scores[key], host_scores[key], **DEVICE, err_msg=key)
        assert abs(det.threshold - on_host.threshold) <= DEVICE["atol"] + DEVICE["rtol"] * abs(on_host.threshold)
        np.testing.assert_array_equal(predicted, host_predicted)
        model.to("cpu")                 # the fitted detector's kernel points stay on the device
        moved_predicted, moved_scores = det.predict(images[200:])
        assert device_of(det.kernel_points) == "cuda"
        np.testing.assert_array_equal(moved_predicted, host_predicted)
        for key in ("prediction", "confidence", "non_me"):   # the host model's own forward: the same bits
            np.testing.assert_array_equal(moved_scores[key], host_scores[key], err_msg=key)
        np.testing.assert_allclose(moved_scores["kd"], host_scores["kd"], **DEVICE)


def test_fit_computes_only_the_chosen_images_features_and_matches_a_full_pass(model, data, monkeypatch):
    from rcenp.detect.kde import select_kernel_points

    images, labels = data
    seen, real = [], Detector.features_and_logits

    def counting(self, batch, *args, **kwargs):
        seen.append(len(batch))
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(Detector, "features_and_logits", counting)
    det = Detector(model).fit(images[:200], labels[:200], per_class=5, seed=1)
    assert seen == [50] and det.info["fitted_on"] == 200
    z, _ = real(Detector(model), images[:200])   # every image, in batches of other images
    # The same points as a full pass, to float32 rounding: a GEMM's last bits may depend on the batch's
    # shape (OpenBLAS's AVX2 kernels on the 2026-12-02 host gave up to 6e-8 apart here; the AVX-512
    # host, none), so batch composition is not bit-for-bit invariant, and the test asks only for rounding.
    np.testing.assert_allclose(det.kernel_points, select_kernel_points(z, labels[:200], 5, 1, 10),
                               rtol=1e-5, atol=1e-6)


class Stream(list):
    """A text stream that keeps what is written, one item per write."""

    def write(self, text):
        self.append(text)

    def flush(self):
        pass


def test_features_report_progress_per_batch(model, data):
    from rcenp.progress import counter

    images, _ = data
    calls = []
    z, logits = Detector(model, "kd").features_and_logits(images[:230], batch_size=100,
                                                         progress=lambda done, total: calls.append((done, total)))
    assert calls == [(100, 230), (200, 230), (230, 230)] and z.shape == (230, 64) and logits.shape == (230, 10)

    stream = Stream()
    report = counter("training images", "features", stream=stream, interval=3600)
    for done in (100, 200, 230):
        report(done, 230)
    lines = "".join(stream).splitlines()   # the first and the last line; the middle one falls in the interval
    assert lines[0].startswith("training images 100/230  features  ETA ")
    assert lines[-1] == "training images 230/230  features  ETA 0:00:00" and len(lines) == 2


def test_the_first_progress_line_prints_on_a_machine_booted_less_than_an_interval_ago(monkeypatch):
    """Progress began its interval at monotonic time 0, so on a machine up for less than the
    interval (a freshly started GPU machine, 3600 s here) the first line never came."""
    import rcenp.progress as progress

    monkeypatch.setattr(progress.time, "monotonic", lambda: 12.0)

    stream = Stream()
    bar = progress.Progress(None, 230, interval=3600, stream=stream)
    bar.update(100, "features", 30.0)
    bar.update(200, "features", 15.0)   # inside the interval: not printed
    assert stream == ["step 100/230  features  ETA 0:00:30\n"]


def test_every_metric_and_errors(model, data):
    images, labels = data
    for metric in ("confidence", "non_me"):
        det = Detector(model, metric).calibrate(images[:100], 0.2)
        assert det.predict(images[:10])[0].shape == (10,)
    with pytest.raises(ValueError, match="kernel points"):
        Detector(model, "kd").scores(images[:2])
    with pytest.raises(ValueError, match="threshold"):
        Detector(model, "confidence").predict(images[:2])
    with pytest.raises(ValueError, match="metric"):
        Detector(model, "lid")


def test_read_images_formats_and_bad_input(tmp_path):
    from PIL import Image

    pixels = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    x = read_images(tmp_path / "digit.png", (1, 28, 28))
    assert x.shape == (1, 1, 28, 28) and x.min() == -0.5 and x.dtype == np.float32
    np.savez(tmp_path / "batch.npz", images=np.stack([pixels, pixels]))
    assert read_images(tmp_path / "batch.npz", (1, 28, 28)).shape == (2, 1, 28, 28)
    clean, adversarial = np.zeros((3, 1, 28, 28), np.float32), np.full((3, 1, 28, 28), 0.25, np.float32)
    np.savez(tmp_path / "adversarial.npz", clean=clean, adversarial=adversarial, labels=np.arange(3))  # rcenp attack's
    np.testing.assert_array_equal(read_images(tmp_path / "adversarial.npz", (1, 28, 28)), adversarial)
    np.savez(tmp_path / "two.npz", clean=clean, other=adversarial)
    with pytest.raises(ValueError, match="'images' or 'adversarial' \\(found clean, other\\)"):
        read_images(tmp_path / "two.npz", (1, 28, 28))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="12x10"):
        read_images(tmp_path / "small.png", (1, 28, 28))
    (tmp_path / "fake.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        read_images(tmp_path / "fake.png", (1, 28, 28))
    np.savez(tmp_path / "wide.npz", images=np.zeros((2, 1, 28, 28), np.float32) + 3)
    with pytest.raises(ValueError, match=r"\[-0.5, 0.5\]"):
        read_images(tmp_path / "wide.npz", (1, 28, 28))
    with pytest.raises(ValueError, match="unsupported"):
        read_images(tmp_path / "x.txt", (1, 28, 28))
    (tmp_path / "pngs.png").mkdir()   # a folder, even one with an image's suffix
    with pytest.raises(ValueError, match="a folder; --images takes files"):
        read_images(tmp_path / "pngs.png", (1, 28, 28))


def test_detect_command(model, data, tmp_path, capsys):
    from rcenp.train import TrainConfig, save_checkpoint

    images, labels = data
    run = tmp_path / "run"
    save_checkpoint(run, model, None, TrainConfig(depth=8, objective="rce"), 1, {"note": "test"})
    Detector(model, "confidence").calibrate(images[:100], 0.05).save(run / "detector")
    np.savez(tmp_path / "batch.npz", images=images[:3])
    assert main(["detect", str(run), "--images", str(tmp_path / "batch.npz")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and all(line["answer"] == "NOT SURE" or line["answer"].startswith("label") for line in lines)
    (tmp_path / "bad.png").write_bytes(b"junk")
    assert main(["detect", str(run), "--images", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rcenp detect: error:") and "bad.png" in err[0]
    assert main(["detect", str(tmp_path / "nothing"), "--images", str(tmp_path / "batch.npz")]) == 2


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """An MNIST-format data root with 200 training and 40 test images of all 10 classes."""
    from tests.test_train import write_mnist_root

    rng = np.random.default_rng(4)
    return write_mnist_root(tmp_path_factory.mktemp("data"),
                            lambda split, n: (rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10), (200, 40))


def test_fit_detector_calibrates_on_the_held_out_images_it_names(model, mnist_root):
    from rcenp.data import load
    from rcenp.detect.calibrate import calibrate_threshold
    from rcenp.detect.cli import fit_detector, held_out_split

    test = load("mnist", "test", mnist_root)
    det, held_out = fit_detector(model, "mnist", mnist_root, "kd", 0.1, per_class=5, seed=2)
    again, calibration = held_out_split(40, seed=2)
    np.testing.assert_array_equal(held_out, again)
    assert len(held_out) == len(calibration) == 20 and not set(held_out) & set(calibration)
    assert held_out.max() > 20 and calibration.min() < 20  # random halves, not the first and the second
    assert det.info["fitted_on"] == 200 and "held_out_split(40, seed=2)" in det.info["calibration"]
    assert det.threshold == calibrate_threshold(det.scores(test.images[calibration])["kd"], 0.1)

    det, held_out = fit_detector(model, "mnist", mnist_root, "kd", 0.1, per_class=5, calibrate_on="train",
                                 kernel_from=150, seed=2)
    train = load("mnist", "train", mnist_root)
    assert det.info["fitted_on"] == 150 and list(held_out) == list(range(40))
    assert det.threshold == calibrate_threshold(det.scores(train.images[150:])["kd"], 0.1)
    with pytest.raises(ValueError, match="calibration needs some of them"):
        fit_detector(model, "mnist", mnist_root, calibrate_on="train", kernel_from=200)
    with pytest.raises(ValueError, match="calibrate_on"):
        fit_detector(model, "mnist", mnist_root, calibrate_on="validation")


@pytest.mark.parametrize("metric", ["confidence", "non_me"])
def test_fitting_a_detector_without_kernel_points_needs_no_per_class_images(model, mnist_root, metric):
    """Only K-density has kernel points: a confidence detector on 200 training images (20 a class)
    was refused for want of the default 1,000 points per class (a fresh user's trial)."""
    from rcenp.data import load
    from rcenp.detect.calibrate import calibrate_threshold
    from rcenp.detect.cli import fit_detector, held_out_split

    det, held_out = fit_detector(model, "mnist", mnist_root, metric, 0.1, per_class=1000, seed=2)
    assert det.kernel_points is None and "kernel_from" not in det.info and "fitted_on" not in det.info
    calibration = held_out_split(40, seed=2)[1]
    test = load("mnist", "test", mnist_root)
    assert det.threshold == calibrate_threshold(det.scores(test.images[calibration])[metric], 0.1)
    with pytest.raises(ValueError, match="per_class=1000"):
        fit_detector(model, "mnist", mnist_root, "kd", 0.1, per_class=1000, seed=2)


def test_detect_fit_takes_kernel_points_from_the_images_a_subset_run_trained_on(model, mnist_root, tmp_path, capsys):
    """A run trained on --train-subset N got kernel points from the whole split, mostly images it
    never saw (a fresh user's trial); they now come from its first N unless --kernel-from says."""
    from rcenp.train import TrainConfig, save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run, model, None, TrainConfig(depth=8, objective="rce", train_subset=150), 1, {"note": "test"})
    assert main(["detect", str(run), "--fit", "--per-class", "5", "--data-dir", str(mnist_root)]) == 0
    assert "kernel points from the first 150 training images, the run's --train-subset" in capsys.readouterr().err
    assert json.loads((run / "detector.json").read_text())["info"]["kernel_from"] == "first 150 training images"
    assert main(["detect", str(run), "--fit", "--overwrite", "--per-class", "5", "--kernel-from", "180",
                 "--data-dir", str(mnist_root)]) == 0
    assert json.loads((run / "detector.json").read_text())["info"]["kernel_from"] == "first 180 training images"
    # a subset as large as the split (200 images here) changes nothing: with --calibrate-on train the
    # kernel points stop at 199 as before, leaving one image to calibrate on (too few for any rate)
    # rather than "--kernel-from 200: ... calibration needs some of them", an option never given
    with pytest.raises(ValueError, match="reject none of its 1 clean images"):
        fit_detector(model, "mnist", mnist_root, per_class=5, calibrate_on="train", fpr=0.5, trained_on=200)
    det, _ = fit_detector(model, "mnist", mnist_root, per_class=5, calibrate_on="train", fpr=0.1, trained_on=150)
    assert det.info["kernel_from"] == "first 150 training images" and det.info["calibration"] == "training images 150-199"


def test_detect_fit_command_saves_the_calibration_it_used(model, mnist_root, tmp_path, capsys):
    from rcenp.train import TrainConfig, save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run, model, None, TrainConfig(depth=8, objective="rce"), 1, {"note": "test"})
    assert main(["detect", str(run), "--fit", "--per-class", "5", "--data-dir", str(mnist_root)]) == 0
    err = capsys.readouterr().err   # the long part says where it is
    n_train = int(err.split("training images ")[1].split("/")[1].split()[0])
    assert f"training images {n_train}/{n_train}  features for the kernel points  ETA 0:00:00" in err
    assert f"note: {run} is an unfinished run: its checkpoint is at step 1 of 20,000; the detector is fitted" in err
    saved = json.loads((run / "detector.json").read_text())
    assert "random half of the test split" in saved["info"]["calibration"] and saved["threshold"] is not None
    before = (run / "detector.json").read_bytes(), (run / "detector.npz").read_bytes()
    capsys.readouterr()
    assert main(["detect", str(run), "--fit", "--metric", "confidence", "--data-dir", str(mnist_root)]) == 2
    assert "already has a fitted detector" in capsys.readouterr().err  # nothing replaced without --overwrite
    assert ((run / "detector.json").read_bytes(), (run / "detector.npz").read_bytes()) == before
    assert main(["detect", str(run), "--fit", "--overwrite", "--calibrate-on", "train", "--kernel-from", "500",
                 "--data-dir", str(mnist_root)]) == 2
    assert "--kernel-from 500" in capsys.readouterr().err


@pytest.fixture()
def fitted_run(model, data, tmp_path):
    from rcenp.train import TrainConfig, save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run, model, None, TrainConfig(depth=8, objective="rce"), 1, {"note": "test"})
    Detector(model, "confidence").calibrate(data[0][:100], 0.05).save(run / "detector")
    return run


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("rcenp detect: error:"), captured
    assert "Traceback" not in captured.err
    return lines[0]


def test_detect_an_empty_batch_is_named(fitted_run, tmp_path, capsys):
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"empty.npz: no images in it \(shape \(0, 1, 28, 28\)\)"):
        read_images(tmp_path / "empty.npz", (1, 28, 28))
    assert main(["detect", str(fitted_run), "--images", str(tmp_path / "empty.npz")]) == 2
    assert "empty.npz: no images in it" in one_error_line(capsys)


def test_detect_reads_every_file_before_printing_any_answer(fitted_run, data, tmp_path, capsys):
    from PIL import Image

    np.savez(tmp_path / "good.npz", images=data[0][:2])
    Image.fromarray(np.zeros((56, 56), np.uint8)).save(tmp_path / "big.png")
    argv = ["detect", str(fitted_run), "--images", str(tmp_path / "good.npz"), str(tmp_path / "big.png")]
    assert main(argv) == 2
    assert "big.png: image is 56x56" in one_error_line(capsys)  # and no answer for good.npz before it


@pytest.mark.parametrize("option", [["--metric", "confidence"], ["--fpr", "0.05"], ["--per-class", "10"],
                                    ["--calibrate-on", "train"], ["--kernel-from", "5"], ["--seed", "0"],
                                    ["--overwrite"], ["--data-dir", "x"]])
def test_detect_refuses_fit_options_without_fit(fitted_run, data, tmp_path, capsys, option):
    np.savez(tmp_path / "good.npz", images=data[0][:2])
    assert main(["detect", str(fitted_run), "--images", str(tmp_path / "good.npz")] + option) == 2
    assert f"{option[0]} applies only with --fit" in one_error_line(capsys)


@pytest.mark.parametrize("rate", ["2", "0", "-0.1", "1.0001"])
def test_detect_fpr_must_be_a_rate(capsys, rate):
    with pytest.raises(SystemExit) as info:
        main(["detect", "m", "--fit", "--fpr", rate])
    assert info.value.code == 2 and "a rate must lie in (0, 1] (0.05 is 5%)" in capsys.readouterr().err


def test_detect_fpr_takes_what_calibrate_takes():
    from rcenp.detect.cli import _rate

    assert _rate("1") == 1.0 and _rate("0.05") == 0.05  # Detector.calibrate's (0, 1]


def test_a_detector_fitted_before_more_training_is_refused(data, tmp_path, capsys):
    """The audit: `train --stop-at` → `detect --fit` → `train --resume` left the old kernel points
    and T beside new weights, and `rcenp detect` used them silently."""
    from rcenp.models.registry import load as load_model
    from rcenp.train import TrainConfig, save_checkpoint

    run, config = tmp_path / "run", TrainConfig(depth=8, objective="rce")
    save_checkpoint(run, Classifier(resnet(8, 1, seed=0), "rce"), None, config, 1, {})
    model, _ = load_model(run)
    Detector(model, "confidence").calibrate(data[0][:100], 0.05).save(run / "detector")
    np.savez(tmp_path / "batch.npz", images=data[0][:2])
    assert main(["detect", str(run), "--images", str(tmp_path / "batch.npz")]) == 0
    capsys.readouterr()
    save_checkpoint(run, Classifier(resnet(8, 1, seed=5), "rce"), None, config, 2, {})  # trained further
    assert main(["detect", str(run), "--images", str(tmp_path / "batch.npz")]) == 2
    line = one_error_line(capsys)
    assert "fitted for other weights" in line and "--fit --overwrite" in line
    Detector(load_model(run)[0], "confidence").calibrate(data[0][:100], 0.05).save(run / "detector")  # refit
    assert main(["detect", str(run), "--images", str(tmp_path / "batch.npz")]) == 0


def test_a_damaged_detector_manifest_is_one_line(fitted_run, data, tmp_path, capsys):
    manifest = json.loads((fitted_run / "detector.json").read_text())
    del manifest["objective"]
    (fitted_run / "detector.json").write_text(json.dumps(manifest))
    np.savez(tmp_path / "batch.npz", images=data[0][:1])
    assert main(["detect", str(fitted_run), "--images", str(tmp_path / "batch.npz")]) == 2
    assert "damaged detector manifest (no objective)" in one_error_line(capsys)


def test_a_rate_that_rejects_no_calibration_image_is_refused_not_saved_as_minus_infinity(model, mnist_root,
                                                                                         tmp_path, capsys):
    """The audit: --fpr 0.001 on 20 calibration images gave T = -inf, written as -Infinity (not JSON)."""
    from rcenp.train import TrainConfig, save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run, model, None, TrainConfig(depth=8, objective="rce"), 1, {"note": "test"})
    assert main(["detect", str(run), "--fit", "--fpr", "0.001", "--per-class", "5", "--data-dir", str(mnist_root)]) == 2
    line = one_error_line(capsys)   # refused before the pass over the training images, so one line
    assert "would reject none of its 20 clean images" in line and "at least 1/20 = 0.05" in line
    assert not (run / "detector.json").exists() and not (run / "detector.npz").exists()
    assert main(["detect", str(run), "--fit", "--fpr", "0.05", "--calibrate-on", "train", "--kernel-from", "190",
                 "--per-class", "5", "--data-dir", str(mnist_root)]) == 2     # 10 training images left for T
    assert "none of its 10 clean images" in one_error_line(capsys)


def test_a_threshold_of_minus_infinity_is_not_saved(model, data, tmp_path):
    """Ties at the lowest scores can still leave T = -inf after a feasible rate: save refuses it."""
    det = Detector(model, "confidence")
    det.threshold, det.info = float("-inf"), {"calibration_n": 20, "target_fpr": 0.05}
    with pytest.raises(ValueError, match=r"T = -inf: .* its 20 clean images .*\(at least 1/20 = 0\.05\)"):
        det.save(tmp_path / "det")
    assert not list(tmp_path.iterdir())
