"""Black-box transfer from a finished white-box run: the substitute's own x*, scored on the target.

A transfer run (``run_attack`` with ``options["substitute"]``, paper §4.5) crafts on the substitute
exactly as the substitute's own white-box run of the same attack does: the same first n test
images, the same random targets (``random_targets`` over the run's n with its seed), the same
batches and the same attack call. Where such a run is finished, ``run_attack(..., crafted=DIR)``
takes its adversarial images and per-sample attack records instead of crafting them again, and
audits them on the target as a crafting run does (``rcenp.attacks.audit``): the same
``adversarial.npz`` and ``samples.jsonl`` as a transfer run that crafts with the code that made DIR
(tests/test_attack_transfer.py). The paper's Table 4 attacks two targets from each substitute, and
each substitute's crafting is its Table 3 white-box run, so this saves all of Table 4's attack
cost. ``run.json``'s ``crafted`` names DIR and the code that crafted it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rcenp.attacks.runfiles import brief, differing, read_samples

# what audit._extras adds to the attack's record: success after rounding, the detector's scores
AUDIT_KEYS = frozenset({"success_8bit", "success_16bit", "detected"} |
                       {f"{side}_{metric}" for side in ("clean", "adversarial")
                        for metric in ("confidence", "non_me", "log_kd")})


class CraftedMismatch(ValueError):
    """A folder offered as a transfer run's source of x* that is not the run it would craft."""


def settings_of(folder) -> dict:
    """What the finished attack run in ``folder`` asked for (run.json, else summary.json's
    ``settings``). Raises CraftedMismatch when it is not a finished run."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
        if (folder / "run.json").is_file():
            return json.loads((folder / "run.json").read_text())
        return summary["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CraftedMismatch(f"{folder}: not a finished attack run (no readable summary.json)") from None


def mismatch(crafted: dict, asked: dict, substitute_step=None) -> str | None:
    """Why a run that asked for ``crafted`` (``settings_of``) is not the substitute's own run of
    the transfer run ``asked`` (run_attack's record: options["substitute"], data,
    substitute_detector, eta) in one line, or None when its images are the ones the transfer
    would craft: the same substitute (and, where both are known, at training step
    ``substitute_step``), attack, options, n, seed, batch size and test images, one unsharded run,
    the substitute's detector as it is now, and η by the same rule."""
    from rcenp.checkpoint import CheckpointError
    from rcenp.models.registry import resolve

    substitute = asked["options"]["substitute"]
    try:
        same_model = resolve(str(crafted.get("model"))).resolve() == resolve(substitute).resolve()
    except (CheckpointError, OSError):  # a model that no longer resolves (moved, renamed) is not this one
        same_model = False
    if not same_model:
        return f"crafted on {crafted.get('model')!r}, not on the substitute {substitute!r}"
    if None not in (substitute_step, crafted.get("model_step")) and crafted["model_step"] != substitute_step:
        return f"crafted on {substitute} at training step {crafted['model_step']}, which is at {substitute_step} now"
    expected = {"attack": asked["attack"], "options": {k: v for k, v in asked["options"].items() if k != "substitute"},
                "n": asked["n"], "seed": asked["seed"], "batch_size": asked["batch_size"], "shard": [1, 1],
                "data": asked["data"], "detector": asked.get("substitute_detector")}
    there = {key: crafted.get(key) for key in expected}
    changed = differing(there, expected)
    if changed:
        return brief(changed, there, expected)
    if _eta_rule(crafted.get("eta")) != _eta_rule(asked.get("eta")) or (
            isinstance(crafted.get("eta"), dict) and isinstance(asked.get("eta"), dict)
            and differing(crafted["eta"], asked["eta"])):
        return f"eta: {json.dumps(crafted.get('eta'))} there, {json.dumps(asked.get('eta'))} now"
    return None


def crafted_record(folder, asked: dict, substitute_step=None) -> dict:
    """run.json's ``crafted`` for a transfer run that asked for ``asked`` and takes its images from
    ``folder``: the folder and the code that crafted them (its summary's ``code`` and
    ``code_by_batch``). Raises ValueError without a substitute, and CraftedMismatch (a ValueError)
    when ``folder`` is not the substitute's own finished run of these settings (``mismatch``)."""
    substitute = asked["options"].get("substitute")
    if substitute is None:
        raise ValueError("crafted images are for a transfer run: name its substitute")
    why = mismatch(settings_of(folder), asked, substitute_step)
    if why is not None:
        raise CraftedMismatch(f"{folder}: not {substitute}'s own {asked['attack']} run of these settings ({why})")
    made = json.loads((Path(folder) / "summary.json").read_text())
    return {"path": str(folder), "code": made.get("code"), "code_by_batch": made.get("code_by_batch")}


def _eta_rule(eta):
    """η's rule from run.json's ``eta``: a record's ``rule``, or the string earlier runs wrote."""
    return eta.get("rule") if isinstance(eta, dict) else eta


def attack_record(line: dict) -> dict:
    """The attack's own per-sample record (``AttackResult.records``) behind a ``samples.jsonl``
    line of a white-box run: the line without the test index, the true label and what
    ``sample_record`` and the audit added, its prediction under its original name."""
    record = {k: v for k, v in line.items()
              if k not in AUDIT_KEYS and k not in ("index", "true_label", "misclassified", "adversarial_prediction")}
    record["prediction"] = line["adversarial_prediction"]
    return record


class CraftedResult:
    """The part of an ``AttackResult`` that ``attack_and_audit`` reads in a transfer run: the
    adversarial images (N, C, H, W) and ``records()``."""

    def __init__(self, adversarial: np.ndarray, records: list[dict]):
        self.adversarial, self._records = adversarial, records

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[dict]:
        return [dict(r) for r in self._records]


def crafted_function(folder):
    """``fn(model, images, batch_size=..., crafted_index=..., targets=..., labels=..., **options)``
    that returns the finished run in ``folder``'s x* and attack records for the images at test
    positions ``crafted_index`` instead of attacking ``model`` (see the module docstring). Raises
    ValueError when the run lacks one of those images, or its clean image, true label or target
    differs from what the transfer run passes."""
    folder = Path(folder)
    with np.load(folder / "adversarial.npz") as data:
        arrays = {key: data[key] for key in ("clean", "adversarial", "labels", "indices")}
    lines = read_samples(folder)
    row_of = {int(i): r for r, i in enumerate(arrays["indices"])}

    def fn(model, images, batch_size=None, crafted_index=None, targets=None, labels=None, **options):
        try:
            rows = [row_of[int(i)] for i in crafted_index]
        except KeyError as exc:
            raise ValueError(f"{folder}: the crafted run has no test image {exc.args[0]}") from None
        if not np.array_equal(arrays["clean"][rows], np.asarray(images)):
            raise ValueError(f"{folder}: the crafted run's clean images differ from the test images here")
        if labels is not None and not np.array_equal(arrays["labels"][rows], np.asarray(labels)):
            raise ValueError(f"{folder}: the crafted run's true labels differ from the test labels here")
        records = [attack_record(lines[r]) for r in rows]
        if targets is not None and [r["target"] for r in records] != [int(t) for t in targets]:
            raise ValueError(f"{folder}: the crafted run attacked other target classes")
        return CraftedResult(arrays["adversarial"][rows], records)

    return fn
