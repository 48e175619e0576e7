"""``rcenp reproduce --plan``: what a run would do, before it does anything.

A cpu run is hours of background work: the plan lists, without writing or moving anything, the
cells it would compute (each with its cost in image-iterations, ``rcenp.reproduce.costs``, and its
share of the total), the finished cells it would keep (in OUT, or reused from ``--cells-from``
folders), those it cannot run yet (a model not shipped) and those ``--datasets`` leaves out. Where
OUT holds cells an earlier invocation computed (OUT/timings.json), their seconds per unit of
cost give an estimate of the time; otherwise the ETA comes once the first cells are done.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def rate(out_dir: Path, cells) -> float | None:
    """Seconds per unit of cost measured on the cells OUT/timings.json records, or None."""
    path = Path(out_dir) / "timings.json"
    try:
        seconds = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return None
    measured = [(seconds[c.key], c.cost) for c in cells if seconds.get(c.key)]
    cost = sum(c for _, c in measured)
    return sum(s for s, _ in measured) / cost if cost else None


def describe(cells, outcomes: dict, todo: list, notes: list, out_dir: Path, budget_name: str) -> list[str]:
    """The plan as lines for a person (module docstring)."""
    total = sum(c.cost for c in todo)
    lines = [f"reproduce ({budget_name}) into {out_dir}: {len(cells)} cells; nothing has been computed or written"]
    per_second = rate(out_dir, cells)
    estimate = (f"; at the {per_second * 1e3:.1f} ms per unit measured on this folder's earlier cells, about "
                f"{total * per_second / 3600:.1f} h" if per_second is not None and todo else "")
    lines.append(f"to compute: {len(todo)} cells, {total:,.0f} image-iterations (relative cost: about "
                 f"one image's forward and backward each){estimate}")
    for cell in todo:
        lines.append(f"  {cell.key:52s} {cell.cost:>12,.0f}  {100 * cell.cost / total:5.1f}%"
                     + ("  (scores its substitute's C&W-wb images)" if cell.crafted else ""))
    kept = Counter(("in OUT" if o.get("source") == "resumed" else str(Path(o["path"]).parent.parent))
                   for o in outcomes.values() if o["status"] == "done")
    if kept:
        lines.append(f"finished, kept: {sum(kept.values())} cells ("
                     + ", ".join(f"{n} {'in OUT' if where == 'in OUT' else 'from ' + where}"
                                 for where, n in sorted(kept.items())) + ")")
    for status, title in (("not available", "not available"), ("not run", "not run (--datasets)")):
        reasons = Counter(o.get("reason") or "" for o in outcomes.values() if o["status"] == status)
        if reasons:
            lines.append(f"{title}: {sum(reasons.values())} cells" + "".join(
                f"\n  {n} × {reason.removeprefix(status + ': ')}" for reason, n in sorted(reasons.items()) if reason))
    lines += notes
    return lines
