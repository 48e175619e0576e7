"""``rcenp reproduce --plan``: what a run would do, before it does anything.

A cpu run is hours of background work. The plan makes the run's own checks (the budget of a run
already in OUT, ``--resume``, the device, a writable OUT), then lists, without writing or moving
anything, the cells it would compute, each with its cost (``rcenp.reproduce.costs``: image-
iterations of MNIST ResNet-32) and its share, the total per report part, and an estimate of the
time: at the seconds per unit measured on OUT's earlier cells where it has some (its
timings.json), else at ``SECONDS_PER_UNIT`` (one free core). Then the finished cells it would keep
(in OUT, or from each ``--cells-from`` folder, one that supplies none said so), those it cannot
run yet (a model not shipped), those outside its data sets, the test images each data set's
cells would attack, and the cells whose folders a run would set aside. Where a run is at work on
OUT, it says so and marks the cells that run computes now.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from rcenp.progress import plural
from rcenp.reproduce.cells import PARTS
from rcenp.reproduce.runner import read_timings
from rcenp.reproduce.costs import SECONDS_PER_UNIT
from rcenp.reproduce.lineup import DATASET_TITLES, DATASETS
from rcenp.reproduce.reuse import cells_from_notes, split_identity


def measured_rate(out_dir: Path, cells) -> tuple[float, int] | None:
    """(seconds per unit of cost, cells measured) over the cells OUT/timings.json records, or None.
    Table 4's transfer cells are left out: one scored its substitute's images or crafted its own,
    as the runner found them, which its planned cost cannot tell (four that scored in 9 s, costed
    as crafting where the substitutes' data set was outside --datasets, made 2.67 M units "1 min")."""
    try:
        seconds = read_timings(Path(out_dir) / "timings.json")
    except (OSError, ValueError):
        return None
    measured = [(seconds[c.key], c.cost) for c in cells if seconds.get(c.key) and c.substitute is None]
    cost = sum(c for _, c in measured)
    return (sum(s for s, _ in measured) / cost, len(measured)) if cost else None


def computed_on(out_dir: Path) -> str:
    """' (computed on cuda: NVIDIA H200)' from the devices OUT's recorded invocations name
    (reproduce.json's computed_by), so that a rate measured on a GPU is not read as the CPU's;
    '' where none is recorded."""
    from rcenp.reproduce.run import computed_by

    names = []
    for entry in computed_by(out_dir):
        compute = entry.get("compute") or {}
        name = compute.get("device") and compute["device"] + (f": {compute['gpu']}" if compute.get("gpu") else "")
        if name and name not in names:
            names.append(name)
    return f" (computed on {' and '.join(names)})" if names else ""


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


def describe(cells, outcomes: dict, todo: list, notes: list, out_dir: Path, budget_name: str,
             cells_from=(), data_dir=None, jobs: int = 1, running=(False, set())) -> list[str]:
    """The plan as lines for a person (module docstring); ``jobs``: --jobs, the cells computed that
    many at a time (no sooner than the largest cell). Cells whose data set has no test images here
    are listed apart and left out of the estimate: a run marks them not available. ``running``:
    ``rcenp.reproduce.workers.in_progress`` of OUT, a run at work there and the cells it computes now."""
    found = {d: split_identity(d, data_dir) for d in DATASETS if any(c.dataset == d for c in todo)}
    no_data = Counter(c.dataset for c in todo if not found[c.dataset])
    todo = [c for c in todo if found[c.dataset]]
    total = sum(c.cost for c in todo)
    lines = [f"reproduce ({budget_name}) into {out_dir}: {plural(len(cells), 'cell', 'cells')}; "
             "this plan computes and writes nothing"]
    if running[0]:
        lines.append(f"a run is at work on {out_dir} now (a second one would be refused): what it has finished "
                     f"is kept below, and the {plural(len(running[1]), 'cell', 'cells')} it computes now, marked "
                     "'in work', count as still to compute")
    measured = measured_rate(out_dir, cells)
    if measured is not None:
        rate = measured[0]
        source = (f"{rate * 1e3:.1f} ms per unit, measured on {plural(measured[1], 'earlier cell', 'earlier cells')} "
                  f"in OUT{computed_on(out_dir)}")
        if todo and abs(rate / SECONDS_PER_UNIT - 1) > 0.25:  # those cells shared their cores, or had a faster host
            source += (f" (at {SECONDS_PER_UNIT * 1e3:.1f} ms per unit, one free core's: about "
                       f"{duration(total * SECONDS_PER_UNIT)})")
    else:
        rate = SECONDS_PER_UNIT
        source = f"{rate * 1e3:.1f} ms per unit on one free core (other work on the cores stretches it)"
    lines.append(f"to compute: {plural(len(todo), 'cell', 'cells')}, {total:,.0f} units (image-iterations of MNIST "
                 f"ResNet-32), about {duration(total * rate)} at {source}" if todo else "to compute: nothing")
    if todo and jobs > 1:
        wall = max(total / min(jobs, len(todo)), max(c.cost for c in todo)) * rate
        lines.append(f"  with --jobs {jobs}: about {duration(wall)} at that rate, {jobs} cells at a time on "
                     f"{jobs} cores (no sooner than the largest cell)")
    width = max([52] + [len(c.key) for c in todo])
    for cell in todo:
        lines.append(f"  {cell.key:{width}s} {cell.cost:>12,.0f}  {100 * cell.cost / total:5.1f}%"
                     + ("  (scores its substitute's C&W-wb images)" if cell.crafted else "")
                     + ("  in work" if cell.key in running[1] else ""))
    parts = Counter()
    for cell in todo:
        for part in cell.parts:
            parts[part] += cell.cost
    if len(parts) > 1:
        lines.append("  by part (a cell used by several counts in each): "
                     + ", ".join(f"{part} {parts[part]:,.0f}" for part in PARTS if part in parts))
    for dataset in [d for d in found if found[d]]:
        lines.append(f"  {DATASET_TITLES[dataset]} test images: {found[dataset]['note']} ({found[dataset]['n']:,})")
    if no_data:
        lines.append(f"no test data here, so not counted above: {plural(sum(no_data.values()), 'cell', 'cells')}"
                     + "".join(f"\n  {n} × {DATASET_TITLES[d]}: none found (a run marks them not available; "
                               f"--data-dir or $RCENP_DATA names the data root)" for d, n in no_data.items()))
    kept = Counter(("in OUT" if o.get("source") == "resumed" else str(Path(o["path"]).parent.parent))
                   for o in outcomes.values() if o["status"] == "done")
    if kept:
        lines.append(f"finished, kept: {plural(sum(kept.values()), 'cell', 'cells')} ("
                     + ", ".join(f"{n} {where if where == 'in OUT' else 'from ' + where}"
                                 for where, n in sorted(kept.items())) + ")")
    for status in ("not available", "not run"):
        reasons = Counter(o.get("reason") or "" for o in outcomes.values() if o["status"] == status)
        if reasons:
            lines.append(f"{status}: {plural(sum(reasons.values()), 'cell', 'cells')}" + "".join(
                f"\n  {n} × {reason.removeprefix(status + ': ')}" for reason, n in sorted(reasons.items()) if reason))
    lines += cells_from_notes(outcomes, cells_from)
    if notes:  # (sort_out's: a cell folder in OUT of other settings or weights)
        lines.append(f"set aside by a run: {plural(len(notes), 'cell', 'cells')} in OUT "
                     "(its folder kept as NAME.stale-K)")
        lines += [f"  {note}" for note in notes]
    return lines
