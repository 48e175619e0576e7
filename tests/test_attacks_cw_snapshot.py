"""Mid-batch snapshots of the C&W optimiser (rcenp.attacks.cw_snapshot): a run killed at any
iteration and resumed from its snapshot returns exactly what an uninterrupted run returns, for
C&W-L2 (with slots refilled and dropped) and both stages of C&W-wb; a snapshot of other inputs is
ignored; ``rcenp attack`` resumes a batch mid-way and records the code that began it."""
import json
import os
import re
import signal

import numpy as np
import pytest

from rcenp import attacks
from rcenp.attacks import cw_snapshot
from rcenp.attacks.cw_snapshot import Snapshot
from tests.test_attacks_cw import box_images, linear_model
from tests.test_attacks_cw_wb import feature_model, fitted_detector


class Killed(Exception):
    pass


class KilledAfter(Snapshot):
    """A snapshot whose ``k``-th save (its parts' included) is the last thing the process does."""

    def __init__(self, path, k, saves=None, **kwargs):
        super().__init__(path, every=0.0, **kwargs)
        self.k, self.saves = k, [] if saves is None else saves

    def save(self, key, arrays, finished=False):
        super().save(key, arrays, finished)
        self.saves.append(finished)
        if len(self.saves) == self.k:
            raise Killed

    def part(self, name):
        child = KilledAfter(self.path.with_name(f"{self.path.stem}-{name}.npz"), self.k, self.saves, code=self.code)
        child.notes, child.earlier, child._parent = self.notes, self.earlier, self
        return child


def kill_at_save(monkeypatch, k):
    """Make the k-th Snapshot.save from now the last thing the process does (KeyboardInterrupt
    right after it) → the real save, to put back."""
    real_save, saves = Snapshot.save, []

    def save_then_die(self, key, arrays, finished=False):
        real_save(self, key, arrays, finished)
        saves.append(1)
        if len(saves) == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(Snapshot, "save", save_then_die)
    return real_save


def same(a, b):
    np.testing.assert_array_equal(a.adversarial, b.adversarial)
    assert a.records() == b.records()


CW = dict(binary_steps=3, max_iterations=20, learning_rate=0.05, batch_size=3)


class Counting(Snapshot):
    def __init__(self, path):
        super().__init__(path, every=0.0)
        self.in_work = []   # slots in work at each save

    def save(self, key, arrays, finished=False):
        super().save(key, arrays, finished)
        self.in_work.append(len(arrays["slot_sample"]))


@pytest.mark.parametrize("at", [0.0, 0.3, 0.6, 0.97, 1.0])   # of the saves of an uninterrupted run
def test_cw_l2_killed_and_resumed_returns_the_uninterrupted_result(tmp_path, at):
    model, x = linear_model("rce", 6, scale=3.0), box_images(6, 7)
    counting = Counting(tmp_path / "count.npz")
    reference = attacks.cw_l2(model, x, snapshot=counting, **CW)   # one save per iteration, one at the end
    same(reference, attacks.cw_l2(model, x, **CW))
    assert counting.in_work[0] == 3 and 0 < min(counting.in_work[:-1]) < 3   # slots refilled, then dropped
    k = max(1, round(at * len(counting.in_work)))
    path = tmp_path / "state.npz"
    with pytest.raises(Killed):
        attacks.cw_l2(model, x, snapshot=KilledAfter(path, k), **CW)
    resumed = Snapshot(path, every=0.0)
    same(attacks.cw_l2(model, x, snapshot=resumed, **CW), reference)
    assert resumed.resumed and not resumed.notes


def test_a_finished_snapshot_returns_its_result_and_progress_says_where_it_resumed(tmp_path):
    model, x = linear_model("ce", 2), box_images(2, 4)
    path = tmp_path / "state.npz"
    reference = attacks.cw_l2(model, x, snapshot=Snapshot(path), **CW)   # saved once, at the end
    lines = []
    same(attacks.cw_l2(model, x, snapshot=Snapshot(path), progress=lines.append, **CW), reference)
    assert lines == ["C&W: resumed from state.npz (0 min old): 4/4 images finished"]


@pytest.mark.parametrize("change", [{"kappa": 1.0}, {"max_iterations": 21}, {"images": True}, {"weights": True}])
def test_a_snapshot_of_other_inputs_is_ignored_and_said(tmp_path, change):
    model, x = linear_model("rce", 6, scale=3.0), box_images(6, 7)
    path = tmp_path / "state.npz"
    with pytest.raises(Killed):
        attacks.cw_l2(model, x, snapshot=KilledAfter(path, 20), **CW)
    settings = dict(CW, **{k: v for k, v in change.items() if k in ("kappa", "max_iterations")})
    if "images" in change:
        x = x.copy()
        x[0, 0, 2, 2] += 1e-3
    if "weights" in change:
        model.network.fc.bias.data[0] += 1e-9
    lines, snapshot = [], Snapshot(path, every=0.0)
    result = attacks.cw_l2(model, x, snapshot=snapshot, progress=lines.append, **settings)
    same(result, attacks.cw_l2(model, x, **settings))
    assert not snapshot.resumed
    assert lines[0] == "C&W: snapshot state.npz is of other images, settings or weights; starting afresh"


@pytest.mark.parametrize("k", [3, 45])   # in stage 1, in stage 2
def test_cw_wb_killed_in_either_stage_resumes_to_the_uninterrupted_result(tmp_path, k):
    model = feature_model("rce", 1)
    detector = fitted_detector(model, 1)
    x = box_images(3, 5)
    kwargs = dict(stage1={"binary_steps": 2, "max_iterations": 8}, stage2={"binary_steps": 2, "max_iterations": 12},
                  learning_rate=0.05, batch_size=3, attacker_points=6)
    with pytest.warns(attacks.EtaApproximationWarning):
        reference = attacks.cw_wb(model, x, detector, **kwargs)
        killed = KilledAfter(tmp_path / "state.npz", k)
        with pytest.raises(Killed):
            attacks.cw_wb(model, x, detector, snapshot=killed, **kwargs)
        stage1_done = True in killed.saves   # stage 1's final save came before the kill
        stage2_begun = (tmp_path / "state-stage2.npz").is_file()
        resumed = attacks.cw_wb(model, x, detector, snapshot=Snapshot(tmp_path / "state.npz", every=0.0), **kwargs)
    same(resumed, reference)
    assert stage1_done == stage2_begun == (k == 45)
    assert sorted(p.name for p in Snapshot(tmp_path / "state.npz").paths()) == ["state-stage1.npz", "state-stage2.npz"]


def test_earlier_code_is_what_made_the_restored_state(tmp_path):
    model, x = linear_model("ce", 2), box_images(2, 4)
    then, now = {"commit": "a" * 40, "source_sha256": "1" * 64}, {"commit": "b" * 40, "source_sha256": "2" * 64}
    with pytest.raises(Killed):
        attacks.cw_l2(model, x, snapshot=KilledAfter(tmp_path / "s.npz", 4, code=then), **CW)
    same_code = Snapshot(tmp_path / "s.npz", every=1e9, code=then)
    other_code = Snapshot(tmp_path / "s.npz", every=1e9, code=now)
    key = json.loads(str(np.load(tmp_path / "s.npz")["snapshot_codes"]))
    assert key == [then]
    attacks.cw_l2(model, x, snapshot=other_code, **CW)
    assert other_code.earlier == [then]
    assert json.loads(str(np.load(tmp_path / "s.npz")["snapshot_codes"])) == [then, now]
    attacks.cw_l2(model, x, snapshot=same_code, **CW)
    assert same_code.earlier == [now]   # the final state names both; only the other one is 'earlier'


def test_rcenp_attack_resumes_a_killed_batch_mid_way(tmp_path, monkeypatch):
    from rcenp.attacks import run as attack_run

    run_dir, root = _setup(tmp_path)
    options = {"binary_steps": 2, "max_iterations": 6}
    reference = attack_run.run_attack(run_dir, "cw", tmp_path / "ref", options, n=4, batch_size=4, data_dir=root)
    monkeypatch.setattr(cw_snapshot, "SNAPSHOT_SECONDS", 0.0)
    real_save = kill_at_save(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        attack_run.run_attack(run_dir, "cw", tmp_path / "cw", options, n=4, batch_size=4, data_dir=root)
    assert (tmp_path / "cw" / "run.json").is_file()                          # the run is kept for --resume
    assert (tmp_path / "cw" / "partial" / "batch-00000-state.npz").is_file()
    monkeypatch.setattr(Snapshot, "save", real_save)
    summary = attack_run.run_attack(run_dir, "cw", tmp_path / "cw", options, n=4, batch_size=4, data_dir=root,
                                    resume=True)
    assert (tmp_path / "cw" / "samples.jsonl").read_text() == (tmp_path / "ref" / "samples.jsonl").read_text()
    assert re.search(r"batch 1/1: C&W: resumed from batch-00000-state.npz \(0 min old\): 0/4 images finished, "
                     r"4 in work at binary step [12]-[12], iteration up to \d+", (tmp_path / "cw" / "attack.log").read_text())
    assert summary["code_by_batch"] == reference["code_by_batch"] and summary["code"] is not None
    # the resumed batch is counted apart: its time began in the killed process, so it gives no rate
    assert summary["timing"]["images_finished_from_a_snapshot"] == 4
    assert summary["timing"]["images_this_run"] == 0 and summary["timing"]["images_per_s"] is None
    assert "batch 1/1  4 images  ? img/s (resumed mid-batch: not timed)" in (tmp_path / "cw" / "attack.log").read_text()
    assert reference["timing"]["images_finished_from_a_snapshot"] == 0 and reference["timing"]["images_this_run"] == 4


def test_a_batch_begun_by_other_code_lists_both_codes(tmp_path, monkeypatch):
    from rcenp.attacks import run as attack_run
    from rcenp.attacks import runfiles

    run_dir, root = _setup(tmp_path)
    options = {"binary_steps": 2, "max_iterations": 6}
    then = {"commit": "a" * 40, "dirty": False, "source_sha256": "1" * 64}
    monkeypatch.setattr(cw_snapshot, "SNAPSHOT_SECONDS", 0.0)
    monkeypatch.setattr(runfiles, "code_record", lambda device=None: then)
    kill_at_save(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        attack_run.run_attack(run_dir, "cw", tmp_path / "cw", options, n=4, batch_size=4, data_dir=root)
    monkeypatch.undo()
    summary = attack_run.run_attack(run_dir, "cw", tmp_path / "cw", options, n=4, batch_size=4, data_dir=root,
                                    resume=True)
    groups = summary["code_by_batch"]
    assert [g["source_sha256"] for g in groups] == ["1" * 64, runfiles.source_sha256()]
    assert all(g["batches"] == [0] for g in groups) and summary["code"] is None


def _setup(tmp_path):
    """A ResNet-8 run directory with a fitted detector, and an MNIST-format root of 40 test images."""
    from rcenp.data import load
    from rcenp.detect.detector import Detector
    from rcenp.models import resnet
    from rcenp.objectives import Classifier
    from rcenp.train import TrainConfig, save_checkpoint
    from tests.test_train import write_mnist_root

    rng = np.random.default_rng(4)
    (tmp_path / "data").mkdir()
    root = write_mnist_root(tmp_path / "data", lambda split, n: (rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10),
                            (200, 40))
    run = tmp_path / "run"
    model = Classifier(resnet(8, 1, seed=1), "ce").eval()
    save_checkpoint(run, model, None, TrainConfig(depth=8, objective="ce"), 1, {"note": "test"})
    train, test = load("mnist", "train", root), load("mnist", "test", root)
    Detector(model).fit(train.images, train.labels, per_class=20).calibrate(test.images).save(run / "detector")
    return run, root


@pytest.mark.parametrize("damage, note", [
    ("empty", "unreadable (EOFError)"),
    ("no-m", "damaged (no slot_m)"),
    ("shape", "damaged (slot_delta is float64(2, 1, 4, 4), not float64(3, 1, 4, 4))"),
    ("queued", "damaged (queued 99 with 3 slots of 7 images)"),
])
def test_an_empty_or_incomplete_snapshot_is_ignored_and_said(tmp_path, damage, note):
    model, x = linear_model("rce", 6, scale=3.0), box_images(6, 7)
    path = tmp_path / "state.npz"
    with pytest.raises(Killed):
        attacks.cw_l2(model, x, snapshot=KilledAfter(path, 20), **CW)
    if damage == "empty":
        path.write_bytes(b"")
    else:
        with np.load(path) as data:
            arrays = dict(data)
        if damage == "no-m":
            del arrays["slot_m"]
        elif damage == "shape":
            arrays["slot_delta"] = arrays["slot_delta"][:2]
        else:
            arrays["queued"] = np.array(99)
        np.savez(path, **arrays)
    lines, snapshot = [], Snapshot(path, every=0.0)
    same(attacks.cw_l2(model, x, snapshot=snapshot, progress=lines.append, **CW), attacks.cw_l2(model, x, **CW))
    assert not snapshot.resumed and lines[0] == f"C&W: snapshot state.npz is {note}; starting afresh" \
        .replace("is unreadable", "unreadable")


@pytest.mark.parametrize("sig, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_a_signal_is_held_until_the_state_is_saved_then_raised(tmp_path, monkeypatch, sig, raised):
    from rcenp.attacks import cw

    model, x = linear_model("rce", 6, scale=3.0), box_images(6, 7)
    reference = attacks.cw_l2(model, x, **CW)
    monkeypatch.setattr(cw, "PROGRESS_SECONDS", 0.0)
    calls = []

    def progress(text):   # called at every iteration: the signal arrives in the middle of one
        calls.append(text)
        if len(calls) == 40:
            os.kill(os.getpid(), sig)

    # pytest started with & from a script ignores SIGINT, which the snapshot rightly leaves ignored;
    # this test is about a signal the process takes
    ignored = signal.getsignal(sig) is signal.SIG_IGN
    if ignored:
        signal.signal(sig, signal.default_int_handler)
    before = signal.getsignal(sig)
    snapshot = Snapshot(tmp_path / "state.npz", every=1e9)   # never due: only the signal saves
    try:
        with pytest.raises(raised) as caught:
            attacks.cw_l2(model, x, snapshot=snapshot, progress=progress, **CW)
        assert signal.getsignal(sig) is before              # the handler is given back
    finally:
        if ignored:
            signal.signal(sig, signal.SIG_IGN)
    if raised is SystemExit:
        assert caught.value.code == 128 + signal.SIGTERM
    with np.load(tmp_path / "state.npz") as data:
        assert not bool(data["snapshot_finished"]) and int(data["slot_it"].max()) > 0
    same(attacks.cw_l2(model, x, snapshot=Snapshot(tmp_path / "state.npz"), **CW), reference)


def test_the_period_comes_from_the_environment_and_remove_takes_leftover_temporary_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RCENP_SNAPSHOT_SECONDS", "7.5")
    assert Snapshot(tmp_path / "s.npz").every == 7.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("RCENP_SNAPSHOT_SECONDS", bad)
        with pytest.raises(ValueError, match="RCENP_SNAPSHOT_SECONDS must be a number of seconds >= 0"):
            Snapshot(tmp_path / "s.npz")
    monkeypatch.delenv("RCENP_SNAPSHOT_SECONDS")
    assert Snapshot(tmp_path / "s.npz").every == cw_snapshot.SNAPSHOT_SECONDS
    names = ["s.npz", "s-stage1.npz", "s.npz.abc123.tmp", "s-stage2.npz.x_y.tmp", "other.npz", "s.json"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    Snapshot(tmp_path / "s.npz").remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.npz", "s.json"]


def test_a_second_process_on_a_run_in_work_is_refused_and_an_interrupt_is_logged(tmp_path, monkeypatch):
    from rcenp.attacks import run as attack_run
    from rcenp.attacks import runfiles

    run_dir, root = _setup(tmp_path)
    options = {"binary_steps": 2, "max_iterations": 6}
    monkeypatch.setattr(cw_snapshot, "SNAPSHOT_SECONDS", 0.0)
    real_save = kill_at_save(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        attack_run.run_attack(run_dir, "cw", tmp_path / "cw", options, n=4, batch_size=4, data_dir=root)
    monkeypatch.setattr(Snapshot, "save", real_save)
    assert "interrupted (KeyboardInterrupt): the finished batches and any snapshot of the batch in work are kept" \
        in (tmp_path / "cw" / "attack.log").read_text()
    held = runfiles.lock_run(tmp_path / "cw" / "partial")   # as a process still computing it would
    with pytest.raises(ValueError, match=f"another process \\(pid {os.getpid()}\\) is computing this run"):
        attack_run.run_attack(run_dir, "cw", tmp_path / "cw", options, n=4, batch_size=4, data_dir=root, resume=True)
    held.close()
    summary = attack_run.run_attack(run_dir, "cw", tmp_path / "cw", options, n=4, batch_size=4, data_dir=root,
                                    resume=True)
    assert summary["counts"]["n"] == 4 and not (tmp_path / "cw" / "partial").exists()
