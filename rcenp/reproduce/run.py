"""``rcenp reproduce`` as a library call: plan the cells, run the unfinished ones, write the report.

    reproduce("smoke", "runs/reproduce-smoke")           # minutes on 2 CPU cores
    reproduce("cpu", "results/reproduce-cpu", resume=True, cells_from=["results/fig2a"])
    reproduce("cpu", "results/reproduce-cpu", report_only=True, cells_from=["results/fig2a"])  # computes nothing
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from rcenp import checkpoint
from rcenp.attacks.jobs import stop_with_parent
from rcenp.backend import default_device, device_identity, xp_for
from rcenp.data.datasets import data_root
from rcenp.reproduce import lineup
from rcenp.reproduce.budgets import get_budget
from rcenp.reproduce.cells import PARTS, plan, result_file
from rcenp.reproduce.runner import cell_count_line, read_timings, run_cells, sort_out
from rcenp.reproduce.costs import add_eta_costs
from rcenp.reproduce.report import write_report
from rcenp.reproduce.results import Results
from rcenp.reproduce.reuse import remember_cells_from, remembered_cells_from
from rcenp.reproduce.workers import check_jobs, run_lock, run_workers, worker_id


def code_line(code: dict) -> str:
    """REPORT.md's "code:" value from ``checkpoint.code_identity()``: the commit, and whether
    the package's code differed from it (``dirty``; None: git could not say)."""
    if not code:
        return "not a git checkout (no commit to name)"
    said = {True: " (uncommitted changes)", None: " (uncommitted changes: git could not say)"}
    return f"commit {code['commit']}" + said.get(code.get("dirty"), "")


def comma_list(flag: str, value, choices, noun: str, empty: str) -> list[str]:
    """``value`` ("a,b", or a list) as names from ``choices``; ValueError (one line) naming
    ``flag``, an unknown ``noun`` or an ``empty`` item, and the choices."""
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
    unknown = [n for n in names if n and n not in choices]
    if unknown or not all(names):  # "" or "a,,b": an item left out by mistake, not "every one"
        what = f"unknown {noun} " + ", ".join(map(repr, unknown)) if unknown else empty
        raise ValueError(f"{flag}: {what}; expected a comma-separated subset of {','.join(choices)}")
    return names


def parse_only(only) -> list[str]:
    """``"table1,fig2"`` (or a list) → the parts in report order; None → every part. ValueError
    names an unknown or empty part and the choices."""
    if only is None:
        return list(PARTS)
    names = comma_list("--only", only, PARTS, "part", "an empty part")
    return [p for p in PARTS if p in names]


def parse_datasets(datasets, budget) -> tuple | None:
    """``"mnist,fashion-mnist"`` (or a list) → those data sets in report order; None → the
    budget's own. ValueError names an unknown or empty data set and the choices, or one the budget
    does not cover (the smoke budget: MNIST only)."""
    if datasets is None:
        return budget.datasets
    names = comma_list("--datasets", datasets, lineup.DATASETS, "data set", "an empty item")
    outside = [d for d in names if budget.skips(d)]
    if outside:
        raise ValueError(f"--datasets: the {budget.name} budget covers "
                         f"{', '.join(lineup.DATASET_TITLES[d] for d in budget.datasets)} only, not "
                         f"{', '.join(lineup.DATASET_TITLES[d] for d in outside)}")
    return tuple(d for d in lineup.DATASETS if d in names)


def claim(out_dir: Path, budget_name: str, resume: bool, write: bool = True) -> bool:
    """Create ``out_dir`` and its run.json (→ True), or check a resumed run there is of the same
    budget (→ False). ``write=False`` makes the same checks and creates nothing (``--plan``).
    ValueError (one line) for an unwritable folder or a run that --resume must continue."""
    checkpoint.check_folder(out_dir, "--out")
    run_file = out_dir / "reproduce.json"
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{run_file}: unreadable ({exc})") from None
        if not resume:
            how = "pass --resume" if previous.get("budget") == budget_name else \
                f"pass --budget {previous.get('budget')} --resume"
            raise ValueError(f"{out_dir} already holds a reproduce run (budget {previous.get('budget')}): "
                             f"{how} to continue it, or choose another --out")
        if previous.get("budget") != budget_name:
            raise ValueError(f"{out_dir} holds a {previous.get('budget')} run: pass --budget {previous.get('budget')}, "
                             "or choose another --out")
        return False
    if not write:
        nearest = next(folder for folder in (out_dir, *out_dir.parents) if folder.exists())
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write to --out {out_dir}: {nearest} is not writable")
        return True
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_text(run_file, json.dumps({"budget": budget_name, "started": time.time(),
                                                           "code": checkpoint.code_identity()}) + "\n")
    except OSError as exc:
        raise ValueError(f"cannot write to --out {out_dir}: {exc.strerror or exc}") from None
    return True


def _part_seconds(out_dir: Path, cells) -> dict:
    """Seconds per part, from the cell totals ``run_cells`` keeps in OUT/timings.json."""
    seconds = read_timings(out_dir / "timings.json")
    per_part: dict[str, float] = {}
    for cell in cells:
        for part in cell.parts:
            per_part[part] = per_part.get(part, 0.0) + seconds.get(cell.key, 0.0)
    return per_part


def worker_argv(budget: str, out_dir: Path, parts, data_dir, cells_from, device, datasets) -> list[str]:
    """The ``rcenp reproduce`` arguments of a --jobs worker: this run's, with --resume."""
    argv = ["reproduce", "--budget", budget, "--out", str(out_dir), "--resume", "--only", ",".join(parts)]
    if datasets:
        argv += ["--datasets", ",".join(datasets)]
    if data_dir:
        argv += ["--data-dir", str(data_dir)]
    for folder in cells_from or ():
        argv += ["--cells-from", str(folder)]
    if device:
        argv += ["--device", device]
    return argv


def reproduce(budget: str = "smoke", out=None, resume: bool = False, only=None, data_dir=None, cells_from=(),
              device=None, stream=sys.stderr, command: str | None = None, datasets=None, plan_only: bool = False,
              jobs: int = 1, report_only: bool = False) -> dict:
    """Run the paper's evaluation under ``budget`` into ``out`` (default ``runs/reproduce-<budget>``)
    and write REPORT.md, per-table CSV/JSON and PNG figures there. Progress and the ETA go to
    ``stream``; the result is returned, not printed: {"budget", "out", "report" (REPORT.md's path),
    "files" (REPORT.md first), "outcomes", "sanity", "figures", "wall_s"}. ``datasets``: run only
    these data sets' cells (``parse_datasets``); the report says the others were not run. Another
    invocation over the same ``out`` may name others: each cell is its own unit. ``plan_only``:
    compute, write and move nothing; return {"budget", "out", "plan": lines for a person}
    (``rcenp.reproduce.preview``). ``report_only``: compute nothing; write the report of the run in
    ``out`` from the cells finished so far (as found by a resumed run, with the ``cells_from`` the
    run recorded unless others are given), every other cell of the chosen data sets marked
    "pending" and REPORT.md headed PARTIAL; the result as for a full run, "pending" added. A run
    records its ``cells_from`` (``rcenp.reproduce.reuse.remember_cells_from``); a call naming
    none uses the recorded ones. ``jobs``: the unfinished cells are
    computed by that many worker processes of one thread each (``rcenp.reproduce.workers``). In such a
    worker (``WORKER_ENV``) this computes cells only and returns {"budget", "out", "outcomes",
    "worker"}. Raises ValueError for a bad budget, an unknown part or data set, bad ``jobs``, a
    ``data_dir`` or ``cells_from`` folder that does not exist, an unwritable ``out``, a run there
    that needs ``resume`` (or, for ``report_only``, no run there), a run in progress there (not
    for ``plan_only``), or a worker that failed."""
    start = time.monotonic()
    spec = get_budget(budget)
    jobs = check_jobs(jobs)
    worker = worker_id()
    parts = parse_only(only)
    chosen = parse_datasets(datasets, spec)
    if chosen != spec.datasets:
        spec = dataclasses.replace(spec, datasets=chosen, datasets_by=f"--datasets {','.join(chosen)}")
    out_dir = Path(out or f"runs/reproduce-{spec.name}")
    for folder in cells_from or ():
        if not Path(folder).is_dir():
            raise ValueError(f"--cells-from {folder}: no such folder")
    named = ("--data-dir", data_dir) if data_dir else ("$RCENP_DATA", os.environ.get("RCENP_DATA"))
    if named[1] and not data_root(data_dir).is_dir():  # else every cell would say its data is missing
        raise ValueError(f"{named[0]} {named[1]}: no such folder")
    if device:  # a DeviceError before anything is claimed
        xp_for(device)
    else:
        default_device()
    if report_only and (plan_only or jobs > 1):
        raise ValueError("--report computes nothing: it goes with neither --plan nor --jobs")
    if report_only and only is not None:
        raise ValueError("--report writes the whole report (the files of parts left out would stay behind, "
                         "stale): it goes without --only")
    if report_only and not (out_dir / "reproduce.json").is_file():
        raise ValueError(f"--report: no reproduce run in {out_dir} to report on (start one without --report)")
    if claim(out_dir, spec.name, resume or report_only, write=not plan_only) and resume and not plan_only:
        stream.write(f"--resume: no reproduce run in {out_dir} yet, so this starts one\n")
    remembered = remembered_cells_from(out_dir)
    if not cells_from and remembered and not worker:  # (given folders were checked above)
        for folder in remembered:
            if not Path(folder).is_dir():
                raise ValueError(f"--cells-from {folder} (recorded by the run in {out_dir}): no such folder")
        cells_from = remembered
        stream.write(f"--cells-from {' '.join(remembered)}: as this run recorded\n")
    if cells_from and not (plan_only or report_only or worker):
        remember_cells_from(out_dir, cells_from)
    lineup.refresh()
    cells = plan(spec, parts)
    if plan_only:
        from rcenp.reproduce.preview import describe
        from rcenp.reproduce.workers import in_progress

        outcomes, todo, notes = sort_out(cells, out_dir, data_dir, cells_from, dry_run=True)
        add_eta_costs(todo, data_dir)
        running = in_progress(out_dir, [c.key for c in todo])
        return {"budget": spec.name, "out": str(out_dir),
                "plan": describe(cells, outcomes, todo, notes, out_dir, spec.name, cells_from, data_dir, jobs, running)}
    if worker:
        stop_with_parent()
        return {"budget": spec.name, "out": str(out_dir), "worker": f"{worker[0]}/{worker[1]}",
                "outcomes": run_cells(cells, out_dir, data_dir, cells_from, device, stream, worker=worker[0])}
    invocation = command or f"rcenp reproduce --budget {spec.name} --out {out_dir}"
    with run_lock(out_dir):
        if report_only:
            outcomes, todo, _ = sort_out(cells, out_dir, data_dir, cells_from, dry_run=True)
            outcomes.update({cell.key: {"status": "pending", "reason": "pending: not computed yet", "path": None}
                             for cell in todo})
            checkpoint.atomic_write_text(out_dir / "cells.json", json.dumps(outcomes, indent=1) + "\n")
        else:
            timings_before = read_timings(out_dir / "timings.json")
            try:
                known = None
                if jobs > 1:  # stale folders are set aside here, once, before the workers sort the cells out
                    sorted_out, todo, notes = sort_out(cells, out_dir, data_dir, cells_from)
                    if len(todo) > 1:
                        add_eta_costs(todo, data_dir)
                        argv = worker_argv(spec.name, out_dir, parts, data_dir, cells_from, device, chosen)
                        known = run_workers(argv, out_dir, min(jobs, len(todo)), todo, stream,
                                            intro=notes + [cell_count_line(cells, sorted_out, todo)])
                outcomes = run_cells(cells, out_dir, data_dir, cells_from, device, stream, known=known)
            except BaseException:  # Ctrl-C, SIGTERM's SystemExit, a failure: the cells finished are recorded
                finished = finished_since(cells, out_dir, timings_before)
                if finished:
                    record_invocation(out_dir, invocation, code_line(checkpoint.code_identity()), finished,
                                      time.monotonic() - start, device, stopped=True)
                raise
        results = Results(cells, outcomes)
        code = checkpoint.code_identity()
        computed = sum(o.get("source") in ("computed", "continued") for o in outcomes.values())
        if computed and not report_only:
            record_invocation(out_dir, invocation, code_line(code), computed, time.monotonic() - start, device)
        counts: dict[str, int] = {}
        for outcome in outcomes.values():
            label = outcome["status"] if outcome["status"] != "done" else f"done ({outcome.get('source')})"
            counts[label] = counts.get(label, 0) + 1
        meta = {"command": invocation,
                "computed_by": computed_by(out_dir),
                "code": code_line(code),
                "wall_s": time.monotonic() - start, "report_only": report_only,
                "counts": ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
                "part_seconds": _part_seconds(out_dir, cells),
                "pending": counts.get("pending", 0), "again": command_again(command, spec.name, out_dir),
                "pending_by_part": pending_by_part(cells, outcomes)}
        written = write_report(results, spec, parts, out_dir, meta)
        return {"budget": spec.name, "out": str(out_dir), "report": str(out_dir / "REPORT.md"),
                "files": written["files"], "outcomes": outcomes, "sanity": written["sanity"],
                "figures": written["figures"], "wall_s": time.monotonic() - start,
                "pending": meta["pending"]}


def record_invocation(out_dir: Path, command: str, code: str, cells: int, seconds: float, device=None,
                      stopped: bool = False) -> None:
    """Append to reproduce.json's ``computed_by`` the invocation that computed ``cells`` cells, so
    that a later --report still says which commands made the numbers, on what device
    (``device_identity``: the GPU's name and CuPy's version on cuda), and whether it was
    ``stopped`` before its end (Ctrl-C, SIGTERM, a failure), its finished cells kept."""
    path = out_dir / "reproduce.json"
    run = json.loads(path.read_text())
    entry = {"command": command, "code": code, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
             "cells": cells, "seconds": round(seconds, 1), "compute": device_identity(device or default_device()),
             **({"stopped": True} if stopped else {})}
    checkpoint.atomic_write_text(path, json.dumps({**run, "computed_by": run.get("computed_by", []) + [entry]}) + "\n")


def finished_since(cells, out_dir: Path, timings_before: dict) -> int:
    """How many of ``cells`` an invocation finished: their seconds in OUT/timings.json grew since
    ``timings_before`` (``read_timings`` at its start) and their result file is there, which is
    what a stopped run leaves to count (a cell set aside as stale and recomputed counts too)."""
    now = read_timings(out_dir / "timings.json")
    return sum(now.get(c.key, 0) > timings_before.get(c.key, 0)
               and result_file(out_dir / "cells" / c.key, c.kind).is_file() for c in cells)


def computed_by(out_dir: Path) -> list[dict]:
    """reproduce.json's ``computed_by`` ([] for a run that predates it)."""
    try:
        return json.loads((out_dir / "reproduce.json").read_text()).get("computed_by", [])
    except (OSError, ValueError):
        return []


def pending_by_part(cells, outcomes) -> dict[str, int]:
    """{part: pending cells it uses}, in PARTS' order, for the parts with any (a cell shared by
    several parts counts in each): what ``--resume --only PART`` would compute."""
    counts = {part: 0 for part in PARTS}
    for cell in cells:
        if outcomes.get(cell.key, {}).get("status") == "pending":
            for part in cell.parts:
                counts[part] += 1
    return {part: n for part, n in counts.items() if n}


def command_again(command: str | None, budget: str, out_dir: Path) -> str:
    """The command that computes a --report run's pending cells: ``command`` with --resume for
    --report, or the plain form; with ``--device cuda`` where the last recorded invocation
    computed on the GPU and the command names no device (a GPU run resumed on the CPU by default
    would take hundreds of times longer)."""
    words = ([w for w in command.split() if w not in ("--report", "--resume")] if command
             else ["rcenp", "reproduce", "--budget", budget, "--out", str(out_dir)])
    last = computed_by(out_dir)[-1:]
    if last and (last[0].get("compute") or {}).get("device") == "cuda" and not any(
            w == "--device" or w.startswith("--device=") for w in words):
        words += ["--device", "cuda"]
    return " ".join(words + ["--resume"])
