"""Black-box transfer (paper §4.5): ``run_attack(target, ..., {"substitute": SUB})`` crafts on the
substitute and audits every figure on the target."""
import json

import numpy as np
import pytest

from rcenp.attacks.run import run_attack
from rcenp.backend import as_numpy
from rcenp.cli import main
from rcenp.detect.detector import Detector
from rcenp.models import resnet
from rcenp.models.registry import load
from rcenp.objectives import Classifier

TINY_WB = {"targets": "random", "learning_rate": 0.05, "seed": 0, "attacker_points": 5,
           "stage1": {"binary_steps": 1, "max_iterations": 4}, "stage2": {"binary_steps": 1, "max_iterations": 4}}


def _run_dir(base, objective, seed, train, test):
    from rcenp.train import TrainConfig, save_checkpoint

    model = Classifier(resnet(8, 1, seed=seed), objective).eval()
    save_checkpoint(base, model, None, TrainConfig(depth=8, objective=objective), 1, {"note": "test"})
    Detector(model).fit(train.images, train.labels, per_class=20).calibrate(test.images).save(base / "detector")
    return base


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A target (ResNet-8 CE) and a substitute (ResNet-8 RCE, other weights), each with a detector,
    and an MNIST-format root of 40 test images."""
    from rcenp.data import load as load_split
    from tests.test_train import write_mnist_root

    rng = np.random.default_rng(5)
    root = write_mnist_root(tmp_path_factory.mktemp("data"),
                            lambda split, n: (rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10), (200, 40))
    train, test = load_split("mnist", "train", root), load_split("mnist", "test", root)
    target = _run_dir(tmp_path_factory.mktemp("target"), "ce", 1, train, test)
    substitute = _run_dir(tmp_path_factory.mktemp("substitute"), "rce", 2, train, test)
    return target, substitute, root


def read_samples(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_crafted_on_the_substitute_audited_on_the_target(runs, tmp_path):
    target, substitute, root = runs
    summary = run_attack(target, "cw-wb", tmp_path / "bb", dict(TINY_WB, substitute=str(substitute)),
                         n=8, batch_size=4, data_dir=root)
    samples = read_samples(tmp_path / "bb" / "samples.jsonl")
    with np.load(tmp_path / "bb" / "adversarial.npz") as data:
        clean, adversarial, labels = data["clean"], data["adversarial"], data["labels"]
    target_model, sub_model = load(target)[0], load(substitute)[0]
    def predicted(model, images):  # under RCENP_DEVICE=cuda on the GPU, and CuPy refuses implicit conversion
        return as_numpy(model.predict(images))

    np.testing.assert_array_equal([s["adversarial_prediction"] for s in samples], predicted(target_model, adversarial))
    np.testing.assert_array_equal([s["clean_prediction"] for s in samples], predicted(target_model, clean))
    np.testing.assert_array_equal([s["substitute_prediction"] for s in samples], predicted(sub_model, adversarial))
    np.testing.assert_array_equal([s["substitute_clean_prediction"] for s in samples], predicted(sub_model, clean))
    detector = Detector.load(target / "detector", target_model)
    np.testing.assert_allclose([s["adversarial_log_kd"] for s in samples], detector.scores(adversarial)["kd"],
                               rtol=1e-6)
    for s, y in zip(samples, labels):
        assert s["success"] == s["misclassified"] == (s["adversarial_prediction"] != y)
        assert s["target_hit"] == (s["adversarial_prediction"] == s["target"])
        assert s["target"] != y and "f2" in s        # the substitute's cw-wb audit is kept
    transfer = summary["transfer"]
    crafted = np.array([s["substitute_success"] for s in samples])
    eligible = crafted & np.array([s["clean_prediction"] == s["true_label"] for s in samples])
    assert transfer["substitute_success_rate"] == crafted.mean()
    assert transfer["n_eligible"] == eligible.sum()
    if eligible.any():
        misclassified = np.array([s["misclassified"] for s in samples])
        assert transfer["transfer_rate"] == misclassified[eligible].mean()
    assert summary["settings"]["options"]["substitute"] == str(substitute)


def test_the_target_as_its_own_substitute_crafts_the_white_box_images(runs, tmp_path):
    target, _, root = runs
    args = dict(n=6, batch_size=3, data_dir=root)
    run_attack(target, "fgsm", tmp_path / "wb", {"eps": 0.1}, **args)
    run_attack(target, "fgsm", tmp_path / "self", {"eps": 0.1, "substitute": str(target)}, **args)
    with np.load(tmp_path / "wb" / "adversarial.npz") as a, np.load(tmp_path / "self" / "adversarial.npz") as b:
        np.testing.assert_array_equal(a["adversarial"], b["adversarial"])
    wb, own = read_samples(tmp_path / "wb" / "samples.jsonl"), read_samples(tmp_path / "self" / "samples.jsonl")
    for w, s in zip(wb, own):
        assert w["adversarial_prediction"] == s["adversarial_prediction"] == s["substitute_prediction"]
        assert w["adversarial_log_kd"] == s["adversarial_log_kd"]


@pytest.mark.parametrize("substitute, message", [("CIFAR", "one data set"), ("no-such-model", "neither a run directory"),
                                                 ("TARGET", "is the attacked model itself")])
def test_a_bad_substitute_is_one_error_line(runs, tmp_path, capsys, substitute, message):
    """(The library takes the target as its own substitute, above; the command says it is no transfer.)"""
    from rcenp.train import TrainConfig, save_checkpoint

    target, _, root = runs
    if substitute == "TARGET":
        substitute = target
    if substitute == "CIFAR":
        substitute = tmp_path / "cifar"
        save_checkpoint(substitute, Classifier(resnet(8, 3, seed=1), "ce").eval(), None,
                        TrainConfig(dataset="cifar10", depth=8, objective="ce"), 1, {"note": "test"})
    assert main(["attack", str(target), "--attack", "fgsm", "--eps", "0.1", "--n", "2", "--data-dir", str(root),
                 "--substitute", str(substitute), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_command_line_reports_the_transfer_rate(runs, tmp_path, capsys):
    target, substitute, root = runs
    assert main(["attack", str(target), "--attack", "fgsm", "--eps", "0.2", "--n", "4", "--data-dir", str(root),
                 "--substitute", str(substitute), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    transfer = summary["transfer"]
    assert f"on {target} (crafted on {substitute}): 4 images" in out
    rate = "n/a" if transfer["transfer_rate"] is None else f"{transfer['transfer_rate']:.1%}"
    assert (f"transfer from {substitute}: crafted successfully there for {transfer['substitute_success_rate']:.1%} "
            f"of the images; {target} misclassifies {rate} of the {transfer['n_eligible']} among them") in out


@pytest.fixture(scope="module")
def white_box(runs, tmp_path_factory):
    """The substitute's own cw-wb run over the first 8 test images, in batches of 4."""
    _, substitute, root = runs
    folder = tmp_path_factory.mktemp("wb") / "sub-cw-wb"
    run_attack(substitute, "cw-wb", folder, TINY_WB, n=8, batch_size=4, data_dir=root)
    return folder


def test_a_transfer_from_the_substitutes_finished_run_writes_what_crafting_writes(runs, white_box, tmp_path):
    import gzip
    import shutil

    target, substitute, root = runs
    options, args = dict(TINY_WB, substitute=str(substitute)), dict(n=8, batch_size=4, data_dir=root)
    crafting = run_attack(target, "cw-wb", tmp_path / "crafting", options, **args)
    published = tmp_path / "published"  # as results/ keeps a run: samples gzipped, no run.json
    shutil.copytree(white_box, published)
    (published / "samples.jsonl.gz").write_bytes(gzip.compress((published / "samples.jsonl").read_bytes()))
    (published / "samples.jsonl").unlink()
    (published / "run.json").unlink()
    for source in (white_box, published):
        out = tmp_path / f"from-{source.name}"
        reused = run_attack(target, "cw-wb", out, options, crafted=source, **args)
        assert (out / "samples.jsonl").read_text() == (tmp_path / "crafting" / "samples.jsonl").read_text()
        with np.load(out / "adversarial.npz") as a, np.load(tmp_path / "crafting" / "adversarial.npz") as b:
            assert all(np.array_equal(a[k], b[k]) for k in ("clean", "adversarial", "labels", "indices"))
        for key in ("counts", "success_rate", "detection", "transfer"):
            assert reused[key] == crafting[key], key
        record = reused["settings"]["crafted"]
        assert record["path"] == str(source.resolve()) and set(record["sha256"]) == \
            {"adversarial.npz", "samples.jsonl" if source == white_box else "samples.jsonl.gz"}
        assert record["code"] == json.loads((white_box / "summary.json").read_text())["code"]
        log = (out / "attack.log").read_text()
        assert "crafted: the adversarial images of" in log and "η for C&W-wb" not in log  # no attack, no η pass


@pytest.mark.parametrize("change, message", [
    ({"n": 4}, "n: 8 there, 4 now"),
    ({"batch_size": 2}, "batch_size: 4 there, 2 now"),
    ({"options": dict(TINY_WB, seed=1)}, "options.seed: 0 there, 1 now"),
    ({"target_as_substitute": True}, "not on the substitute"),
])
def test_crafted_images_from_another_run_are_refused(runs, white_box, tmp_path, capsys, change, message):
    target, substitute, root = runs
    argv = ["attack", str(target), "--attack", "cw-wb", "--data-dir", str(root), "--learning-rate", "0.05",
            "--stage1-binary-steps", "1", "--stage1-iterations", "4", "--binary-steps", "1", "--max-iterations", "4",
            "--n", str(change.get("n", 8)), "--batch-size", str(change.get("batch_size", 4)),
            "--seed", str(change.get("options", {}).get("seed", 0)), "--out", str(tmp_path / "x"),
            "--substitute", str(target if change.get("target_as_substitute") else substitute),
            "--crafted-from", str(white_box)]
    # the library call with TINY_WB's attacker_points (no flag for it) is refused the same way
    options = dict(change.get("options", TINY_WB), substitute=str(target if change.get("target_as_substitute")
                                                                   else substitute))
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        run_attack(target, "cw-wb", tmp_path / "lib", options, n=change.get("n", 8),
                   batch_size=change.get("batch_size", 4), data_dir=root, crafted=white_box)
    assert not (tmp_path / "lib").exists()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # (the command refuses the target as its own substitute before it reads the crafted run)
    expected = "is the attacked model itself" if change.get("target_as_substitute") else "own cw-wb run of these settings"
    assert len(err) == 1 and "not" in err[0] and expected in err[0]
    assert not (tmp_path / "x").exists()


def test_crafted_from_without_a_substitute_is_one_error_line(runs, white_box, tmp_path, capsys):
    target, _, root = runs
    assert main(["attack", str(target), "--attack", "cw-wb", "--data-dir", str(root), "--n", "8",
                 "--crafted-from", str(white_box), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "name its --substitute" in err[0]


def test_a_run_crafted_on_the_substitute_at_another_training_step_is_refused(runs, white_box):
    from rcenp.attacks import transfer

    _, substitute, _ = runs
    crafted = transfer.CraftedRun(white_box).settings
    asked = {**crafted, "model": "the target", "options": dict(crafted["options"], substitute=str(substitute)),
             "substitute_detector": crafted["detector"]}
    assert transfer.mismatch(crafted, asked, substitute_step=crafted["model_step"]) is None
    assert transfer.mismatch(crafted, asked) is None  # a step not known is not compared
    assert transfer.mismatch(crafted, asked, substitute_step=crafted["model_step"] + 1) == (
        f"crafted on {substitute} at training step {crafted['model_step']}, which is at "
        f"{crafted['model_step'] + 1} now")
    assert "eta" in transfer.mismatch(crafted, dict(asked, eta={"rule": "approximation from the detector's "
                                                               "kernel points", "why": "no training images"}))


def _copy(source, folder):
    import shutil

    shutil.copytree(source, folder)
    return folder


@pytest.mark.parametrize("damage, message", [
    ("swap", "the L2 distortions in samples.jsonl are not those of adversarial.npz's images"),
    ("truncate", "samples.jsonl has 7 records for the 8 images of adversarial.npz"),
    ("reorder", "samples.jsonl's records are not adversarial.npz's images, in its order"),
    ("no-samples", "no samples.jsonl (or samples.jsonl.gz)"),
    ("unfinished", "an unfinished attack run (no summary.json): finish it first"),
    ("empty", "not a finished attack run (no summary.json)"),
])
def test_a_damaged_or_unfinished_run_is_refused_before_anything_is_written(runs, white_box, tmp_path, capsys,
                                                                           damage, message):
    target, substitute, root = runs
    folder = _copy(white_box, tmp_path / "dir") if damage != "empty" else tmp_path / "dir"
    folder.mkdir(exist_ok=True)
    samples = folder / "samples.jsonl"
    if damage == "swap":  # another run's images under these records
        with np.load(folder / "adversarial.npz") as data:
            arrays = dict(data)
        arrays["adversarial"] = np.clip(arrays["adversarial"] + np.float32(0.01), -0.5, 0.5)
        np.savez(folder / "adversarial.npz", **arrays)
    elif damage == "truncate":
        samples.write_text("".join(samples.read_text().splitlines(keepends=True)[:-1]))
    elif damage == "reorder":
        lines = samples.read_text().splitlines(keepends=True)
        samples.write_text("".join(lines[1:] + lines[:1]))
    elif damage == "no-samples":
        samples.unlink()
    elif damage == "unfinished":
        (folder / "summary.json").unlink()
    argv = ["attack", str(target), "--attack", "fgsm", "--eps", "0.1", "--n", "8", "--batch-size", "4",
            "--data-dir", str(root), "--substitute", str(substitute), "--crafted-from", str(folder),
            "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()


def test_a_run_of_a_substitute_whose_weights_changed_since_is_refused(runs, tmp_path):
    """Same path, same training step, a detector without model_sha256: only the images tell."""
    from rcenp.train import TrainConfig, save_checkpoint

    target, substitute, root = runs
    copy = _copy(substitute, tmp_path / "sub")
    options = {"binary_steps": 1, "max_iterations": 6, "learning_rate": 0.05}
    run_attack(copy, "cw", tmp_path / "wb", options, n=8, batch_size=4, data_dir=root)
    model = load(copy)[0]
    for param in model.network.parameters():
        param.data[...] *= 1.01
    save_checkpoint(copy, model, None, TrainConfig(depth=8, objective="rce"), 1, {"note": "test"})
    with pytest.raises(ValueError, match="margins on these images differ from the recorded ones"):
        run_attack(target, "cw", tmp_path / "bb", dict(options, substitute=str(copy)), n=8, batch_size=4,
                   data_dir=root, crafted=tmp_path / "wb")
    assert not (tmp_path / "bb").exists()


def test_a_transfer_run_is_not_a_source_and_jobs_refuse_before_starting_shards(runs, white_box, tmp_path, capsys):
    target, substitute, root = runs
    options, args = dict(TINY_WB, substitute=str(substitute)), dict(n=8, batch_size=4, data_dir=root)
    run_attack(target, "cw-wb", tmp_path / "transfer", options, crafted=white_box, **args)
    with pytest.raises(ValueError, match=f"a transfer run \\(crafted on {substitute}, scored on {target}\\)"):
        run_attack(target, "cw-wb", tmp_path / "again", options, crafted=tmp_path / "transfer", **args)
    argv = ["attack", str(target), "--attack", "fgsm", "--eps", "0.1", "--n", "8", "--batch-size", "4", "--jobs", "2",
            "--data-dir", str(root), "--substitute", str(substitute), "--crafted-from", str(white_box),
            "--out", str(tmp_path / "jobs")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'attack: "cw-wb" there, "fgsm" now' in err[0]
    assert not (tmp_path / "jobs" / "shards").exists()


def test_the_source_is_recorded_by_absolute_path_so_a_resume_may_name_it_otherwise(runs, white_box, tmp_path,
                                                                                  monkeypatch):
    target, substitute, root = runs
    options, args = dict(TINY_WB, substitute=str(substitute)), dict(n=8, batch_size=4, data_dir=root)
    monkeypatch.chdir(white_box.parent)
    first = run_attack(target, "cw-wb", tmp_path / "bb", options, crafted=white_box.name, **args)
    again = run_attack(target, "cw-wb", tmp_path / "bb", options, crafted=f"./{white_box.name}", resume=True, **args)
    assert first["settings"]["crafted"]["path"] == str(white_box) and again == first
    assert run_attack(target, "cw-wb", tmp_path / "bb", options, resume=True, **args) == first  # finished: no source
