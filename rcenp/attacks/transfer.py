"""Black-box transfer from a finished white-box run: the substitute's own x*, scored on the target.

A transfer run (``run_attack`` with ``options["substitute"]``, paper §4.5) crafts on the substitute
exactly as the substitute's own white-box run of the same attack does: the same first n test
images, the same random targets (``random_targets`` over the run's n with its seed), the same
batches and the same attack call. Where such a run is finished, ``run_attack(..., crafted=DIR)``
takes its adversarial images and per-sample attack records instead of crafting them again, and
audits them on the target as a crafting run does (``rcenp.attacks.audit``): the same
``adversarial.npz`` and ``samples.jsonl`` as a transfer run that crafts with the code that made DIR
(tests/test_attack_transfer.py). Any attack works so; the paper's Table 4 attacks two targets
from each substitute with C&W-wb, and each substitute's crafting is its Table 3 white-box run, so
this saves all of Table 4's attack cost.

Before anything is written, DIR is checked (``CraftedRun``): its settings against the transfer
run's (``mismatch``), its files against each other (a record per image, in order, whose true label
and L2 distortion are those of the stored images), and its images against the substitute as it is
now (C&W: the margins it recorded, recomputed; other attacks: its predictions), which also catches
a substitute whose weights changed since. ``run.json``'s ``crafted`` names DIR (absolute), the
SHA-256 of its two files and the code that crafted them; a resume checks them again.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from rcenp.attacks.core import distortions
from rcenp.attacks.runfiles import brief, comparable, differing, read_samples
from rcenp.backend import as_numpy
from rcenp.checkpoint import file_sha256

# what audit._extras adds to the attack's record: success after rounding, the detector's scores
AUDIT_KEYS = frozenset({"success_8bit", "success_16bit", "detected"} |
                       {f"{side}_{metric}" for side in ("clean", "adversarial")
                        for metric in ("confidence", "non_me", "log_kd")})


class CraftedMismatch(ValueError):
    """A folder offered as a transfer run's source of x* that is not the run it would craft."""


MARGIN_TOLERANCE = 1e-3  # logits: a recomputed C&W margin off by more means other weights, not rounding


class CraftedRun:
    """A finished white-box attack run read from ``folder`` to be scored by a transfer run:
    ``settings`` (its run.json, else summary.json's), ``summary``, ``arrays`` (adversarial.npz's
    clean, adversarial (N, C, H, W), labels, indices (N,)), ``lines`` (samples.jsonl's).
    Raises CraftedMismatch (one line) for a folder that is not a finished run, a damaged file, or
    files that disagree with each other."""

    def __init__(self, folder):
        self.folder = Path(folder).resolve()
        if not (self.folder / "summary.json").is_file():
            raise CraftedMismatch(f"{folder}: " + ("an unfinished attack run (no summary.json): finish it first "
                                                   "(rcenp attack ... --resume)" if (self.folder / "run.json").is_file()
                                                   else "not a finished attack run (no summary.json)"))
        try:
            self.summary = json.loads((self.folder / "summary.json").read_text())
            run_file = self.folder / "run.json"
            self.settings = json.loads(run_file.read_text()) if run_file.is_file() else self.summary["settings"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CraftedMismatch(f"{folder}: unreadable run.json or summary.json ({type(exc).__name__})") from None
        try:
            with np.load(self.folder / "adversarial.npz") as data:
                self.arrays = {key: data[key] for key in ("clean", "adversarial", "labels", "indices")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise CraftedMismatch(f"{folder}: no readable adversarial.npz ({type(exc).__name__})") from None
        self.samples_file = next((self.folder / name for name in ("samples.jsonl", "samples.jsonl.gz")
                                  if (self.folder / name).is_file()), None)
        if self.samples_file is None:
            raise CraftedMismatch(f"{folder}: no samples.jsonl (or samples.jsonl.gz)")
        try:
            self.lines = read_samples(self.folder)
        except (OSError, ValueError, EOFError) as exc:
            raise CraftedMismatch(f"{folder}: unreadable {self.samples_file.name} ({type(exc).__name__})") from None
        if (why := self._inconsistency()) is not None:
            raise CraftedMismatch(f"{folder}: {why}")

    def _inconsistency(self) -> str | None:
        a, lines = self.arrays, self.lines
        n = len(a["indices"])
        if not len(a["clean"]) == len(a["adversarial"]) == len(a["labels"]) == n == len(lines):
            return (f"{self.samples_file.name} has {len(lines)} records for the {n} images of adversarial.npz"
                    if len(lines) != n else "adversarial.npz's arrays differ in length")
        try:
            if [int(line["index"]) for line in lines] != a["indices"].tolist():
                return f"{self.samples_file.name}'s records are not adversarial.npz's images, in its order"
            if [int(line["true_label"]) for line in lines] != a["labels"].tolist():
                return f"{self.samples_file.name}'s true labels differ from adversarial.npz's"
            l2 = distortions(a["clean"], a["adversarial"])["l2"]
            if not np.allclose([float(line["l2"]) for line in lines], l2, rtol=1e-9, atol=1e-12):
                return f"the L2 distortions in {self.samples_file.name} are not those of adversarial.npz's images"
        except (KeyError, TypeError, ValueError) as exc:
            return f"{self.samples_file.name} lacks a field of an attack record ({exc})"
        return None

    def mismatch(self, asked: dict, substitute_step=None) -> str | None:
        """``mismatch`` of this run's settings for the transfer run ``asked``; a transfer run is
        named as such."""
        crafted_on = (self.settings.get("options") or {}).get("substitute")
        if crafted_on is not None:
            return (f"a transfer run (crafted on {crafted_on}, scored on {self.settings.get('model')}), not "
                    f"{asked['options']['substitute']}'s own run")
        return mismatch(self.settings, asked, substitute_step)

    def substitute_disagrees(self, substitute, batch_size: int) -> str | None:
        """Why the substitute as it is now did not make these records, or None: for C&W records
        the margins recorded from a separate forward pass (``final_margin_recomputed``), recomputed
        within ``MARGIN_TOLERANCE``; otherwise the recorded predictions of the adversarial images."""
        from rcenp.attacks.cw_result import margins

        adversarial = self.arrays["adversarial"]
        if all("final_margin_recomputed" in line for line in self.lines):
            targeted = np.array([line["target"] >= 0 for line in self.lines])
            for flag in (True, False):
                rows = np.flatnonzero(targeted == flag)
                if not len(rows):
                    continue
                classes = [self.lines[r]["target" if flag else "label"] for r in rows]
                _, margin = margins(substitute, adversarial[rows], np.array(classes), flag, batch_size)
                recorded = np.array([self.lines[r]["final_margin_recomputed"] for r in rows])
                off = np.abs(margin - recorded)
                if (off > MARGIN_TOLERANCE).any():
                    return (f"the substitute's margins on these images differ from the recorded ones by up to "
                            f"{off.max():.3g} (other weights than those that crafted them?)")
            return None
        predicted = substitute.predict_logits(adversarial, batch_size).argmax(axis=1)
        differ = int((as_numpy(predicted) != np.array([line["adversarial_prediction"] for line in self.lines])).sum())
        if differ:
            return (f"the substitute predicts {differ} of these images otherwise than recorded (other weights than "
                    "those that crafted them?)")
        return None

    def record(self) -> dict:
        """run.json's ``crafted``: the folder, the SHA-256 of its two files, the code that made them."""
        return {"path": str(self.folder),
                "sha256": {name: file_sha256(self.folder / name) for name in ("adversarial.npz", self.samples_file.name)},
                "code": self.summary.get("code")}

    def function(self):
        """``fn(model, images, batch_size=..., crafted_index=..., targets=..., labels=..., **options)``
        that returns this run's x* and attack records for the images at test positions
        ``crafted_index`` instead of attacking ``model``. Raises ValueError when the run lacks one of
        those images, or its clean image, true label or target differs from what it is passed."""
        arrays, lines, folder = self.arrays, self.lines, self.folder
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


def checked(folder, asked: dict, substitute, substitute_step=None, batch_size: int = 100) -> CraftedRun:
    """The finished run in ``folder`` (``CraftedRun``) after every check that it is what the
    transfer run ``asked`` would craft with ``substitute`` (its model, at training step
    ``substitute_step``): ``mismatch`` and ``CraftedRun.substitute_disagrees``. Raises ValueError
    without a substitute in ``asked``, CraftedMismatch (one line) when a check fails."""
    name = asked["options"].get("substitute")
    if name is None:
        raise ValueError("crafted images are for a transfer run: name its substitute")
    run = CraftedRun(folder)
    why = run.mismatch(asked, substitute_step) or run.substitute_disagrees(substitute, batch_size)
    if why is not None:
        raise CraftedMismatch(f"{folder}: not {name}'s own {asked['attack']} run of these settings ({why})")
    return run


def precheck(folder, attack: str, options: dict, n: int, seed: int, batch_size: int, substitute) -> None:
    """The checks of ``checked`` that need no model or data (``rcenp attack --jobs`` makes them
    before it starts its shards, which make them all): a finished, consistent white-box run of
    ``attack`` with these ``options`` (no substitute), ``n``, ``seed`` and ``batch_size`` on
    ``substitute``. Raises CraftedMismatch (one line)."""
    run = CraftedRun(folder)
    asked = {"attack": attack, "options": dict(options, substitute=substitute), "n": n, "seed": seed,
             "batch_size": batch_size, "data": run.settings.get("data"),  # the shards compare these three
             "substitute_detector": run.settings.get("detector"), "eta": run.settings.get("eta")}
    why = run.mismatch(asked)
    if why is not None:
        raise CraftedMismatch(f"{folder}: not {substitute}'s own {attack} run of these settings ({why})")


def mismatch(crafted: dict, asked: dict, substitute_step=None) -> str | None:
    """Why a run that asked for ``crafted`` (``CraftedRun.settings``) is not the substitute's own run of
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
    there, expected = comparable({key: crafted.get(key) for key in expected}), comparable(expected)
    changed = differing(there, expected)
    if changed:
        return brief(changed, there, expected)
    if eta_rule(crafted.get("eta")) != eta_rule(asked.get("eta")) or (
            isinstance(crafted.get("eta"), dict) and isinstance(asked.get("eta"), dict)
            and differing(crafted["eta"], asked["eta"])):
        return f"eta: {json.dumps(crafted.get('eta'))} there, {json.dumps(asked.get('eta'))} now"
    return None


def eta_rule(eta):
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
