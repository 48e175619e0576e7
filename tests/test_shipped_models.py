"""Every shipped model: loads by name, errs as its manifest says on the data present, has its
detector, and is listed by ``rcenp models``. New models are covered by being shipped."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rcenp.cli import main
from rcenp.data import DataError, load, load_sample
from rcenp.models.registry import model_info, shipped_models

SHIPPED = shipped_models()
TOLERANCE = 0.005  # 0.5 points above the manifest's test error


def data_for(manifest):
    """The embedded sample for MNIST models; else the test split the manifest measured, if present."""
    dataset = manifest["config"]["dataset"]
    if dataset == "mnist":
        return load_sample()
    try:
        test = load(dataset, "test")
    except DataError as exc:
        pytest.skip(f"{dataset} test data not present ({exc})")
    if len(test) != manifest["n_test"]:
        pytest.skip(f"{test.describe()}: not the {manifest['n_test']:,}-image split the manifest measured")
    return test


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_by_name_and_errs_as_its_manifest_says(name):
    from rcenp.models import load as load_model
    from rcenp.train import evaluate

    model, manifest = load_model(name, "cpu")
    assert manifest["name"] == name and manifest["step"] == manifest["config"]["steps"]
    assert manifest["command"].startswith(f"rcenp train --dataset {manifest['config']['dataset']} ")
    assert manifest["trained_with"]["commit"] and not manifest["trained_with"]["dirty"]
    test = data_for(manifest)
    result = evaluate(model, test.images, test.labels)
    assert result["test_error"] <= manifest["test_error"] + TOLERANCE, (name, test.describe(), result)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_detector_keeps_most_clean_test_images(name):
    from rcenp.detect.detector import NOT_SURE, load_detector
    from rcenp.models import load as load_model

    model, manifest = load_model(name, "cpu")
    det = load_detector(name, model)
    per_class = det.kernel_points.shape[1]
    assert det.metric == "kd" and det.kernel_points.shape == (10, per_class, 64) and per_class >= 100
    test = data_for(manifest)
    labels, _ = det.predict(test.images[:1000])
    # T rejects 5% of held-out clean test images; on 1,000 of them that is 50 +- 7 (binomial sd)
    assert 0.02 <= np.mean(labels == NOT_SURE) <= 0.09


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_detector_names_the_weights_it_was_fitted_for(name):
    """Detector.load refuses a detector whose model_sha256 differs from the model's weights; a
    shipped detector without it would be taken for any weights (a model retrained under its name)."""
    from rcenp.detect.detector import detector_stem
    from rcenp.models.registry import resolve

    stem = resolve(name)
    model = json.loads(stem.with_suffix(".json").read_text())
    detector = json.loads(detector_stem(stem).with_suffix(".json").read_text())
    assert detector["model_sha256"] == model["arrays_sha256"]


def test_rcenp_models_lists_every_shipped_model(capsys):
    assert SHIPPED, "no shipped models"
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "data", "set"] and len(lines) == len(SHIPPED) + 1
    for name, line in zip(SHIPPED, lines[1:]):
        info = model_info(name)
        assert line.split()[0] == name and f"{info['test_error'] * 100:.2f}%" in line
        scale = "" if info["schedule_scale"] == 1 else f" {info['schedule_scale']:g}x"
        assert f"  {info['preset']}{scale}, {info['steps']:,} steps  " in line  # CE and RCE on unequal schedules show
        assert ("not fitted" in line) != info["detector"]
    assert main(["models", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records == [model_info(name) for name in SHIPPED]
    assert all({"dataset", "depth", "objective", "test_error", "detector", "bytes"} <= set(r) for r in records)


def test_model_info_refuses_unknown_names():
    from rcenp.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not a shipped model"):
        model_info("no-such-model")


def test_a_float64_run_loads_in_float64(tmp_path):
    """registry.load gives the checkpoint's dtype, as it says (a float64 run was refused)."""
    from rcenp.models import resnet
    from rcenp.models.registry import load as load_model
    from rcenp.objectives import Classifier
    from rcenp.train import TrainConfig, save_checkpoint

    network = resnet(8, 1, seed=1)
    network.astype(np.float64)
    save_checkpoint(tmp_path, Classifier(network, "ce"), None, TrainConfig(depth=8, objective="ce"), 1, {})
    model, _ = load_model(tmp_path)
    weights = model.network.state_dict()
    assert {v.dtype for v in weights.values()} == {np.dtype(np.float64)}
    assert all(np.array_equal(weights[k], v) for k, v in network.state_dict().items())
