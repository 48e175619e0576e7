"""Load a trained classifier by shipped name (``mnist-resnet32-rce``) or from a run directory."""
from __future__ import annotations

import json
import os
from pathlib import Path

from rcenp import checkpoint
from rcenp.checkpoint import CheckpointError
from rcenp.data.datasets import IMAGE_SHAPES

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def shipped_models() -> list[str]:
    """Names of the trained models that ship with the package (not their detectors)."""
    names = []
    for path in sorted(PRETRAINED_DIR.glob("*.json")):
        try:
            kind = json.loads(path.read_text()).get("kind")
        except (OSError, ValueError):
            continue
        if kind == "rcenp-classifier":
            names.append(path.stem)
    return names


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_info(name: str) -> dict:
    """What a shipped model's manifest says, without loading its weights.

    Keys: ``name``, ``dataset``, ``train_images`` and ``test_images`` (the sizes of the splits it
    was trained and tested on; fewer than the published ones for a subset), ``subset`` (bool),
    ``depth``, ``objective``, ``preset``, ``seed`` (the training seed: initialisation, batch order
    and augmentation), ``schedule_scale`` (the preset's schedule times this:
    ``rcenp train --schedule-scale``), ``steps``, ``batch_size``, ``test_error`` (a fraction, on
    ``test_images``), ``detector`` (a fitted detector beside it), ``detector_metric`` and
    ``detector_threshold`` (None without one), ``bytes`` (weights, manifest and detector files).
    Raises CheckpointError if ``name`` is not a shipped classifier.
    """
    stem = PRETRAINED_DIR / name
    manifest = _read_json(stem.with_suffix(".json"))
    if not manifest or manifest.get("kind") != "rcenp-classifier":
        raise CheckpointError(f"{name}: not a shipped model (shipped: {', '.join(shipped_models()) or 'none yet'})")
    config, data = manifest["config"], manifest.get("data", {})
    detector_stem = PRETRAINED_DIR / f"{name}-detector"
    detector = _read_json(detector_stem.with_suffix(".json"))
    files = [stem.with_suffix(".json"), stem.with_suffix(".npz"),
             detector_stem.with_suffix(".json"), detector_stem.with_suffix(".npz")]
    train, test = data.get("train", {}), data.get("test", {})
    return {
        "name": name, "dataset": config["dataset"],
        "train_images": data.get("train_used", train.get("n")), "test_images": manifest.get("n_test", test.get("n")),
        "subset": bool(train.get("subset") or test.get("subset")),
        "depth": config["depth"], "objective": config["objective"], "preset": config.get("preset"),
        "seed": config.get("seed"),
        "schedule_scale": config.get("schedule_scale", 1.0),
        "steps": manifest.get("step"), "batch_size": config.get("batch_size"), "test_error": manifest.get("test_error"),
        "detector": detector is not None,
        "detector_metric": detector.get("metric") if detector else None,
        "detector_threshold": detector.get("threshold") if detector else None,
        "bytes": sum(f.stat().st_size for f in files if f.is_file()),
    }


def models_table(infos: list[dict]) -> str:
    """A plain aligned text table of :func:`model_info` records, one line per model."""
    headers = ("name", "data set", "train/test images", "depth", "objective", "schedule", "test error", "detector",
               "size")
    rows = [(i["name"], i["dataset"] + (" (subset)" if i["subset"] else ""),
             f"{i['train_images']:,}/{i['test_images']:,}", str(i["depth"]), i["objective"].upper(), _schedule(i),
             "-" if i["test_error"] is None else f"{i['test_error'] * 100:.2f}%",
             f"{i['detector_metric']}, T = {i['detector_threshold']:.3f}" if i["detector"] else "not fitted",
             f"{i['bytes'] / 1e6:.1f} MB") for i in infos]
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]
    right = {2, 3, 6, 8}  # numeric columns
    return "\n".join("  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                               for c, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in [headers, *rows])


def _schedule(info) -> str:
    """"subset 2x, 18,306 steps": the preset, its scale where not 1, the steps trained."""
    scale = info.get("schedule_scale") or 1.0
    name = (info.get("preset") or "?") + ("" if scale == 1 else f" {scale:g}x")
    return name if info.get("steps") is None else f"{name}, {info['steps']:,} steps"


def resolve(name_or_path) -> Path:
    """The checkpoint stem for a shipped name, a run directory, or a checkpoint path; TypeError for
    anything but a string or path."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"a model is named by a string or a path (rcenp.models.shipped_models() lists the "
                        f"shipped ones), got {type(name_or_path).__name__}")
    candidate = Path(name_or_path)
    if candidate.is_dir():
        return candidate / "checkpoint"
    if candidate.suffix in (".json", ".npz") and candidate.is_file():
        return candidate.with_suffix("")
    shipped = PRETRAINED_DIR / str(name_or_path)
    if shipped.with_suffix(".json").is_file():
        return shipped
    known = ", ".join(shipped_models()) or "none yet"
    raise CheckpointError(f"{name_or_path}: neither a run directory, a checkpoint, nor a shipped model (shipped: {known})")


def unfinished(name, manifest) -> str | None:
    """"NAME is an unfinished run: its checkpoint is at step S of N" for a checkpoint taken before
    its run's last step (``rcenp train --stop-at``, or an interrupted run), else None."""
    step, steps = manifest.get("step"), manifest.get("config", {}).get("steps")
    if step is None or steps is None or step >= steps:
        return None
    return f"{name} is an unfinished run: its checkpoint is at step {step:,} of {steps:,}"


def load(name_or_path, device: str | None = None):
    """(model, manifest) for a shipped model name (``rcenp models`` lists them) or a run directory.

    model: a ``rcenp.objectives.Classifier`` in eval mode on ``device`` ("cpu", "cuda"; default
    ``$RCENP_DEVICE``, else cpu), its parameters in the checkpoint's dtype (float32 for every
    shipped model; ``model.astype(np.float64)`` for float64 work); it takes images (N, C, H, W) in
    [-0.5, 0.5] and returns prediction logits (N, L). manifest: the checkpoint's JSON dict
    (``config`` of the training run, ``data`` identities, ``step``, ``test_error`` where measured,
    the code it was trained with). Raises ``rcenp.checkpoint.CheckpointError`` for an unknown name,
    a folder without a checkpoint, or a file that is not an rcenp classifier, and TypeError for a
    name that is not a string or path."""
    from rcenp.backend import default_device
    from rcenp.train import build_classifier, config_from_manifest

    manifest, model_state, _ = checkpoint.load(resolve(name_or_path))
    if manifest.get("kind") != "rcenp-classifier":
        raise CheckpointError(f"{name_or_path}: not an rcenp classifier checkpoint")
    model = build_classifier(config_from_manifest(manifest))
    floats = {v.dtype for v in model_state.values() if v.dtype.kind == "f"}
    if len(floats) == 1:  # a mixed checkpoint is refused by load_state_dict, naming the array
        model.astype(floats.pop())
    model.network.load_state_dict(model_state)
    model.to(device or default_device()).eval()
    model.weights_sha256 = manifest.get("arrays_sha256")  # ties a detector to these weights (Detector.save)
    model.image_shape = IMAGE_SHAPES.get(manifest["config"].get("dataset"))
    return model, manifest
