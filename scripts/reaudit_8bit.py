#!/usr/bin/env python3
"""Recompute ``success_8bit`` (and ``success_16bit``) of finished C&W-family attack runs by the
attack's own test, as ``rcenp attack`` audits since 978d080 (``AttackResult.criterion``: C&W's κ
margin, C&W-wb's f₂ ≤ 0 on the attacker's density). Runs audited before then counted the argmax
alone, so a C&W-hc image rounded below its margin, or a C&W-wb fallback with f₂ > 0, passed.

    RCENP_DATA=../shared/data python scripts/reaudit_8bit.py results/cw-9x1000/*/cw-hc results/cw/*/*

For each run folder (a finished ``rcenp attack`` run: summary.json, samples.jsonl or a published
copy's samples.jsonl.gz, adversarial.npz) it rebuilds the test from the run's own settings
(``effective_options``), reads back the adversarial images, rounds them as the audit does
(``rcenp.attacks.audit.quantize``), rewrites the changed ``success_8bit`` fields,
``counts.success_8bit`` and ``success_rate_8bit`` through temporary files and renames, and marks
the summary with ``success_8bit_test``; nothing else in the files changes. C&W-wb's attacker
density is rebuilt from the run's detector, kernel, attacker points and seed with the η the run
used (its training features, or the approximation it recorded), and refused unless every
sample's η_t is the one recorded. Transfer runs (success: the target misclassifies)
and the other attacks (the argmax is their test) are left as they are. Prints one line per run.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rcenp import checkpoint  # noqa: E402
from rcenp.attacks.audit import quantize  # noqa: E402
from rcenp.attacks.cw_result import margin_test  # noqa: E402
from rcenp.attacks.runfiles import effective_options, read_samples  # noqa: E402
from rcenp.attacks.summary import ROUNDED_TEST  # noqa: E402


def criterion(run_dir: Path, summary: dict, records: list[dict], data_dir=None):
    """The run's success test for images of its samples (``AttackResult.criterion``)."""
    from rcenp.attacks.cw_wb import attack_density, attack_kernel, success_test
    from rcenp.attacks.run import fitted_detector
    from rcenp.attacks.wb_features import eta_training_split, training_features
    from rcenp.models.registry import load

    settings = summary["settings"]
    options = effective_options(settings["attack"], settings["options"])
    model, manifest = load(settings["model"], "cpu")
    targets = np.array([r["target"] for r in records])
    targeted = bool((targets >= 0).all())
    classes = targets if targeted else np.array([r["label"] for r in records])
    if settings["attack"] != "cw-wb":
        return margin_test(model, classes, targeted, float(options["kappa"]), 100)
    kappa = float(options["stage2"]["kappa"])
    detector = fitted_detector(model, settings["model"])
    eta_record = settings.get("eta") or ""   # the η this run used: a rule, or {"rule": ..., ...}
    exact = (eta_record.get("rule", "") if isinstance(eta_record, dict) else eta_record).startswith("exact")
    train, _ = eta_training_split(manifest, detector, data_dir) if exact else (None, None)
    if exact and train is None:
        raise SystemExit(f"{run_dir}: its η came from the training features, which are not here (RCENP_DATA)")
    features = training_features(detector, settings["model"], train) if exact else (None, None)
    points, eta = attack_kernel(detector, model, options["kernel"], options["attacker_points"],
                                settings["seed"], *features)
    recorded = np.array([r["eta_t"] for r in records])
    if not np.array_equal(eta[targets], recorded):
        raise SystemExit(f"{run_dir}: the rebuilt η_t differ from the recorded ones (max |Δ| "
                         f"{np.abs(eta[targets] - recorded).max():.3g}): not the run's density")
    return success_test(model, attack_density(model, points, detector.sigma2, eta), eta, targets, kappa, 100)


def reaudit(run_dir: Path, data_dir=None, dry_run: bool = False) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    settings = summary["settings"]
    if settings["attack"] not in ("cw", "cw-hc", "cw-wb") or settings["options"].get("substitute"):
        return f"{run_dir}: {settings['attack']}" + (" transfer" if settings["options"].get("substitute") else "") \
            + ": its test is the argmax's, nothing to do"
    records = read_samples(run_dir)
    with np.load(run_dir / "adversarial.npz") as saved:
        adversarial, indices = saved["adversarial"], saved["indices"]
    if [r["index"] for r in records] != indices.tolist():
        raise SystemExit(f"{run_dir}: samples.jsonl and adversarial.npz hold other images")
    test = criterion(run_dir, summary, records, data_dir)
    # the rebuilt test on the unrounded images gives back the attack's own decisions (but for a
    # margin within float32 rounding of κ, which the attack decided in the model's dtype)
    agree = int((np.asarray(test(adversarial), bool) == np.array([r["success"] for r in records])).sum())
    changed = {}
    for key, levels in (("success_8bit", 256), ("success_16bit", 65536)):
        if key in records[0]:
            new = np.asarray(test(quantize(adversarial, levels).astype(adversarial.dtype)), bool)
            old = np.array([r[key] for r in records])
            changed[key] = int((new != old).sum())
            for r, value in zip(records, new):
                r[key] = bool(value)
    before = summary["success_rate_8bit"]
    summary["counts"]["success_8bit"] = int(sum(r["success_8bit"] for r in records))
    summary["success_rate_8bit"] = summary["counts"]["success_8bit"] / len(records)
    summary["success_8bit_test"] = ROUNDED_TEST
    if "success_16bit" in records[0]:
        summary["success_rate_16bit"] = float(np.mean([r["success_16bit"] for r in records]))
    if not dry_run and any(changed.values()):
        text = "".join(json.dumps(r) + "\n" for r in records)
        if (run_dir / "samples.jsonl").is_file():
            checkpoint.atomic_write_text(run_dir / "samples.jsonl", text)
        else:  # a published copy's packed samples
            checkpoint.atomic_write_bytes(run_dir / "samples.jsonl.gz", gzip.compress(text.encode(), mtime=0))
    if not dry_run:  # the summary says which test it holds (``success_8bit_test``) even where none changed
        checkpoint.atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return (f"{run_dir}: {', '.join(f'{k} changed for {v} of {len(records)}' for k, v in changed.items())}; "
            f"success_rate_8bit {before:.3f} -> {summary['success_rate_8bit']:.3f} (float {summary['success_rate']:.3f}; "
            f"the test on the float images agrees with success for {agree} of {len(records)})"
            + (" [dry run]" if dry_run else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished rcenp attack run folders")
    parser.add_argument("--data-dir", help="the data root (default: $RCENP_DATA)")
    parser.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        if not (run_dir / "summary.json").is_file() or not (run_dir / "adversarial.npz").is_file():
            raise SystemExit(f"{run_dir}: not a finished attack run that kept its adversarial.npz")
    for run_dir in args.runs:
        print(reaudit(run_dir, args.data_dir, args.dry_run), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
