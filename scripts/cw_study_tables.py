"""The tables of the C&W study (``scripts/cw_study.sh``): Fig. 2b's and Table 2's C&W quantities
at 9 binary steps x 1,000 iterations, and the budget study, as markdown (default) or JSON.

    python scripts/cw_study_tables.py                 # markdown, from results/cw-9x1000 and results/cw-budget
    python scripts/cw_study_tables.py --json
    python scripts/cw_study_tables.py --readme        # rewrites results/cw-9x1000/README.md

Study table, one row per finished or partly finished run (results/cw-9x1000/MODEL/ATTACK): images
attacked, success rate (the target reached with margin κ; a failure returns the clean image), the
same after rounding to 8 bits, ‖δ‖₂/√d on 0-255 (mean and median over the successes: Fig. 2b's
unit), iterations per image, and the detection AUCs (the paper's sample rule: clean correct,
adversarial misclassified; ties half). A run still in progress is read from its finished batches
(``partial/batch-*.jsonl``) and marked "partial"; its AUCs are left out (``summary.json`` has them
when the run ends).

Budget table: C&W on the first 20 test images at 1,000 / 2,000 / 5,000 / 10,000 iterations per
binary step (9 steps, all else equal). The 1,000 row is not a run of its own: it is the first 20
images of the 200-image 9 x 1,000 run, whose targets are the same (one ``default_rng(seed)`` stream
over the run's images: its first 20 draws are a 20-image run's) and whose per-image result does not
depend on its batch-mates (per-sample abort early and compaction, ``rcenp.attacks.cw``) beyond the
last-bit rounding of BLAS kernels chosen by the batch's shape (which over 9,000 iterations can still
move an image's result a little). "vs 10k" is the median, over the
images that succeed at both budgets, of the image's ‖δ‖₂ at this budget over its ‖δ‖₂ at 10,000.
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rcenp.reproduce import paper  # noqa: E402

MODELS = ("mnist-resnet32-ce", "mnist-resnet32-rce")
ATTACKS = ("cw", "cw-hc")
BUDGETS = (1000, 2000, 5000, 10000)
BUDGET_N = 20


def read_samples(run: Path) -> tuple[list[dict], bool]:
    """Per-image records of a run folder in index order, and whether the run is finished."""
    for name in ("samples.jsonl", "samples.jsonl.gz"):
        path = run / name
        if path.is_file():
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt") as lines:
                return [json.loads(line) for line in lines if line.strip()], True
    records = []
    for batch in sorted((run / "partial").glob("batch-*.jsonl")):
        records += [json.loads(line) for line in batch.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: r["index"]), False


def describe(records: list[dict]) -> dict:
    """Success, 8-bit success, distortion of the successes (0-255 units), iterations per image."""
    wins = [r["l2_paper"] for r in records if r["success"]]
    n = len(records)
    return {"n": n,
            "success_rate": sum(r["success"] for r in records) / n if n else None,
            "success_rate_8bit": sum(bool(r.get("success_8bit")) for r in records) / n if n else None,
            "successes": len(wins),
            "l2_paper_mean": statistics.fmean(wins) if wins else None,
            "l2_paper_median": statistics.median(wins) if wins else None,
            "iterations_mean": statistics.fmean(r["iterations"] for r in records) if n else None}


def study_rows(root: Path) -> list[dict]:
    rows = []
    for attack in ATTACKS:
        for model in MODELS:
            run = root / "cw-9x1000" / model / attack
            records, finished = read_samples(run)
            if not records:
                continue
            row = {"model": model, "attack": attack, "finished": finished, **describe(records)}
            if attack == "cw-hc":
                row["confidence"] = confidence_pairs(records)
            summary = run / "summary.json"
            if attack == "cw-hc" and not (finished and summary.is_file()
                                          and "success_8bit_test" in json.loads(summary.read_text())):
                row["success_rate_8bit"] = None  # judged by the argmax alone: κ not re-tested (OLD_8BIT)
            if finished and summary.is_file():
                detection = json.loads(summary.read_text())["detection"]
                row["auc"] = {m: detection[m]["auc"] for m in paper.METRICS}
                row["n_pairs"] = detection["confidence"]["n_pairs"]
            rows.append(row)
    return rows


def confidence_pairs(records: list[dict]) -> dict | None:
    """Why a confidence AUC is what it is: over the paper's pairs (clean correct, adversarial
    misclassified), the fraction whose clean image is the more confident, the median clean and
    adversarial confidences, and the median logit margin the attack stopped at; None without pairs."""
    pairs = [r for r in records if r.get("clean_prediction") == r.get("true_label") and r.get("misclassified")
             and "clean_confidence" in r]
    if not pairs:
        return None
    margins = [r["final_margin"] for r in pairs if r.get("success")]
    return {"n_pairs": len(pairs),
            "clean_more_confident": sum(r["clean_confidence"] > r["adversarial_confidence"] for r in pairs) / len(pairs),
            "clean_confidence_median": statistics.median(r["clean_confidence"] for r in pairs),
            "adversarial_confidence_median": statistics.median(r["adversarial_confidence"] for r in pairs),
            "final_margin_median": statistics.median(margins) if margins else None}


def confidence_note(study: list[dict]) -> str:
    """A paragraph on C&W-hc's confidence AUC against the paper's (about 0), from the finished runs."""
    rows = [r for r in study if r["attack"] == "cw-hc" and r["finished"] and r.get("confidence")]
    if not rows:
        return "C&W-hc's confidence AUCs are discussed here once a C&W-hc run has finished."
    parts = [f"{r['model']}: the clean image is the more confident in {100 * r['confidence']['clean_more_confident']:.0f}% "
             f"of {r['confidence']['n_pairs']} pairs (median confidence {r['confidence']['clean_confidence_median']:.7f} "
             f"clean, {r['confidence']['adversarial_confidence_median']:.7f} adversarial"
             + (f"; median logit margin of the successes {r['confidence']['final_margin_median']:.3f}"
                if r["confidence"]["final_margin_median"] is not None else "") + ")" for r in rows]
    return ("C&W-hc's confidence AUC is far from the paper's, which is about 0 (every adversarial image more "
            "confident than its clean one). C&W stops pushing once the target leads by κ, so its images end at a "
            "logit margin just above 10, a softmax confidence of about 0.9999; a clean image is less confident "
            "only where its own margin is below 10. " + "; ".join(parts) + ". Where the clean image is the more "
            "confident in most pairs, the model's clean margins are mostly above 10, where the paper's must have "
            "been below it: a property of the trained model, not of the attack or the AUC rule.")


def budget_rows(root: Path) -> list[dict]:
    rows = []
    for model in MODELS:
        runs = {}
        for budget in BUDGETS:
            if budget == 1000:
                records, _ = read_samples(root / "cw-9x1000" / model / "cw")
                first = [r for r in records if r["index"] < BUDGET_N]   # its images 0-19, once all are done
                runs[budget] = (first, len(first) == BUDGET_N)
            else:
                runs[budget] = read_samples(root / "cw-budget" / model / f"cw-{budget}")
        longest = {r["index"]: r for r in runs[10000][0] if r["success"]} if runs[10000][1] else {}
        for budget, (records, finished) in runs.items():
            if not records or not finished:
                continue
            ratios = [r["l2"] / longest[r["index"]]["l2"] for r in records
                      if r["success"] and r["index"] in longest and longest[r["index"]]["l2"] > 0]
            rows.append({"model": model, "iterations_per_step": budget, **describe(records),
                         "l2_vs_10k_median": statistics.median(ratios) if ratios else None,
                         "l2_vs_10k_n": len(ratios)})
    return rows


PAPER = ("AUCs in the paper's units (10⁻²), under its sample rule (clean correct, adversarial misclassified; "
         "ties half); in brackets the paper's Table 2 value.")
OLD_8BIT = ("“—” after 8-bit rounding: audited before 978d080, when the rounded image of C&W-hc was judged by "
            "the argmax alone, not by its κ margin, and not re-tested since (`scripts/reaudit_8bit.py` needs the "
            "run's adversarial.npz).")


def _f(value, spec):
    return "—" if value is None else format(value, spec)


def _pct(fraction):
    return "—" if fraction is None else f"{100 * fraction:.1f}%"


def _auc(ours, theirs):
    """Our AUC in the paper's units (10⁻²), the paper's in brackets."""
    return f"{_f(None if ours is None else 100 * ours, '.1f')} ({_f(theirs, '.1f')})"


def markdown(study: list[dict], budget: list[dict]) -> str:
    lines = ["| attack | model | images | success | after 8-bit rounding | ‖δ‖₂/√d mean | median | iterations per image "
             "| AUC confidence (paper) | non-ME | K-density |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    by_run = {(r["attack"], r["model"]): r for r in study}
    for key in [(a, m) for a in ATTACKS for m in MODELS] + [k for k in by_run if k[0] not in ATTACKS]:
        r = by_run.get(key)
        if r is None:   # a run the study has not reached: the table says what it lacks
            lines.append(f"| {key[0]} | {key[1]} | not started yet |" + " |" * 8)
            continue
        auc = r.get("auc", {})
        images = f"{r['n']}" + ("" if r["finished"] else " (partial)")
        lines.append(f"| {r['attack']} | {r['model']} | {images} | {_f(100 * r['success_rate'], '.1f')}% "
                     f"| {_pct(r['success_rate_8bit'])} | {_f(r['l2_paper_mean'], '.2f')} "
                     f"| {_f(r['l2_paper_median'], '.2f')} | {_f(r['iterations_mean'], ',.0f')} | "
                     + " | ".join(_auc(auc.get(m), paper.table2(r["attack"], r["model"].rsplit("-", 1)[1], "mnist", m))
                                  for m in paper.METRICS) + " |")
    lines += ["", PAPER]
    if any(r.get("success_rate_8bit", 0) is None for r in study):
        lines += ["", OLD_8BIT]
    lines += ["", "| model | iterations per binary step | images | success | ‖δ‖₂/√d mean | median | iterations per image "
              "| ‖δ‖₂ vs 10k (median ratio, n) |", "|---|---|---|---|---|---|---|---|"]
    by_budget = {(r["model"], r["iterations_per_step"]): r for r in budget}
    for model in MODELS:
        for iterations in BUDGETS:
            r = by_budget.get((model, iterations))
            if r is None:
                lines.append(f"| {model} | {iterations:,} | not finished yet |" + " |" * 5)
                continue
            vs = "—" if r["l2_vs_10k_median"] is None else f"{r['l2_vs_10k_median']:.3f} ({r['l2_vs_10k_n']})"
            lines.append(f"| {r['model']} | {r['iterations_per_step']:,} | {r['n']} | {_f(100 * r['success_rate'], '.0f')}% "
                         f"| {_f(r['l2_paper_mean'], '.2f')} | {_f(r['l2_paper_median'], '.2f')} "
                         f"| {_f(r['iterations_mean'], ',.0f')} | {vs} |")
    return "\n".join(lines)


README = """# C&W and C&W-hc on the MNIST ResNet-32s at 9 binary steps × 1,000 iterations (Fig. 2b, Table 2's C&W rows)

`rcenp attack MODEL --attack cw|cw-hc --n 200 --batch-size 25 --binary-steps 9 --max-iterations 1000` on
the first 200 MNIST test images (the complete test set, SHA-256 verified), one CPU core, in the background
across sessions (`scripts/cw_study.sh` step 2, resumed with `--resume` from the last finished batch of 25).
Everything else is the paper's: c₀ 1, Adam lr 0.01, κ 0 (C&W-hc: 10), random targets ≠ the true label
(seed 0), abort early per sample. Only the iterations are cut, from the paper's 10,000 per binary step to
1,000; the budget study below shows what that costs. {status}

Each folder holds `run.json`, `attack.log`, and, once finished, `summary.json` (rates, distortions,
paper-rule AUCs with bootstrap intervals, the code of each batch in `code_by_batch`), `samples.jsonl`
(per image: target, success, also after 8-bit rounding, ‖δ‖, the c trajectory, iterations and stop reason
per binary step, confidence, non-ME and log KD clean and adversarial) and `adversarial.npz`. A run in
progress has its finished batches in `partial/`.

Success is reaching the random target with margin κ (a failure returns the clean image). ‖δ‖₂/√d is on
0–255, over the successes (Fig. 2b's unit). AUCs are in the paper's units (10⁻²), under its rule (clean
correct, adversarial misclassified; ties half), the paper's Table 2 value in brackets. From
`python scripts/cw_study_tables.py`:

{study}

{confidence}

## Budget study

C&W on the first 20 of these images at 1,000 / 2,000 / 5,000 / 10,000 iterations per binary step (9 steps;
`scripts/cw_study.sh` step 3, written to `results/cw-budget/` as each run finishes). The 1,000 row is the first 20 images of the run
above: the same targets and computation; only the batch-mates differ, which changes nothing but the
last-bit rounding of BLAS kernels chosen by the batch's shape (over 9,000 iterations that can still move
an image's result a little). "vs 10k" is the median over images that succeed at both budgets of ‖δ‖₂ at this budget
over ‖δ‖₂ at 10,000 (the paper's budget); it needs the 10,000 run.

{budget}
{budget_note}"""

RUNNING = ("The study is still running: the tables below are as it stood when this file was last written "
           "(`python scripts/cw_study_tables.py --readme`), and rows marked \"not started yet\" or \"not finished "
           "yet\" are still to come.")
FINISHED = ("Every run of the study is finished; `python scripts/cw_study_tables.py --readme` wrote this file "
            "from their folders.")


def budget_note(budget: list[dict]) -> str:
    """What the budget study says of 1,000 iterations per binary step against the paper's 10,000, per
    model whose 1,000 and 10,000 rows are both there ("" while none is)."""
    by = {(r["model"], r["iterations_per_step"]): r for r in budget}
    parts = []
    for model in MODELS:
        short, full = by.get((model, 1000)), by.get((model, 10000))
        if short is None or full is None or short["l2_vs_10k_median"] is None:
            continue
        parts.append(f"on {model}, 1,000 iterations per step break {100 * short['success_rate']:.0f}% of the images "
                     f"(10,000: {100 * full['success_rate']:.0f}%), and where both break an image the median ‖δ‖₂ "
                     f"ratio is {short['l2_vs_10k_median']:.3f} (n = {short['l2_vs_10k_n']}), in "
                     f"{short['iterations_mean'] / full['iterations_mean']:.0%} of the iterations per image")
    if not parts:
        return ""
    return "\nAgainst the paper's budget: " + "; ".join(parts) + ".\n"


def readme(study: list[dict], budget: list[dict]) -> str:
    """results/cw-9x1000/README.md: what the study runs, and its tables as they stand."""
    # without the line on the AUCs' brackets, which the prose above the table gives
    *study_parts, budget_table = [part for part in markdown(study, budget).split("\n\n") if part != PAPER]
    complete = (len(study) == len(ATTACKS) * len(MODELS) and all(r["finished"] for r in study)
                and len(budget) == len(BUDGETS) * len(MODELS))
    return README.format(study="\n\n".join(study_parts), budget=budget_table, confidence=confidence_note(study),
                         status=FINISHED if complete else RUNNING, budget_note=budget_note(budget))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="folder holding cw-9x1000 and cw-budget")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of markdown")
    parser.add_argument("--readme", action="store_true", help="write RESULTS/cw-9x1000/README.md (prose and tables)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"no such folder: {args.results}")
    study, budget = study_rows(args.results), budget_rows(args.results)
    if args.readme:
        target = args.results / "cw-9x1000" / "README.md"
        temporary = target.with_suffix(".md.tmp")
        temporary.write_text(readme(study, budget))
        temporary.replace(target)
        print(f"wrote {target}")
    else:
        print(json.dumps({"study": study, "budget": budget}, indent=1) if args.json else markdown(study, budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
