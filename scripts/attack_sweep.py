"""The data of the paper's Fig. 2a: accuracy under FGSM, BIM, ILCM and JSMA (pang2018) against
epsilon (0.02, 0.04, ..., 0.20; JSMA's theta), for shipped models, on the first N test images.

Each cell is one resumable ``rcenp attack`` run in OUT/<model>/<attack>-<eps>/; a finished cell
(its summary.json, possibly copied from a run on another machine) is never recomputed, so the
sweep continues where a killed one stopped. Prints one JSON object (also
written to OUT/sweep.json) with accuracy under attack, success rate and success after 8-bit
rounding per cell, and a Markdown table to OUT/sweep.md.

    python scripts/attack_sweep.py --models mnist-resnet32-ce mnist-resnet32-rce --n 1000 --out runs/fig2a
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rcenp import checkpoint  # noqa: E402
from rcenp.attacks.run import run_attack  # noqa: E402

EPSILONS = tuple(round(0.02 * k, 2) for k in range(1, 11))
OPTIONS = {"fgsm": lambda e: {"eps": e}, "bim": lambda e: {"eps": e, "steps": 10},
           "ilcm": lambda e: {"eps": e, "steps": 10}, "jsma": lambda e: {"theta": e, "variant": "pang2018"}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    models = ["mnist-resnet32-ce", "mnist-resnet32-rce"]
    parser.add_argument("--models", nargs="+", default=models,
                        help=f"shipped model names or run directories (default: {' '.join(models)})")
    parser.add_argument("--attacks", nargs="+", default=list(OPTIONS), choices=list(OPTIONS),
                        help=f"attacks to sweep (default: {' '.join(OPTIONS)})")
    parser.add_argument("--eps", nargs="+", type=float, default=list(EPSILONS),
                        help=f"ε (JSMA: θ) in [-0.5, 0.5] box units (default: {' '.join(map(str, EPSILONS))})")
    parser.add_argument("--n", type=int, default=1000, help="the first N test images (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="images per checkpointed batch (default: %(default)s)")
    parser.add_argument("--data-dir", help="data root (default: $RCENP_DATA, as rcenp attack)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: $RCENP_DEVICE, else cpu")
    parser.add_argument("--out", default="runs/fig2a",
                        help="one folder per cell: OUT/<model>/<attack>-<eps>/ (default: %(default)s)")
    parser.add_argument("--collect", action="store_true",
                        help="attack nothing: write sweep.json and sweep.md from the cells already finished")
    args = parser.parse_args(argv)
    out = Path(args.out)
    cells = []
    for attack in args.attacks:
        for eps in args.eps:
            for model in args.models:
                cell = out / model / f"{attack}-{eps:g}"
                if (cell / "summary.json").is_file():  # finished, here or copied from another machine
                    summary = json.loads((cell / "summary.json").read_text())
                elif args.collect:
                    continue
                else:
                    summary = run_attack(model, attack, cell, OPTIONS[attack](eps), n=args.n,
                                         batch_size=args.batch_size, resume=True, data_dir=args.data_dir,
                                         device=args.device)
                cells.append({"model": model, "attack": attack, "eps": eps, "n": summary["counts"]["n"],
                              "accuracy_under_attack": summary["accuracy_under_attack"],
                              "accuracy_clean": summary["accuracy_clean"], "success_rate": summary["success_rate"],
                              "success_rate_8bit": summary["success_rate_8bit"],
                              "mean_l2_paper_efficient": summary["distortion"]["l2_paper"]["efficient"]["mean"],
                              "auc_log_kd": summary.get("detection", {}).get("log_kd", {}).get("auc"),
                              "n_pairs": summary.get("detection", {}).get("log_kd", {}).get("n_pairs"),
                              "test_set": summary["test_set"], "device": summary["software"]["device"],
                              "images_per_s": summary["timing"]["images_per_s"]})
    report = {"cells": cells, "code": checkpoint.code_identity()}
    checkpoint.atomic_write_text(out / "sweep.json", json.dumps(report, indent=2) + "\n")
    checkpoint.atomic_write_text(out / "sweep.md", markdown(cells, args.models, args.attacks, args.eps))
    print(json.dumps(report))
    return 0


def markdown(cells, models, attacks, epsilons) -> str:
    """Accuracy under attack (%) per attack and model (rows) against epsilon (columns)."""
    lookup = {(c["model"], c["attack"], c["eps"]): c for c in cells}
    head = "| attack | model | " + " | ".join(f"{e:g}" for e in epsilons) + " |\n"
    head += "|---|---|" + "---|" * len(epsilons) + "\n"
    rows = []
    for attack in attacks:
        for model in models:
            values = [lookup.get((model, attack, e)) for e in epsilons]
            rows.append(f"| {attack} | {model} | " + " | ".join(
                f"{100 * v['accuracy_under_attack']:.1f}" if v else "" for v in values) + " |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
