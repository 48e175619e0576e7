"""``rcenp.attacks.runfiles``: what a resume must refuse, and the code each batch records."""
import json

import numpy as np
import pytest

from rcenp.attacks import run as attack_run
from rcenp.attacks import runfiles
from rcenp.attacks.run import run_attack
from rcenp.detect.detector import Detector
from rcenp.models.registry import load
from tests.test_attack_run import killed_at_batch, setup  # noqa: F401  (the module fixture)


def test_differences_see_a_key_missing_on_either_side():
    there = {"options": {"eps": 0.1, "substitute": "S", "max_iterations": 50}, "n": 10}
    assert runfiles.differences(there, {"options": {"eps": 0.1}, "n": 10}) == [
        'options.substitute: "S" there, (none) now', "options.max_iterations: 50 there, (none) now"]
    assert runfiles.differences({"n": 10}, {"n": 10, "detector": None}) == ["detector: (none) there, null now"]
    assert runfiles.differences(there, json.loads(json.dumps(there))) == []


def _interrupted(run, root, out, monkeypatch, options, **args):
    real = attack_run.attack_function
    monkeypatch.setattr(attack_run, "attack_function", killed_at_batch(2, real))
    with pytest.raises(KeyboardInterrupt):
        run_attack(run, "fgsm", out, options, data_dir=root, **args)
    monkeypatch.setattr(attack_run, "attack_function", real)


def test_a_resume_after_the_detector_was_refitted_is_refused(setup, tmp_path, monkeypatch):  # noqa: F811
    run, root = setup
    original = {p: (run / p).read_bytes() for p in ("detector.json", "detector.npz")}
    _interrupted(run, root, tmp_path / "out", monkeypatch, {"eps": 0.05}, n=8, batch_size=4)
    try:
        model = load(run)[0]
        from rcenp.data import load as load_split

        train = load_split("mnist", "train", root)
        Detector(model).fit(train.images, train.labels, per_class=10).calibrate(train.images[:40]).save(run / "detector")
        with pytest.raises(ValueError, match=r"other settings than the run there: detector\.arrays_sha256"):
            run_attack(run, "fgsm", tmp_path / "out", {"eps": 0.05}, n=8, batch_size=4, data_dir=root, resume=True)
    finally:
        for name, data in original.items():
            (run / name).write_bytes(data)


def test_every_batch_records_its_code_and_a_change_is_reported(setup, tmp_path, monkeypatch, capsys):  # noqa: F811
    run, root = setup
    out = tmp_path / "out"
    _interrupted(run, root, out, monkeypatch, {"eps": 0.05}, n=12, batch_size=4)
    first = json.loads((out / "partial" / "batch-00000.code.json").read_text())
    assert first == runfiles.code_record() and len(first["source_sha256"]) == 64
    changed = dict(first, source_sha256="0" * 64, commit="f" * 40)
    (out / "partial" / "batch-00000.code.json").write_text(json.dumps(changed))   # as if computed by other code
    summary = run_attack(run, "fgsm", out, {"eps": 0.05}, n=12, batch_size=4, data_dir=root, resume=True)
    assert "earlier batches were computed with other code (ffffffffffff" in capsys.readouterr().err
    assert summary["code"] is None
    assert summary["code_by_batch"] == [{"code": changed, "batches": [0]}, {"code": first, "batches": [1, 2]}]
    whole = run_attack(run, "fgsm", tmp_path / "whole", {"eps": 0.05}, n=12, batch_size=4, data_dir=root)
    assert whole["code"] == first and whole["code_by_batch"] == [{"code": first, "batches": [0, 1, 2]}]


def test_cw_wb_eta_comes_from_the_training_features(setup, tmp_path, monkeypatch):  # noqa: F811
    run, root = setup
    seen = {}
    real = attack_run.attack_function

    def spy(name, detector=None):
        fn = real(name, detector)

        def wrapped(*a, **kw):
            seen.update(kw)
            return fn(*a, **kw)
        return wrapped
    monkeypatch.setattr(attack_run, "attack_function", spy)
    tiny = {"learning_rate": 0.05, "attacker_points": 5, "stage1": {"binary_steps": 1, "max_iterations": 2},
            "stage2": {"binary_steps": 1, "max_iterations": 2}}
    run_attack(run, "cw-wb", tmp_path / "wb", tiny, n=4, batch_size=4, data_dir=root)
    from rcenp.data import load as load_split

    model = load(run)[0]
    train = load_split("mnist", "train", root)
    z, _ = Detector(model).features_and_logits(train.images)
    np.testing.assert_array_equal(seen["train_features"], z)
    np.testing.assert_array_equal(seen["train_labels"], train.labels)
    first_sample = json.loads((tmp_path / "wb" / "samples.jsonl").read_text().splitlines()[0])
    asked = json.loads((tmp_path / "wb" / "run.json").read_text())
    assert asked["detector"] == runfiles.detector_identity(run) and asked["eta"] == "exact: training features"
    assert first_sample["f2"] >= 0


def test_cw_wb_without_training_images_says_eta_is_the_approximation(setup, tmp_path, monkeypatch, capsys):  # noqa: F811
    run, root = setup
    monkeypatch.setattr(attack_run, "training_split", lambda dataset, data_dir=None: None)
    tiny = {"learning_rate": 0.05, "attacker_points": 5, "stage1": {"binary_steps": 1, "max_iterations": 2},
            "stage2": {"binary_steps": 1, "max_iterations": 2}}
    run_attack(run, "cw-wb", tmp_path / "wb", tiny, n=4, batch_size=2, data_dir=root)
    assert json.loads((tmp_path / "wb" / "run.json").read_text())["eta"].startswith("approximation")
    assert capsys.readouterr().err.count("no training images found, so the biased-loose approximation") == 1
