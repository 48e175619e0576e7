"""The plan of ``rcenp reproduce``: a list of cells, each a saved unit of work, and their runner.

A cell is one directory ``OUT/cells/<model>/<name>/``:
- an attack cell is one ``run_attack`` run (``summary.json``, ``samples.jsonl``,
  ``adversarial.npz``), named as ``scripts/attack_sweep.py`` names them (``bim-0.16``,
  ``jsma-0.1``) or ``cw``, ``cw-hc``, ``cw-wb``, ``cw-wb-detector``, ``bim-1`` (unbounded),
  ``cw-wb-from-<substitute>`` (Table 4's transfer);
- ``test-error/result.json``: Table 1's test error on the first ``n_test`` test images;
- ``features-<k>pc/features.npz``: Fig. 1's 64-d Z of the first k test images of each class.

A transfer cell's x* are those of its substitute's own C&W-wb cell (Table 3's, the same images,
targets and settings: ``rcenp.attacks.transfer``), so Table 4 plans that cell too, runs after it
and scores its images on the target instead of crafting them again (``Cell.crafted``); where that
cell is not finished, or not the run the transfer would craft, the transfer cell crafts its own.

A cell is finished when its summary.json / result file exists; a finished cell is not recomputed,
and an attack cell cut short resumes from its last finished batch. An attack cell folder of the
run whose run.json asks for something else than the cell now does (``rcenp.reproduce.reuse.stale``:
other options, n or detectors) is renamed to ``<name>.stale-<k>``, kept and never deleted, and the
cell is computed afresh. The test split is not compared there: a smoke run resumed where a data
root has appeared reads the full MNIST test set, whose first 1,000 images are the embedded
sample's. A finished attack cell that is not stale in a ``cells_from`` folder of the same layout
(``results/fig2a``) is used in place, never copied or recomputed (``reusable``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

from rcenp import checkpoint
from rcenp.reproduce import budgets, lineup
from rcenp.reproduce.budgets import Budget
from rcenp.reproduce.costs import add_eta_costs, cell_cost
from rcenp.reproduce.reuse import cells_from_notes, recorded, reusable, set_aside, split_identity, stale

PARTS = ("table1", "table2", "table3", "table4", "fig1", "fig2", "fig3", "sanity")
EPS_ATTACKS = ("fgsm", "bim", "ilcm", "jsma")


@dataclasses.dataclass
class Cell:
    """One unit of work. key: ``<model>/<name>`` (the folder under OUT/cells); kind: "attack",
    "test-error" or "features"; model: the shipped model (None when not shipped: ``missing`` says
    why and ``missing_model`` names the model it waits for, this one or Table 4's substitute);
    dataset/depth/objective: its place in the tables; attack/options/n: run_attack's
    arguments, batch_size its checkpointed batch; eps: the ε-attack's ε (None otherwise);
    parts: the report parts that use it; crafted: a transfer cell's source of x*, the key of its
    substitute's own C&W-wb cell (module docstring); skipped: a cell of a data set this run does
    not cover (the budget's, or ``--datasets``), "not run" unless an earlier run finished it;
    cost: a relative cost (image-iterations) for the ETA."""

    key: str
    kind: str
    model: str | None
    dataset: str
    depth: int
    objective: str
    n: int | None
    attack: str | None = None
    options: dict | None = None
    eps: float | None = None
    substitute: str | None = None
    batch_size: int = 100
    missing: str | None = None
    missing_model: str | None = None
    parts: set = dataclasses.field(default_factory=set)
    crafted: str | None = None
    skipped: bool = False
    cost: float = 1.0


def plan(budget: Budget, parts) -> list[Cell]:
    """The cells that ``parts`` (a subset of ``PARTS``) need under ``budget``, in run order
    (cheap and widely used first), without duplicates."""
    cells: dict[str, Cell] = {}

    def add(part, dataset, depth, objective, name, kind, **fields):
        model = lineup.find_model(dataset, depth, objective)
        key = f"{model or lineup.expected_name(dataset, depth, objective)}/{name}"
        if key not in cells:
            if budget.skips(dataset):
                missing, missing_model = f"not run: {budget.datasets_by or f'the {budget.name} budget'} covers " + \
                    ", ".join(lineup.DATASET_TITLES[d] for d in budget.datasets) + " only", None
            else:
                missing = None if model else lineup.missing_reason(dataset, depth, objective)
                missing_model = None if model else lineup.expected_name(dataset, depth, objective)
            cells[key] = Cell(key, kind, model, dataset, depth, objective, missing=missing,
                              missing_model=missing_model, skipped=budget.skips(dataset), **fields)
            cells[key].cost = cell_cost(cells[key])
        cells[key].parts.add(part)
        return cells[key]

    def attack(part, dataset, objective, attack_name, name, options, n, depth=32, eps=None, substitute=None):
        return add(part, dataset, depth, objective, name, "attack", attack=attack_name, options=options, n=n,
                   eps=eps, substitute=substitute, batch_size=min(budget.batch_size, n))

    def eps_cell(part, dataset, objective, attack_name, eps):
        attack(part, dataset, objective, attack_name, f"{attack_name}-{eps:g}",
               budgets.eps_options(attack_name, eps, budget), budget.n_eps, eps=eps)

    def cw_cells(part, dataset, objective):
        for name in ("cw", "cw-hc"):
            attack(part, dataset, objective, name, name, budgets.cw_options(name, budget), budget.n_cw)

    def wb_cells(part, dataset, objective, depth=32, kernels=("attacker", "detector")):
        for kernel in kernels:
            name = "cw-wb" if kernel == "attacker" else f"cw-wb-{kernel}"
            attack(part, dataset, objective, "cw-wb", name, budgets.cw_wb_options(budget, kernel), budget.n_wb,
                   depth=depth)

    selected = [p for p in PARTS if p in set(parts)]
    for part in selected:
        for dataset in lineup.DATASETS:
            for objective in lineup.OBJECTIVES:
                if part == "table1":
                    for depth in lineup.DEPTHS:
                        add(part, dataset, depth, objective, "test-error", "test-error", n=budget.n_test)
                elif part == "fig1":
                    add(part, dataset, 32, objective, f"features-{budget.tsne_per_class}pc", "features",
                        n=budget.tsne_per_class)
                elif part == "table2":
                    for name in EPS_ATTACKS:
                        eps_cell(part, dataset, objective, name, budget.table_eps)
                    cw_cells(part, dataset, objective)
                elif part == "fig2":
                    for name in EPS_ATTACKS:
                        for eps in budget.eps_sweep:
                            eps_cell(part, dataset, objective, name, eps)
                    cw_cells(part, dataset, objective)
                elif part == "sanity":
                    for name in ("fgsm", "bim"):
                        for eps in budget.eps_sweep:
                            eps_cell(part, dataset, objective, name, eps)
                    attack(part, dataset, objective, "bim", f"bim-{budgets.UNBOUNDED_EPS:g}",
                           {"eps": budgets.UNBOUNDED_EPS, "steps": 10}, budget.n_eps, eps=budgets.UNBOUNDED_EPS)
                    cw_cells(part, dataset, objective)
                elif part == "table3":
                    wb_cells(part, dataset, objective)
                elif part == "fig3" and dataset != "fashion-mnist":
                    wb_cells(part, dataset, objective, kernels=("attacker",))
                elif part == "table4" and dataset != "fashion-mnist":
                    if "sanity" in selected:  # white-box on the target: only the sanity check uses it
                        wb_cells("sanity", dataset, objective, depth=56, kernels=("attacker",))
                    for substitute_objective in lineup.OBJECTIVES:
                        substitute = lineup.find_model(dataset, 32, substitute_objective)
                        sub_name = substitute or lineup.expected_name(dataset, 32, substitute_objective)
                        cell = attack(part, dataset, objective, "cw-wb", f"cw-wb-from-{sub_name}",
                                      budgets.cw_wb_options(budget, "attacker", sub_name), budget.n_wb, depth=56,
                                      substitute=sub_name)
                        if substitute is None and cell.missing is None:
                            cell.missing = lineup.missing_reason(dataset, 32, substitute_objective)
                            cell.missing_model = sub_name
                        if cell.missing is None:  # its x*: the substitute's own white-box cell's
                            crafted = attack(part, dataset, substitute_objective, "cw-wb", "cw-wb",
                                             budgets.cw_wb_options(budget, "attacker"), budget.n_wb)
                            cell.crafted, cell.cost = crafted.key, cell_cost(cell, crafted=True)
    order = {"test-error": 0, "features": 1, "attack": 2}
    return sorted(cells.values(), key=lambda c: (order[c.kind], c.crafted is not None, c.cost))  # transfer last


def result_file(cell_dir: Path, kind: str) -> Path:
    """The file whose presence marks a cell finished."""
    return cell_dir / {"attack": "summary.json", "test-error": "result.json", "features": "features.npz"}[kind]


def finished_earlier(cell_dir: Path) -> dict:
    """The outcome of a cell found finished in ``cell_dir``: computed by an earlier run or by
    another process, nothing computed here."""
    return {"status": "done", "path": str(cell_dir), "source": "resumed", "seconds": 0.0}


def read_timings(path: Path) -> dict:
    """OUT/timings.json: {cell key: seconds summed over invocations}, {} when there is none."""
    return json.loads(path.read_text()) if path.is_file() else {}


def add_seconds(path: Path, key: str, seconds: float) -> None:
    """Add ``seconds`` to cell ``key``'s total in ``path`` (``read_timings``), through a temporary
    file and a rename."""
    totals = read_timings(path)
    totals[key] = totals.get(key, 0.0) + seconds
    checkpoint.atomic_write_text(path, json.dumps(totals, indent=1) + "\n")


def sort_out(cells: list[Cell], out_dir: Path, data_dir=None, cells_from=(), dry_run: bool = False):
    """What ``run_cells`` finds before computing anything → (outcomes of the cells it will not
    compute, {key: outcome} as ``run_cells``'s; the cells to compute, in order; notes for a person
    on stale folders). A stale attack cell folder in ``out_dir`` is set aside (``set_aside``) and
    its cell computed afresh; with ``dry_run`` nothing is moved and the note says it would be."""
    test_split = functools.lru_cache(maxsize=None)(lambda dataset: split_identity(dataset, data_dir))
    outcomes: dict[str, dict] = {}
    todo, notes = [], []
    for cell in cells:
        cell_dir = out_dir / "cells" / cell.key
        if cell.kind == "attack" and not cell.missing and (asked := recorded(cell_dir)) is not None \
                and (why := stale(cell, asked)):  # not the split: see the module docstring
            notes.append(f"{cell.key}: asked for other settings ({why}); "
                         + ("would be set aside and computed afresh" if dry_run else
                            f"moved to {set_aside(cell_dir).name}, computing it afresh"))
            if dry_run:  # as if moved: the folder's files are not this cell's
                if cell.skipped:
                    outcomes[cell.key] = {"status": "not run", "reason": cell.missing, "path": None}
                else:
                    todo.append(cell)
                continue
        if cell.skipped:  # this run's data sets do not include it: an earlier run's result, or nothing
            finished = cell.model is not None and result_file(cell_dir, cell.kind).is_file() and (
                cell.kind != "attack" or ((asked := recorded(cell_dir)) is not None and not stale(cell, asked)))
            outcomes[cell.key] = finished_earlier(cell_dir) if finished else \
                {"status": "not run", "reason": cell.missing, "path": None}
        elif cell.missing:
            outcomes[cell.key] = {"status": "not available", "reason": cell.missing, "path": None}
        elif result_file(cell_dir, cell.kind).is_file():
            outcomes[cell.key] = finished_earlier(cell_dir)
        elif (found := reusable(cell, cells_from, test_split)) is not None:
            outcomes[cell.key] = {"status": "done", "path": str(found), "source": "reused", "seconds": 0.0}
        else:
            todo.append(cell)
    return outcomes, todo, notes


def cell_count_line(cells, outcomes: dict, todo) -> str:
    """``108 cells: 38 to compute, 0 finished, 0 not available, 70 not run (...)``."""
    count = {status: sum(o["status"] == status for o in outcomes.values()) for status in ("done", "not run")}
    return (f"{len(cells)} cells: {len(todo)} to compute, {count['done']} finished, "
            f"{len(outcomes) - count['done'] - count['not run']} not available"
            + (f", {count['not run']} not run (data sets this run does not cover)" if count["not run"] else ""))


def run_cells(cells: list[Cell], out_dir, data_dir=None, cells_from=(), device=None, stream=sys.stderr,
              known: dict | None = None, worker: int | None = None) -> dict:
    """Run every unfinished, available cell; → {key: outcome} where an outcome is
    {"status": "done" | "not available" | "not run", "path", "reason", "source": "computed" |
    "resumed" | "reused", "seconds", and "note" where a transfer cell crafted its own images}.
    A ``skipped`` cell is "done" where an earlier run in ``out_dir`` finished it (not stale),
    else "not run". A ``stale`` attack cell folder is set aside (``set_aside``) and the cell
    computed afresh. ``known``: outcomes computed already by this command's workers, taken as
    they are. Each cell is computed under its lock (``rcenp.reproduce.workers.cell_lock``): a
    cell another process holds is left for later, then waited for, and not computed again where
    that process finished it. ``worker``: K in worker K of ``rcenp reproduce --jobs``, which
    records its outcomes in OUT/workers/K.json instead of OUT/cells.json. Progress and an ETA
    across cells go to ``stream`` and OUT/reproduce.log (a worker: ``stream`` only); the outcomes
    to OUT/cells.json and each computed cell's seconds to OUT/timings.json (``add_seconds``)
    after every cell."""
    from rcenp.progress import Progress, plural
    from rcenp.reproduce.workers import cell_lock, record_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes, todo, set_aside_notes = sort_out(cells, out_dir, data_dir, cells_from)
    outcomes.update(known or {})
    todo = [cell for cell in todo if cell.key not in (known or {})]
    add_eta_costs(todo, data_dir)
    total_cost = sum(c.cost for c in todo)
    progress = Progress(None if worker else out_dir / "reproduce.log", len(todo), interval=0.0, stream=stream,
                        unit="cell")
    for note in set_aside_notes + cells_from_notes(outcomes, cells_from):
        progress.message(note)
    if known is None:  # (after --jobs workers, the command said so before starting them)
        progress.message(cell_count_line(cells, outcomes, todo))
    record = record_path(out_dir, worker) if worker else out_dir / "cells.json"
    mine: dict = {}  # the outcomes this process computed (a worker's record)
    done_cost, spent, finished, pending, blocking = 0.0, 0.0, 0, list(todo), False
    try:
        while pending:  # a first pass over the cells no other process holds, then one that waits
            later = []
            for cell in pending:
                with cell_lock(out_dir, cell.key, blocking) as held:
                    if not held:
                        later.append(cell)
                        continue
                    cell_dir = out_dir / "cells" / cell.key
                    if not result_file(cell_dir, cell.kind).is_file():
                        rate = spent / done_cost if done_cost else float("nan")
                        eta = (total_cost - done_cost) * rate if done_cost else float("inf")
                        progress.update(finished, f"next {cell.key}", eta, force=True)
                        start = time.monotonic()
                        outcome = mine[cell.key] = outcomes[cell.key] = run_cell(
                            cell, cell_dir, data_dir, device, stream, _crafted_from(cell, outcomes, out_dir))
                        if outcome.get("note"):
                            progress.message(f"{cell.key}: {outcome['note']}")
                        outcome["seconds"] = time.monotonic() - start
                        spent += outcome["seconds"]
                        if outcome.get("source") in ("computed", "resumed") and outcome["seconds"]:
                            with cell_lock(out_dir, "timings"):
                                add_seconds(out_dir / "timings.json", cell.key, outcome["seconds"])
                        checkpoint.atomic_write_text(record, json.dumps(mine if worker else outcomes, indent=1) + "\n")
                    else:  # another process finished it while this one walked the list
                        outcomes[cell.key] = finished_earlier(cell_dir)
                    finished += 1
                    done_cost += cell.cost
            pending, blocking = later, True
        if todo:
            every = ("all " if len(todo) > 1 else "") + plural(len(todo), "cell", "cells")
            progress.update(len(todo), f"{every} computed in {spent:.0f} s" if len(mine) == len(todo) else
                            f"{every} finished, {len(mine)} of them here in {spent:.0f} s", 0.0, force=True)
    finally:
        progress.close()
    checkpoint.atomic_write_text(record, json.dumps(mine if worker else outcomes, indent=1) + "\n")
    return outcomes


def _crafted_from(cell: Cell, outcomes: dict, out_dir: Path) -> Path | None:
    """The folder of transfer ``cell``'s substitute's own C&W-wb cell where that cell is done; one
    that another process is computing is waited for."""
    if cell.crafted is None:
        return None
    if (outcomes.get(cell.crafted) or {}).get("status") != "done":
        from rcenp.reproduce.workers import cell_lock

        with cell_lock(out_dir, cell.crafted):
            crafted_dir = out_dir / "cells" / cell.crafted
            if result_file(crafted_dir, "attack").is_file():
                outcomes[cell.crafted] = finished_earlier(crafted_dir)
    if (outcomes.get(cell.crafted) or {}).get("status") != "done":
        return None
    return Path(outcomes[cell.crafted]["path"])


def run_cell(cell: Cell, cell_dir: Path, data_dir=None, device=None, stream=sys.stderr, crafted=None) -> dict:
    """Compute one cell into ``cell_dir`` → its outcome (see ``run_cells``); ``crafted``: a transfer
    cell's source of x* (``run_attack``'s). Missing test data, and what ``run_attack`` or the model
    loader refuse (ValueError, CheckpointError: a transfer without the substitute's detector, a
    detector fitted for other weights, other settings in a cell cut short), make the cell "not
    available", with the error's first line as the reason."""
    from rcenp.data import DataError

    try:
        if cell.kind == "attack":
            return _attack_cell(cell, cell_dir, data_dir, device, stream, crafted)
        if cell.kind == "test-error":
            _test_error_cell(cell, cell_dir, data_dir, device)
        else:
            _features_cell(cell, cell_dir, data_dir, device)
    except (DataError, ValueError, checkpoint.CheckpointError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"status": "not available", "reason": f"not available: {first_line}", "path": None}
    return {"status": "done", "path": str(cell_dir), "source": "computed"}


def _attack_cell(cell, cell_dir, data_dir, device, stream, crafted=None) -> dict:
    from rcenp.attacks import run as attack_run
    from rcenp.attacks.transfer import CraftedMismatch

    if cell.attack == "cw-wb":  # the target's detector scores, the substitute's is attacked
        for role, name in (("", cell.model), ("substitute ", (cell.options or {}).get("substitute"))):
            if name is not None and not lineup.has_detector(name):
                return {"status": "not available", "path": None,
                        "reason": f"not available: {role}{name} has no fitted K-density detector (fit one with "
                                  f"`rcenp detect {name} --fit`)"}
    resumed, begun = (cell_dir / "partial").is_dir(), (cell_dir / "run.json").is_file()
    if begun:  # a cell goes on as it began: scoring the images it began with, or crafting its own
        crafted = (json.loads((cell_dir / "run.json").read_text()).get("crafted") or {}).get("path")

    def run(crafted):
        attack_run.run_attack(cell.model, cell.attack, cell_dir, cell.options, n=cell.n, seed=0,
                              batch_size=cell.batch_size, resume=begun, data_dir=data_dir, device=device,
                              stream=stream, crafted=crafted)
    outcome = {"status": "done", "path": str(cell_dir), "source": "resumed" if resumed else "computed"}
    try:
        run(crafted)
    except CraftedMismatch as exc:
        if begun:
            raise
        outcome["note"] = f"crafted its own images: {cell.crafted} is not their source ({exc})"
        run(None)
    return outcome


def _test_split(cell, data_dir):
    from rcenp.data import DataError, find_test_split

    test, why = find_test_split(cell.dataset, data_dir, strict=True)
    if test is None:
        raise DataError(why)
    return test


def _test_error_cell(cell, cell_dir, data_dir, device) -> None:
    from rcenp.models.registry import load
    from rcenp.train import evaluate

    test = _test_split(cell, data_dir)
    n = len(test.labels) if cell.n is None else min(cell.n, len(test.labels))
    model, _ = load(cell.model, device)
    result = evaluate(model, test.images[:n], test.labels[:n])
    result.update(model=cell.model, test_set=test.describe(), first_n=n)
    checkpoint.atomic_write_text(result_file(cell_dir, "test-error"), json.dumps(result, indent=1) + "\n")


def _features_cell(cell, cell_dir, data_dir, device) -> None:
    import numpy as np

    from rcenp.backend import as_numpy
    from rcenp.detect.detector import Detector
    from rcenp.models.registry import load

    test = _test_split(cell, data_dir)
    labels = np.asarray(test.labels)
    index = np.sort(np.concatenate([np.flatnonzero(labels == k)[:cell.n] for k in range(10)]))
    model, _ = load(cell.model, device)
    z, logits = Detector(model).features_and_logits(test.images[index])
    checkpoint.atomic_write_npz(result_file(cell_dir, "features"), z=as_numpy(z).astype(np.float32),
                                labels=labels[index], indices=index,
                                predictions=as_numpy(logits).argmax(axis=1))
