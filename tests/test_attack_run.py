"""``rcenp attack`` / ``run_attack``: files, resume after an interruption, shards, bad input."""
import json
import re

import numpy as np
import pytest

from rcenp.attacks import run as attack_run
from rcenp.attacks.audit import quantize
from rcenp.attacks.run import run_attack, shard_indices
from rcenp.cli import main
from rcenp.detect.detector import Detector
from rcenp.models import resnet
from rcenp.objectives import Classifier


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A ResNet-8 run directory with a fitted detector, and an MNIST-format root of 40 test images."""
    from rcenp.train import TrainConfig, save_checkpoint
    from tests.test_train import write_mnist_root

    rng = np.random.default_rng(4)
    root = write_mnist_root(tmp_path_factory.mktemp("data"),
                            lambda split, n: (rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10), (200, 40))
    run = tmp_path_factory.mktemp("run")
    model = Classifier(resnet(8, 1, seed=1), "ce").eval()
    save_checkpoint(run, model, None, TrainConfig(depth=8, objective="ce"), 1, {"note": "test"})
    from rcenp.data import load

    train, test = load("mnist", "train", root), load("mnist", "test", root)
    Detector(model).fit(train.images, train.labels, per_class=20).calibrate(test.images).save(run / "detector")
    return run, root


def read_samples(path):
    return [json.loads(line) for line in path.read_text().splitlines()]



def killed_at_batch(k, real):
    """An ``attack_function`` whose attacks raise KeyboardInterrupt at the k-th batch (a kill)."""
    calls = []

    def flaky(name, detector=None):
        fn = real(name, detector)

        def wrapped(*a, **kw):
            calls.append(1)
            if len(calls) == k:
                raise KeyboardInterrupt
            return fn(*a, **kw)
        return wrapped
    return flaky

def test_files_records_and_summary(setup, tmp_path):
    run, root = setup
    summary = run_attack(run, "bim", tmp_path / "out", {"eps": 0.1, "steps": 2}, n=12, batch_size=5, data_dir=root)
    samples = read_samples(tmp_path / "out" / "samples.jsonl")
    assert [s["index"] for s in samples] == list(range(12))
    with np.load(tmp_path / "out" / "adversarial.npz") as data:
        assert data["adversarial"].shape == data["clean"].shape == (12, 1, 28, 28)
        assert data["adversarial"].dtype == np.float32
        np.testing.assert_array_equal(data["indices"], np.arange(12))
        assert np.abs(data["adversarial"] - data["clean"]).max() <= 0.1 + 2 ** -25
    for s in samples:
        assert s["misclassified"] == (s["adversarial_prediction"] != s["true_label"])
        assert {"clean_log_kd", "adversarial_log_kd", "clean_non_me", "detected", "success_8bit"} <= set(s)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["counts"]["n"] == 12 and written == json.loads(json.dumps(summary))
    assert summary["success_rate"] == np.mean([s["success"] for s in samples])
    pairs = sum(s["clean_prediction"] == s["true_label"] and s["misclassified"] for s in samples)  # the paper's rule
    assert summary["detection"]["log_kd"]["n_pairs"] == pairs
    assert ("auc" in summary["detection"]["log_kd"]) == (pairs > 0)
    assert not (tmp_path / "out" / "partial").exists()


def test_resume_after_an_interruption_gives_the_same_files(setup, tmp_path, monkeypatch):
    run, root = setup
    args = dict(n=14, batch_size=4, data_dir=root)
    run_attack(run, "fgsm", tmp_path / "whole", {"eps": 0.05}, **args)
    real = attack_run.attack_function
    monkeypatch.setattr(attack_run, "attack_function", killed_at_batch(3, real))  # killed in the third batch
    with pytest.raises(KeyboardInterrupt):
        run_attack(run, "fgsm", tmp_path / "resumed", {"eps": 0.05}, **args)
    assert len(list((tmp_path / "resumed" / "partial").glob("*.jsonl"))) == 2
    monkeypatch.setattr(attack_run, "attack_function", real)
    with pytest.raises(ValueError, match="--resume"):
        run_attack(run, "fgsm", tmp_path / "resumed", {"eps": 0.05}, **args)
    with pytest.raises(ValueError, match="other settings"):
        run_attack(run, "fgsm", tmp_path / "resumed", {"eps": 0.06}, resume=True, **args)
    run_attack(run, "fgsm", tmp_path / "resumed", {"eps": 0.05}, resume=True, **args)
    assert "--resume: no run in" not in (tmp_path / "resumed" / "attack.log").read_text()
    run_attack(run, "fgsm", tmp_path / "mistyped", {"eps": 0.05}, resume=True, **args)   # nothing to resume: said
    assert f"--resume: no run in {tmp_path / 'mistyped'} yet, so this starts one" in \
        (tmp_path / "mistyped" / "attack.log").read_text()
    for name in ("samples.jsonl", "adversarial.npz"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    whole, resumed = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("whole", "resumed"))
    whole.pop("timing"), resumed.pop("timing")
    assert whole == resumed


def test_shards_concatenate_to_the_single_run(setup, tmp_path):
    run, root = setup
    args = dict(n=15, batch_size=4, data_dir=root)
    run_attack(run, "ilcm", tmp_path / "single", {"eps": 0.1, "steps": 2}, **args)
    parts = []
    for k in (1, 2, 3):
        run_attack(run, "ilcm", tmp_path / f"shard{k}", {"eps": 0.1, "steps": 2}, shard=(k, 3), **args)
        parts.append((tmp_path / f"shard{k}" / "samples.jsonl").read_text())
    assert "".join(parts) == (tmp_path / "single" / "samples.jsonl").read_text()
    # --merge writes the single run's files from the shards
    shards = [str(tmp_path / f"shard{k}") for k in (3, 1, 2)]  # any order
    merged = run_attack(run, "ilcm", tmp_path / "merged", {"eps": 0.1, "steps": 2}, merge=shards, **args)
    single = json.loads((tmp_path / "single" / "summary.json").read_text())
    for name in ("samples.jsonl", "run.json"):
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "single" / name).read_text()
    with np.load(tmp_path / "merged" / "adversarial.npz") as a, np.load(tmp_path / "single" / "adversarial.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert merged == json.loads((tmp_path / "merged" / "summary.json").read_text())
    different = {"timing", "code", "software", "merged_from"}
    assert {k: v for k, v in merged.items() if k not in different} == {k: v for k, v in single.items() if k not in different}
    assert [m["shard"] for m in merged["merged_from"]] == [[1, 3], [2, 3], [3, 3]]
    assert merged["timing"]["images_this_run"] == 15


@pytest.mark.parametrize("shards, message", [
    (["shard1", "shard2"], "the shards given are 1/3, 2/3"),
    (["shard1", "shard1", "shard2", "shard3"], "are both shard 1/3"),
    (["shard1", "shard2", "other"], "other: a shard of another run (its options.eps differ)"),
    (["shard1", "shard2", "nothing"], "nothing: not a finished attack run"),
])
def test_merge_refuses_what_is_not_the_whole_run(setup, tmp_path, shards, message):
    run, root = setup
    args = dict(n=15, batch_size=4, data_dir=root)
    for k in (1, 2, 3):
        run_attack(run, "fgsm", tmp_path / f"shard{k}", {"eps": 0.1}, shard=(k, 3), **args)
    run_attack(run, "fgsm", tmp_path / "other", {"eps": 0.2}, shard=(3, 3), **args)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_attack(run, "fgsm", tmp_path / "merged", {"eps": 0.1}, merge=[str(tmp_path / s) for s in shards], **args)
    assert not (tmp_path / "merged").exists()


def test_shard_indices_are_contiguous_batch_aligned_and_cover_everything():
    for n, batch, count in [(15, 4, 3), (1000, 100, 7), (5, 10, 1), (9, 2, 5), (10, 1, 10)]:
        pieces = [shard_indices(n, batch, (k, count)) for k in range(1, count + 1)]
        np.testing.assert_array_equal(np.concatenate(pieces), np.arange(n))
        assert all(len(p) and p[0] % batch == 0 for p in pieces)
    with pytest.raises(ValueError, match="got 4/3"):
        shard_indices(10, 2, (4, 3))
    for n, batch, count in [(5, 10, 2), (9, 2, 9), (300, 100, 5)]:  # fewer batches than shards: no empty shard
        for k in range(1, count + 1):
            with pytest.raises(ValueError, match=f"{count} shards need at least {count} batches"):
                shard_indices(n, batch, (k, count))


def test_quantize_rounds_to_the_grid_inside_the_box():
    from rcenp.data.images import quantize16

    x = np.array([-0.5, 0.5, 0.0, 0.1234567], np.float32)
    q8 = quantize(x, 256)
    np.testing.assert_allclose((q8 + 0.5) * 255, np.round((x.astype(np.float64) + 0.5) * 255), atol=1e-4)
    assert q8.min() >= -0.5 and q8.max() <= 0.5
    assert np.abs(quantize(x, 65536) - x).max() <= 0.5 / 65535 + 1e-7
    np.testing.assert_array_equal(quantize(x, 65536), quantize16(x))   # what a 16-bit PNG holds


@pytest.mark.parametrize("argv, message", [
    (["attack", "no-such-model", "--attack", "fgsm", "--eps", "0.1"], "neither a run directory"),
    (["attack", "RUN", "--attack", "fgsm", "--eps", "0.1", "--n", "41", "--data-dir", "ROOT"], "--n 41"),
    (["attack", "RUN", "--attack", "bim", "--eps", "0.1", "--n", "4", "--data-dir", "ROOT", "--out", "SAME"], "already"),
    (["attack", "RUN", "--attack", "fgsm", "--eps", "0.1", "--n", "10", "--shard", "1/2", "--data-dir", "ROOT"],
     "2 shards need at least 2 batches"),
    (["attack", "RUN", "--attack", "cw", "--eps", "0.1", "--n", "2", "--data-dir", "ROOT"],
     "--eps does not apply to --attack cw"),
    (["attack", "RUN", "--attack", "bim", "--eps", "0.1", "--kappa", "3", "--data-dir", "ROOT"],
     "--kappa does not apply to --attack bim"),
    (["attack", "RUN", "--attack", "cw", "--anchor", "stage1", "--data-dir", "ROOT"], "--anchor does not apply"),
    (["attack", "RUN", "--attack", "cw-hc", "--kappa", "3", "--data-dir", "ROOT"],
     "--attack cw-hc is C&W with kappa 10; for kappa 3 use --attack cw --kappa 3"),
])
def test_command_errors_are_one_line(setup, tmp_path, capsys, argv, message):
    run, root = setup
    argv = [str(run) if a == "RUN" else str(root) if a == "ROOT" else str(tmp_path / "same") if a == "SAME" else a
            for a in argv]
    if "SAME" in " ".join(argv) or str(tmp_path / "same") in argv:
        assert main(argv) == 0
        capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rcenp attack: error:") and message in err[0]


def test_a_setting_the_attack_refuses_leaves_no_run_behind(setup, tmp_path, capsys):
    """kappa < 0 is refused by the attack at its first batch (the command line refuses it earlier, so
    it is given through run_attack): the out folder is left as it was, so the corrected command runs
    there without --resume; a folder the user made beforehand stays."""
    from rcenp.attacks.run import run_attack

    run, root = setup
    base = ["attack", str(run), "--attack", "cw", "--n", "2", "--binary-steps", "1", "--max-iterations", "2",
            "--data-dir", str(root)]
    for out in (tmp_path / "new" / "cw", tmp_path / "mine"):
        (tmp_path / "mine").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match="kappa"):
            run_attack(str(run), "cw", out, {"targets": "random", "learning_rate": 0.01, "seed": 0, "kappa": -1.0,
                                             "binary_steps": 1, "max_iterations": 2}, n=2, data_dir=str(root))
        assert not out.exists() if out.name == "cw" else not any(out.iterdir())
        assert main(base + ["--out", str(out)]) == 0
        assert (out / "summary.json").is_file()
    capsys.readouterr()


@pytest.mark.parametrize("counts, message", [
    (dict(n=2.5), r"n \(--n\) must be a positive integer, got 2.5"),
    (dict(n=True), r"n \(--n\) must be a real number \(not a bool\)"),
    (dict(n=0), r"n \(--n\) must be a positive integer, got 0"),
    (dict(n=2, batch_size=0), r"batch_size \(--batch-size\) must be a positive integer, got 0"),
])
def test_run_attack_checks_its_counts_before_making_a_folder(setup, tmp_path, counts, message):
    """The re-trial: n=2.5 began a run (run.json, partial/) and then failed on a format code, so the
    retry was refused as 'already holds an attack run'; n=True ran one image."""
    run, root = setup
    with pytest.raises(ValueError, match=message):
        run_attack(str(run), "fgsm", tmp_path / "out", {"eps": 0.1}, data_dir=str(root), **counts)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("eps", ["0", "-0.1", "1.5", "x"])
def test_eps_out_of_range_is_refused_by_the_parser(setup, capsys, eps):
    run, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        main(["attack", str(run), "--attack", "fgsm", "--eps", eps])
    assert exit_info.value.code == 2
    assert "--eps" in capsys.readouterr().err


def test_command_prints_a_table_or_json(setup, tmp_path, capsys):
    run, root = setup
    assert main(["attack", str(run), "--attack", "fgsm", "--eps", "0.1", "--n", "6", "--data-dir", str(root),
                 "--out", str(tmp_path / "a")]) == 0
    table = capsys.readouterr().out
    assert "accuracy under attack" in table
    assert main(["attack", str(run), "--attack", "fgsm", "--eps", "0.1", "--n", "6", "--data-dir", str(root),
                 "--out", str(tmp_path / "a"), "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert f"{summary['accuracy_under_attack']:.1%}" in table
    assert summary == json.loads((tmp_path / "a" / "summary.json").read_text())  # finished: not recomputed


def test_png_option_writes_16_bit_images_that_read_back_on_the_grid(setup, tmp_path):
    from rcenp.data.images import quantize16, read_image

    run, root = setup
    summary = run_attack(run, "fgsm", tmp_path / "out", {"eps": 0.1}, n=5, batch_size=5, data_dir=root,
                         png_dir=tmp_path / "png")
    with np.load(tmp_path / "out" / "adversarial.npz") as data:
        adversarial = data["adversarial"]
    for i in range(5):
        image = read_image(tmp_path / "png" / f"{i:05d}.png", 1, (28, 28))
        np.testing.assert_array_equal(image, quantize16(adversarial[i]))
        assert np.abs(image - adversarial[i]).max() <= 0.5 / 65535 + 2 ** -25
    assert "success_rate_16bit" in summary
    assert all("success_16bit" in s for s in read_samples(tmp_path / "out" / "samples.jsonl"))


def test_cw_reports_progress_within_a_batch(setup, tmp_path, monkeypatch):
    from rcenp.attacks import cw

    run, root = setup
    monkeypatch.setattr(cw, "PROGRESS_SECONDS", 0.0)
    run_attack(run, "cw", tmp_path / "cw", {"binary_steps": 1, "max_iterations": 3}, n=4, batch_size=4, data_dir=root)
    log = (tmp_path / "cw" / "attack.log").read_text()
    assert "batch 1/1: C&W: 0/4 images finished; 4 in work, binary step 1-1 of 1, iteration up to 0 of 3" in log
    summary = json.loads((tmp_path / "cw" / "summary.json").read_text())
    assert summary["settings"]["options"] == {"binary_steps": 1, "max_iterations": 3}   # as asked
    effective = summary["effective_options"]                                             # and what ran
    assert effective["kappa"] == 0.0 and effective["initial_const"] == 1.0 and effective["binary_steps"] == 1
    assert effective["targets"] == "random" and effective["learning_rate"] == 0.01
