"""The thresholding test strategy (paper §3.3): return the label when score > T, else NOT SURE.

``Detector(model, metric="kd")`` is fitted on training data, which gives the kernel points: a
seeded random ``per_class`` training features per class, grouped by TRUE label and computed in
eval mode (protocol §3.1). T is calibrated on held-out clean data to a target false-positive
rate, where a false positive is a clean input rejected as NOT SURE. Scores are oriented so that
higher means more normal: confidence, non-ME and log KD.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from rcenp import checkpoint
from rcenp.autograd import no_grad
from rcenp.backend import as_numpy, get_array_module, to_device
from rcenp.detect.calibrate import calibrate_threshold, rejection_rate
from rcenp.detect.kde import DEFAULT_SIGMA2, kernel_point_indices, log_kernel_density
from rcenp.metrics import confidence, non_me
from rcenp.nn.module import check_images, eval_mode

NOT_SURE = -1
METRICS = ("kd", "confidence", "non_me")


class Detector:
    """The thresholding detector of one ``Classifier`` (module docstring).

    model: the classifier it scores; metric: "kd" (log K-density, the paper's), "confidence" or
    "non_me"; threshold: T (None until calibrated); sigma2: σ² of the Gaussian kernel (default
    the protocol's per objective: CE 1/0.26, RCE 0.1/0.26). Every method taking images wants
    (N, C, H, W) arrays in the model's dtype inside the [-0.5, 0.5] pixel box and raises
    ValueError otherwise (``rcenp.nn.module.check_images``); the model's train/eval modes are
    given back after each call.
    """

    def __init__(self, model, metric: str = "kd", threshold: float | None = None, sigma2: float | None = None):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.model, self.metric, self.threshold = model, metric, threshold
        self.sigma2 = DEFAULT_SIGMA2[model.objective] if sigma2 is None else float(sigma2)
        self.kernel_points = None  # (L, M, D) on the model's device
        self.info: dict = {}

    # ---- fitting ------------------------------------------------------------------------------
    def features_and_logits(self, images, batch_size=500, progress=None):
        """Z (N, D) and prediction logits (N, L) in eval mode, as arrays on the model's device.
        images: (N, C, H, W) in [-0.5, 0.5] (ValueError otherwise); ``progress(done, total)``, if
        given, is called after each batch of ``batch_size`` images."""
        images = check_images(self.model, images)
        feats, logits = [], []
        with eval_mode(self.model), no_grad():
            for start in range(0, len(images), batch_size):
                x = to_device(images[start:start + batch_size], self.model.device)
                z = self.model.features(x)
                feats.append(z.data)
                logits.append(self.model.prediction_logits(self.model.network.fc(z)).data)
                if progress is not None:
                    progress(min(start + batch_size, len(images)), len(images))
        xp = get_array_module(feats[0]) if feats else np
        return xp.concatenate(feats), xp.concatenate(logits)

    def fit(self, train_images, train_labels, per_class: int | None = 1000, seed: int = 0, progress=None):
        """Choose the kernel points from training features (by true label, ``kernel_point_indices``):
        only the chosen images' features are computed (an image's features do not depend on its
        batch, so the points are those of a pass over every image); ``progress`` as in
        ``features_and_logits``."""
        index = kernel_point_indices(np.asarray(train_labels), per_class=per_class, seed=seed,
                                     num_classes=self.model.network.num_classes)
        z, _ = self.features_and_logits(train_images[index.ravel()], progress=progress)
        points = as_numpy(z).reshape(*index.shape, -1)
        self.kernel_points = to_device(points, self.model.device)
        self.info.update(kernel_per_class=int(points.shape[1]), kernel_seed=seed, fitted_on=int(len(train_labels)))
        return self

    def calibrate(self, clean_images, target_fpr: float = 0.05):
        """Set T so that at most ``target_fpr`` of these clean images are rejected."""
        scores = self.scores(clean_images)[self.metric]
        self.threshold = float(calibrate_threshold(scores, target_fpr))
        self.info.update(target_fpr=target_fpr, calibration_n=int(len(scores)),
                         calibration_rejection_rate=float(rejection_rate(scores, self.threshold)))
        return self

    # ---- scoring ------------------------------------------------------------------------------
    def scores(self, images) -> dict:
        """Per image of ``images`` (N, C, H, W) in [-0.5, 0.5]: "prediction" (N,) int64,
        "confidence" (N,), "non_me" (N,, nats) and, once fitted, "kd" (N,, log KD in nats) under
        the predicted class: host arrays, higher = more normal."""
        z, logits = self.features_and_logits(images)
        predicted = logits.argmax(axis=1)
        out = {"prediction": as_numpy(predicted).astype(np.int64),
               "confidence": as_numpy(confidence(logits)), "non_me": as_numpy(non_me(logits))}
        if self.kernel_points is not None:
            out["kd"] = as_numpy(log_kernel_density(z, self.kernel_points, predicted, self.sigma2))
        elif self.metric == "kd":
            raise ValueError("the K-density detector has no kernel points: fit it on training data first")
        return out

    def predict(self, images):
        """(labels (N,) int64 with NOT_SURE (-1) where the metric's score <= T, the ``scores``
        dict) for images (N, C, H, W) in [-0.5, 0.5]. Raises ValueError without a threshold."""
        if self.threshold is None:
            raise ValueError("the detector has no threshold: calibrate it (or pass threshold=)")
        scores = self.scores(images)
        labels = np.where(scores[self.metric] > self.threshold, scores["prediction"], NOT_SURE)
        return labels, scores

    # ---- persistence (npz + JSON, no pickle) -------------------------------------------------
    def save(self, stem) -> Path:
        """Write the detector to ``<stem>.npz`` / ``<stem>.json``, recording the SHA-256 of the
        weights it was fitted for (``model.weights_sha256``, set by ``rcenp.models.load``).
        Raises ValueError for a threshold of −inf (the calibration rejected none of its clean
        images: ``target_fpr`` × n < 1, or ties): such a detector accepts every input, and JSON
        has no −inf."""
        if self.threshold is not None and not math.isfinite(self.threshold):
            n, fpr = self.info.get("calibration_n"), self.info.get("target_fpr")
            raise ValueError(f"T = {self.threshold}: at a false-positive rate of {fpr} the calibration rejects none of "
                             f"its {n} clean images (fewer than one image, or ties at the lowest scores), so the "
                             "detector would accept every input; raise the rate" +
                             (f" (at least 1/{n} = {1 / n:.2g})" if n else ""))
        arrays = {} if self.kernel_points is None else {"kernel_points": as_numpy(self.kernel_points)}
        manifest = {"kind": "rcenp-detector", "metric": self.metric, "threshold": self.threshold,
                    "sigma2": self.sigma2, "objective": self.model.objective, "info": self.info}
        weights = getattr(self.model, "weights_sha256", None)
        if weights:
            manifest["model_sha256"] = weights
        return checkpoint.save(stem, arrays, None, manifest)

    @classmethod
    def load(cls, stem, model) -> "Detector":
        """The detector saved at ``stem``, scoring with ``model``. Raises CheckpointError for a file
        that is not a detector, one fitted for the other objective, or one fitted for other weights
        than ``model``'s (its ``model_sha256`` against ``model.weights_sha256``, where both are
        known: a run trained further after ``rcenp detect --fit``); detectors saved before the
        weights were recorded are taken as they are."""
        manifest, arrays, _ = checkpoint.load(stem)
        if manifest.get("kind") != "rcenp-detector":
            raise checkpoint.CheckpointError(f"{stem}: not an rcenp detector")
        missing = [key for key in ("objective", "metric", "threshold", "sigma2") if key not in manifest]
        if missing:
            raise checkpoint.CheckpointError(f"{stem}.json: damaged detector manifest (no {', '.join(missing)})")
        if manifest["objective"] != model.objective:
            raise checkpoint.CheckpointError(f"{stem}: detector fitted for a {manifest['objective'].upper()} model")
        fitted_for, weights = manifest.get("model_sha256"), getattr(model, "weights_sha256", None)
        if fitted_for and weights and fitted_for != weights:
            raise checkpoint.CheckpointError(
                f"{stem}: fitted for other weights (SHA-256 {fitted_for[:12]}, the model's are {weights[:12]}: "
                "trained further or replaced since); refit it with `rcenp detect MODEL --fit --overwrite`")
        det = cls(model, manifest["metric"], manifest["threshold"], manifest["sigma2"])
        if "kernel_points" in arrays:
            det.kernel_points = to_device(arrays["kernel_points"], model.device)
        det.info = manifest.get("info", {})
        return det

    def describe(self) -> str:
        return json.dumps({"metric": self.metric, "threshold": self.threshold, "sigma2": self.sigma2, **self.info})


def detector_stem(model_stem: Path) -> Path:
    """Where a model's detector lives: RUN_DIR/detector, or <name>-detector beside a shipped model."""
    model_stem = Path(model_stem)
    if model_stem.name == "checkpoint":
        return model_stem.parent / "detector"
    return model_stem.parent / (model_stem.name + "-detector")


def load_detector(name_or_path, model) -> Detector:
    """The detector fitted for a shipped model name or run directory (``rcenp detect --fit``),
    scoring with ``model`` (that model, e.g. from ``rcenp.models.load(name_or_path)``).

    Raises CheckpointError when none is fitted or it was fitted for the other objective."""
    from rcenp.models.registry import resolve

    stem = detector_stem(resolve(name_or_path))
    if not stem.with_suffix(".json").is_file():
        raise checkpoint.CheckpointError(f"{name_or_path}: no fitted detector ({stem.with_suffix('.json')}); "
                                         f"run `rcenp detect {name_or_path} --fit`")
    return Detector.load(stem, model)

