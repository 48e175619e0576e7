"""A training run's files as ``scripts/runs.py`` handles them: copying its checkpoint while it may
still be writing one, and summarising its train.log across sessions.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def sha256(path: Path) -> str:
    """rcenp.checkpoint.file_sha256's digest, written out here: runs.py runs with the system's
    python3, which may lack NumPy, so it imports nothing of rcenp."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_checkpoint(src: Path, dst: Path) -> int:
    """Copy a run's checkpoint pair, config and log from ``src`` to ``dst``; returns the step.

    Training may write a new checkpoint meanwhile (rcenp.checkpoint.save: checkpoint.npz.next,
    the json, then the npz), so the pair is re-read until the arrays copied match the SHA-256 that
    the json copied records; a save cut short after its json left the arrays in
    checkpoint.npz.next (rcenp.checkpoint.load reads them there too).
    """
    dst.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        manifest = (src / "checkpoint.json").read_text()
        arrays = src / "checkpoint.npz"
        if attempt and (src / "checkpoint.npz.next").is_file():
            arrays = src / "checkpoint.npz.next"
        with tempfile.NamedTemporaryFile(dir=dst, suffix=".tmp", delete=False) as tmp:
            shutil.copyfile(arrays, tmp.name)
        if sha256(Path(tmp.name)) == json.loads(manifest)["arrays_sha256"]:
            os.replace(tmp.name, dst / "checkpoint.npz")
            (dst / "checkpoint.json").write_text(manifest)
            for name in ("config.json", "train.log", "hosts.log"):
                if (src / name).is_file():
                    shutil.copyfile(src / name, dst / name)
            return int(json.loads(manifest)["step"])
        os.unlink(tmp.name)
    sys.exit(f"{src}: the checkpoint kept changing while it was copied; try again")


def log_summary(log: Path, steps: int) -> dict:
    """Wall time and final training loss/accuracy from a train.log spanning several sessions.

    Wall time adds up each session's span, from its "training ... from step S" line to its last
    line. Loss and accuracy are per-batch figures on the progress lines, averaged over the last 5%
    of the run's steps (a single batch's figure is noisy).
    """
    spans, start, last, tail = [], None, None, []
    for line in log.read_text().splitlines():
        stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        words = line[20:].split()
        if words[:1] == ["training"]:
            if start is not None:
                spans.append(last - start)
            start = stamp
        elif words[:1] == ["step"] and int(words[1].split("/")[0]) > steps * 0.95:
            tail.append((float(words[3]), float(words[6])))
        last = stamp
    if start is not None:
        spans.append(last - start)
    return {"wall_hours": round(sum(spans) / 3600, 2), "sessions": len(spans), "progress_lines_averaged": len(tail),
            "final_train_loss": sum(t[0] for t in tail) / len(tail) if tail else None,
            "final_train_acc": sum(t[1] for t in tail) / len(tail) if tail else None}
