"""The runner of ``rcenp reproduce``'s plan (``rcenp.reproduce.cells``): each unfinished cell
computed into its folder ``OUT/cells/<model>/<name>/``, under its lock, with progress and ETA.

A cell is finished when its summary.json / result file exists; a finished cell is not recomputed,
and an attack cell cut short resumes from its last finished batch. An attack cell folder of the
run whose run.json asks for something else than the cell now does (``rcenp.reproduce.reuse.stale``:
other options, n, weights or detectors), and a test-error or features cell folder of other weights
(``result_stale``), is renamed to ``<name>.stale-<k>``, kept and never deleted, and the cell is
computed afresh. The test split is not compared there: a smoke run resumed where a data
root has appeared reads the full MNIST test set, whose first 1,000 images are the embedded
sample's. A finished attack cell that is not stale in a ``cells_from`` folder of the same layout
(``results/fig2a``) is used in place, never copied or recomputed (``reusable``).
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

from rcenp import checkpoint
from rcenp.reproduce import lineup
from rcenp.reproduce.cells import Cell, result_file
from rcenp.reproduce.costs import add_eta_costs
from rcenp.reproduce.reuse import (cells_from_notes, recorded, result_stale, reusable, set_aside,
                                   split_identity, stale)


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


UNFINISHED_SECONDS = "seconds-unfinished.json"  # in a begun cell's folder: its stopped runs' seconds


def note_unfinished(cell_dir: Path, seconds: float) -> None:
    """Keep the seconds a stopped run spent on the cell in ``cell_dir`` (where it began one), to be
    added to timings.json when the cell is finished (``take_unfinished``): a cell continued
    over several runs counted only its last one's."""
    if cell_dir.is_dir() and seconds > 0:
        checkpoint.atomic_write_text(cell_dir / UNFINISHED_SECONDS,
                                     json.dumps({"seconds": take_unfinished(cell_dir) + seconds}) + "\n")


def take_unfinished(cell_dir: Path) -> float:
    """The seconds ``note_unfinished`` kept for ``cell_dir`` (0 where none), the record removed."""
    path = cell_dir / UNFINISHED_SECONDS
    try:
        seconds = float(json.loads(path.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    path.unlink()
    return seconds


def sort_out(cells: list[Cell], out_dir: Path, data_dir=None, cells_from=(), dry_run: bool = False):
    """What ``run_cells`` finds before computing anything → (outcomes of the cells it will not
    compute, {key: outcome} as ``run_cells``'s; the cells to compute, in order; notes for a person
    on stale folders). A stale cell folder in ``out_dir`` (``stale_folder``) is set aside (``set_aside``) and
    its cell computed afresh; with ``dry_run`` nothing is moved and the note says it would be."""
    test_split = functools.lru_cache(maxsize=None)(lambda dataset: split_identity(dataset, data_dir))
    outcomes: dict[str, dict] = {}
    todo, notes = [], []
    for cell in cells:
        cell_dir = out_dir / "cells" / cell.key
        if not cell.missing and (why := stale_folder(cell, cell_dir)):
            what = "asked for other settings" if cell.kind == "attack" else "computed on other weights"
            notes.append(f"{cell.key}: {what} ({why}); "
                         + ("would be set aside and computed afresh" if dry_run else
                            f"moved to {set_aside(cell_dir).name}, computing it afresh"))
            if dry_run:  # as if moved: the folder's files are not this cell's
                if cell.skipped:
                    outcomes[cell.key] = {"status": "not run", "reason": cell.missing, "path": None}
                else:
                    todo.append(cell)
                continue
        if cell.skipped:  # this run's data sets do not include it: an earlier run's result, or nothing
            finished = cell.model is not None and result_file(cell_dir, cell.kind).is_file() \
                and not stale_folder(cell, cell_dir)
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


def stale_folder(cell: Cell, cell_dir: Path) -> str | None:
    """Why the folder of ``cell`` in OUT holds another cell than the one planned now (one line), or
    None: an attack run that asked for other settings, weights or detectors (``stale``; not the
    test split: see the module docstring), a finished test-error or features cell of other
    weights (``result_stale``). None for a folder with nothing in it to judge."""
    if cell.kind == "attack":
        asked = recorded(cell_dir)
        return None if asked is None else stale(cell, asked, finished=(cell_dir / "summary.json").is_file())
    return result_stale(cell, cell_dir) if result_file(cell_dir, cell.kind).is_file() else None


def cell_count_line(cells, outcomes: dict, todo) -> str:
    """``108 cells: 38 to compute, 0 finished, 0 not available, 70 not run (...)``."""
    count = {status: sum(o["status"] == status for o in outcomes.values()) for status in ("done", "not run")}
    return (f"{len(cells)} cells: {len(todo)} to compute, {count['done']} finished, "
            f"{len(outcomes) - count['done'] - count['not run']} not available"
            + (f", {count['not run']} not run (data sets this run does not cover)" if count["not run"] else ""))


def run_cells(cells: list[Cell], out_dir, data_dir=None, cells_from=(), device=None, stream=sys.stderr,
              known: dict | None = None, worker: int | None = None) -> dict:
    """Run every unfinished, available cell; → {key: outcome} where an outcome is
    {"status": "done" | "not available" | "not run", "path", "reason", "source", "seconds", and
    "note" where a transfer cell crafted its own images}; "source" is "computed" (from the start,
    here), "continued" (a cell cut short earlier, finished here from its last batch), "resumed"
    (found finished in ``out_dir``: nothing computed here) or "reused" (from ``cells_from``).
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
                        try:
                            outcome = mine[cell.key] = outcomes[cell.key] = run_cell(
                                cell, cell_dir, data_dir, device, stream, _crafted_from(cell, outcomes, out_dir))
                        except BaseException:
                            note_unfinished(cell_dir, time.monotonic() - start)
                            raise
                        if outcome.get("note"):
                            progress.message(f"{cell.key}: {outcome['note']}")
                        outcome["seconds"] = time.monotonic() - start
                        spent += outcome["seconds"]
                        if outcome.get("source") in ("computed", "continued") and outcome["seconds"]:
                            with cell_lock(out_dir, "timings"):
                                add_seconds(out_dir / "timings.json", cell.key,
                                            outcome["seconds"] + take_unfinished(cell_dir))
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
    continued, begun = (cell_dir / "partial").is_dir(), (cell_dir / "run.json").is_file()
    batch_size = cell.batch_size
    if begun:  # a cell goes on as it began: in its batches, scoring the images it began with or crafting its own
        began = json.loads((cell_dir / "run.json").read_text())
        crafted = (began.get("crafted") or {}).get("path")
        batch_size = began.get("batch_size", batch_size)

    def run(crafted):
        attack_run.run_attack(cell.model, cell.attack, cell_dir, cell.options, n=cell.n, seed=0,
                              batch_size=batch_size, resume=begun, data_dir=data_dir, device=device,
                              stream=stream, crafted=crafted)
    outcome = {"status": "done", "path": str(cell_dir), "source": "continued" if continued else "computed"}
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
    model, manifest = load(cell.model, device)
    result = evaluate(model, test.images[:n], test.labels[:n])
    result.update(model=cell.model, test_set=test.describe(), first_n=n, model_sha256=model.weights_sha256,
                  model_step=manifest.get("step"))
    checkpoint.atomic_write_text(result_file(cell_dir, "test-error"), json.dumps(result, indent=1) + "\n")


def _features_cell(cell, cell_dir, data_dir, device) -> None:
    import numpy as np

    from rcenp.backend import as_numpy
    from rcenp.detect.detector import Detector
    from rcenp.models.registry import load

    test = _test_split(cell, data_dir)
    labels = np.asarray(test.labels)
    index = np.sort(np.concatenate([np.flatnonzero(labels == k)[:cell.n] for k in range(10)]))
    model, manifest = load(cell.model, device)
    z, logits = Detector(model).features_and_logits(test.images[index])
    checkpoint.atomic_write_text(cell_dir / "cell.json", json.dumps(  # read by result_stale
        {"model": cell.model, "model_sha256": model.weights_sha256, "model_step": manifest.get("step")}, indent=1) + "\n")
    checkpoint.atomic_write_npz(result_file(cell_dir, "features"), z=as_numpy(z).astype(np.float32),
                                labels=labels[index], indices=index,
                                predictions=as_numpy(logits).argmax(axis=1))
