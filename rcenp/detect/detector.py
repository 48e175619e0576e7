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
from rcenp.backend import as_numpy, get_array_module, to_device
from rcenp.checks import check_positive, check_real, check_steps
from rcenp.detect.calibrate import calibrate_threshold, min_calibration_images, rejection_rate
from rcenp.detect.kde import DEFAULT_SIGMA2, kernel_point_indices, log_kernel_density
from rcenp.grad_mode import no_grad
from rcenp.metrics import confidence, non_me
from rcenp.nn.module import check_images, check_model, eval_mode
from rcenp.progress import article

NOT_SURE = -1
METRICS = ("kd", "confidence", "non_me")
# ``Detector.info`` keys that describe the calibration of T (``calibrate``, ``cli.fit_detector``): a
# new calibration replaces them all, a new ``fit`` drops them with T.
CALIBRATION_INFO = ("target_fpr", "calibration_n", "calibration_rejection_rate", "calibration", "data")


class Detector:
    """The thresholding detector of one ``Classifier`` (module docstring).

    model: the classifier it scores (an ``rcenp.objectives.Classifier``, e.g. from
    ``rcenp.models.load``); metric: "kd" (log K-density, the paper's), "confidence" or "non_me";
    threshold: T (None until calibrated); sigma2: σ² of the Gaussian kernel (default the
    protocol's per objective: CE 1/0.26, RCE 0.1/0.26). Every method taking images wants
    (N, C, H, W) arrays (N ≥ 1) in the model's dtype inside the [-0.5, 0.5] pixel box and raises
    ValueError otherwise (``rcenp.nn.module.check_images``); the model's train/eval modes are
    given back after each call.

    Attributes: ``model``, ``metric``, ``threshold``, ``sigma2`` as above; ``kernel_points``
    (L, M, D): the training features Z of M images per class (the last hidden layer's; D = 64 in
    the ResNets), on the model's device, None until ``fit``; ``info``: the JSON-ready record of
    the fit and the calibration (``describe``).

    Life cycle: ``fit`` (kernel points; "kd" needs them) → ``calibrate`` (T) → ``predict``.
    ``fit`` always leaves the detector uncalibrated (T = None, the calibration record in ``info``
    dropped): T belongs to the kernel points it was calibrated with, so a refitted detector must
    be calibrated again before ``predict``.

    Raises TypeError for a ``model`` that is not a Classifier; ValueError for an unknown metric,
    a ``threshold`` that is not a real number (±inf allowed, NaN refused) and a ``sigma2`` that
    is not a positive finite real number (``rcenp.checks``). The same checks apply when
    ``threshold`` or ``sigma2`` is assigned later.
    """

    def __init__(self, model, metric: str = "kd", threshold: float | None = None, sigma2: float | None = None):
        check_model(model)  # TypeError, with a hint for the (model, manifest) pair of rcenp.models.load
        if not (hasattr(model, "features") and getattr(model, "objective", None) in DEFAULT_SIGMA2):
            raise TypeError("model must be an rcenp Classifier (from rcenp.models.load or "
                            f"rcenp.objectives.Classifier), got {type(model).__name__}")
        if not isinstance(metric, str) or metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.model, self.metric = model, metric
        self.threshold = threshold
        self.sigma2 = DEFAULT_SIGMA2[model.objective] if sigma2 is None else sigma2
        self.kernel_points = None  # (L, M, D) on the model's device
        self.info: dict = {}

    @property
    def threshold(self) -> float | None:
        """T: inputs with score <= T are NOT SURE; None while uncalibrated. Assigning checks it:
        a real number or None, not NaN; ±inf is allowed (ValueError otherwise)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value) -> None:
        if value is not None:
            value = check_real("threshold", value, allow_infinite=True)
        self._threshold = value

    @property
    def sigma2(self) -> float:
        """σ² of the Gaussian kernel. Assigning checks it: a positive finite real number
        (ValueError otherwise)."""
        return self._sigma2

    @sigma2.setter
    def sigma2(self, value) -> None:
        self._sigma2 = check_positive("sigma2", value)

    def __repr__(self) -> str:
        points = ("none" if self.kernel_points is None
                  else "×".join(str(int(n)) for n in self.kernel_points.shape))
        threshold = "uncalibrated" if self.threshold is None else f"{self.threshold:.6g}"
        return (f"Detector(objective={self.model.objective!r}, metric={self.metric!r}, "
                f"sigma2={self.sigma2:.6g}, kernel_points={points}, threshold={threshold})")

    # ---- fitting ------------------------------------------------------------------------------
    def features_and_logits(self, images, batch_size=500, progress=None):
        """Z (N, D) and prediction logits (N, L) in eval mode, as arrays on the model's device.
        images: (N, C, H, W) in [-0.5, 0.5], N ≥ 1 (ValueError otherwise); ``batch_size``: a
        positive integer (ValueError otherwise); ``progress(done, total)``, if given,
        is called after each batch of ``batch_size`` images."""
        batch_size = check_steps("batch_size", batch_size)
        images = check_images(self.model, images)
        if len(images) == 0:
            raise ValueError(f"images is empty (shape {tuple(images.shape)}): no images to score")
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
        """Choose the kernel points from training features (by true label, ``kernel_point_indices``;
        ``per_class`` points per class, None for every training image, as ``--per-class 0``):
        only the chosen images' features are computed (an image's features do not depend on its
        batch, so the points are those of a pass over every image); ``progress`` as in
        ``features_and_logits``.

        Leaves the detector uncalibrated: T is set to None and ``info`` holds only this fit's
        record (the previous fit's and calibration's entries are dropped), so ``predict`` raises
        until ``calibrate`` is called again. On an error the detector is left as it was.

        Raises ValueError when ``train_images`` (N, C, H, W) fails ``check_images`` or
        ``train_labels`` is not (N,) for the same N, and ValueError from ``kernel_point_indices``
        (non-integer or out-of-range labels, a bad ``per_class``, classes with too few images)."""
        train_images = check_images(self.model, train_images)
        labels = np.asarray(as_numpy(train_labels))
        if labels.shape != (len(train_images),):
            got = f"{len(labels)} labels" if labels.ndim == 1 else f"labels of shape {labels.shape}"
            raise ValueError(f"train_images and train_labels must have the same length: got {len(train_images)} "
                             f"images and {got}")
        index = kernel_point_indices(labels, per_class=per_class, seed=seed,
                                     num_classes=self.model.network.num_classes)
        z, _ = self.features_and_logits(train_images[index.ravel()], progress=progress)
        points = as_numpy(z).reshape(*index.shape, -1)
        self.kernel_points = to_device(points, self.model.device)
        self.threshold = None   # T was calibrated with the old kernel points (or none)
        self.info = {"kernel_per_class": int(points.shape[1]), "kernel_seed": seed, "fitted_on": int(len(labels))}
        return self

    def calibrate(self, clean_images, target_fpr: float = 0.05):
        """Set T so that at most ``target_fpr`` of these clean images are rejected
        (``calibrate_threshold``), replacing any earlier calibration and its record in ``info``.

        Raises ValueError for ``target_fpr`` outside (0, 1]; for fewer clean images than the rate
        needs to reject even one (n < 1/target_fpr, checked before any scoring: at least
        ``min_calibration_images(target_fpr)``); and when ties at the lowest scores leave T = −inf.
        A T of −inf would accept every input, so it is never set; on an error the detector is
        left as it was. Also the errors of ``scores`` (images; a "kd" detector not yet fitted)."""
        target_fpr = check_real("target_fpr", target_fpr)
        if not 0.0 < target_fpr <= 1.0:
            raise ValueError(f"target_fpr must lie in (0, 1] (0.05 is 5%), got {target_fpr}")
        n = len(check_images(self.model, clean_images))
        need = min_calibration_images(target_fpr)
        if n < need:
            raise ValueError(f"calibrate needs at least {need} clean images at target_fpr={target_fpr} (1/{need} "
                             f"<= {target_fpr}), got {n}: with fewer it rejects none of them and T = -inf would "
                             "accept every input; pass more images or raise target_fpr")
        scores = self.scores(clean_images)[self.metric]
        threshold = float(calibrate_threshold(scores, target_fpr))
        if not math.isfinite(threshold):
            raise ValueError(f"T = {threshold}: ties at the lowest {self.metric} scores of the {n} clean images leave "
                             f"no threshold that rejects at most {target_fpr} of them and any at all, so the detector "
                             "would accept every input; raise target_fpr or pass more images")
        self.threshold = threshold
        for key in CALIBRATION_INFO:
            self.info.pop(key, None)
        self.info.update(target_fpr=target_fpr, calibration_n=int(len(scores)),
                         calibration_rejection_rate=float(rejection_rate(scores, self.threshold)))
        return self

    # ---- scoring ------------------------------------------------------------------------------
    def scores(self, images, progress=None) -> dict:
        """Per image of ``images`` (N, C, H, W) in [-0.5, 0.5]: "prediction" (N,) int64,
        "confidence" (N,), "non_me" (N,) in nats and, once fitted, "kd" (N,), log KD in nats, under
        the predicted class: host arrays, higher = more normal. ``progress`` as in
        ``features_and_logits``. Raises ValueError for bad or no images (``features_and_logits``)
        and for a "kd" detector without kernel points."""
        z, logits = self.features_and_logits(images, progress=progress)
        predicted = logits.argmax(axis=1)
        out = {"prediction": as_numpy(predicted).astype(np.int64),
               "confidence": as_numpy(confidence(logits)), "non_me": as_numpy(non_me(logits))}
        if self.kernel_points is not None:
            out["kd"] = as_numpy(log_kernel_density(z, self.kernel_points, predicted, self.sigma2))
        elif self.metric == "kd":
            raise ValueError("the K-density detector has no kernel points: fit it on training data first")
        return out

    def predict(self, images, progress=None):
        """(labels (N,) int64 with NOT_SURE (-1) where the metric's score <= T, the ``scores``
        dict) for images (N, C, H, W) in [-0.5, 0.5]; ``progress`` as in ``scores``. Raises
        ValueError while uncalibrated (never calibrated, or refitted since: ``fit`` clears T), and
        the errors of ``scores``."""
        if self.threshold is None:
            raise ValueError("the detector has no threshold (never calibrated, or fit() cleared it): call "
                             "calibrate(clean_images) first, or set threshold=")
        scores = self.scores(images, progress=progress)
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
        weights were recorded are taken as they are; TypeError when ``model`` is not a
        ``Classifier``."""
        check_model(model)
        manifest, arrays, _ = checkpoint.load(stem)
        if manifest.get("kind") != "rcenp-detector":
            raise checkpoint.CheckpointError(f"{stem}: not an rcenp detector")
        missing = [key for key in ("objective", "metric", "threshold", "sigma2") if key not in manifest]
        if missing:
            raise checkpoint.CheckpointError(f"{stem}.json: damaged detector manifest (no {', '.join(missing)})")
        if manifest["objective"] != model.objective:
            raise checkpoint.CheckpointError(f"{stem}: detector fitted for {article(manifest['objective'])} model, "
                                             f"not this {model.objective.upper()} one: load the model's own detector")
        fitted_for, weights = manifest.get("model_sha256"), getattr(model, "weights_sha256", None)
        if fitted_for and weights and fitted_for != weights:
            raise checkpoint.CheckpointError(
                f"{stem}: fitted for other weights (SHA-256 {fitted_for[:12]}, the model's are {weights[:12]}): "
                "another model's detector, or this model was trained further or replaced since; load the "
                "model's own detector, or refit it with `rcenp detect MODEL --fit --overwrite`")
        try:
            det = cls(model, manifest["metric"], manifest["threshold"], manifest["sigma2"])
        except (TypeError, ValueError) as exc:
            raise checkpoint.CheckpointError(f"{stem}.json: damaged detector manifest ({exc})") from None
        if "kernel_points" in arrays:
            det.kernel_points = to_device(arrays["kernel_points"], model.device)
        det.info = manifest.get("info", {})
        return det

    def describe(self) -> str:
        """One JSON line: metric, threshold (null while uncalibrated), sigma2 and ``info`` (the
        record of the current fit and calibration)."""
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

    Raises CheckpointError when none is fitted or it was fitted for the other objective, and
    TypeError when ``model`` is not a ``Classifier`` (a name, or the (model, manifest) pair)."""
    from rcenp.models.registry import resolve

    check_model(model)
    stem = detector_stem(resolve(name_or_path))
    if not stem.with_suffix(".json").is_file():
        raise checkpoint.CheckpointError(f"{name_or_path}: no fitted detector ({stem.with_suffix('.json')}); "
                                         f"run `rcenp detect {name_or_path} --fit`")
    return Detector.load(stem, model)

