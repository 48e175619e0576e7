"""``rcenp attack``: run one attack over a model's test images (``rcenp.attacks.run.run_attack``)."""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from rcenp.argtypes import count, folder, integer, nonnegative, positive, real
from rcenp.attacks.cw_wb import STAGE2
from rcenp.attacks.jobs import (check_jobs, check_same_jobs, record_jobs, run_shards, shard_folders,
                               stop_with_parent)
from rcenp.attacks.run import ATTACKS, EPS_ATTACKS, run_attack, success_criterion
from rcenp.attacks.runfiles import lock_run
from rcenp.backend import DEVICE_HELP
from rcenp.data.datasets import DATA_DIR_DEFAULT
from rcenp.progress import plural


def _eps(text):
    value = real(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1] (box units: 0.1 is 25.5 on 0-255), got {text}")
    return value


def _shard(text):
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return int(match[1]), int(match[2])


def add_parser(sub) -> None:
    a = sub.add_parser("attack", help="attack a model's test images (FGSM, BIM, ILCM, JSMA, C&W, C&W-hc, C&W-wb)",
                       description=(
        "Attack the first --n test images of a run directory's or shipped model's data set (the embedded "
        "1,000-image MNIST sample when there is no data root), in checkpointed batches. Writes "
        "adversarial.npz, samples.jsonl (one line per image) and summary.json into --out."))
    a.add_argument("model", help="run directory or shipped model name")
    a.add_argument("--attack", choices=ATTACKS, required=True,
                   help="cw = C&W-L2, cw-hc = C&W with kappa 10, cw-wb = C&W against the K-density detector")
    a.add_argument("--eps", type=_eps,
                   help="FGSM/BIM/ILCM/JSMA (required): epsilon in box units (the L-inf radius), for JSMA theta "
                   "(the step added per feature)")
    a.add_argument("--steps", type=count, default=10, help="BIM/ILCM: steps of eps/steps (default 10)")
    a.add_argument("--target-vector", choices=["paper", "pang2018-code"], default="paper",
                   help="ILCM: one-hot least-likely target (paper), or the authors' released +-0.5 vector")
    a.add_argument("--variant", choices=["pang2018", "papernot"], default="pang2018", help="JSMA variant")
    a.add_argument("--max-iterations", type=count,
                   help="JSMA: iteration cap (pang2018 default 100); C&W: iterations per binary step (default "
                   "10,000; cw-wb: of stage 2)")
    c = a.add_argument_group("C&W (cw = C&W-L2, cw-hc = kappa 10, cw-wb = also against the K-density detector)")
    c.add_argument("--kappa", type=nonnegative(real),
                   help="margin in logits (default: cw 0, cw-hc 10, cw-wb 5; for cw-wb it sets stage 2's, stage 1 "
                   "always uses 5)")
    c.add_argument("--initial-const", type=positive(real), help="first c (cw, cw-hc: 1.0; cw-wb stage 2: 100)")
    c.add_argument("--binary-steps", type=count, help="binary-search steps on c (default 9; cw-wb: of stage 2)")
    c.add_argument("--learning-rate", type=positive(real), default=0.01, help="Adam step size (default 0.01)")
    c.add_argument("--targets", choices=["random", "untargeted"], default="random",
                   help="random: a seeded class other than the true label per image (the authors' code); untargeted")
    c.add_argument("--kernel", choices=["attacker", "detector"], default="attacker",
                   help="cw-wb: the attacker's KD uses 100 of the detector's points per class (the authors' code) or "
                   "the detector's exact kernel (a stronger adaptive attack)")
    c.add_argument("--anchor", choices=["clean", "stage1"], default="clean",
                   help="cw-wb: stage 2's distance term measured to the clean image (Carlini) or to the stage-1 "
                   "image (the authors' code); reported distortion is always to the clean image")
    c.add_argument("--stage1-iterations", type=count, help="cw-wb: stage-1 iterations per binary step (5,000)")
    c.add_argument("--stage1-binary-steps", type=count, help="cw-wb: stage-1 binary steps (3)")
    a.add_argument("--substitute", metavar="MODEL",
                   help="black-box transfer (paper 4.5): craft on this model (with its own detector for cw-wb) "
                   "and report on MODEL with MODEL's detector")
    a.add_argument("--crafted-from", metavar="DIR",
                   help="with --substitute: take the adversarial images from DIR, the substitute's own finished run "
                   "of this attack and these settings (its white-box run, the same images), instead of crafting "
                   "them again; refused when DIR is another run")
    a.add_argument("--n", type=count, default=1000, help="attack the first N test images (default 1000)")
    a.add_argument("--seed", type=nonnegative(integer), default=0,
                   help="C&W: seeds the random target classes (cw-wb: and the attacker's kernel points); default 0")
    a.add_argument("--batch-size", type=count, default=100,
                   help="images per checkpointed batch (default 100; one larger than --n makes one batch of N)")
    a.add_argument("--out", type=folder, help="output directory (default runs/attack-MODEL-ATTACK, then -EPS, each option "
                   "not at its default and --n when not 1000, e.g. runs/attack-mnist-resnet32-ce-cw-kappa5-n20)")
    a.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished batch")
    a.add_argument("--shard", type=_shard, default=(1, 1), metavar="K/N",
                   help="run only the K-th of N contiguous, batch-aligned slices of the images")
    a.add_argument("--merge", nargs="+", metavar="SHARD_DIR",
                   help="attack nothing: write the run into --out from the folders of its finished --shard runs "
                   "(the same MODEL and options, without --shard)")
    a.add_argument("--jobs", type=count, default=1, metavar="J",
                   help="run as J shard processes of one thread each side by side, then merge them into --out "
                   "(the same files as one process, whose workers wait for each other at every operation, which "
                   "costs most on virtual machines); default 1")
    a.add_argument("--png", metavar="DIR", help="also write each adversarial image as a 16-bit PNG into DIR (an empty "
                   "folder, or this run's own: DIR/png-run.json names the run, and PNGs of another run are refused)")
    a.add_argument("--data-dir", help=f"data root holding the model's test set ({DATA_DIR_DEFAULT}; MNIST "
                   "when neither names a root: the embedded sample; a named root must hold the data, unlike "
                   "rcenp demo's fallback)")
    a.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)
    a.add_argument("--json", action="store_true", help="print summary.json instead of a short table")
    a.set_defaults(attack_defaults={dest: a.get_default(dest) for dest in APPLIES}, attack_parser=a)


CW = ("cw", "cw-hc", "cw-wb")
KAPPA = {"cw": 0.0, "cw-hc": 10.0, "cw-wb": STAGE2["kappa"]}  # each C&W attack's margin (cw-wb: stage 2's)
APPLIES = {"eps": EPS_ATTACKS, "steps": ("bim", "ilcm"), "target_vector": ("ilcm",), "variant": ("jsma",),
           "max_iterations": ("jsma", *CW), "kappa": CW, "initial_const": CW, "binary_steps": CW,
           "learning_rate": CW, "targets": CW, "kernel": ("cw-wb",), "anchor": ("cw-wb",),
           "stage1_iterations": ("cw-wb",), "stage1_binary_steps": ("cw-wb",)}  # option -> the attacks it is for


def check_options(args) -> None:
    """ValueError naming the first option given (not at its default) that ``args.attack`` does not use."""
    for dest, attacks in APPLIES.items():
        if args.attack not in attacks and getattr(args, dest) != args.attack_defaults[dest]:
            raise ValueError(f"--{dest.replace('_', '-')} does not apply to --attack {args.attack} "
                             f"(it is for {', '.join(attacks)})")


def options_of(args) -> dict:
    """The attack function's keyword arguments from the parsed command line."""
    if args.attack in ("fgsm",):
        return {"eps": args.eps}
    if args.attack == "bim":
        return {"eps": args.eps, "steps": args.steps}
    if args.attack == "ilcm":
        return {"eps": args.eps, "steps": args.steps, "target_vector": args.target_vector}
    if args.attack == "jsma":
        options = {"theta": args.eps, "variant": args.variant}
        if args.max_iterations:
            options["max_iterations"] = args.max_iterations
        return options
    optimiser = {"kappa": args.kappa, "initial_const": args.initial_const, "binary_steps": args.binary_steps,
                 "max_iterations": args.max_iterations}
    optimiser = {k: v for k, v in optimiser.items() if v is not None}
    if args.attack == "cw-wb":
        if args.targets == "untargeted":
            raise ValueError("cw-wb is a targeted attack (--targets random)")
        stage1 = {"max_iterations": args.stage1_iterations, "binary_steps": args.stage1_binary_steps}
        return {"targets": "random", "kernel": args.kernel, "anchor": args.anchor, "learning_rate": args.learning_rate,
                "stage1": {k: v for k, v in stage1.items() if v is not None}, "stage2": optimiser, "seed": args.seed}
    if args.attack == "cw-hc":
        if optimiser.get("kappa", KAPPA["cw-hc"]) != KAPPA["cw-hc"]:
            raise ValueError(f"--attack cw-hc is C&W with kappa {KAPPA['cw-hc']:g}; for kappa {optimiser['kappa']:g} "
                             f"use --attack cw --kappa {optimiser['kappa']:g}")
        optimiser["kappa"] = KAPPA["cw-hc"]
    return {"targets": args.targets, "learning_rate": args.learning_rate, "seed": args.seed, **optimiser}


def default_out(args) -> str:
    """runs/attack-MODEL-ATTACK[-EPS], then every option of that attack that is not at its default
    (κ, the JSMA variant, the C&W budget, C&W-wb's kernel, ...), ``n`` when not 1,000, and a
    transfer's substitute, so that two different runs do not meet in one folder:
    runs/attack-mnist-resnet32-ce-cw-kappa5-binary-steps2-n20."""
    parts = [f"runs/attack-{Path(str(args.model)).name}-{args.attack}"]
    if args.attack in EPS_ATTACKS:
        parts.append(f"{args.eps:g}")
    for dest, attacks in APPLIES.items():
        value = getattr(args, dest)
        default = KAPPA.get(args.attack) if dest == "kappa" else args.attack_defaults[dest]
        if dest == "eps" or args.attack not in attacks or value is None or value == default:
            continue
        name = dest.replace("_", "-")
        parts.append(f"{name}-{value}" if isinstance(value, str) else f"{name}{value:g}")
    if args.n != 1000:
        parts.append(f"n{args.n}")
    if args.substitute:
        parts.append(f"from-{Path(str(args.substitute)).name}")
    return "-".join(parts)


def cmd_attack(args) -> int:
    from rcenp.models.registry import resolve

    stop_with_parent()  # a --jobs shard: no outliving the process that started it
    for model in (args.model, args.substitute):  # an unknown model is the news, before what the options lack
        if model is not None:
            resolve(model)
    if args.substitute is not None and resolve(args.substitute) == resolve(args.model):
        raise ValueError(f"--substitute {args.substitute} is the attacked model itself: a transfer crafts on another "
                         f"model (leave --substitute out for the white-box attack)")
    if args.attack in EPS_ATTACKS and args.eps is None:
        raise ValueError(f"--attack {args.attack} needs --eps")
    check_options(args)
    out = args.out or default_out(args)
    options = options_of(args)
    if args.substitute:
        options["substitute"] = args.substitute
    elif args.crafted_from:
        raise ValueError("--crafted-from takes a transfer's images: name its --substitute")
    merge, resume, start, sharded, lock = args.merge, args.resume, time.monotonic(), False, None
    if args.jobs > 1:
        check_jobs(args, Path(out), options)
        if args.crafted_from:  # refused here, not in every shard
            from rcenp.attacks.transfer import precheck

            precheck(args.crafted_from, args.attack, {k: v for k, v in options.items() if k != "substitute"},
                     args.n, args.seed, args.batch_size, args.substitute)
        if not (Path(out) / "summary.json").is_file():  # else: a finished run, resumed (or refused) as usual
            (Path(out) / "shards").mkdir(parents=True, exist_ok=True)
            lock = lock_run(Path(out) / "shards", Path(out))  # one --jobs process per run, until it has merged
            run_shards(args.attack_parser, args, Path(out))
            merge, resume, sharded = [str(folder) for folder in shard_folders(out, args.jobs)], True, True
    elif not args.merge:
        check_same_jobs(out, 1)
    summary = run_attack(args.model, args.attack, out, options, n=args.n, seed=args.seed,
                         batch_size=args.batch_size, resume=resume, shard=args.shard, data_dir=args.data_dir,
                         device=args.device, png_dir=args.png, merge=merge, crafted=args.crafted_from)
    if lock is not None:
        lock.close()
    if sharded:
        summary = record_jobs(out, summary, args.jobs, time.monotonic() - start)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(format_summary(summary, out))
    return 0


def budget_hint(summary: dict) -> str | None:
    """For a C&W run (cw, cw-hc, cw-wb's stage 2) in which no image succeeded on a budget below
    the paper's (9 binary steps x 10,000 iterations, protocol §5.3): a line giving the budget
    used and the options that raise it; otherwise None."""
    settings = summary["settings"]
    options = settings["options"]
    if settings["attack"] not in CW or options.get("substitute") or not summary["counts"]["n"] \
            or summary["success_rate"] > 0:
        return None
    stage = options.get("stage2", {}) if settings["attack"] == "cw-wb" else options
    steps = stage.get("binary_steps", STAGE2["binary_steps"])
    iterations = stage.get("max_iterations", STAGE2["max_iterations"])
    if steps * iterations >= STAGE2["binary_steps"] * STAGE2["max_iterations"]:
        return None
    where = " in stage 2" if settings["attack"] == "cw-wb" else ""
    whose = "the authors' code's" if where else "the paper's"  # §4.3 gives C&W's; §4.4 no C&W-wb schedule
    return (f"  no image succeeded within {steps} binary {'step' if steps == 1 else 'steps'} x {iterations:,} "
            f"iterations{where}; {whose} budget{where} is {STAGE2['binary_steps']} x {STAGE2['max_iterations']:,} "
            f"(--binary-steps, --max-iterations)")


def format_summary(summary: dict, out) -> str:
    """A few lines for a person: rates, distortion, detection."""
    counts, distortion = summary["counts"], summary["distortion"]["l2_paper"]["efficient"]
    substitute = summary["settings"]["options"].get("substitute")
    source = (summary["settings"].get("crafted") or {}).get("path")
    crafted = (f" (crafted on {substitute}" + (f", the images of {source}" if source else "") + ")") if substitute else ""
    lines = [f"{summary['settings']['attack']} on {summary['settings']['model']}{crafted}: "
             f"{plural(counts['n'], 'image', 'images')} "
             f"({summary['test_set']})",
             f"  clean accuracy          {summary['accuracy_clean']:.1%}",
             f"  accuracy under attack   {summary['accuracy_under_attack']:.1%}",
             f"  attack success          {summary['success_rate']:.1%} "
             f"({success_criterion(summary['settings'])}after 8-bit rounding {summary['success_rate_8bit']:.1%})"]
    hint = budget_hint(summary)
    if hint:
        lines.append(hint)
    if distortion["n"]:
        lines.append(f"  mean L2/sqrt(d) (0-255) {distortion['mean']:.2f} over "
                     f"{plural(distortion['n'], 'successful attack', 'successful attacks')} on correctly "
                     f"classified images")
    detection = summary.get("detection")
    if detection:
        metrics = [m for m in ("confidence", "non_me", "log_kd") if detection.get(m, {}).get("n_pairs")]
        if metrics:
            label = f"AUC (paper rule, n={detection[metrics[0]]['n_pairs']})"
            half, strict = ("  ".join(f"{m} {detection[m][key]:.3f}" for m in metrics)
                            for key in ("auc", "auc_strict_ties"))
            lines.append(f"  {label + ', ties ½':<32} {half}")
            if strict != half:  # where the authors' rule shows at these digits
                lines.append(f"  {'the same, ties 0 (AUC.m)':<32} {strict}")
        if "threshold" in detection:
            t = detection["threshold"]
            lines.append(f"  with the detector (T = {t['T']:.3f}): correct or NOT SURE "
                         f"{t['detection_aware_accuracy']:.1%}, fooled {t['undetected_misclassified_rate']:.1%}")
    eta = summary["settings"].get("eta")
    if isinstance(eta, dict):
        lines.append(f"  η for f₂                {eta['rule']}" + (f" ({eta['why']})" if "why" in eta else ""))
    transfer = summary.get("transfer")
    if transfer:
        rate = "n/a" if transfer["transfer_rate"] is None else f"{transfer['transfer_rate']:.1%}"
        model = summary["settings"]["model"]
        lines.append(f"  transfer from {substitute}: crafted successfully there for "
                     f"{transfer['substitute_success_rate']:.1%} of the images; {model} misclassifies {rate} of "
                     f"the {transfer['n_eligible']} among them that it classifies correctly when clean")
    lines.append(f"  files in {out}")
    return "\n".join(lines)
