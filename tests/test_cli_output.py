"""What `rcenp demo` and `rcenp eval` print: tables for people, today's JSON lines with --json."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from rcenp import demo
from rcenp.cli import main
from rcenp.data import DataError, find_test_split
from rcenp.models import registry
from rcenp.tables import format_table
from tests.test_train import write_mnist_root

TODAYS_KEYS = ["model", "objective", "test_error_percent", "errors", "n", "trained_steps", "detector",
               "clean_score_quartiles"]
FAKE_CIFAR = "cifar10subset-resnet32-ce"
RECORDS = [  # what evaluate_model returns, for the tests that need no real evaluation
    {"model": "mnist-resnet32-ce", "objective": "ce", "test_error_percent": 0.41, "errors": 41, "n": 10000,
     "trained_steps": 20000, "detector": {"metric": "kd", "threshold": -3.4267702, "clean_rejected_percent": 5.14},
     "clean_score_quartiles": {"confidence": [1.0, 1.0, 1.0], "non_me": [0.844, 1.2501, 1.527],
                               "kd": [-1.868, -1.428, -1.147]}},
    {"model": "mnist-resnet32-rce", "objective": "rce", "test_error_percent": 0.33, "errors": 33, "n": 10000,
     "trained_steps": 20000, "detector": {"metric": "kd", "threshold": -2.867641, "clean_rejected_percent": 5.68},
     "clean_score_quartiles": {"confidence": [0.9879, 0.992, 0.9946], "non_me": [2.1972, 2.1972, 2.1972],
                               "kd": [-1.261, -0.906, -0.736]}},
]


@pytest.fixture
def no_data_root(monkeypatch, tmp_path):
    """A fresh machine: no RCENP_DATA, an empty per-user cache and no Debian Fashion-MNIST."""
    from rcenp.data import datasets

    monkeypatch.delenv("RCENP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-fashion-mnist")


@pytest.fixture
def with_cifar_model(monkeypatch):
    """The shipped models plus a CIFAR-10 one (its manifest's data set: cifar10)."""
    shipped, dataset_of = registry.shipped_models(), demo.model_dataset
    monkeypatch.setattr(registry, "shipped_models", lambda: shipped + [FAKE_CIFAR])
    monkeypatch.setattr(demo, "model_dataset", lambda name: "cifar10" if name == FAKE_CIFAR else dataset_of(name))


def test_format_table_pads_and_aligns():
    text = format_table(["model", "error", "n"], [["a", "0.33%", 10], ["long-name", "12.50%", None]], align="lrr")
    assert text.splitlines() == ["model       error   n",
                                 "---------  ------  --",
                                 "a           0.33%  10",
                                 "long-name  12.50%"]
    with pytest.raises(ValueError, match="2 cells under 3 headers"):
        format_table(["a", "b", "c"], [[1, 2]])
    with pytest.raises(ValueError, match="align"):
        format_table(["a"], [], align="c")


def test_demo_on_the_sample_prints_todays_json_and_skips_what_has_no_data(no_data_root, with_cifar_model, capsys):
    """The real thing, once: every shipped MNIST model runs on the embedded sample; the others
    (Fashion-MNIST, a CIFAR-10 one) are skipped with their reason; the table built from the JSON
    records shows the same numbers."""
    assert main(["demo", "--json"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    records = [r for r in lines if "kind" not in r]
    attacked = [r for r in lines if r.get("kind") == "attack"]
    assert [r["model"] for r in attacked] == [r["model"] for r in records if r["model"].startswith("mnist-")]
    for r in attacked:    # BIM on 200 correctly classified images: the paper's point, with numbers
        assert list(r) == list(demo.ATTACK_KEYS) and r["n"] == 200 and r["eps"] == 0.1
        assert 0 <= r["accuracy_under_attack"] <= r["correct_or_not_sure"] <= 1
        assert r["n_pairs"] == round(200 * (1 - r["accuracy_under_attack"])) and 0.5 < r["auc_log_kd"] <= 1
    table = demo.attack_table(attacked)
    for r, row in zip(attacked, table.splitlines()[2:]):
        assert row.startswith(r["model"]) and f"{100 * r['correct_or_not_sure']:.1f}%" in row
    mnist = [name for name in registry.shipped_models() if demo.model_dataset(name) == "mnist"]
    assert [r["model"] for r in records] == mnist  # the others have no data on a fresh machine, and say so
    for name in set(registry.shipped_models()) - set(mnist) - {FAKE_CIFAR}:
        assert f"{name}: skipped, no {demo.model_dataset(name)} test data" in captured.err
    for r in records:
        assert list(r) == TODAYS_KEYS and r["n"] == 1000
        assert r["test_error_percent"] == pytest.approx(100 * r["errors"] / 1000)
        assert set(r["clean_score_quartiles"]) == {"confidence", "non_me", "kd"}
    assert "test images: mnist/test: 1,000 images" in captured.err
    assert f"{FAKE_CIFAR}: skipped, no cifar10 test data" in captured.err and "--data-dir" in captured.err
    skips = {r["model"]: r["reason"] for r in lines if r.get("kind") == "skipped"}   # machines see them too
    assert set(skips) == set(registry.shipped_models()) - set(mnist) | {FAKE_CIFAR}
    assert all(f"{name}: skipped, {why}" in captured.err for name, why in skips.items())
    table = demo.demo_table(records)
    for r, row in zip(records, table.splitlines()[2:]):
        assert row.startswith(r["model"]) and f"{r['errors']} / 1,000" in row
        assert f"{100 * r['errors'] / r['n']:.2f}%" in row and f"{r['detector']['threshold']:.3f}" in row


def test_the_demos_one_pass_test_error_equals_evaluates():
    """With a detector the demo takes the predictions from the detector's scores (one forward pass
    instead of two): the same errors as ``rcenp.train.evaluate``, on images where they differ."""
    from rcenp.data import load_sample
    from rcenp.models import load as load_model
    from rcenp.train import evaluate

    sample = load_sample()
    model, _ = load_model("mnist-resnet32-ce", "cpu")
    wrong = np.flatnonzero(model.predict(sample.images) != sample.labels)
    index = np.concatenate([wrong, np.arange(200)])  # ~10 of them rejected: NOT SURE is no error
    test = SimpleNamespace(images=sample.images[index], labels=sample.labels[index])
    record = demo.evaluate_model("mnist-resnet32-ce", test, "cpu")
    expected = evaluate(model, test.images, test.labels)
    assert "detector" in record and record["errors"] == expected["errors"] >= len(wrong) > 0
    heard = []   # with progress: batch by batch, the same batches, so the same result
    assert evaluate(model, test.images, test.labels, 100, progress=lambda *a: heard.append(a)) == expected
    assert heard == [(min(k, len(index)), len(index)) for k in range(100, len(index) + 100, 100)]
    assert record["n"] == len(index) and record["test_error_percent"] == round(100 * expected["test_error"], 3)


def test_demo_table_and_json_agree(no_data_root, with_cifar_model, monkeypatch, capsys):
    """Both modes print the same evaluation records (here canned, so the test is quick)."""
    canned = {r["model"]: r for r in RECORDS}
    monkeypatch.setattr(registry, "shipped_models", lambda: list(canned) + [FAKE_CIFAR])
    monkeypatch.setattr(demo, "evaluate_model", lambda name, test, device=None, err=None: canned[name])
    attacked = {r["model"]: {"kind": "attack", "model": r["model"], "attack": "bim", "eps": 0.1, "steps": 10, "n": 200,
                             "accuracy_under_attack": 0.12, "correct_or_not_sure": 0.79, "auc_log_kd": 0.949,
                             "n_pairs": 176} for r in RECORDS}
    monkeypatch.setattr(demo, "attack_showcase", lambda name, test, device=None: attacked[name])
    assert main(["demo", "--json"]) == 0
    as_json = capsys.readouterr()
    skip = {"kind": "skipped", "model": FAKE_CIFAR}
    assert [{k: v for k, v in json.loads(line).items() if k != "reason"} for line in as_json.out.splitlines()] == \
        RECORDS + [skip] + list(attacked.values())
    assert main(["demo"]) == 0
    human = capsys.readouterr()
    assert demo.demo_table(RECORDS) in human.out and demo.scores_table(RECORDS) in human.out
    assert demo.attack_table(list(attacked.values())) in human.out
    assert "mnist-resnet32-ce                   12.0%                79.0%  0.949 (n = 176)" in human.out
    lines = human.out.splitlines()
    assert lines[0] == "test images: mnist/test: 1,000 images, SUBSET (embedded sample: first 1,000 MNIST test images)"
    rce = next(line for line in lines if line.startswith("mnist-resnet32-rce "))
    assert rce.split() == ["mnist-resnet32-rce", "rce", "0.33%", "33", "/", "10,000", "20,000", "kd", ">", "-2.868",
                           "5.68%"]
    scores = [line for line in lines if line.startswith("mnist-resnet32-rce ")][-1]   # results, attack, scores
    assert "0.9920 (0.9879 to 0.9946)" in scores and "-0.906 (-1.261 to -0.736)" in scores
    skip = f"{FAKE_CIFAR}: skipped, no cifar10 test data"
    assert lines[-1].startswith(skip) and as_json.err.splitlines()[-1] == lines[-1]
    assert "{" not in human.out


def test_test_sets_come_from_the_data_root_with_the_mnist_sample_as_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("RCENP_DATA", raising=False)
    test, why = find_test_split("mnist", tmp_path)
    assert len(test) == 1000 and "using the sample" in why and str(tmp_path / "mnist") in why
    test, why = find_test_split("cifar10", tmp_path)
    assert test is None and str(tmp_path / "cifar-10-batches-py") in why and "--data-dir" in why
    with pytest.raises(DataError):    # a command pointed at a folder does not quietly use the sample
        find_test_split("mnist", tmp_path, strict=True)


def test_eval_prints_a_table_or_todays_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tiny_root = write_mnist_root(tmp_path, lambda split, n: (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)))
    run = str(tmp_path / "run")
    assert main(["train", "--dataset", "mnist", "--objective", "ce", "--preset", "quick", "--depth", "8", "--steps",
                 "2", "--batch-size", "16", "--data-dir", str(tiny_root), "--out", run]) == 0
    capsys.readouterr()
    assert main(["eval", run, "--data-dir", str(tiny_root), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert f"test images 64/64  evaluating {run}  ETA 0:00:00" in captured.err   # progress, beside the result
    assert list(result) == ["test_error", "n_test", "errors", "model", "test_set"]
    assert main(["eval", run, "--data-dir", str(tiny_root)]) == 0
    text = capsys.readouterr().out
    assert text == demo.eval_table(result) + "\n"
    assert f"{100 * result['test_error']:.2f}%" in text and f"{result['errors']} / 64" in text
    assert text.startswith(f"test images: {result['test_set']}\n")
    assert "unfinished" not in captured.err
    # a run stopped before its last step says so (on stderr: stdout stays the table or today's JSON)
    cut = str(tmp_path / "cut")
    assert main(["train", "--dataset", "mnist", "--objective", "ce", "--preset", "quick", "--depth", "8", "--steps",
                 "2", "--batch-size", "16", "--data-dir", str(tiny_root), "--out", cut, "--stop-at", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", cut, "--data-dir", str(tiny_root), "--json"]) == 0
    captured = capsys.readouterr()
    assert f"note: {cut} is an unfinished run: its checkpoint is at step 1 of 2\n" in captured.err
    assert list(json.loads(captured.out)) == list(result)


def test_demo_refuses_a_data_dir_that_does_not_exist(tmp_path, capsys):
    """A mistyped --data-dir is an error, not a silent fallback to the embedded sample."""
    assert main(["demo", "--data-dir", str(tmp_path / "no-such-folder")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rcenp demo: error: --data-dir {tmp_path / 'no-such-folder'}: no such folder"]


def test_the_demo_table_rounds_once():
    """The audit: 9 of 1,017 errors (0.88496%) went through round(., 3) = 0.885 and printed 0.89%."""
    record = dict(RECORDS[0], test_error_percent=round(100 * 9 / 1017, 3), errors=9, n=1017)
    row = demo.demo_table([record]).splitlines()[2]
    assert "0.88%" in row and "0.89%" not in row


def test_a_reader_that_stops_early_is_no_error(monkeypatch, capsys):
    """`rcenp models | head -1`: the closed pipe ends the command quietly, as for any Unix tool."""
    import os

    fd = os.open(os.devnull, os.O_WRONLY)  # stands for the pipe's descriptor, which main points at /dev/null

    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return fd

    try:
        monkeypatch.setattr("sys.stdout", Closed())
        assert main(["models"]) == 141
    finally:
        os.close(fd)
    assert capsys.readouterr().err == ""


def test_an_error_line_after_output_to_a_gone_reader_still_ends_quietly(monkeypatch, capsys):
    """A one-line error after some output: the output's flush meets the closed pipe, → 141."""
    import os

    from rcenp import cli

    fd = os.open(os.devnull, os.O_WRONLY)

    class Buffered:
        def write(self, text):
            return len(text)

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return fd

    try:
        monkeypatch.setattr("sys.stdout", Buffered())
        assert cli.flushed(2) == 141
    finally:
        os.close(fd)


def test_a_reader_gone_before_the_buffered_output_is_flushed_is_no_error_either():
    """Without PYTHONUNBUFFERED stdout is buffered and is written at exit, after main returned:
    `rcenp models | true` printed 'Exception ignored ... BrokenPipeError' and ended with status 120."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen([sys.executable, "-m", "rcenp", "models"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    process.stdout.close()
    assert process.wait() == 141 and process.stderr.read() == b""
