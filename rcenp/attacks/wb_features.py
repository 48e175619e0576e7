"""The training features behind C&W-wb's η_t in ``rcenp attack`` runs (``rcenp.attacks.cw_wb``).

η_t is −log of the median KD over every training feature of class t (protocol §5.4, the authors'
``median_for_attack.m``). A run uses the exact η only when the training images found here are the
ones the crafting model was trained on (the same count and SHA-256 as its manifest's
``data.train``) and cover the images its detector drew the kernel points from (the first
``info["fitted_on"]``); otherwise cw_wb's documented biased-loose approximation, with the reason.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from rcenp import checkpoint
from rcenp.attacks.runfiles import differing
from rcenp.backend import as_numpy

_CACHE: dict = {}  # key -> (features, labels), least recently used first
CACHED_MODELS = 4
DISK_CACHED_FILES = 16  # a file is 15.8 MB for 60,000 MNIST features: at most about 250 MB on disk


def eta_training_split(manifest: dict, detector, data_dir=None):
    """(the training split to take η from or None, run.json's ``eta`` record).

    manifest: the crafting model's manifest (``config.dataset``, ``data.train``); detector: its
    fitted ``Detector``. The record is {"rule": "exact: training features", "train": {"n",
    "sha256"}} or {"rule": "approximation from the detector's kernel points", "why": ...}, so a
    resume in an environment with other training data is refused as a settings change."""
    from rcenp.data import DataError, load

    dataset = manifest["config"]["dataset"]
    approximation = "approximation from the detector's kernel points"
    try:
        train = load(dataset, "train", data_dir)
    except DataError:
        return None, {"rule": approximation, "why": f"no {dataset} training images found"}
    trained_on = (manifest.get("data") or {}).get("train") or {}
    found = {"n": train.identity.get("n"), "sha256": train.identity.get("sha256")}
    if differing(found, {"n": trained_on.get("n"), "sha256": trained_on.get("sha256")}):  # by content
        return None, {"rule": approximation,
                      "why": f"the {dataset} training images found ({found['n']}) are not the model's "
                             f"({trained_on.get('n', 'unrecorded')}, by SHA-256)"}
    fitted_on = int(detector.info.get("fitted_on", len(train.labels)))
    if fitted_on > len(train.labels):
        return None, {"rule": approximation,
                      "why": f"the detector's kernel came from {fitted_on} training images, {len(train.labels)} found"}
    return train, {"rule": "exact: training features", "train": found}


def disk_cache_file(detector, train, count: int) -> Path | None:
    """Where ``training_features`` keeps a computed pass between processes: RCENP_FEATURE_CACHE
    (a folder; "off" turns the cache off), else ``<user cache>/features`` (``rcenp.data.datasets.
    user_cache``), in a file named by the SHA-256 of what the features depend on: the model's
    weights, the training images, their count, the device, and the library's source code (so any
    change to the code computes afresh). None when the cache is off or the weights or images carry
    no SHA-256."""
    from rcenp.attacks.runfiles import source_sha256
    from rcenp.data.datasets import user_cache

    setting = os.environ.get("RCENP_FEATURE_CACHE", "")
    if setting == "off":
        return None
    weights, images = getattr(detector.model, "weights_sha256", None), train.identity.get("sha256")
    if not weights or not images:
        return None
    key = json.dumps({"weights": weights, "images": images, "n": count, "device": str(detector.model.device),
                      "code": source_sha256()}, sort_keys=True)
    folder = Path(setting).expanduser() if setting else user_cache() / "features"
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.npz"


def _read_cached(path: Path | None, labels: np.ndarray):
    """(features, labels) from a cache file that holds these labels, else None."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            z, held = saved["features"], saved["labels"]
    except (OSError, ValueError, KeyError):
        return None  # damaged: computed afresh and rewritten
    if z.ndim != 2 or len(z) != len(labels) or not np.array_equal(held, labels):
        return None
    try:
        os.utime(path)  # recently used: kept longest by prune_disk_cache
    except OSError:
        pass
    return z, labels


def prune_disk_cache(folder: Path, keep: int = DISK_CACHED_FILES) -> list[Path]:
    """Delete all but the ``keep`` most recently used cache files (``*.npz``, by modification
    time, which a read refreshes) in ``folder``; returns those deleted. Each model and code
    version adds a file, so without this the cache only grows."""
    try:
        files = sorted(Path(folder).glob("*.npz"), key=lambda f: f.stat().st_mtime, reverse=True)
    except OSError:
        return []
    gone = []
    for old in files[keep:]:
        try:
            old.unlink()
            gone.append(old)
        except OSError:
            pass
    return gone


def training_features(detector, model_ref, train, progress=None):
    """Z (N_tr, D) float32 and true labels (N_tr,) of the training images ``detector`` drew its
    kernel points from (the first ``info["fitted_on"]`` of ``train``, a Dataset that
    ``eta_training_split`` accepted). Cached per process by model reference, detector identity and
    split identity, the ``CACHED_MODELS`` most recently used ((60,000 × 64) float32 is 15 MB each:
    a ``reproduce`` run returns to a model's η after other models' cells); ``progress(done, total)``
    is called as the features are computed (not for a cached answer). A computed pass is also kept
    on disk (``disk_cache_file``) for later processes: a resumed ``reproduce`` run, another
    ``rcenp attack``; the folder keeps the ``DISK_CACHED_FILES`` most recently used passes."""
    from rcenp.attacks.runfiles import detector_identity

    key = (str(model_ref), json.dumps(detector_identity(model_ref)), json.dumps(train.identity))
    if key not in _CACHE:
        count = int(detector.info.get("fitted_on", len(train.labels)))
        labels = np.asarray(train.labels[:count])
        path = disk_cache_file(detector, train, count)
        found = _read_cached(path, labels)
        if found is None:
            z, _ = detector.features_and_logits(train.images[:count], progress=progress)
            found = (as_numpy(z).astype(np.float32), labels)
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    checkpoint.atomic_write_npz(path, features=found[0], labels=labels)
                    prune_disk_cache(path.parent)
                except OSError:
                    pass  # an unwritable cache only costs the next process this pass
        while len(_CACHE) >= CACHED_MODELS:
            del _CACHE[next(iter(_CACHE))]  # the least recently used
        _CACHE[key] = found
    _CACHE[key] = _CACHE.pop(key)  # now the most recently used
    return _CACHE[key]
