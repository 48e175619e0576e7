"""Carry a `rcenp reproduce --budget paper` run to a lent GPU machine and bring its new cells back.

The device tool sends the working tree and at most 64 MiB beside it; a run's finished cells weigh
about 0.6 MB each, almost all of it their samples.jsonl, which only the report reads. So:

    python scripts/gpu_paper.py slim results/reproduce-paper .gpu-carry/reproduce-paper
        # a copy without the finished cells' samples.jsonl and adversarial.npz (but C&W-wb's, which
        # Table 4's transfers score): what a resumed run needs to know what is finished (run.json,
        # summary.json) and to go on (partial/, snapshots)
    # on the device (carry: .gpu-data, .gpu-carry; scripts/gpu_check.sh's header has the steps around it):
    #   RCENP_DATA=$PWD/.gpu-data PYTHONPATH=$PWD PAPER_OUT=.gpu-carry/reproduce-paper \
    #   PACK=$OUT/paper.tar.xz bash scripts/gpu_check.sh paper
    # then here: mkdir back && tar -C back -xJf paper.tar.xz
    python scripts/gpu_paper.py merge back/reproduce-paper results/reproduce-paper
        # the device's files over ours (its timings.json, reproduce.json and reproduce.log grew from the
        # carried ones); a cell it finished loses our partial/ of it
    rcenp reproduce --budget paper --out results/reproduce-paper --resume --report

A run on the slim copy that finishes every cell it was given ends in an error while writing its
report (the samples it reads stayed here); its cells are kept, and the report is written here after
the merge. Exit status 2 with one line for a missing or wrong folder, runs of two budgets, or a
copy inside its source.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from rcenp.reproduce.cells import result_file

HEAVY = ("samples.jsonl", "adversarial.npz")  # a finished cell's per-image records: the report's, not the run's


def finished(cell: Path) -> bool:
    """Whether the cell folder holds its result file, whichever kind of cell it is."""
    return any(result_file(cell, kind).is_file() for kind in ("attack", "test-error", "features"))


def cells(run: Path):
    return [cell for cell in sorted((run / "cells").glob("*/*")) if cell.is_dir()]


def budget(run: Path) -> str:
    """The budget of the reproduce run in ``run``; ValueError where there is none."""
    try:
        return json.loads((run / "reproduce.json").read_text())["budget"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{run}: no rcenp reproduce run there (no readable reproduce.json)") from None


def slim(src: Path, dst: Path) -> int:
    """Copy run ``src`` to ``dst`` without the HEAVY files of finished cells other than C&W-wb's;
    → bytes written."""
    budget(src)
    if dst.exists():
        raise ValueError(f"{dst}: exists already (slim writes a new folder)")
    if dst.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"{dst}: inside the run it would copy ({src})")

    def ignore(folder, names):  # a C&W-wb cell keeps all: Table 4's transfer cells score its x*
        keep = Path(folder).name.startswith("cw-wb") or not finished(Path(folder))
        return [] if keep else [name for name in names if name in HEAVY]

    shutil.copytree(src, dst, ignore=ignore)
    return sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())


def merge(back: Path, into: Path) -> tuple[int, int]:
    """Copy run ``back`` over run ``into``; a cell finished in ``back`` loses ``into``'s partial/.
    → (cells finished in ``back`` that were not in ``into``, partial folders removed). ValueError
    for the same folder twice or runs of two budgets."""
    if back.resolve() == into.resolve():
        raise ValueError(f"{back}: the same run twice (merge the copy back from the device into its source)")
    if budget(back) != budget(into):
        raise ValueError(f"{back} holds a {budget(back)} run, {into} a {budget(into)} run: not one run's cells")
    new = removed = 0
    for cell in filter(finished, cells(back)):
        ours = into / cell.relative_to(back)
        new += not finished(ours)
        if not (cell / "partial").exists() and (ours / "partial").is_dir():
            shutil.rmtree(ours / "partial")
            removed += 1
    shutil.copytree(back, into, dirs_exist_ok=True)
    return new, removed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("verb", choices=["slim", "merge"])
    parser.add_argument("source", type=Path, help="slim: the run; merge: the run back from the device")
    parser.add_argument("target", type=Path, help="slim: the copy to make; merge: the run to update")
    args = parser.parse_args(argv)
    try:
        if args.verb == "slim":
            print(f"{args.target}: {slim(args.source, args.target) / 2**20:.1f} MiB")
        else:
            new, removed = merge(args.source, args.target)
            print(f"{args.target}: {new} {'cell' if new == 1 else 'cells'} finished on the device added, {removed} "
                  f"partial {'folder' if removed == 1 else 'folders'} of {'it' if new == 1 else 'them'} removed")
    except shutil.Error as exc:  # copytree's list of (source, target, reason), in one line
        errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else [str(exc)]
        print(f"gpu_paper.py: {len(errors)} not copied, the first: {errors[0]}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"gpu_paper.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
