"""``rcenp.attacks.runfiles``: what a resume must refuse, and the code each batch records."""
import json
import re
import warnings

import numpy as np
import pytest

from rcenp.attacks import run as attack_run
from rcenp.attacks import runfiles
from rcenp.attacks.cw_wb import EtaApproximationWarning
from rcenp.attacks.run import run_attack
from rcenp.backend import as_numpy
from rcenp.detect.detector import Detector
from rcenp.models.registry import load
from tests.test_attack_run import killed_at_batch, setup  # noqa: F401  (the module fixture)


def test_differences_see_a_key_missing_on_either_side():
    there = {"options": {"eps": 0.1, "substitute": "S", "max_iterations": 50}, "n": 10}
    assert runfiles.differences(there, {"options": {"eps": 0.1}, "n": 10}) == [
        'options.substitute: "S" there, (none) now', "options.max_iterations: 50 there, (none) now"]
    assert runfiles.differences({"n": 10}, {"n": 10, "detector": None}) == ["detector: (none) there, null now"]
    assert runfiles.differences(there, json.loads(json.dumps(there))) == []
    data = {"name": "mnist", "sha256": {"t10k": "ab"}, "source": "/machine/a/mnist"}
    assert runfiles.differences({"data": data}, {"data": dict(data, source="/machine/b/mnist")}) == []
    assert runfiles.differences({"data": data}, {"data": dict(data, sha256={"t10k": "cd"})}) == [
        'data.sha256.t10k: "ab" there, "cd" now']


def test_an_option_at_its_default_compares_equal_to_one_left_out():
    """``--kappa 5`` for cw-wb, ``--binary-steps 9`` for cw: the same run as leaving them out, so a
    resume (or a --crafted-from source) is not refused for it; another value still differs."""
    cw = {"attack": "cw", "options": {"targets": "random", "learning_rate": 0.01, "seed": 0, "max_iterations": 1000}}
    explicit = {"attack": "cw", "options": dict(cw["options"], binary_steps=9, kappa=0, abort_early=True)}
    assert runfiles.differing(runfiles.comparable(cw), runfiles.comparable(explicit)) == []
    other = {"attack": "cw", "options": dict(cw["options"], binary_steps=5)}
    assert [d[0] for d in runfiles.differing(runfiles.comparable(cw), runfiles.comparable(other))] == [
        "options.binary_steps"]
    hc = runfiles.effective_options("cw-hc", {"targets": "random"})
    assert hc["kappa"] == 10.0 and runfiles.effective_options("cw", {})["kappa"] == 0.0
    wb = {"attack": "cw-wb", "options": {"targets": "random", "kernel": "attacker", "stage1": {}, "stage2": {}}}
    wb_explicit = {"attack": "cw-wb", "options": dict(wb["options"], anchor="clean", stage2={"kappa": 5.0},
                                                      stage1={"binary_steps": 3})}
    assert runfiles.differing(runfiles.comparable(wb), runfiles.comparable(wb_explicit)) == []
    wb_other = {"attack": "cw-wb", "options": dict(wb["options"], stage2={"kappa": 0.0})}
    assert [d[0] for d in runfiles.differing(runfiles.comparable(wb), runfiles.comparable(wb_other))] == [
        "options.stage2.kappa"]
    assert runfiles.effective_options("bim", {"eps": 0.1}) == {"eps": 0.1, "steps": 10}
    assert runfiles.effective_options("no-such-attack", {"a": 1}) == {"a": 1}
    assert runfiles.comparable({"n": 3}) == {"n": 3}


def test_data_digests_compare_by_content_not_by_the_name_on_disk():
    """A data file may go by a variant name (rcenp.data.names): the same digest under
    t10k-images.idx3-ubyte is the same data as under t10k-images-idx3-ubyte.gz; a digest recorded
    as None (older records of unverified files) is unknown, not a difference."""
    there = {"data": {"sha256": {"t10k-images-idx3-ubyte.gz": "ab", "t10k-labels-idx1-ubyte.gz": "cd"}}}
    renamed = {"data": {"sha256": {"T10K-images.idx3-ubyte": "ab", "t10k-labels.idx1-ubyte": "cd"}}}
    assert runfiles.differences(there, renamed) == []
    assert runfiles.differences(there, {"data": {"sha256": {"t10k-images.idx3-ubyte": "ab",
                                                            "t10k-labels-idx1-ubyte": "ef"}}}) == [
        'data.sha256.t10k-labels-idx1-ubyte: "cd" there, "ef" now']
    legacy = {"data": {"sha256": {"t10k-images-idx3-ubyte.gz": None, "t10k-labels-idx1-ubyte.gz": "cd"}}}
    assert runfiles.differences(legacy, there) == [] and runfiles.differences(there, legacy) == []


def test_a_refused_resume_names_the_test_images_once_and_caps_the_settings():
    """A fresh user's report: other test images listed every digest and count on one long line."""
    there = {"n": 20, "seed": 0, "options": {"eps": 0.1, "steps": 10, "a": 1, "b": 2},
             "data": {"n": 1000, "note": "embedded sample", "sha256": {"t10k-images-idx3-ubyte.gz": "ab"}}}
    now = {"n": 10, "seed": 1, "options": {"eps": 0.2, "steps": 5, "a": 3, "b": 2},
           "data": {"n": 10000, "note": "complete mnist test set", "sha256": {"t10k-images-idx3-ubyte.gz": "cd"}}}
    line = runfiles.brief(runfiles.differing(there, now), there, now)
    assert line.startswith('data: embedded sample there, complete mnist test set now; n: 20 there, 10 now; ')
    assert line.endswith("; and 2 more") and "sha256" not in line
    same_note = dict(now, data=dict(there["data"], sha256={"t10k-images-idx3-ubyte.gz": "cd"}))
    assert runfiles.brief(runfiles.differing(there, same_note), there, same_note, most=1).startswith(
        "data: other test images (their SHA-256 differ); and ")


def test_unverified_data_is_recorded_by_its_digest(tmp_path):
    """Files without a published digest (a subset) were recorded as None, so two different subsets
    of one split had the same identity."""
    from rcenp.data import load as load_split
    from tests.test_train import write_mnist_root

    identities = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        (tmp_path / f"root{seed}").mkdir()
        root = write_mnist_root(tmp_path / f"root{seed}",
                                lambda split, n: (rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10), (30, 10))
        identities.append(load_split("mnist", "train", root).identity)
    assert identities[0]["subset"] and all(len(d) == 64 for d in identities[0]["sha256"].values())
    assert runfiles.differences({"data": {"sha256": identities[0]["sha256"]}},
                                {"data": {"sha256": identities[1]["sha256"]}}) == [
        f'data.sha256.train-images-idx3-ubyte: "{identities[0]["sha256"]["train-images-idx3-ubyte.gz"]}" there, '
        f'"{identities[1]["sha256"]["train-images-idx3-ubyte.gz"]}" now']


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
    assert first == runfiles.code_record(first["device"]) and len(first["source_sha256"]) == 64
    changed = dict(first, source_sha256="0" * 64, commit="f" * 40)
    (out / "partial" / "batch-00000.code.json").write_text(json.dumps(changed))   # as if computed by other code
    summary = run_attack(run, "fgsm", out, {"eps": 0.05}, n=12, batch_size=4, data_dir=root, resume=True)
    assert "earlier batches were computed with other library code (commit ffffffffffff" in capsys.readouterr().err
    assert summary["code"] is None
    commit = [{"commit": first.get("commit"), "dirty": first.get("dirty"), "device": first["device"]}]
    assert summary["code_by_batch"] == [
        {"source_sha256": "0" * 64, "commits": [{"commit": "f" * 40, "dirty": first.get("dirty"),
                                                 "device": first["device"]}], "batches": [0]},
        {"source_sha256": first["source_sha256"], "commits": commit, "batches": [1, 2]}]
    whole = run_attack(run, "fgsm", tmp_path / "whole", {"eps": 0.05}, n=12, batch_size=4, data_dir=root)
    assert whole["code"] == first
    assert whole["code_by_batch"] == [{"source_sha256": first["source_sha256"], "commits": commit, "batches": [0, 1, 2]}]


def test_batches_from_another_device_are_named_in_the_note_and_the_code_record(setup, tmp_path, monkeypatch,  # noqa: F811
                                                                              capsys):
    """A run resumed on another device is one run whose batches differ in the last bits: the
    resume says so, and code_by_batch names each batch's device."""
    run, root = setup
    out = tmp_path / "out"
    _interrupted(run, root, out, monkeypatch, {"eps": 0.05}, n=12, batch_size=4)
    first = json.loads((out / "partial" / "batch-00000.code.json").read_text())
    other = "cuda" if first["device"] == "cpu" else "cpu"
    (out / "partial" / "batch-00000.code.json").write_text(json.dumps(dict(first, device=other)))
    summary = run_attack(run, "fgsm", out, {"eps": 0.05}, n=12, batch_size=4, data_dir=root, resume=True)
    assert f"note: earlier batches ran on {other}, these on {first['device']}" in capsys.readouterr().err
    (group,) = summary["code_by_batch"]   # the same library source
    assert [c["device"] for c in group["commits"]] == [other, first["device"]] and group["batches"] == [0, 1, 2]


def test_a_new_commit_with_the_same_library_source_is_one_code(setup, tmp_path, monkeypatch, capsys):  # noqa: F811
    run, root = setup
    out = tmp_path / "out"
    _interrupted(run, root, out, monkeypatch, {"eps": 0.05}, n=12, batch_size=4)
    first = json.loads((out / "partial" / "batch-00000.code.json").read_text())
    (out / "partial" / "batch-00000.code.json").write_text(json.dumps(dict(first, commit="e" * 40)))  # docs changed
    summary = run_attack(run, "fgsm", out, {"eps": 0.05}, n=12, batch_size=4, data_dir=root, resume=True)
    assert "other library code" not in capsys.readouterr().err
    assert summary["code"] == first
    (group,) = summary["code_by_batch"]
    assert group["batches"] == [0, 1, 2] and [c["commit"] for c in group["commits"]] == ["e" * 40, first.get("commit")]


@pytest.fixture(scope="module")
def trained_here(setup, tmp_path_factory):  # noqa: F811
    """A run directory whose manifest records the training split of ``setup``'s data root (as a
    model trained on it would), with a fitted detector."""
    from rcenp.data import load as load_split
    from rcenp.models import resnet
    from rcenp.objectives import Classifier
    from rcenp.train import TrainConfig, save_checkpoint

    _, root = setup
    train, test = load_split("mnist", "train", root), load_split("mnist", "test", root)
    run = tmp_path_factory.mktemp("trained-here")
    model = Classifier(resnet(8, 1, seed=2), "ce").eval()
    save_checkpoint(run, model, None, TrainConfig(depth=8, objective="ce"), 1, {"train": train.identity})
    Detector(model).fit(train.images, train.labels, per_class=20).calibrate(test.images).save(run / "detector")
    return run, root


def test_cw_wb_eta_comes_from_the_training_features(trained_here, tmp_path, monkeypatch):
    run, root = trained_here
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
    np.testing.assert_array_equal(as_numpy(seen["train_features"]), as_numpy(z))   # on the GPU under RCENP_DEVICE=cuda
    np.testing.assert_array_equal(seen["train_labels"], train.labels)
    first_sample = json.loads((tmp_path / "wb" / "samples.jsonl").read_text().splitlines()[0])
    asked = json.loads((tmp_path / "wb" / "run.json").read_text())
    assert asked["detector"] == runfiles.detector_identity(run)
    assert asked["eta"] == {"rule": "exact: training features",
                            "train": {"n": len(train.labels), "sha256": train.identity["sha256"]}}
    assert first_sample["f2"] >= 0
    log = (tmp_path / "wb" / "attack.log").read_text()   # the pass over the training split is timed and named
    assert re.search(rf"η for C&W-wb: {len(train.labels):,} training features in 0:00:\d\d \(not in the img/s below\)",
                     log)
    run_attack(run, "cw-wb", tmp_path / "again", tiny, n=4, batch_size=4, data_dir=root)  # the pass is kept
    assert f"η for C&W-wb: {len(train.labels):,} training features kept from an earlier pass (the feature cache)" \
        in (tmp_path / "again" / "attack.log").read_text()


TINY_WB = {"learning_rate": 0.05, "attacker_points": 5, "stage1": {"binary_steps": 1, "max_iterations": 2},
           "stage2": {"binary_steps": 1, "max_iterations": 2}}


def test_cw_wb_without_training_images_says_eta_is_the_approximation(setup, tmp_path, capsys):  # noqa: F811
    run, root = setup
    bare = tmp_path / "bare"   # the test split alone
    (bare / "mnist").mkdir(parents=True)
    for name in (root / "mnist").iterdir():
        if name.name.startswith("t10k"):
            (bare / "mnist" / name.name).symlink_to(name)
    with warnings.catch_warnings():   # said once on the progress stream, not warned once per batch
        warnings.simplefilter("error", EtaApproximationWarning)
        run_attack(run, "cw-wb", tmp_path / "wb", TINY_WB, n=4, batch_size=2, data_dir=bare)
    eta = json.loads((tmp_path / "wb" / "run.json").read_text())["eta"]
    assert eta == {"rule": "approximation from the detector's kernel points", "why": "no mnist training images found"}
    assert capsys.readouterr().err.count("no mnist training images found, so the biased-loose approximation") == 1


def test_eta_is_exact_only_on_the_models_own_training_images(setup):  # noqa: F811
    from rcenp.attacks.wb_features import eta_training_split
    from rcenp.data import load as load_split

    run, root = setup
    model, manifest = load(run)
    detector = Detector.load(run / "detector", model)
    train = load_split("mnist", "train", root)
    own = dict(manifest, data={"train": {"n": len(train.labels), "sha256": train.identity["sha256"]}})
    found, record = eta_training_split(own, detector, root)
    assert found is not None and record["rule"] == "exact: training features"
    other = dict(manifest, data={"train": {"n": 60000, "sha256": {"train-images-idx3-ubyte.gz": "0" * 64}}})
    found, record = eta_training_split(other, detector, root)
    assert found is None and record["why"] == "the mnist training images found (200) are not the model's (60000, by SHA-256)"
    renamed = root.parent / (root.name + "-renamed")  # the same files under accepted variant names
    (renamed / "mnist").mkdir(parents=True, exist_ok=True)
    for path in (root / "mnist").iterdir():
        variant = renamed / "mnist" / path.name.upper().replace("-IDX", ".IDX")
        if not variant.exists():
            variant.symlink_to(path)
    found, record = eta_training_split(own, detector, renamed)
    assert found is not None and record["rule"] == "exact: training features"  # was: "not the model's"
    detector.info["fitted_on"] = len(train.labels) + 1
    found, record = eta_training_split(own, detector, root)
    assert found is None and "kernel came from 201 training images, 200 found" in record["why"]


def test_merging_cw_wb_shards_keeps_their_eta_and_looks_at_no_training_data(trained_here, tmp_path, monkeypatch):
    run, root = trained_here
    shards = [tmp_path / f"s{k}" for k in (1, 2)]
    for k, folder in enumerate(shards, 1):
        run_attack(run, "cw-wb", folder, TINY_WB, n=4, batch_size=2, data_dir=root, shard=(k, 2))

    def no_training_data(*args, **kwargs):
        raise AssertionError("--merge looked for training images")
    monkeypatch.setattr(attack_run, "eta_training_split", no_training_data)
    merged = run_attack(run, "cw-wb", tmp_path / "merged", TINY_WB, n=4, batch_size=2, data_dir=root, merge=shards)
    assert merged["settings"]["eta"]["rule"] == "exact: training features"
    assert merged["code_by_batch"][0]["batches"] == [0, 1]
    (shards[1] / "run.json").write_text(json.dumps(dict(json.loads((shards[1] / "run.json").read_text()),
                                                        eta={"rule": "approximation", "why": "test"})))
    with pytest.raises(ValueError, match="computed η differently"):
        run_attack(run, "cw-wb", tmp_path / "merged2", TINY_WB, n=4, batch_size=2, data_dir=root, merge=shards)


def test_a_finished_run_from_before_the_detector_was_recorded_still_resumes(setup, tmp_path):  # noqa: F811
    run, root = setup
    out = tmp_path / "old"
    first = run_attack(run, "fgsm", out, {"eps": 0.05}, n=4, batch_size=4, data_dir=root)
    asked = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({k: v for k, v in asked.items() if k != "detector"}))
    assert run_attack(run, "fgsm", out, {"eps": 0.05}, n=4, batch_size=4, data_dir=root, resume=True) == first
    with pytest.raises(ValueError, match="options.eps"):
        run_attack(run, "fgsm", out, {"eps": 0.06}, n=4, batch_size=4, data_dir=root, resume=True)
    (out / "summary.json").unlink()   # unfinished: the missing record is a difference
    with pytest.raises(ValueError, match="detector: \\(none\\) there"):
        run_attack(run, "fgsm", out, {"eps": 0.05}, n=4, batch_size=4, data_dir=root, resume=True)


def test_a_run_resumes_with_an_option_now_given_at_its_default(setup, tmp_path, monkeypatch):  # noqa: F811
    run, root = setup
    args = dict(n=4, batch_size=2, data_dir=root)
    run_attack(run, "bim", tmp_path / "whole", {"eps": 0.05}, **args)
    real = attack_run.attack_function
    monkeypatch.setattr(attack_run, "attack_function", killed_at_batch(2, real))
    with pytest.raises(KeyboardInterrupt):
        run_attack(run, "bim", tmp_path / "resumed", {"eps": 0.05}, **args)
    monkeypatch.setattr(attack_run, "attack_function", real)
    with pytest.raises(ValueError, match="options.steps: 10 there, 5 now"):
        run_attack(run, "bim", tmp_path / "resumed", {"eps": 0.05, "steps": 5}, resume=True, **args)
    run_attack(run, "bim", tmp_path / "resumed", {"eps": 0.05, "steps": 10}, resume=True, **args)
    assert (tmp_path / "whole" / "samples.jsonl").read_bytes() == (tmp_path / "resumed" / "samples.jsonl").read_bytes()
    for name in ("run.json", "summary.json"):  # the run's options as first given
        record = json.loads((tmp_path / "resumed" / name).read_text())
        assert record.get("settings", record)["options"] == {"eps": 0.05}


def test_cw_records_keep_the_total_iterations_beside_the_per_step_counts(setup, tmp_path):  # noqa: F811
    run, root = setup
    summary = run_attack(run, "cw", tmp_path / "cw", {"binary_steps": 3, "max_iterations": 4, "learning_rate": 0.05},
                         n=4, batch_size=4, data_dir=root)
    samples = [json.loads(line) for line in (tmp_path / "cw" / "samples.jsonl").read_text().splitlines()]
    for s in samples:
        assert isinstance(s["iterations"], int) and s["iterations"] == sum(s["step_iterations"])
    assert summary["iterations_mean"] == np.mean([s["iterations"] for s in samples])
    assert summary["iterations_mean"] > 4          # over all binary steps, not per step


def test_a_detail_may_not_replace_a_common_field():
    from rcenp.attacks.core import AttackResult

    result = AttackResult(**{k: np.zeros(1) for k in ("adversarial", "success", "prediction", "clean_prediction",
                                                     "label", "target", "iterations", "stop_reason",
                                                     "zero_grad_fraction", "l2", "l2_paper", "linf", "l0")},
                          attack="toy", details=[{"iterations": [1, 2]}])
    with pytest.raises(ValueError, match=r"toy: per-sample details \['iterations'\] would replace"):
        result.records()


def test_shards_read_from_another_folder_merge(setup, tmp_path):  # noqa: F811
    """Shards run on machines whose data sit in other folders: same files (SHA-256), other path."""
    run, root = setup
    elsewhere = tmp_path / "elsewhere"
    elsewhere.symlink_to(root, target_is_directory=True)
    shards = [tmp_path / "s1", tmp_path / "s2"]
    run_attack(run, "fgsm", shards[0], {"eps": 0.05}, n=8, batch_size=4, data_dir=root, shard=(1, 2))
    run_attack(run, "fgsm", shards[1], {"eps": 0.05}, n=8, batch_size=4, data_dir=elsewhere, shard=(2, 2))
    merged = run_attack(run, "fgsm", tmp_path / "merged", {"eps": 0.05}, n=8, batch_size=4, data_dir=root, merge=shards)
    assert merged["counts"]["n"] == 8


def test_training_features_keep_the_most_recent_models(monkeypatch):
    """reproduce returns to a model's η after other models' cells: the features stay cached for the
    CACHED_MODELS most recently used models, and the least recently used goes first."""
    from types import SimpleNamespace

    from rcenp.attacks import wb_features

    monkeypatch.setattr(wb_features, "_CACHE", {})
    monkeypatch.setattr(runfiles, "detector_identity", lambda ref: {"arrays_sha256": "same"})
    computed = []

    class Fake:
        info = {"fitted_on": 3}

        def __init__(self, name):
            self.name = name

        def features_and_logits(self, images, progress=None):
            computed.append(self.name)
            return np.full((len(images), 2), len(computed), np.float32), None

    train = SimpleNamespace(images=np.zeros((5, 1)), labels=np.arange(5), identity={"sha256": "t"})

    def features(name):
        return wb_features.training_features(Fake(name), name, train)

    first = features("a")
    assert first[0].shape == (3, 2) and first[1].tolist() == [0, 1, 2]
    for name in ("b", "c", "d", "a", "e"):   # "a" used again before "e" arrives: "b" is the one dropped
        features(name)
    assert computed == ["a", "b", "c", "d", "e"] and features("a")[0][0, 0] == 1.0
    features("b")
    assert computed[-1] == "b" and len(wb_features._CACHE) == wb_features.CACHED_MODELS


def test_the_disk_cache_keeps_the_most_recently_used_passes(tmp_path):
    """Each model and code version added a 15.8 MB file and none went (121 MB after one trial):
    the folder keeps the DISK_CACHED_FILES most recently used, a read counting as a use."""
    import os

    from rcenp.attacks import wb_features

    labels = np.arange(3)
    for i in range(5):
        np.savez(tmp_path / f"{i}.npz", features=np.zeros((3, 2), np.float32), labels=labels)
        os.utime(tmp_path / f"{i}.npz", (1000 + i, 1000 + i))           # 0 the oldest
    (tmp_path / "other.txt").write_text("not a cache file")
    assert wb_features._read_cached(tmp_path / "0.npz", labels) is not None   # 0 used now: the newest
    gone = wb_features.prune_disk_cache(tmp_path, keep=3)
    assert sorted(p.name for p in gone) == ["1.npz", "2.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.npz", "3.npz", "4.npz", "other.txt"]
    assert wb_features.prune_disk_cache(tmp_path / "absent") == []
    assert wb_features.DISK_CACHED_FILES >= wb_features.CACHED_MODELS


def test_training_features_are_kept_on_disk_for_later_processes(trained_here, tmp_path, monkeypatch):
    """A second process (an emptied in-process cache) reads the pass back instead of recomputing it;
    other code, or the cache turned off, computes afresh; a damaged file is recomputed and replaced."""
    from rcenp.attacks import wb_features
    from rcenp.data import load as load_split

    run, root = trained_here
    model = load(run)[0]
    detector = Detector.load(run / "detector", model)
    train = load_split("mnist", "train", root)
    monkeypatch.setenv("RCENP_FEATURE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(wb_features, "_CACHE", {})
    calls = []
    real = Detector.features_and_logits
    monkeypatch.setattr(Detector, "features_and_logits",
                        lambda self, images, **kw: calls.append(len(images)) or real(self, images, **kw))
    first = wb_features.training_features(detector, run, train)
    (path,) = (tmp_path / "cache").glob("*.npz")
    assert path == wb_features.disk_cache_file(detector, train, len(train.labels)) and calls == [len(train.labels)]
    monkeypatch.setattr(wb_features, "_CACHE", {})                    # a later process
    again = wb_features.training_features(detector, run, train)
    assert calls == [len(train.labels)]
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
    path.write_bytes(b"damaged")
    monkeypatch.setattr(wb_features, "_CACHE", {})
    np.testing.assert_array_equal(wb_features.training_features(detector, run, train)[0], first[0])
    assert len(calls) == 2 and np.load(path)["features"].shape == first[0].shape
    monkeypatch.setattr(runfiles, "source_sha256", lambda: "other code")
    assert wb_features.disk_cache_file(detector, train, len(train.labels)) != path
    monkeypatch.setenv("RCENP_FEATURE_CACHE", "off")
    assert wb_features.disk_cache_file(detector, train, len(train.labels)) is None
