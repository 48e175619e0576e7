"""Read finished cells back: summaries, per-sample records, detection figures beyond the paper."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from rcenp.reproduce.cells import Cell

METRICS = ("confidence", "non_me", "log_kd")
TARGET_FPR = 0.05


class Results:
    """The plan's cells and their outcomes, looked up by place: ``get(dataset, depth, objective, name)``."""

    def __init__(self, cells: list[Cell], outcomes: dict):
        self.cells = {c.key: c for c in cells}
        self.outcomes = outcomes
        self._by_place = {(c.dataset, c.depth, c.objective, c.key.split("/", 1)[1]): c for c in cells}
        self._cache: dict = {}

    def get(self, dataset, depth, objective, name) -> Cell | None:
        """The planned cell at this place, or None when the run's parts did not plan it."""
        return self._by_place.get((dataset, depth, objective, name))

    def status(self, cell: Cell | None) -> str | None:
        """None when the cell is finished; else the reason to print in its place."""
        if cell is None:
            return "not run (part not selected)"
        outcome = self.outcomes.get(cell.key)
        if outcome is None:
            return "not run"
        return None if outcome["status"] == "done" else outcome.get("reason", outcome["status"])

    def path(self, cell: Cell) -> Path:
        return Path(self.outcomes[cell.key]["path"])

    def summary(self, cell: Cell | None) -> dict | None:
        """summary.json of a finished attack cell (None otherwise)."""
        if cell is None or self.status(cell):
            return None
        key = ("summary", cell.key)
        if key not in self._cache:
            self._cache[key] = json.loads((self.path(cell) / "summary.json").read_text())
        return self._cache[key]

    def result(self, cell: Cell | None) -> dict | None:
        """result.json of a finished test-error cell."""
        if cell is None or self.status(cell):
            return None
        return json.loads((self.path(cell) / "result.json").read_text())

    def samples(self, cell: Cell | None) -> list[dict] | None:
        """The per-sample records (samples.jsonl, or the published samples.jsonl.gz)."""
        if cell is None or self.status(cell):
            return None
        key = ("samples", cell.key)
        if key not in self._cache:
            self._cache[key] = read_samples(self.path(cell))
        return self._cache[key]


def read_samples(cell_dir: Path) -> list[dict]:
    """One dict per image from ``samples.jsonl`` or ``samples.jsonl.gz`` in ``cell_dir``."""
    plain, packed = cell_dir / "samples.jsonl", cell_dir / "samples.jsonl.gz"
    text = plain.read_text() if plain.is_file() else gzip.decompress(packed.read_bytes()).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def detection_rate_at_fpr(normal, adversarial, fpr: float = TARGET_FPR) -> float:
    """The largest fraction of adversarial inputs rejected by a threshold on the score ("normal
    iff score ≥ t") that rejects at most ``fpr`` of the normal inputs: TPR at ``fpr`` FPR with the
    adversarial class as the detector's positive. normal, adversarial: 1-D scores, higher = more normal."""
    from rcenp.detect.roc import roc_curve

    accepted_adv, accepted_normal, _ = roc_curve(normal, adversarial)
    ok = (1.0 - accepted_normal) <= fpr + 1e-12
    return float((1.0 - accepted_adv[ok]).max())


def beyond_paper(samples: list[dict]) -> dict:
    """Per metric, TPR at 5% FPR on the paper-rule pairs (clean correct, adversarial misclassified),
    as ``{"tpr5_<metric>": value or None}``."""
    out = {}
    if not samples or "clean_log_kd" not in samples[0]:
        return {f"tpr5_{m}": None for m in METRICS}
    true = np.array([s["true_label"] for s in samples])
    clean = np.array([s["clean_prediction"] for s in samples])
    adv = np.array([s["adversarial_prediction"] for s in samples])
    keep = (clean == true) & (adv != true)
    for metric in METRICS:
        if not keep.any():
            out[f"tpr5_{metric}"] = None
            continue
        normal = np.array([s[f"clean_{metric}"] for s in samples], float)[keep]
        adversarial = np.array([s[f"adversarial_{metric}"] for s in samples], float)[keep]
        out[f"tpr5_{metric}"] = detection_rate_at_fpr(normal, adversarial)
    return out


def wb_figures(samples: list[dict]) -> dict:
    """Table 3's figures from C&W-wb records: over images classified correctly when clean, the
    ratio whose returned image has f₂ > 0 (no iterate classified as the target with f₂ ≤ 0), and
    the mean ‖δ‖₂/√d (0-255) over those whose returned image is classified as the target."""
    correct = [s for s in samples if s["clean_prediction"] == s["true_label"]]
    if not correct:
        return {"n": 0, "ratio_f2_positive": None, "distortion": None, "n_distortion": 0}
    reached = [s for s in correct if s.get("stop_reason") in ("success", "f2 > 0")]
    return {"n": len(correct), "ratio_f2_positive": float(np.mean([s["f2"] > 0 for s in correct])),
            "distortion": float(np.mean([s["l2_paper"] for s in reached])) if reached else None,
            "n_distortion": len(reached),
            "success_rate": float(np.mean([s["stop_reason"] == "success" for s in correct]))}
