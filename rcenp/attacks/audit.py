"""The per-sample audit of an attack's result (``rcenp attack``'s ``samples.jsonl`` lines): the
test index and true label, success after 8-bit and 16-bit rounding (by the attack's own test,
``AttackResult.criterion``), and the detector's clean and adversarial scores; for black-box
transfer, the records as the target model sees them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rcenp.attacks.core import AttackResult
from rcenp.backend import as_numpy


def quantize(images, levels: int) -> np.ndarray:
    """Images as an image file of ``levels`` grey levels per channel holds them (256: 8-bit,
    65,536: 16-bit): the nearest level k, read back as k/(levels-1) - 0.5 in float32, exactly the
    arithmetic of ``rcenp.data.datasets.scale`` and ``rcenp.data.images.quantize16``."""
    top = levels - 1
    steps = np.rint((np.asarray(images, np.float64) + 0.5) * top).astype(np.float32)
    steps /= np.float32(top)
    steps -= np.float32(0.5)
    return steps


def attack_and_audit(fn, model, detector, images, labels, index, options: dict, batch_size: int, png_dir=None,
                     substitute=None):
    """Attack ``images`` (N, C, H, W) with ``fn(model, images, batch_size=..., **options)`` and
    audit each sample → (AttackResult, ``samples.jsonl`` records): the attack's per-sample entries,
    the test ``index`` and true label, success after 8-bit (and 16-bit PNG) rounding, and with a
    ``detector`` the clean and adversarial confidence, non-ME and log KD and whether it rejects.

    With a ``substitute`` model the attack is crafted on it and audited on ``model`` (the target;
    module docstring): the returned result is the substitute's, the records are the target's."""
    result = fn(model if substitute is None else substitute, images, batch_size=batch_size, **options)
    records = [sample_record(i, int(y), r) for i, y, r in zip(index, labels, result.records())]
    if substitute is not None:
        _audit_on_target(model, images, labels, result, records)
    _extras(model, detector, images, result, records, png_dir, index, transfer=substitute is not None)
    return result, records


def _audit_on_target(target, images, labels, result: AttackResult, records) -> None:
    """Rewrite the substitute's records as the target sees them (transfer; module docstring)."""
    clean = as_numpy(target.predict(images))
    adversarial = as_numpy(target.predict(result.adversarial))
    for j, record in enumerate(records):
        record["substitute_success"] = record["success"]
        record["substitute_prediction"] = record.pop("adversarial_prediction")
        record["substitute_clean_prediction"] = record["clean_prediction"]
        record["clean_prediction"] = int(clean[j])
        record["adversarial_prediction"] = int(adversarial[j])
        record["misclassified"] = bool(adversarial[j] != labels[j])
        record["success"] = record["misclassified"]
        record["target_hit"] = bool(record["target"] >= 0 and adversarial[j] == record["target"])


def sample_record(index: int, true_label: int, record: dict) -> dict:
    """One ``samples.jsonl`` line: the attack's per-sample audit plus the test index and true label."""
    out = {"index": int(index), "true_label": true_label}
    out.update(record)
    out["adversarial_prediction"] = out.pop("prediction")
    out["misclassified"] = out["adversarial_prediction"] != true_label
    return out


def _success(model, result: AttackResult, images, records=None) -> np.ndarray:
    """The attack's success test on ``images`` (other images of the same samples): its own
    ``criterion`` where it has one (C&W's κ margin, C&W-wb's f₂), else the argmax test; with
    transfer ``records``, the target's: misclassified (the true label is in the records)."""
    if records is None and result.criterion is not None:
        return np.asarray(result.criterion(images), bool)
    prediction = as_numpy(model.predict(images))
    if records is not None:
        return prediction != np.array([r["true_label"] for r in records])
    targeted = result.target >= 0
    return np.where(targeted, prediction == result.target, prediction != result.label)


def _extras(model, detector, clean, result: AttackResult, records, png_dir, index, transfer: bool = False) -> None:
    """Add to each record: success after 8-bit (and 16-bit PNG) rounding and the detector's scores."""
    criterion = records if transfer else None
    dtype = result.adversarial.dtype  # the model's: a float64 model reads the 8-bit image as float64
    success_8bit = _success(model, result, quantize(result.adversarial, 256).astype(dtype), criterion)
    if png_dir is not None:
        from rcenp.data.images import write_png16

        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for i, image in zip(index, result.adversarial):
            write_png16(Path(png_dir) / f"{int(i):05d}.png", image)
        success_16bit = _success(model, result, quantize(result.adversarial, 65536).astype(dtype), criterion)
    for j, record in enumerate(records):
        record["success_8bit"] = bool(success_8bit[j])
        if png_dir is not None:
            record["success_16bit"] = bool(success_16bit[j])
    if detector is None:
        return
    for which, images in (("clean", clean), ("adversarial", result.adversarial)):
        scores = detector.scores(images)
        for j, record in enumerate(records):
            for metric in ("confidence", "non_me", "kd"):
                if metric in scores:
                    name = "log_kd" if metric == "kd" else metric
                    record[f"{which}_{name}"] = float(scores[metric][j])
    for record in records:
        score = record["adversarial_" + ("log_kd" if detector.metric == "kd" else detector.metric)]
        record["detected"] = bool(score <= detector.threshold) if detector.threshold is not None else None
