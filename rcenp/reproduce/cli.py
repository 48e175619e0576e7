"""``rcenp reproduce``: argument parsing and the result line; the work is ``rcenp.reproduce.run.reproduce``.

As for ``rcenp attack``, progress and the ETA go to stderr and the result (where REPORT.md is) to
stdout, so ``rcenp reproduce ... > result.txt`` keeps the one line that says where to look.
"""
from __future__ import annotations

import sys

from rcenp.argtypes import folder
from rcenp.backend import DEVICE_HELP
from rcenp.data.datasets import DATA_DIR_DEFAULT
from rcenp.progress import plural
from rcenp.reproduce.budgets import BUDGETS
from rcenp.reproduce.cells import PARTS
from rcenp.reproduce.lineup import DATASETS
from rcenp.reproduce.figures import INSTALL_HINT


def add_parser(sub) -> None:
    r = sub.add_parser("reproduce", help="the paper's Tables 1-4 and Figures 1-3 beside the paper's numbers",
                       description=(
        "Re-run the paper's evaluation on the shipped models and write OUT/REPORT.md, one CSV and one JSON per "
        "table, and PNG figures (with the optional report extra: " + INSTALL_HINT + "). Every cell is a "
        "saved unit of work: a killed run continues with --resume and recomputes a finished cell only when its "
        "settings, the model's weights or detectors changed since (the old folder is kept as NAME.stale-K); a "
        "cell taken from --cells-from must also be of the same test images. "
        "Budgets: " + "; ".join(f"{b.name}: {b.description}" for b in BUDGETS.values()) + "."))
    r.add_argument("--budget", default="smoke", help=f"one of {', '.join(BUDGETS)} (default smoke)")
    r.add_argument("--out", type=folder, help="output folder (default runs/reproduce-BUDGET)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out")
    r.add_argument("--only", help=f"comma-separated parts: {','.join(PARTS)} (default all)")
    r.add_argument("--datasets", help=f"comma-separated data sets whose cells run: {','.join(DATASETS)} (default: "
                   "every one the budget covers); the report marks the others not run")
    r.add_argument("--data-dir", help=f"data root ({DATA_DIR_DEFAULT}; MNIST falls back to the "
                   "embedded sample where no root is named by --data-dir or $RCENP_DATA)")
    r.add_argument("--cells-from", action="append", default=[], metavar="DIR",
                   help="use finished attack cells from DIR/<model>/<attack>-<eps>/ (e.g. results/fig2a) instead "
                   "of computing them, where run with the same settings, test images and detectors; repeatable")
    r.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)
    r.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="compute the unfinished cells in J worker processes of one thread each (default 1: this "
                   "process); on a CPU, up to one per core. Each cell's files are those of a run without --jobs")
    r.add_argument("--plan", action="store_true",
                   help="print what the run would compute (with each cell's cost), keep, reuse and skip, and exit "
                   "without computing or writing anything")
    r.add_argument("--report", action="store_true",
                   help="compute nothing: write OUT/REPORT.md (and the tables and figures) of the run in OUT from "
                   "the cells it has finished (with the --cells-from folders the run recorded), the others "
                   "marked pending")


def cmd_reproduce(args) -> int:
    from rcenp.reproduce.run import reproduce

    done = reproduce(args.budget, args.out, resume=args.resume, only=args.only, data_dir=args.data_dir,
                     cells_from=args.cells_from, device=args.device, stream=sys.stderr,  # today's stderr
                     command=" ".join(["rcenp"] + sys.argv[1:]), datasets=args.datasets, plan_only=args.plan,
                     jobs=args.jobs, report_only=args.report)
    if "worker" in done:  # a --jobs worker: its console goes to OUT/workers/K.log
        here = sum(o.get("seconds", 0.0) > 0 for o in done["outcomes"].values())  # the others: found finished
        print(f"worker {done['worker']}: done ({plural(here, 'cell', 'cells')} worked on here)")
    else:
        print("\n".join(done["plan"]) if args.plan else result_line(done))
    return 0


def result_line(done: dict) -> str:
    """``reproduce (smoke): OUT/REPORT.md and 14 more files in 95 s`` from ``reproduce``'s result."""
    pending = done.get("pending")
    return (f"reproduce ({done['budget']}): {done['report']} and {len(done['files']) - 1} more files "
            f"in {done['wall_s']:.0f} s"
            + (f" (PARTIAL: {plural(pending, 'cell', 'cells')} pending)" if pending else ""))
