"""Which earlier attack runs a ``rcenp reproduce`` cell may stand on: a run in the cell's own
folder that asked for something else than the cell now does is ``stale`` (set aside, never
deleted: ``set_aside``), and a finished run of the same settings in a ``--cells-from`` folder is
used in place (``reusable``). What a run asked for is its run.json, or a published copy's
summary.json settings (``recorded``); options are compared with their defaults filled in
(``rcenp.attacks.runfiles.comparable``). A run keeps its ``--cells-from`` folders in its
reproduce.json (``remember_cells_from``), so that a later --resume, --plan or --report that names
none uses the same (a forgotten --cells-from made a resume recompute hours of published cells)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rcenp import checkpoint

if TYPE_CHECKING:
    from rcenp.reproduce.cells import Cell


def recorded(cell_dir: Path) -> dict | None:
    """What the attack run in ``cell_dir`` asked for: its run.json, else (a published copy without
    one) summary.json's settings; None when neither can be read."""
    try:
        if (cell_dir / "run.json").is_file():
            return json.loads((cell_dir / "run.json").read_text())
        return json.loads((cell_dir / "summary.json").read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def split_identity(dataset: str, data_dir=None) -> dict | None:
    """The identity of the test split ``run_attack`` would attack now (None when none is found)."""
    from rcenp.data import DataError, find_test_split

    try:
        test, _ = find_test_split(dataset, data_dir, strict=True)
    except DataError:
        return None
    return None if test is None else test.identity


def stale(cell: Cell, asked: dict, test_split=None, finished: bool = True) -> str | None:
    """Why an attack run that asked for ``asked`` (``recorded``) is not attack ``cell`` as planned
    now, in one line ('options.eps: 0.1 there, 0.2 now'), or None when it is. Compared: the model,
    attack, options, n and seed 0; the weights the model (and a transfer cell's substitute) have
    now: their SHA-256 where recorded, else the training step (a model retrained under its name
    makes the run stale); where recorded, the test split (``test_split(dataset)``: the identity
    of the split found now; not compared when ``test_split`` is None or finds none) and the
    detectors the model (and the substitute) have now (a refit detector makes the run stale); a
    C&W-wb run must also record its η (run.json's ``eta``: runs from before η came from the
    training features do not). A run not ``finished`` must record the weights' SHA-256, which
    ``rcenp.attacks.run`` checks on resuming it. Not the batch size: it changes a result only
    through float32 rounding (``rcenp.attacks.core``: a JSMA pick between two nearly equal
    saliencies), which is no reason to redo hours of work."""
    from rcenp.attacks.runfiles import brief, comparable, detector_identity, differing, weights_identity

    substitute = (cell.options or {}).get("substitute")
    now = {"model": cell.model, "attack": cell.attack, "options": cell.options, "n": cell.n, "seed": 0}
    if "model_sha256" in asked:
        now["model_sha256"] = weights_identity(cell.model)[0]
    elif "model_step" in asked:
        now["model_step"] = weights_identity(cell.model)[1]
    if substitute and "substitute_sha256" in asked:
        now["substitute_sha256"] = weights_identity(substitute)[0]
    if "data" in asked and test_split is not None and (data := test_split(cell.dataset)) is not None:
        now["data"] = data
    if "detector" in asked:
        now["detector"] = detector_identity(cell.model)
    if "substitute_detector" in asked:
        now["substitute_detector"] = detector_identity(substitute) if substitute else None
    there, now = comparable({key: asked[key] for key in now if key in asked}), comparable(now)
    changed = differing(there, now)
    if changed:
        return brief(changed, there, now)
    if cell.attack == "cw-wb" and "eta" not in asked:
        return "eta: (none) there, computed before η came from the training features"
    if not finished and "model_sha256" not in asked:
        return "model_sha256: (none) there, an unfinished run from before the weights' SHA-256 was recorded"
    return None


def result_stale(cell: Cell, cell_dir: Path) -> str | None:
    """Why the finished test-error or features cell in ``cell_dir`` is not of the model ``cell``
    names now, in one line, or None when it is: its ``identity`` (result.json's, or features'
    cell.json) must name the weights' SHA-256 the model has now (cells from before it was
    recorded are recomputed: they are minutes of work)."""
    from rcenp.attacks.runfiles import weights_identity

    path = cell_dir / ("result.json" if cell.kind == "test-error" else "cell.json")
    try:
        there = json.loads(path.read_text()).get("model_sha256")
    except (OSError, ValueError, AttributeError):
        there = None
    if there is None:
        return "model_sha256: (none) there, computed before the weights' SHA-256 was recorded"
    now = weights_identity(cell.model)[0]
    return None if there == now else f"model_sha256: {there[:12]}… there, {str(now)[:12]}… now (a retrained model)"


def reusable(cell: Cell, cells_from, test_split=None) -> Path | None:
    """A finished copy of attack ``cell`` in one of the ``cells_from`` folders (same layout) that is
    not ``stale`` (``test_split``: as there). None when there is none."""
    if cell.kind != "attack" or cell.model is None:
        return None
    for root in cells_from or ():
        path = Path(root) / cell.key
        if (path / "summary.json").is_file() and (asked := recorded(path)) is not None \
                and stale(cell, asked, test_split) is None:
            return path
    return None


def set_aside(cell_dir: Path) -> Path:
    """Rename ``cell_dir`` to ``<name>.stale-<k>``, the first k free → its new path."""
    k = 1
    while (target := cell_dir.with_name(f"{cell_dir.name}.stale-{k}")).exists():
        k += 1
    cell_dir.rename(target)
    return target


def cells_from_notes(outcomes: dict, cells_from) -> list[str]:
    """A line for each ``cells_from`` folder that supplied no cell (a folder one level too high,
    other settings, test images or detectors), so that a run does not silently compute what the
    user meant to reuse."""
    used = Counter(str(Path(o["path"]).parent.parent) for o in outcomes.values()
                   if o["status"] == "done" and o.get("source") == "reused")
    return [f"--cells-from {folder}: none of this run's cells is finished there with the same settings, test "
            f"images and detectors (expected: FOLDER/<model>/<cell>/summary.json)"
            for folder in cells_from or () if not used[str(Path(folder))]]


def remembered_cells_from(out_dir: Path) -> list[str]:
    """The --cells-from folders the run in ``out_dir`` recorded (reproduce.json), as ``out_dir`` is
    given: from the current folder, or absolute (a relative path from elsewhere read
    '../../work/main/results/fig2a'); [] when none (or no run)."""
    try:
        kept = json.loads((Path(out_dir) / "reproduce.json").read_text()).get("cells_from") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [os.path.normpath(Path(out_dir) / folder) for folder in kept]


def remember_cells_from(out_dir: Path, folders) -> None:
    """Add ``folders`` to the run's recorded --cells-from (reproduce.json), kept relative to
    ``out_dir`` so that the record holds in another clone."""
    path = Path(out_dir) / "reproduce.json"
    run = json.loads(path.read_text())
    kept = run.get("cells_from") or []
    for folder in folders:
        relative = os.path.relpath(Path(folder).resolve(), Path(out_dir).resolve())
        if relative not in kept:
            kept.append(relative)
    if kept != run.get("cells_from"):
        checkpoint.atomic_write_text(path, json.dumps({**run, "cells_from": kept}) + "\n")
