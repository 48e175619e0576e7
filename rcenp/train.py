"""CE / RCE training with checkpoints and exact resume (protocol §1.2-1.3).

The batch order and augmentation are pure functions of (seed, step) (``rcenp.data.BatchStream``),
so a checkpoint needs only the weights, BN statistics, momentum buffers and the step to resume
bit for bit on the same CPU and BLAS kernel (checkpoint.json records both: ``checkpoint.host``);
on another, float32 GEMMs round differently and the resumed run drifts from the uninterrupted one.

Presets:
- ``paper``: the authors' schedule. Batch 128, momentum 0.9, weight decay 2e-4 on kernels (the
  authors' released train.py first had 0 and later 2e-4; which one their paper's numbers used is
  not known, protocol §1.3).
  MNIST and Fashion-MNIST run 20,000 steps, 0 to 19,999 (lr 0.1, then 0.01 from step 10k and
  0.001 from 15k; the schedule's 0.0001 from 20k is never reached, where the authors' loop,
  ``global_step <= total``, takes one more step at it, protocol §1.3); CIFAR-10 runs 90,000 steps
  (0.01 from 40k, 0.001 from 60k, 0.0001 from 80k). Depth 32 unless given.
- ``quick``: a CPU-sized run of the same family. ResNet-14, 5,600 steps of batch 64 (about 6 MNIST
  epochs), with the MNIST schedule's boundaries scaled to the run length (lr 0.1, then 0.01 from
  50%, then 0.001 from 75%). Measured on 2 CPU cores: RCE on MNIST reached 0.53% test error in
  12 min 31 s (0.57% in 13 min 26 s before the kernel-row convs). Batch 64 matters: at batch 128
  the same time buys half the updates, and RCE reached only 1.07% (ResNet-14, 3,000 steps), 1.54%
  (ResNet-8, 4,400) or 1.32% (ResNet-20, 1,500).
- ``subset``: the ``paper`` schedule measured in epochs, for a training set smaller than the
  published one (the CIFAR-10 subset of 5,085 images here). Steps and lr boundaries are scaled by
  (training images) / (published training images), so the run makes the same number of passes
  over its data (230.4 epochs on CIFAR-10, 42.7 on MNIST) and switches lr at the same fractions
  of the run; batch, momentum, weight decay and augmentation are the authors' code's (the paper
  says only "the same settings as He et al."). On a full training
  set it is the ``paper`` preset. CIFAR-10 subset: 9,153 steps, lr boundaries 4,068/6,102/8,136.

``schedule_scale`` F stretches ``paper`` or ``subset`` into an "Fx schedule" (as detection
benchmarks' 1x/2x/3x schedules): steps and lr boundaries times F, the same lr values, so the run
switches lr at the same fractions of its length. The CIFAR-10 subset's models use 2x (18,306 steps,
boundaries 8,136/12,204/16,272): at 1x, RCE was still fitting its training set when the lr fell
(mean batch accuracy 0.83 over the 500 steps before the first drop, CE's 0.95; 0.967 against
1.000 at the end), and its test error ended 3.8 points above CE's. RCE's
gradient on the logits, softmax(s) - R_y, spreads 1/(L-1) over the other classes, so it learns
per step more slowly than CE; the subset's 230 epochs give it 9,153 steps, the paper's CIFAR-10 RCE
had 90,000.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from rcenp import checkpoint
from rcenp.backend import as_numpy, default_device, device_identity, to_device
from rcenp.data import BatchStream, augment_cifar, load
from rcenp.data.datasets import FULL_SIZE, IMAGE_SHAPES
from rcenp.grad_mode import no_grad
from rcenp.models import resnet
from rcenp.objectives import Classifier
from rcenp.optim import SCHEDULES, SGD, PiecewiseConstant
from rcenp.progress import Progress, counter

CHECKPOINT_STEM = "checkpoint"
CHANNELS = {name: shape[0] for name, shape in IMAGE_SHAPES.items()}
PRESETS = ("paper", "quick", "subset")


@dataclasses.dataclass
class TrainConfig:
    dataset: str = "mnist"
    objective: str = "rce"
    depth: int = 32
    steps: int = 20_000
    batch_size: int = 128
    lr_boundaries: tuple = (10_000, 15_000, 20_000)
    lr_values: tuple = (0.1, 0.01, 0.001, 0.0001)
    momentum: float = 0.9
    weight_decay: float = 2e-4
    activation: str = "leaky_relu"
    seed: int = 0
    train_subset: int | None = None
    checkpoint_every: int = 1000
    preset: str = "paper"
    schedule_scale: float = 1.0  # the preset's steps and lr boundaries were multiplied by this

    def schedule(self) -> PiecewiseConstant:
        return PiecewiseConstant(list(self.lr_boundaries), list(self.lr_values))


def preset_config(preset: str, dataset: str, train_size: int | None = None, schedule_scale: float = 1.0,
                  **overrides) -> TrainConfig:
    """The configuration of a preset (:data:`PRESETS`) for a data set, with explicit overrides applied.

    ``train_size``: the number of training images the run will use; needed by ``subset`` only,
    whose steps and lr boundaries are the paper's times train_size / the published training
    set's size, rounded (ValueError if missing or not positive). ``schedule_scale``: multiplies
    the steps and lr boundaries of ``paper`` or ``subset`` (module docstring); ValueError if not
    positive or given with ``quick``. A ``steps`` override moves the lr boundaries with it, to
    the same fractions of the run (``quick``: 1/2 and 3/4; the others: the preset's, rounded),
    none before step 1, so that every run starts at the preset's first lr (a run of fewer steps than
    the preset has lr values skips some of them).
    """
    if not schedule_scale > 0:
        raise ValueError(f"the schedule scale must be positive, got {schedule_scale}")
    if preset == "quick" and schedule_scale != 1.0:
        raise ValueError("the schedule scale applies to the paper and subset presets, not quick (use --steps)")
    if schedule_scale != 1.0 and overrides.get("steps") is not None:
        raise ValueError("--schedule-scale and --steps both set the run's length: give one of them")
    if preset in ("paper", "subset"):
        key = "cifar10" if dataset == "cifar10" else "mnist"
        schedule = SCHEDULES[key]
        steps, boundaries = (90_000 if key == "cifar10" else 20_000), schedule.boundaries
        scale = schedule_scale
        if preset == "subset":
            if not train_size or train_size < 1:
                raise ValueError("the subset preset needs the number of training images (train_size)")
            scale *= train_size / FULL_SIZE[dataset]["train"]
        steps, boundaries = round(steps * scale), [round(b * scale) for b in boundaries]
        base = TrainConfig(dataset=dataset, steps=steps, lr_boundaries=tuple(boundaries),
                           lr_values=tuple(schedule.values), preset=preset, schedule_scale=float(schedule_scale))
    elif preset == "quick":
        base = TrainConfig(dataset=dataset, depth=14, steps=5600, batch_size=64, lr_boundaries=(2800, 4200),
                           lr_values=(0.1, 0.01, 0.001), checkpoint_every=700, preset=preset)
    else:
        raise ValueError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    steps = overrides.get("steps")
    if steps is not None and steps != base.steps and overrides.get("lr_boundaries") is None:
        # keep the shape of the schedule: the lr switches at the same fractions of the run, and
        # the first lr holds for step 0 at least (a 1-step run rounded its first switch to 0)
        if preset == "quick":
            base.lr_boundaries = (max(1, steps // 2), max(1, steps * 3 // 4))
        else:
            base.lr_boundaries = tuple(max(1, round(b * steps / base.steps)) for b in base.lr_boundaries)
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def build_classifier(config: TrainConfig) -> Classifier:
    network = resnet(config.depth, CHANNELS[config.dataset], 10, config.activation, seed=config.seed)
    return Classifier(network, config.objective)


def evaluate(model: Classifier, images, labels, batch_size=500, progress=None) -> dict:
    """Test error with the prediction logits (reverse logits for RCE), eval-mode BN: ``count_errors``.
    ``progress(done, total)``, if given, hears after every batch (``rcenp.progress.counter``)."""
    if progress is None:
        return count_errors(model.predict(images, batch_size), labels)
    predictions = []
    for start in range(0, len(images), batch_size):  # the batches predict() forms: the same bits
        predictions.append(as_numpy(model.predict(images[start:start + batch_size], batch_size)))
        progress(min(start + batch_size, len(images)), len(images))
    return count_errors(np.concatenate(predictions), labels)


def count_errors(predictions, labels) -> dict:
    """{"test_error" (a fraction), "n_test", "errors"} of predictions (N,) against labels (N,)."""
    errors = int((as_numpy(predictions) != np.asarray(labels)).sum())
    return {"test_error": errors / len(labels), "n_test": int(len(labels)), "errors": errors}


def save_checkpoint(out_dir: Path, model, optimizer, config, step, data_identity, stem=CHECKPOINT_STEM, extra=None):
    manifest = {"config": dataclasses.asdict(config), "step": step, "data": data_identity,
                "objective": config.objective, "kind": "rcenp-classifier"}
    manifest.update(extra or {})
    return checkpoint.save(out_dir / stem, model.network.state_dict(), optimizer.state_dict() if optimizer else None, manifest)


def config_from_manifest(manifest, source=None) -> TrainConfig:
    """The ``TrainConfig`` a checkpoint manifest records; CheckpointError (naming ``source``, the
    file, when given) where it records none."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in manifest["config"].items() if k in fields}
        return TrainConfig(**values)
    except (KeyError, TypeError, AttributeError) as exc:
        raise checkpoint.CheckpointError(f"{source or 'the checkpoint'}: records no training configuration "
                                         f"({type(exc).__name__}: {exc})") from None


def recorded_config(out_dir, checkpoint_every=None) -> TrainConfig:
    """The configuration a run directory's checkpoint records (``rcenp train --out RUN --resume``
    with no settings), ``checkpoint_every`` replaced when given. Raises ValueError where there is
    no checkpoint to continue, and CheckpointError for an unreadable one."""
    out_dir = Path(out_dir)
    checkpoint.check_folder(out_dir, "--out")
    if (out_dir / ".lock").is_file():  # a run still making its first checkpoint: say so, not "no checkpoint"
        with _lock_run_folder(out_dir):
            pass
    _check_pair(out_dir)
    manifest_file = out_dir / (CHECKPOINT_STEM + ".json")
    if not manifest_file.is_file():
        raise ValueError(f"--resume without --dataset and --objective: {out_dir} holds no checkpoint to continue "
                         "(to start a run there, give its settings)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except ValueError as exc:
        raise checkpoint.CheckpointError(f"{manifest_file}: not a readable rcenp checkpoint ({exc})") from None
    config = config_from_manifest(manifest, manifest_file)
    return config if checkpoint_every is None else dataclasses.replace(config, checkpoint_every=checkpoint_every)


def _lock_run_folder(out_dir: Path):
    """The run folder's lock (``checkpoint.take_lock`` on out_dir/.lock), a context that releases
    it: ValueError naming the holder while another process trains into it; a no-op context where
    there is no fcntl."""
    lock = checkpoint.take_lock(out_dir / ".lock", lambda holder: (
        f"{out_dir}: another process{f' (pid {holder})' if holder else ''} is training into it; wait for it "
        "to end, or stop it and resume"))
    return lock if lock is not None else contextlib.nullcontext()


def _check_pair(out_dir: Path) -> None:
    """ValueError for checkpoint.npz without its checkpoint.json: a save writes the json before the
    npz (rcenp.checkpoint), so that is damage, not a save cut short."""
    if (out_dir / (CHECKPOINT_STEM + ".npz")).is_file() and not (out_dir / (CHECKPOINT_STEM + ".json")).is_file():
        raise ValueError(f"{out_dir} holds {CHECKPOINT_STEM}.npz without its {CHECKPOINT_STEM}.json (removed or "
                         "damaged): restore the json to go on, or choose another --out; nothing was overwritten")


def _last_logged_step(log: Path) -> int | None:
    """The step of train.log's last progress line ("... step N/STEPS ..."), None if it has none."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        words = line.split()
        if len(words) > 3 and words[2] == "step" and "/" in words[3]:
            head = words[3].split("/")[0]
            if head.isdigit():
                return int(head)
    return None


def train(config: TrainConfig, out_dir, data_root=None, resume=False, device=None, command=None, stop_at=None):
    """Train (or resume) into ``out_dir``; returns the final metrics dict (also in metrics.json).

    ``stop_at``: checkpoint after that step (below ``config.steps``) and return None without
    evaluating (a planned interruption; ``resume=True`` continues the same run). SIGINT or SIGTERM
    during the steps: the step in work ends, a checkpoint is saved at it, and KeyboardInterrupt or
    SystemExit(143) follows; ``resume=True`` continues bit for bit. Raises ValueError for settings
    that do not fit (a bad ``stop_at``, ``train_subset`` or ``batch_size`` over the training
    images, a checkpoint of another configuration, a checkpoint.npz without its json), and while
    another process trains into ``out_dir`` (its lock, out_dir/.lock), and DataError for missing data.

    Resuming a finished run (its last step saved and metrics.json written) changes nothing and
    returns its metrics.

    Each checkpoint records ``compute`` (``backend.device_identity``: the device, and on the GPU
    its name and CuPy's version; a resume elsewhere says so in train.log) and ``train_seconds``,
    the wall seconds of the steps it holds summed over every session (steps lost with a killed
    process count where they ran again); metrics.json gives it as ``train_seconds_total`` (None
    when the run resumed from a checkpoint older than that record) beside ``train_seconds_this_run``.
    """
    checkpoint.code_identity()  # the commit of the code this process runs, read once, now
    out_dir = Path(out_dir)
    checkpoint.check_folder(out_dir, "--out")
    if stop_at is not None and config.steps < 2:
        raise ValueError(f"--stop-at needs a run of at least 2 steps to stop within; this one has {config.steps}")
    if stop_at is not None and not 0 < stop_at < config.steps:
        raise ValueError(f"--stop-at must be in 1..{config.steps - 1}, below the run's {config.steps} steps "
                         f"(it ends there anyway), got {stop_at}")
    device = device or default_device()
    model = build_classifier(config).to(device)  # a bad depth fails here, before the data is read
    train_set = load(config.dataset, "train", data_root)
    test_set = load(config.dataset, "test", data_root)
    images, labels = train_set.images, train_set.labels
    if config.train_subset:
        if not 0 < config.train_subset <= len(labels):
            raise ValueError(f"--train-subset must be in 1..{len(labels)}, got {config.train_subset}")
        images, labels = images[:config.train_subset], labels[:config.train_subset]
    if config.batch_size > len(labels):
        raise ValueError(f"--batch-size {config.batch_size} is more than the {len(labels):,} training images used")
    data_identity = {"train": train_set.identity, "test": test_set.identity, "train_used": len(labels)}

    out_dir.mkdir(parents=True, exist_ok=True)  # only now: bad settings or missing data leave no folder behind
    with _lock_run_folder(out_dir):
        return _train_locked(config, out_dir, model, train_set, test_set, images, labels, data_identity, resume,
                             device, command, stop_at)


def _train_locked(config, out_dir, model, train_set, test_set, images, labels, data_identity, resume, device,
                  command, stop_at):
    """``train`` from its folder on, under the folder's lock: the checkpoint read, the steps, the
    final evaluation."""
    schedule = config.schedule()
    optimizer = SGD(model.parameters(), lr=schedule(0), momentum=config.momentum, weight_decay=config.weight_decay)
    start, other_host, seconds_before = 0, None, 0.0
    _check_pair(out_dir)
    if resume and (out_dir / (CHECKPOINT_STEM + ".json")).is_file():
        manifest, model_state, optimizer_state = checkpoint.load(out_dir / CHECKPOINT_STEM)
        saved = config_from_manifest(manifest, out_dir / (CHECKPOINT_STEM + ".json"))
        if dataclasses.replace(saved, checkpoint_every=config.checkpoint_every) != \
                dataclasses.replace(config, checkpoint_every=config.checkpoint_every):
            raise ValueError(f"{out_dir}: --resume with a configuration that differs from the checkpoint's "
                             f"({_differences(saved, config)})")
        model.network.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        start = int(manifest["step"])
        seconds_before = manifest.get("train_seconds") if start else 0.0  # None: a checkpoint from before it was kept
        other_host = checkpoint.host_change(manifest, device)
        if stop_at is not None and stop_at <= start:
            raise ValueError(f"--stop-at {stop_at}: {out_dir} is at step {start} already; stop at a later step, "
                             "or resume without --stop-at")
    elif not resume and (out_dir / (CHECKPOINT_STEM + ".json")).is_file():
        raise ValueError(f"{out_dir} already holds a checkpoint: pass --resume to continue it, or choose another --out")

    if start == config.steps and (out_dir / "metrics.json").is_file():  # nothing to do; its record stays as it was
        metrics = json.loads((out_dir / "metrics.json").read_text())
        log = Progress(out_dir / "train.log", config.steps)
        log.message(f"already finished: step {start} of {config.steps}; nothing to do ({out_dir / 'metrics.json'})")
        log.close()
        return metrics
    record = {"config": dataclasses.asdict(config), "command": command}
    if start and (out_dir / "config.json").is_file():  # the command that started the run stays; and the latest
        first = json.loads((out_dir / "config.json").read_text()).get("command")
        if first and first != command:
            record.update(command=first, resumed_with=command)
    checkpoint.atomic_write_text(out_dir / "config.json", json.dumps(record, indent=2) + "\n")
    logged = _last_logged_step(out_dir / "train.log") if resume else None
    progress = Progress(out_dir / "train.log", config.steps)
    if logged is not None and logged > start:
        progress.message(f"--resume: the log above reached step {logged}, past the last checkpoint (step {start}); "
                         f"steps {start + 1}-{logged} were lost with the process that made them and run again")
    if resume and start == 0:
        progress.message(f"--resume: no checkpoint in {out_dir} yet, so this starts at step 0")
    if other_host:
        progress.message(f"--resume on another host ({other_host}): float32 GEMMs round differently there, so "
                         "from here the run differs in the last bits from an uninterrupted one")
    progress.message(f"training {config.dataset} ResNet-{config.depth} ({config.objective.upper()}), "
                     f"{config.steps} steps from step {start}, on {device}; data: {train_set.describe()}"
                     + (f"; the first {len(labels):,} used (--train-subset)" if config.train_subset else ""))
    stream = BatchStream(len(labels), config.batch_size, config.seed)
    is_cifar = config.dataset == "cifar10"
    t0, images_done = time.monotonic(), 0
    end = config.steps if stop_at is None else max(start, min(stop_at, config.steps))
    held, done, saved = checkpoint.HeldSignals(), start, True

    compute = device_identity(device)

    def timing(elapsed):  # what a checkpoint records of its steps: their seconds over every session (None: unknown)
        return {"train_seconds": None if seconds_before is None else seconds_before + elapsed, "compute": compute}

    try:
        with held:  # Ctrl-C or SIGTERM: the step in work ends, is saved, and the run stops (below)
            for step in range(start, end):
                index = stream.indices(step)
                batch = images[index]
                if is_cifar:
                    batch = augment_cifar(batch, stream.augment_rng(step))
                x, y = to_device(batch, device), to_device(labels[index], device)
                optimizer.lr = schedule(step)
                model.train()
                s = model.raw_logits(x)
                loss = model.loss_from_logits(s, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                images_done += len(index)
                done = step + 1
                saved = (done % config.checkpoint_every == 0 or done == end) and done < config.steps
                if saved:
                    save_checkpoint(out_dir, model, optimizer, config, done, data_identity,
                                    extra=timing(time.monotonic() - t0))
                elapsed = time.monotonic() - t0
                rate = images_done / elapsed if elapsed > 0 else float("nan")
                predicted = model.prediction_logits(s.data).argmax(axis=1)
                acc = float(as_numpy((predicted == y).mean()))
                eta = (config.steps - done) * config.batch_size / rate if rate > 0 else float("inf")
                progress.update(done, f"loss {float(loss.data):.4f}  train acc {acc:.3f}  lr {optimizer.lr:g}  "
                                f"{rate:.0f} img/s", eta, force=done == end or held.signum is not None)
                if held.signum is not None:
                    break
        if held.signum is not None:
            if not saved:
                save_checkpoint(out_dir, model, optimizer, config, done, data_identity,
                                extra=timing(time.monotonic() - t0))
            progress.message(f"interrupted at step {done} of {config.steps}: saved; continue with --resume")
            held.stop()
        train_seconds = time.monotonic() - t0  # this session's; with the earlier ones' in total
        total = timing(train_seconds)
        if end < config.steps:
            progress.message(f"stopped at step {end} of {config.steps} as asked; continue with --resume")
            return None
        save_checkpoint(out_dir, model, optimizer, config, config.steps, data_identity, extra=total)
        progress.message(f"trained; now the test error on {test_set.describe()}")
        with no_grad():
            metrics = evaluate(model, test_set.images, test_set.labels,
                               progress=counter("test images", "computing the test error"))
        metrics.update({"dataset": config.dataset, "objective": config.objective, "depth": config.depth,
                        "steps": config.steps, "data": data_identity, "test_set": test_set.describe(),
                        "train_seconds_this_run": train_seconds, "train_seconds_total": total["train_seconds"],
                        "device": device})
        checkpoint.atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        progress.message(f"test error {metrics['test_error'] * 100:.2f}% ({metrics['errors']}/{metrics['n_test']}) "
                         f"on {test_set.describe()}")
        return metrics
    finally:
        progress.close()


def _differences(saved: TrainConfig, given: TrainConfig) -> str:
    da, db = dataclasses.asdict(saved), dataclasses.asdict(given)
    return ", ".join(f"{k}: {da[k]} in the checkpoint, {db[k]} given" for k in da
                     if da[k] != db[k] and k != "checkpoint_every")
