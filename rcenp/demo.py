"""The main job: evaluate the shipped MNIST models (Table 1's quantity) and their detectors.

Without a data root, it uses the embedded 1,000-image MNIST test sample and says so; with one
(``RCENP_DATA`` or ``--data-dir``), the full test set.
"""
from __future__ import annotations

import json
import os

import numpy as np


def evaluate_shipped(names, data_dir=None, device=None) -> int:
    from rcenp.data import load, load_sample
    from rcenp.detect.cli import detector_stem
    from rcenp.detect.detector import Detector
    from rcenp.models.registry import load as load_model
    from rcenp.models.registry import resolve
    from rcenp.train import evaluate

    if data_dir or os.environ.get("RCENP_DATA"):
        test = load("mnist", "test", data_dir)
    else:
        test = load_sample()
    print(f"test images: {test.describe()}")
    for name in names:
        model, manifest = load_model(name, device)
        result = evaluate(model, test.images, test.labels)
        line = {"model": name, "objective": model.objective, "test_error_percent": round(100 * result["test_error"], 3),
                "errors": result["errors"], "n": result["n_test"], "trained_steps": manifest["step"]}
        stem = detector_stem(resolve(name))
        if stem.with_suffix(".json").is_file():
            det = Detector.load(stem, model)
            labels, scores = det.predict(test.images)
            line["detector"] = {"metric": det.metric, "threshold": det.threshold,
                                "clean_rejected_percent": round(100 * float(np.mean(labels == -1)), 2)}
            line["clean_score_quartiles"] = {k: [round(float(q), 4) for q in np.percentile(scores[k], [25, 50, 75])]
                                             for k in ("confidence", "non_me", "kd") if k in scores}
        print(json.dumps(line))
    return 0
