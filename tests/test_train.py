"""Training: exact resume (in process and after SIGKILL), atomic checkpoints, the CLI's error
lines, and a short end-to-end run on real MNIST that must beat chance by a wide margin."""
import dataclasses
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rcenp import checkpoint
from rcenp.checkpoint import CheckpointError
from rcenp.cli import main
from rcenp.train import preset_config, train

ROOT = Path(__file__).resolve().parent.parent


def write_idx(path: Path, array: np.ndarray):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def write_mnist_root(root: Path, make_split, sizes=(192, 64)) -> Path:
    """An MNIST-format data root in ``root``: make_split(split, n) gives (images, labels) for the
    training and the test split, of ``sizes`` images."""
    (root / "mnist").mkdir()
    for split, n in zip(("train", "t10k"), sizes):
        images, labels = make_split(split, n)
        write_idx(root / "mnist" / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / "mnist" / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """An MNIST-format data root: 192 training and 64 test images, class = brightest quadrant."""
    rng = np.random.default_rng(0)

    def quadrants(split, n):
        labels = rng.integers(0, 4, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, y in enumerate(labels):
            r, c = divmod(int(y), 2)
            images[i, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] += 150
        return images, labels

    return write_mnist_root(tmp_path_factory.mktemp("data"), quadrants)


def tiny_config(**kw):
    base = dict(depth=8, steps=6, batch_size=32, checkpoint_every=3, objective="rce")
    base.update(kw)
    return preset_config("quick", "mnist", **base)


def final_weights(run_dir):
    _, model, optimizer = checkpoint.load(Path(run_dir) / "checkpoint")
    return model, optimizer


def assert_same_final_weights(run_a, run_b):
    """The two runs' last checkpoints hold the same arrays, bit for bit (weights and momentum)."""
    a, oa = final_weights(run_a)
    b, ob = final_weights(run_b)
    assert a.keys() == b.keys() and oa.keys() == ob.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    for k in oa:
        assert np.array_equal(oa[k], ob[k]), k


def test_presets_follow_the_protocol_and_scale_the_quick_schedule():
    paper = preset_config("paper", "mnist")
    assert (paper.depth, paper.steps, paper.batch_size) == (32, 20_000, 128)
    assert paper.lr_boundaries == (10_000, 15_000, 20_000) and paper.lr_values == (0.1, 0.01, 0.001, 0.0001)
    cifar = preset_config("paper", "cifar10")
    assert (cifar.steps, cifar.lr_boundaries) == (90_000, (40_000, 60_000, 80_000))
    quick = preset_config("quick", "mnist")
    assert (quick.depth, quick.steps, quick.batch_size, quick.lr_boundaries) == (14, 5600, 64, (2800, 4200))
    longer = preset_config("quick", "cifar10", depth=32, steps=2400, batch_size=None)
    assert (longer.depth, longer.batch_size, longer.lr_boundaries) == (32, 64, (1200, 1800))
    assert preset_config("paper", "mnist", batch_size=32, weight_decay=None).batch_size == 32


def test_subset_preset_is_the_paper_schedule_in_epochs():
    subset = preset_config("subset", "cifar10", 5085, depth=32)
    assert (subset.steps, subset.lr_boundaries, subset.batch_size) == (9153, (4068, 6102, 8136), 128)
    assert subset.lr_values == (0.1, 0.01, 0.001, 0.0001) and subset.weight_decay == 2e-4
    assert abs(subset.steps * subset.batch_size / 5085 - 90_000 * 128 / 50_000) < 0.1  # 230.4 epochs either way
    full = preset_config("subset", "cifar10", 50_000)
    assert (full.steps, full.lr_boundaries) == (90_000, (40_000, 60_000, 80_000))
    assert preset_config("subset", "fashion-mnist", 60_000).steps == 20_000
    with pytest.raises(ValueError, match="number of training images"):
        preset_config("subset", "cifar10")


def test_schedule_scale_stretches_steps_and_boundaries_together():
    two = preset_config("subset", "cifar10", 5085, 2.0, depth=56)
    assert (two.steps, two.lr_boundaries, two.lr_values) == (18_306, (8136, 12_204, 16_272), (0.1, 0.01, 0.001, 0.0001))
    assert (two.schedule_scale, two.depth, two.batch_size) == (2.0, 56, 128)
    assert preset_config("paper", "mnist", None, 1.5).lr_boundaries == (15_000, 22_500, 30_000)
    assert preset_config("paper", "mnist").schedule_scale == 1.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            preset_config("paper", "mnist", None, bad)
    with pytest.raises(ValueError, match="not quick"):
        preset_config("quick", "mnist", None, 2.0)


def test_a_steps_override_moves_the_lr_switches_to_the_same_fractions_of_the_run():
    """--steps with the paper or subset preset kept the preset's switches (4,068/6,102/8,136 in a
    40-step run: lr 0.1 throughout), as a fresh user found; quick already moved them."""
    assert preset_config("paper", "mnist", steps=40).lr_boundaries == (20, 30, 40)
    short = preset_config("subset", "cifar10", 5085, steps=40)
    assert (short.steps, short.lr_boundaries) == (40, (18, 27, 36))
    with pytest.raises(ValueError, match="--schedule-scale and --steps both set the run's length"):
        preset_config("subset", "cifar10", 5085, 2.0, steps=40)   # the scale would be recorded, not applied
    assert preset_config("quick", "mnist", steps=40).lr_boundaries == (20, 30)
    assert preset_config("paper", "mnist", steps=20_000).lr_boundaries == (10_000, 15_000, 20_000)
    assert preset_config("paper", "mnist", steps=40, lr_boundaries=(5, 6, 7)).lr_boundaries == (5, 6, 7)
    for preset in ("paper", "quick"):   # a 1-step run starts at the first lr, as every other run
        one = preset_config(preset, "mnist", steps=1)
        assert one.schedule()(0) == 0.1 and min(one.lr_boundaries) == 1


def test_resume_is_bit_identical(tiny_root, tmp_path):
    config = tiny_config()
    train(config, tmp_path / "straight", data_root=tiny_root)
    assert train(config, tmp_path / "split", data_root=tiny_root, stop_at=4) is None
    assert json.loads((tmp_path / "split" / "checkpoint.json").read_text())["step"] == 4
    train(config, tmp_path / "split", data_root=tiny_root, resume=True)
    log = (tmp_path / "split" / "train.log").read_text()
    assert "no checkpoint in" not in log and "trained; now the test error on" in log
    assert_same_final_weights(tmp_path / "straight", tmp_path / "split")


def sgd_step_by_hand(xp, device, state, velocity, data, step, lr):
    """(weights and BN statistics, momentum buffers) after the test run's step ``step`` (0: its first),
    written out: batch ``step`` of epoch 0 (``BatchStream``'s documented order,
    ``default_rng([seed, epoch]).permutation(n)``, 32 a batch), the RCE loss of a ResNet-8 in train
    mode holding ``state`` (None: the seeded initialisation) on ``device`` (``xp``'s), its float32
    gradient g, then heavy-ball SGD in float64: v = 0.9 v + g + 2e-4 w for conv and linear kernels
    (the arrays of more than one dimension), v = 0.9 v + g for BN parameters and biases (v = 0
    before the first step), w = w - lr v. The BN statistics are the model's after that one
    forward pass. Host arrays, keyed as a checkpoint keys them."""
    from rcenp.backend import as_numpy
    from rcenp.models import resnet
    from rcenp.objectives import Classifier

    network = resnet(8, 1, seed=0)
    if state is not None:
        network.load_state_dict(state)
    model = Classifier(network.to(device), "rce").train()
    batch = np.random.default_rng([0, 0]).permutation(len(data.labels))[32 * step:32 * (step + 1)]
    model.loss(xp.asarray(data.images[batch]), xp.asarray(data.labels[batch])).backward()
    weights, velocities = {}, {}
    for i, (name, parameter) in enumerate(network.named_parameters()):
        w = as_numpy(parameter.data).astype(np.float64)
        g = as_numpy(parameter.grad).astype(np.float64) + (2e-4 * w if w.ndim > 1 else 0.0)
        v = g if velocity is None else 0.9 * velocity[f"velocity.{i}"].astype(np.float64) + g
        weights[name], velocities[f"velocity.{i}"] = w - lr * v, v
    statistics = {k: v for k, v in network.state_dict().items() if k not in weights}
    return {**weights, **statistics}, velocities


def assert_float32_of(saved, expected, ulps=4):
    """Every array of ``saved`` is float32 and within ``ulps`` float32 ulps of its array's largest
    entry of ``expected`` (float64): the rounding of the update's few float32 operations."""
    assert saved.keys() == expected.keys()
    for key, want in expected.items():
        error = np.abs(saved[key].astype(np.float64) - want).max()
        bound = ulps * np.finfo(np.float32).eps * np.abs(want).max()
        assert saved[key].dtype == np.float32 and error <= bound, (key, error, bound)


# Device against host, both float32: their gradients differ by float32 rounding (~1e-6 of their
# size) and, where a leaky-ReLU pre-activation lies within rounding of 0, by that one position's
# slope (1 on one device, 0.1 on the other). The first batch has one such (~7e-7, stage1.unit0.bn1
# channel 14): there the host's float32 velocity of the stem kernel is 6e-5 from float64's (a
# permuted batch, rounded otherwise, gives 1e-7), and the weights move by lr x that. Velocities (up
# to 0.11 here) are held to 1e-3 and weights and BN statistics to 1e-4: room for several such flips
# in two steps, while a device step that went wrong (another lr, batch, loss or BN mode, no
# momentum) moves them by about an update, 1e-3 or more. Decay moves a weight by lr x 2e-4 w, ~1e-5,
# below that: sgd_step_by_hand holds each device's own steps to 4 ulps, which catches it.
DEVICE_WEIGHTS_ATOL, DEVICE_VELOCITY_ATOL = 1e-4, 1e-3


def test_training_steps_are_momentum_sgd_and_resume_bit_for_bit_on_each_backend(xp, device, tiny_root, tmp_path):
    """``train(..., device=)`` on either backend: a run stopped after step 1 and resumed for step 2
    holds, after each step, the weights, BN statistics and momentum buffers of the SGD step written
    out by hand from the same device's gradient (``sgd_step_by_hand``, to 4 ulps: a wrong lr,
    momentum, decay, batch, loss or BN mode moves them by far more), and ends bit for bit as a run
    that was not stopped, on that device. On CuPy the device run is also the host's, to
    ``DEVICE_WEIGHTS_ATOL`` and ``DEVICE_VELOCITY_ATOL``."""
    from rcenp.data import load

    config = tiny_config(steps=2, checkpoint_every=1000, lr_boundaries=(1,), lr_values=(0.1, 0.05))
    assert (config.depth, config.batch_size, config.momentum, config.weight_decay, config.seed) == (8, 32, 0.9, 2e-4, 0)
    data = load("mnist", "train", tiny_root)
    run = tmp_path / "run"
    assert train(config, run, data_root=tiny_root, device=device, stop_at=1) is None
    manifest, state, velocity = checkpoint.load(run / "checkpoint")
    assert manifest["step"] == 1 and manifest["compute"]["device"] == device
    expected_state, expected_velocity = sgd_step_by_hand(xp, device, None, None, data, 0, 0.1)
    assert_float32_of(state, expected_state)
    assert_float32_of(velocity, expected_velocity)
    metrics = train(config, run, data_root=tiny_root, device=device, resume=True)
    assert metrics["device"] == device and metrics["steps"] == 2
    assert "on another host" not in (run / "train.log").read_text()      # the same device's checkpoint
    final, final_velocity = final_weights(run)
    expected_state, expected_velocity = sgd_step_by_hand(xp, device, state, velocity, data, 1, 0.05)
    assert_float32_of(final, expected_state)
    assert_float32_of(final_velocity, expected_velocity)
    train(config, tmp_path / "straight", data_root=tiny_root, device=device)
    assert_same_final_weights(run, tmp_path / "straight")
    if xp is not np:
        train(config, tmp_path / "host", data_root=tiny_root, device="cpu")
        host, host_velocity = final_weights(tmp_path / "host")
        for key in final:
            np.testing.assert_allclose(final[key], host[key], rtol=0, atol=DEVICE_WEIGHTS_ATOL, err_msg=key)
        for key in final_velocity:
            np.testing.assert_allclose(final_velocity[key], host_velocity[key], rtol=0, atol=DEVICE_VELOCITY_ATOL,
                                       err_msg=key)


def test_resume_is_bit_identical_on_the_augmented_cifar_path(tmp_path):
    """CIFAR-10 batches are cropped and flipped with draws of their step (``BatchStream.augment_rng``):
    a run stopped and resumed must draw them as the straight run did. 20 training images in
    batches of 8, so batches straddle epochs; the learning rate changes at step 4."""
    from test_data_cifar import write_split

    write_split(tmp_path / "data", counts=(4, 4, 4, 4, 4), test=6)
    config = preset_config("quick", "cifar10", depth=8, steps=8, batch_size=8, checkpoint_every=3, objective="ce")
    assert config.lr_boundaries == (4, 6)
    train(config, tmp_path / "straight", data_root=tmp_path / "data")
    assert train(config, tmp_path / "split", data_root=tmp_path / "data", stop_at=5) is None
    train(config, tmp_path / "split", data_root=tmp_path / "data", resume=True)
    assert_same_final_weights(tmp_path / "straight", tmp_path / "split")
    # and the draws matter: another seed's run, same data, ends elsewhere
    train(dataclasses.replace(config, seed=1), tmp_path / "other", data_root=tmp_path / "data")
    with pytest.raises(AssertionError):
        assert_same_final_weights(tmp_path / "straight", tmp_path / "other")


def test_a_resume_on_another_host_says_that_its_bits_will_differ(tiny_root, tmp_path, monkeypatch):
    """On the host, whose BLAS kernel decides the last bits (under RCENP_DEVICE=cuda the GPU would
    decide them, and a changed BLAS kernel rightly goes unmentioned)."""
    monkeypatch.setenv("RCENP_DEVICE", "cpu")
    config = tiny_config()
    for run, recorded in (("same", None), ("other", "SomeOtherCore")):
        assert train(config, tmp_path / run, data_root=tiny_root, stop_at=3) is None
        manifest_file = tmp_path / run / "checkpoint.json"
        manifest = json.loads(manifest_file.read_text())
        assert manifest["environment"]["blas_core"] == checkpoint.host()["blas_core"]
        if recorded:
            manifest["environment"]["blas_core"] = recorded
            manifest_file.write_text(json.dumps(manifest))
        train(config, tmp_path / run, data_root=tiny_root, resume=True, stop_at=5)
    said = "--resume on another host (BLAS kernel SomeOtherCore -> "
    assert said not in (tmp_path / "same" / "train.log").read_text()
    if checkpoint.host()["blas_core"] is not None:
        assert said in (tmp_path / "other" / "train.log").read_text()
    # a checkpoint made on the GPU (its compute record), resumed on the host, says so too
    assert train(config, tmp_path / "gpu", data_root=tiny_root, stop_at=3) is None
    manifest_file = tmp_path / "gpu" / "checkpoint.json"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["compute"] == {"device": "cpu"}
    manifest["compute"] = {"device": "cuda", "gpu": "NVIDIA H200", "cupy": "14.2.0"}
    manifest_file.write_text(json.dumps(manifest))
    train(config, tmp_path / "gpu", data_root=tiny_root, resume=True, stop_at=5)
    assert "--resume on another host (device cuda -> cpu)" in (tmp_path / "gpu" / "train.log").read_text()


def test_the_training_seconds_add_up_over_sessions(tiny_root, tmp_path):
    """metrics.json's train_seconds_this_run was the last session's alone: a run's total now comes
    from its checkpoints, and is unknown (None) past one that predates the record."""
    config = tiny_config()
    for run, before in (("counted", 1000.0), ("older", None)):
        assert train(config, tmp_path / run, data_root=tiny_root, stop_at=3) is None
        manifest_file = tmp_path / run / "checkpoint.json"
        manifest = json.loads(manifest_file.read_text())
        assert manifest["train_seconds"] > 0
        if before is None:
            del manifest["train_seconds"]
        else:
            manifest["train_seconds"] = before   # as if the first session had taken that long
        manifest_file.write_text(json.dumps(manifest))
        metrics = train(config, tmp_path / run, data_root=tiny_root, resume=True)
        assert json.loads((tmp_path / run / "metrics.json").read_text()) == metrics
        final = json.loads(manifest_file.read_text())["train_seconds"]
        if before is None:
            assert metrics["train_seconds_total"] is None and final is None
        else:
            assert metrics["train_seconds_total"] == final == before + metrics["train_seconds_this_run"]
    straight = train(config, tmp_path / "straight", data_root=tiny_root)
    assert straight["train_seconds_this_run"] == straight["train_seconds_total"] > 0   # one session: the same clock


def test_a_checkpoint_npz_without_its_json_is_refused_not_overwritten(tiny_root, tmp_path):
    """--resume in a folder whose checkpoint.json was removed started again from step 0 and
    overwrote the saved arrays (a fresh user's trial); a save never leaves the npz without the json."""
    config = tiny_config()
    assert train(config, tmp_path / "run", data_root=tiny_root, stop_at=3) is None
    (tmp_path / "run" / "checkpoint.json").unlink()
    arrays = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    for resume in (True, False):
        with pytest.raises(ValueError, match=r"holds checkpoint\.npz without its checkpoint\.json"):
            train(config, tmp_path / "run", data_root=tiny_root, resume=resume)
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == arrays


def test_a_folder_another_process_trains_into_is_refused(tiny_root, tmp_path):
    """Two ``rcenp train --resume`` on one folder both trained it, interleaving their logs and
    checkpoint renames (a fresh user's trial); the folder's lock now refuses the second."""
    config = tiny_config()
    assert train(config, tmp_path / "run", data_root=tiny_root, stop_at=3) is None
    held = checkpoint.take_lock(tmp_path / "run" / ".lock", lambda holder: "unused")
    if held is None:
        pytest.skip("no fcntl: folders are not locked here")
    log = (tmp_path / "run" / "train.log").read_text()
    with pytest.raises(ValueError, match=rf"another process \(pid {os.getpid()}\) is training into it"):
        train(config, tmp_path / "run", data_root=tiny_root, resume=True)
    assert (tmp_path / "run" / "train.log").read_text() == log
    held.close()
    assert train(config, tmp_path / "run", data_root=tiny_root, resume=True)["steps"] == config.steps


def test_a_resume_says_which_logged_steps_a_killed_process_lost(tiny_root, tmp_path):
    """After a SIGKILL the log's last progress line can lie past the last checkpoint; the resume
    says which steps are run again instead of leaving a silent gap (a fresh user's trial)."""
    config = tiny_config()
    assert train(config, tmp_path / "run", data_root=tiny_root, stop_at=3) is None
    log = tmp_path / "run" / "train.log"
    log.write_text(log.read_text() + "2026-12-03 10:00:00 step 5/6  loss 1.0000  train acc 0.500  lr 0.1  9 img/s\n")
    train(config, tmp_path / "run", data_root=tiny_root, resume=True)
    assert "--resume: the log above reached step 5, past the last checkpoint (step 3); steps 4-5 were lost" \
        in log.read_text()
    assert train(config, tmp_path / "again", data_root=tiny_root, stop_at=3) is None   # a stop at a checkpoint:
    train(config, tmp_path / "again", data_root=tiny_root, resume=True)                # nothing was lost
    assert "were lost" not in (tmp_path / "again" / "train.log").read_text()


def test_resuming_a_finished_run_changes_nothing_and_says_so(tiny_root, tmp_path):
    """It re-ran the test evaluation and rewrote metrics.json (its train_seconds_this_run with ~0)
    and config.json (a fresh user's trial)."""
    config = tiny_config()
    run = tmp_path / "run"
    first = train(config, run, data_root=tiny_root, command=["rcenp", "train", "first"])
    written = {name: (run / name).read_bytes() for name in ("metrics.json", "config.json", "checkpoint.npz")}
    assert train(config, run, data_root=tiny_root, resume=True, command=["rcenp", "train", "again"]) == first
    assert {name: (run / name).read_bytes() for name in written} == written
    log = (run / "train.log").read_text().splitlines()
    assert log[-1].endswith(f"already finished: step {config.steps} of {config.steps}; nothing to do "
                            f"({run / 'metrics.json'})")
    (run / "metrics.json").unlink()   # killed during the final evaluation: resuming evaluates again
    assert train(config, run, data_root=tiny_root, resume=True)["errors"] == first["errors"]


def test_resume_with_nothing_to_resume_says_so(tiny_root, tmp_path):
    config = tiny_config()
    assert train(config, tmp_path / "fresh", data_root=tiny_root, resume=True, stop_at=1) is None
    assert f"--resume: no checkpoint in {tmp_path / 'fresh'} yet, so this starts at step 0" in \
        (tmp_path / "fresh" / "train.log").read_text()


def test_sigkill_then_resume_matches_uninterrupted(tiny_root, tmp_path):
    args = ["train", "--dataset", "mnist", "--objective", "ce", "--preset", "quick", "--depth", "8",
            "--steps", "40", "--batch-size", "32", "--checkpoint-every", "5", "--data-dir", str(tiny_root)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "rcenp"] + args + ["--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = killed / "checkpoint.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and json.loads(manifest.read_text())["step"] >= 10:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoint.load(killed / "checkpoint")  # whatever was on disk is a consistent checkpoint
    assert main(args + ["--out", str(killed), "--resume"]) == 0
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    assert_same_final_weights(killed, tmp_path / "straight")


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_saves_the_step_in_work_and_resume_matches_uninterrupted(tiny_root, tmp_path, signum, status):
    """Ctrl-C or a polite kill between checkpoints: the step in work is saved (not the last
    checkpoint's), the console and train.log say so, and --resume ends bit for bit as a straight run."""
    args = ["train", "--dataset", "mnist", "--objective", "rce", "--preset", "quick", "--depth", "8",
            "--steps", "120", "--batch-size", "16", "--checkpoint-every", "1000", "--data-dir", str(tiny_root)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RCENP_HOST_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "rcenp"] + args + ["--out", str(cut)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, deadline = cut / "train.log", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and "training mnist" not in (
            log.read_text() if log.is_file() else ""):
        time.sleep(0.02)
    time.sleep(0.5)  # some steps in
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    step = json.loads((cut / "checkpoint.json").read_text())["step"]
    assert proc.returncode == status and 0 < step < 120
    said = f"interrupted at step {step} of 120: saved; continue with --resume"
    assert said in err and said in log.read_text() and "Traceback" not in err
    assert err.rstrip().endswith("rcenp train: " + ("interrupted" if signum == signal.SIGINT else "terminated"))
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    assert_same_final_weights(cut, tmp_path / "straight")


def test_held_signals_leave_an_ignored_signal_ignored():
    """A command started with & from a script ignores SIGINT; holding it would make Ctrl-C work in
    the training loop only, so it stays ignored (SIGTERM still stops the run)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with checkpoint.HeldSignals() as held:
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is not \
                signal.SIG_DFL
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert held.signum == signal.SIGTERM and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with pytest.raises(SystemExit) as stopped:
            held.stop()
        assert stopped.value.code == 143
    finally:
        signal.signal(signal.SIGINT, previous)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    state = {"w": np.arange(4.0)}
    checkpoint.save(tmp_path / "ck", state, None, {"step": 1})

    def broken(fh, **arrays):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "ck", {"w": np.zeros(4)}, None, {"step": 2})
    manifest, model, _ = checkpoint.load(tmp_path / "ck")
    assert manifest["step"] == 1 and np.array_equal(model["w"], np.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.npz"]  # no temporary left


@pytest.mark.parametrize("cut", ["before the manifest", "after the manifest"])
def test_a_save_cut_short_at_any_rename_leaves_one_loadable_checkpoint(tmp_path, monkeypatch, cut):
    """A kill between the renames (the audit's window: new npz in place, old manifest) used to
    leave a pair that failed its SHA-256 check, with the previous arrays gone."""
    checkpoint.save(tmp_path / "ck", {"w": np.arange(4.0)}, None, {"step": 1})
    real_replace = os.replace

    def killed(src, dst):
        if cut == "before the manifest" and str(dst).endswith("ck.json") or \
                cut == "after the manifest" and str(dst).endswith("ck.npz"):
            raise KeyboardInterrupt  # stands for the kill: nothing after this line runs
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path / "ck", {"w": np.zeros(4)}, None, {"step": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "ck.npz.next").is_file()
    manifest, model, _ = checkpoint.load(tmp_path / "ck")
    expected = (1, np.arange(4.0)) if cut == "before the manifest" else (2, np.zeros(4))
    assert manifest["step"] == expected[0] and np.array_equal(model["w"], expected[1])
    checkpoint.save(tmp_path / "ck", {"w": np.ones(4)}, None, {"step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.npz"]
    assert checkpoint.load(tmp_path / "ck")[0]["step"] == 3


def test_corrupted_checkpoint_is_refused(tmp_path):
    checkpoint.save(tmp_path / "ck", {"w": np.arange(3.0)}, None, {"step": 1})
    with open(tmp_path / "ck.npz", "r+b") as fh:
        fh.seek(40)
        fh.write(b"\xff\xff")
    with pytest.raises(CheckpointError, match="SHA-256"):
        checkpoint.load(tmp_path / "ck")


def run_cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_errors_are_one_line(tiny_root, tmp_path, capsys):
    code, err = run_cli(["train", "--dataset", "mnist", "--objective", "ce", "--out", str(tmp_path / "a"),
                         "--data-dir", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("rcenp train: error:") and "nowhere" in err[0]
    code, err = run_cli(["eval", str(tmp_path / "missing-run")], capsys)
    assert code == 2 and len(err) == 1 and "missing-run" in err[0]
    ok = ["train", "--dataset", "mnist", "--objective", "ce", "--preset", "quick", "--depth", "8", "--steps", "2",
          "--batch-size", "16", "--data-dir", str(tiny_root), "--out", str(tmp_path / "run")]
    assert main(ok) == 0
    capsys.readouterr()
    code, err = run_cli(ok, capsys)  # the run directory already holds a checkpoint
    assert code == 2 and "--resume" in err[-1]
    code, err = run_cli(ok[:-2] + ["--out", str(tmp_path / "run"), "--resume", "--seed", "7"], capsys)
    assert code == 2 and "differs" in err[-1]
    code, err = run_cli(ok[:-2] + ["--out", str(tmp_path / "c"), "--schedule-scale", "2"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("rcenp train: error:") and "not quick" in err[0]
    code, err = run_cli(ok[:-4] + ["--train-subset", "100000", "--data-dir", str(tiny_root), "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "train-subset" in err[-1]
    code, err = run_cli(ok[:-2] + ["--out", str(tmp_path / "d"), "--stop-at", "2"], capsys)  # the run's last step
    assert code == 2 and len(err) == 1 and "--stop-at must be in 1..1, below the run's 2 steps" in err[0]
    one_step = [("1" if a == "2" and ok[i - 1] == "--steps" else a) for i, a in enumerate(ok[:-2])]
    code, err = run_cli(one_step + ["--out", str(tmp_path / "f"), "--stop-at", "1"], capsys)  # was 'in 1..0'
    assert code == 2 and err == ["rcenp train: error: --stop-at needs a run of at least 2 steps to stop within; "
                                 "this one has 1"]
    code, err = run_cli(ok[:-6] + ["--batch-size", "150", "--train-subset", "100", "--data-dir", str(tiny_root),
                                   "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and len(err) == 1 and "--batch-size 150 is more than the 100 training images used" in err[0]
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
    code, err = run_cli(ok + ["--resume", "--stop-at", "1"], capsys)   # the run is at step 2 already
    assert code == 2 and len(err) == 1 and f"--stop-at 1: {tmp_path / 'run'} is at step 2 already" in err[0]
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(tiny_root)]) == 0


@pytest.mark.skipif(not os.environ.get("RCENP_DATA"), reason="needs the real MNIST (set RCENP_DATA)")
def test_short_real_mnist_run_beats_chance(tmp_path, capsys):
    """`rcenp train` end to end on 512 real images (CE: RCE's early signal is too weak for 80 steps)."""
    assert main(["train", "--dataset", "mnist", "--objective", "ce", "--preset", "quick", "--depth", "8",
                 "--steps", "80", "--batch-size", "64", "--train-subset", "512", "--out", str(tmp_path / "run")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_test"] == 10_000 and metrics["data"]["train_used"] == 512
    assert result["test_error"] == metrics["test_error"] < 0.5  # chance is 0.9


def test_ship_and_load_by_name(tiny_root, tmp_path, monkeypatch, load_script):
    import rcenp.models.registry as registry
    from rcenp.models import load

    ship_model = load_script("ship_model")
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.setattr(ship_model, "PRETRAINED_DIR", tmp_path / "pretrained")
    config = tiny_config(steps=2)
    train(config, tmp_path / "run", data_root=tiny_root)
    ship_model.ship(tmp_path / "run", "tiny-rce")
    model, manifest = load("tiny-rce")
    assert manifest["name"] == "tiny-rce" and manifest["step"] == 2 and "test_error" in manifest
    assert manifest["train_seconds"] == json.loads((tmp_path / "run" / "metrics.json").read_text())["train_seconds_total"]
    assert model.objective == "rce" and not model.training
    _, run_state, _ = checkpoint.load(tmp_path / "run" / "checkpoint")
    for key, value in model.network.state_dict().items():
        assert np.array_equal(value, run_state[key])
    with pytest.raises(SystemExit, match="not finished"):
        ship_model.ship(tmp_path / "nowhere", "x")


def test_checkpoints_keep_the_commit_read_at_start(monkeypatch):
    # a long run's later checkpoints must not pick up commits made to the checkout meanwhile
    first = checkpoint.environment()

    def no_git(*args, **kwargs):
        raise AssertionError("git was asked again")

    monkeypatch.setattr(checkpoint.subprocess, "run", no_git)
    again = checkpoint.environment()
    assert {k: again.get(k) for k in ("commit", "dirty")} == {k: first.get(k) for k in ("commit", "dirty")}


def test_dirty_means_changed_code_not_results_or_run_progress(tmp_path, monkeypatch):
    """Published results, docs, tests and the runs' in-progress checkpoints change under background
    work: a report or detector made beside them is not 'uncommitted changes' (shipped detectors
    said so); the package, its shipped models, the scripts and pyproject.toml are."""
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("no git")
    code = ["rcenp/ops.py", "rcenp/models/pretrained/model.npz", "scripts/run.py", "pyproject.toml"]
    other = ["results/run/attack.log", "rcenp/models/pretrained/in-progress/run/train.log", "README.md",
             "tests/test_x.py"]
    for name in code + other:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("first\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    assert checkpoint.git_identity(tmp_path)["dirty"] is False
    for name in other:
        (tmp_path / name).write_text("more\n")
    (tmp_path / "rcenp" / "untracked.py").write_text("")
    assert checkpoint.git_identity(tmp_path)["dirty"] is False
    for name in code:
        (tmp_path / name).write_text("changed\n")
        assert checkpoint.git_identity(tmp_path)["dirty"] is True, name
        subprocess.run(git + ["checkout", "-q", "--", name], check=True)
    assert checkpoint.git_identity(tmp_path / "results") == checkpoint.git_identity(tmp_path)   # paths from the top
    (tmp_path / code[0]).write_text("changed\n")
    assert checkpoint.git_identity(tmp_path / "results")["dirty"] is True
    assert checkpoint.git_identity(tmp_path.parent / "no-such-folder") == {}
    run = subprocess.run   # a git status that fails (a locked index) says unknown, not clean

    def failing_status(args, **kwargs):
        return subprocess.CompletedProcess(args, 128, "", "fatal: index.lock") if "status" in args else run(args, **kwargs)

    monkeypatch.setattr(checkpoint.subprocess, "run", failing_status)
    assert checkpoint.git_identity(tmp_path)["dirty"] is None


def test_resume_with_the_out_folder_alone_continues_the_run_as_recorded(tiny_root, tmp_path, capsys, monkeypatch):
    """``rcenp train --out RUN --resume`` needed the whole first command again (a fresh user's trial)."""
    def cli(argv):  # as from a shell: config.json records the command line
        monkeypatch.setattr(sys, "argv", ["rcenp"] + argv)
        return main(argv)

    first = ["train", "--dataset", "mnist", "--objective", "rce", "--preset", "quick", "--depth", "8", "--steps", "6",
             "--batch-size", "32", "--checkpoint-every", "3", "--data-dir", str(tiny_root)]
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert cli(first + ["--out", str(straight)]) == 0
    assert cli(first + ["--out", str(run), "--stop-at", "3"]) == 0
    short = ["train", "--out", str(run), "--resume", "--data-dir", str(tiny_root)]
    assert cli(short) == 0
    assert_same_final_weights(straight, run)
    recorded = json.loads((run / "config.json").read_text())  # the command that started the run stays
    assert recorded["command"] == "rcenp " + " ".join(first + ["--out", str(run), "--stop-at", "3"])
    assert recorded["resumed_with"] == "rcenp " + " ".join(short)
    capsys.readouterr()
    for argv, said in (
            (short + ["--depth", "14"], "continues the run as it records; leave out --depth too"),
            (["train", "--out", str(tmp_path / "empty"), "--resume"], "holds no checkpoint to continue"),
            (["train", "--dataset", "mnist", "--out", str(run), "--resume"], "train needs --dataset and --objective"),
            (["train", "--objective", "ce", "--out", str(tmp_path / "b")], "train needs --dataset and --objective")):
        code, err = run_cli(argv, capsys)
        assert code == 2 and len(err) == 1 and said in err[0], (argv, err)
    assert not (tmp_path / "empty").exists() and not (tmp_path / "b").exists()


def test_the_short_resume_names_what_is_wrong_with_the_folder(tiny_root, tmp_path, capsys):
    """A fresh user's re-trial: the short form said "holds no checkpoint" for a damaged pair, for a
    folder another process was still making its first checkpoint in, and for a file; a manifest
    without a configuration gave a traceback."""
    config = tiny_config()
    assert train(config, tmp_path / "run", data_root=tiny_root, stop_at=3) is None
    short = lambda folder: ["train", "--out", str(folder), "--resume", "--data-dir", str(tiny_root)]  # noqa: E731
    (tmp_path / "run" / "checkpoint.json").rename(tmp_path / "kept.json")
    code, err = run_cli(short(tmp_path / "run"), capsys)
    assert code == 2 and len(err) == 1 and "holds checkpoint.npz without its checkpoint.json" in err[0]
    (tmp_path / "kept.json").rename(tmp_path / "run" / "checkpoint.json")
    held = checkpoint.take_lock(tmp_path / "run" / ".lock", lambda holder: "unused")
    if held is not None:
        code, err = run_cli(short(tmp_path / "run"), capsys)
        assert code == 2 and len(err) == 1 and f"another process (pid {os.getpid()}) is training into it" in err[0]
        held.close()
    (tmp_path / "a-file").write_text("mine")
    code, err = run_cli(short(tmp_path / "a-file"), capsys)
    assert code == 2 and len(err) == 1 and "a file of that name exists" in err[0]
    manifest = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    (tmp_path / "run" / "checkpoint.json").write_text(json.dumps(dict(manifest, config=5)))
    for argv in (short(tmp_path / "run"), ["train", "--dataset", "mnist", "--objective", "rce", "--preset", "quick",
                                            "--depth", "8", "--steps", "6", "--batch-size", "32", "--out",
                                            str(tmp_path / "run"), "--resume", "--data-dir", str(tiny_root)]):
        code, err = run_cli(argv, capsys)
        assert code == 2 and len(err) == 1 and "checkpoint.json: records no training configuration" in err[0], err


def test_sigterm_during_the_final_evaluation_ends_with_one_line(tiny_root, tmp_path, capsys, monkeypatch):
    """Outside the held training steps SIGTERM killed the process silently (status -15); it now
    unwinds as SystemExit(143) and the command says "terminated", as inside them."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM is handled by the test runner here")
    import rcenp.train as train_module

    def evaluate_then_terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the evaluation")

    monkeypatch.setattr(train_module, "evaluate", evaluate_then_terminated)
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--dataset", "mnist", "--objective", "ce", "--preset", "quick", "--depth", "8", "--steps", "2",
              "--batch-size", "16", "--data-dir", str(tiny_root), "--out", str(tmp_path / "run")])
    assert stopped.value.code == 143
    assert capsys.readouterr().err.rstrip().endswith("rcenp train: terminated")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handler before the command is back
