"""The training features behind C&W-wb's η_t in ``rcenp attack`` runs (``rcenp.attacks.cw_wb``).

η_t is −log of the median KD over every training feature of class t (protocol §5.4, the authors'
``median_for_attack.m``). A run uses the exact η only when the training images found here are the
ones the crafting model was trained on (the same count and SHA-256 as its manifest's
``data.train``) and cover the images its detector drew the kernel points from (the first
``info["fitted_on"]``); otherwise cw_wb's documented biased-loose approximation, with the reason.
"""
from __future__ import annotations

import json

import numpy as np

from rcenp.attacks.runfiles import differing
from rcenp.backend import as_numpy

_CACHE: dict = {}  # key -> (features, labels), least recently used first
CACHED_MODELS = 4


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


def training_features(detector, model_ref, train, progress=None):
    """Z (N_tr, D) float32 and true labels (N_tr,) of the training images ``detector`` drew its
    kernel points from (the first ``info["fitted_on"]`` of ``train``, a Dataset that
    ``eta_training_split`` accepted). Cached per process by model reference, detector identity and
    split identity, the ``CACHED_MODELS`` most recently used ((60,000 × 64) float32 is 15 MB each:
    a ``reproduce`` run returns to a model's η after other models' cells); ``progress(done, total)``
    is called as the features are computed (not for a cached answer)."""
    from rcenp.attacks.runfiles import detector_identity

    key = (str(model_ref), json.dumps(detector_identity(model_ref)), json.dumps(train.identity))
    if key not in _CACHE:
        count = int(detector.info.get("fitted_on", len(train.labels)))
        z, _ = detector.features_and_logits(train.images[:count], progress=progress)
        while len(_CACHE) >= CACHED_MODELS:
            del _CACHE[next(iter(_CACHE))]  # the least recently used
        _CACHE[key] = (as_numpy(z).astype(np.float32), np.asarray(train.labels[:count]))
    _CACHE[key] = _CACHE.pop(key)  # now the most recently used
    return _CACHE[key]
