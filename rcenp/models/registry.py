"""Load a trained classifier by shipped name (``mnist-resnet32-rce``) or from a run directory."""
from __future__ import annotations

import json
from pathlib import Path

from rcenp import checkpoint
from rcenp.checkpoint import CheckpointError

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


def resolve(name_or_path) -> Path:
    """The checkpoint stem for a shipped name, a run directory, or a checkpoint path."""
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


def load(name_or_path, device: str | None = None):
    """A ``Classifier`` in eval mode with the checkpoint's weights, and its manifest."""
    from rcenp.backend import default_device
    from rcenp.train import build_classifier, config_from_manifest

    manifest, model_state, _ = checkpoint.load(resolve(name_or_path))
    if manifest.get("kind") != "rcenp-classifier":
        raise CheckpointError(f"{name_or_path}: not an rcenp classifier checkpoint")
    model = build_classifier(config_from_manifest(manifest))
    model.network.load_state_dict(model_state)
    model.to(device or default_device()).eval()
    return model, manifest
