"""Stand-ins shared by the ``rcenp.reproduce`` tests: published cells, a finished run_attack, a
smoke-budget cell, a Results in which nothing ran."""
import json
import os
from pathlib import Path

import rcenp
from rcenp.reproduce import budgets, cells
from rcenp.reproduce.results import Results

ROOT = Path(rcenp.__file__).resolve().parent.parent
DEVNULL = open(os.devnull, "w")


def fake_published(root: Path, cell, options=None, **recorded):
    folder = root / cell.key
    folder.mkdir(parents=True)
    asked = {"model": cell.model, "attack": cell.attack, "options": options or cell.options, "n": cell.n, "seed": 0,
             **recorded}
    (folder / "run.json").write_text(json.dumps(asked))
    (folder / "summary.json").write_text(json.dumps({"settings": asked}))
    return folder


def unavailable(planned) -> Results:
    """Results in which every planned cell is not available, with its plan's reason."""
    return Results(planned, {c.key: {"status": "not available", "reason": c.missing or "not available: no data",
                                     "path": None} for c in planned})


def fake_run_attack(calls):
    """A stand-in for run_attack that records its folder and writes a finished run there."""
    def run_attack(model, attack, out_dir, options, n=1000, seed=0, batch_size=100, **kwargs):
        calls.append(Path(out_dir))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        asked = {"model": model, "attack": attack, "options": options, "n": n, "seed": seed, "batch_size": batch_size}
        (Path(out_dir) / "run.json").write_text(json.dumps(asked))
        (Path(out_dir) / "summary.json").write_text(json.dumps({"settings": asked}))
    return run_attack


def smoke_cell(attack, part="table2", model="mnist-resnet32-ce"):
    return next(c for c in cells.plan(budgets.get_budget("smoke"), [part]) if c.model == model and c.attack == attack)
