"""Carry a `rcenp reproduce --budget paper` run to a lent GPU machine and bring its new cells back.

The device tool sends the working tree and at most 64 MiB beside it; a run's finished cells weigh
about 0.6 MB each, almost all of it their samples.jsonl, which only the report reads. So:

    python scripts/gpu_paper.py slim results/reproduce-paper .gpu-carry/reproduce-paper
        # a copy without the finished cells' samples.jsonl and adversarial.npz (but C&W-wb's, which
        # Table 4's transfers score): what a resumed run needs to know what is finished (run.json,
        # summary.json) and to go on (partial/, snapshots)
    # on the device: PAPER_OUT=.gpu-carry/reproduce-paper PACK=$OUT/paper.tar.xz bash scripts/gpu_check.sh paper
    #   (carry: .gpu-carry), then here: mkdir back && tar -C back -xJf paper.tar.xz
    python scripts/gpu_paper.py merge back/reproduce-paper results/reproduce-paper
        # the device's files over ours (its timings.json, reproduce.json and reproduce.log grew from the
        # carried ones); a cell it finished loses our partial/ of it
    rcenp reproduce --budget paper --out results/reproduce-paper --resume --report

Exit status 2 with one line for a missing or wrong folder.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HEAVY = ("samples.jsonl", "adversarial.npz")  # a finished cell's per-image records: the report's, not the run's


def finished(cell: Path) -> bool:
    return any((cell / name).is_file() for name in ("summary.json", "result.json", "features.npz"))


def cells(run: Path):
    return [cell for cell in sorted((run / "cells").glob("*/*")) if cell.is_dir()]


def slim(src: Path, dst: Path) -> int:
    """Copy run ``src`` to ``dst`` without the HEAVY files of finished cells other than C&W-wb's;
    → bytes written."""
    if dst.exists():
        raise ValueError(f"{dst}: exists already (slim writes a new folder)")

    def ignore(folder, names):  # a C&W-wb cell keeps all: Table 4's transfer cells score its x*
        keep = Path(folder).name.startswith("cw-wb") or not finished(Path(folder))
        return [] if keep else [name for name in names if name in HEAVY]

    shutil.copytree(src, dst, ignore=ignore)
    return sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())


def merge(back: Path, into: Path) -> tuple[int, int]:
    """Copy run ``back`` over run ``into``; a cell finished in ``back`` loses ``into``'s partial/.
    → (cells finished in ``back`` that were not in ``into``, partial folders removed)."""
    new = sum(finished(cell) and not finished(into / cell.relative_to(back)) for cell in cells(back))
    removed = 0
    for cell in cells(back):
        ours = into / cell.relative_to(back) / "partial"
        if finished(cell) and not (cell / "partial").exists() and ours.is_dir():
            shutil.rmtree(ours)
            removed += 1
    shutil.copytree(back, into, dirs_exist_ok=True)
    return new, removed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("verb", choices=["slim", "merge"])
    parser.add_argument("source", type=Path, help="slim: the run; merge: the run back from the device")
    parser.add_argument("target", type=Path, help="slim: the copy to make; merge: the run to update")
    args = parser.parse_args(argv)
    try:
        for run in (args.source,) + ((args.target,) if args.verb == "merge" else ()):
            if not (run / "reproduce.json").is_file():
                raise ValueError(f"{run}: no rcenp reproduce run there (no reproduce.json)")
        if args.verb == "slim":
            print(f"{args.target}: {slim(args.source, args.target) / 2**20:.1f} MiB")
        else:
            new, removed = merge(args.source, args.target)
            print(f"{args.target}: {new} cells finished on the device added, {removed} partial folders they replace removed")
    except (ValueError, OSError) as exc:
        print(f"gpu_paper.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
