"""``rcenp attack``: run one attack over a model's test images (``rcenp.attacks.run.run_attack``)."""
from __future__ import annotations

import argparse
import json
import re

from rcenp.attacks.run import EPS_ATTACKS, run_attack


def _eps(text):
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1] (box units: 0.1 is 25.5 on 0-255), got {text}")
    return value


def _count(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _shard(text):
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return int(match[1]), int(match[2])


def add_parser(sub) -> None:
    a = sub.add_parser("attack", help="attack a model's test images (FGSM, BIM, ILCM, JSMA)", description=(
        "Attack the first --n test images of a run directory's or shipped model's data set (the embedded "
        "1,000-image MNIST sample when there is no data root), in checkpointed batches. Writes "
        "adversarial.npz, samples.jsonl (one line per image) and summary.json into --out."))
    a.add_argument("model", help="run directory or shipped model name")
    a.add_argument("--attack", choices=EPS_ATTACKS, required=True)
    a.add_argument("--eps", type=_eps, required=True,
                   help="epsilon in box units for FGSM/BIM/ILCM (the L-inf radius), theta (the step added "
                   "per feature) for JSMA")
    a.add_argument("--steps", type=_count, default=10, help="BIM/ILCM: steps of eps/steps (default 10)")
    a.add_argument("--target-vector", choices=["paper", "pang2018-code"], default="paper",
                   help="ILCM: one-hot least-likely target (paper), or the authors' released +-0.5 vector")
    a.add_argument("--variant", choices=["pang2018", "papernot"], default="pang2018", help="JSMA variant")
    a.add_argument("--max-iterations", type=_count, help="JSMA: iteration cap (pang2018 default 100)")
    a.add_argument("--n", type=_count, default=1000, help="attack the first N test images (default 1000)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--batch-size", type=_count, default=100)
    a.add_argument("--out", help="output directory (default runs/attack-MODEL-ATTACK-EPS)")
    a.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished batch")
    a.add_argument("--shard", type=_shard, default=(1, 1), metavar="K/N",
                   help="run only the K-th of N contiguous, batch-aligned slices of the images")
    a.add_argument("--png", metavar="DIR", help="also write each adversarial image as a 16-bit PNG into DIR")
    a.add_argument("--data-dir")
    a.add_argument("--device", choices=["cpu", "cuda"])
    a.add_argument("--json", action="store_true", help="print summary.json instead of a short table")


def options_of(args) -> dict:
    """The attack function's keyword arguments from the parsed command line."""
    if args.attack in ("fgsm",):
        return {"eps": args.eps}
    if args.attack == "bim":
        return {"eps": args.eps, "steps": args.steps}
    if args.attack == "ilcm":
        return {"eps": args.eps, "steps": args.steps, "target_vector": args.target_vector}
    options = {"theta": args.eps, "variant": args.variant}
    if args.max_iterations:
        options["max_iterations"] = args.max_iterations
    return options


def cmd_attack(args) -> int:
    from pathlib import Path

    name = Path(str(args.model)).name
    out = args.out or f"runs/attack-{name}-{args.attack}-{args.eps:g}"
    summary = run_attack(args.model, args.attack, out, options_of(args), n=args.n, seed=args.seed,
                         batch_size=args.batch_size, resume=args.resume, shard=args.shard, data_dir=args.data_dir,
                         device=args.device, png_dir=args.png)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(format_summary(summary, out))
    return 0


def format_summary(summary: dict, out) -> str:
    """A few lines for a person: rates, distortion, detection."""
    counts, distortion = summary["counts"], summary["distortion"]["l2_paper"]["efficient"]
    lines = [f"{summary['settings']['attack']} on {summary['settings']['model']}: {counts['n']} images "
             f"({summary['test_set']})",
             f"  clean accuracy          {summary['accuracy_clean']:.1%}",
             f"  accuracy under attack   {summary['accuracy_under_attack']:.1%}",
             f"  attack success          {summary['success_rate']:.1%} (after 8-bit rounding "
             f"{summary['success_rate_8bit']:.1%})"]
    if distortion["n"]:
        lines.append(f"  mean L2/sqrt(d) (0-255) {distortion['mean']:.2f} over {distortion['n']} successful attacks "
                     f"on correctly classified images")
    detection = summary.get("detection")
    if detection:
        aucs = "  ".join(f"{m} {detection[m]['auc']:.3f}" for m in ("confidence", "non_me", "log_kd")
                         if detection.get(m, {}).get("n_pairs"))
        if aucs:
            lines.append(f"  AUC (paper rule, n={detection['confidence']['n_pairs']})  {aucs}")
        if "threshold" in detection:
            t = detection["threshold"]
            lines.append(f"  with the detector (T = {t['T']:.3f}): correct or NOT SURE "
                         f"{t['detection_aware_accuracy']:.1%}, fooled {t['undetected_misclassified_rate']:.1%}")
    lines.append(f"  files in {out}")
    return "\n".join(lines)
