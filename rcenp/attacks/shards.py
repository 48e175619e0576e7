"""Merging the shards of one ``rcenp attack`` run (``--shard K/N``, e.g. on several machines) into
the files the single run writes: ``samples.jsonl`` and ``adversarial.npz`` concatenated in shard
order (equal to the single run's, which the tests check), ``run.json`` as the single run's, and
``summary.json`` recomputed from all the records, with each shard's code, software and timing
under ``merged_from`` and the code of every batch under ``code_by_batch`` (``rcenp.attacks.runfiles``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rcenp import checkpoint
from rcenp.attacks.runfiles import (comparable, differing, effective_options, merge_code_groups, summary_code,
                                    summary_code_groups)


def finished_shards(asked: dict, shard_dirs) -> list[Path]:
    """The shard folders in order k = 1 ... K, checked: each a finished run (run.json and
    summary.json) whose settings are ``asked`` (the single run's) but for its shard and whether it
    wrote PNG files, and together
    exactly the shards 1/K ... K/K of one K. Raises ValueError naming the first folder that is not."""
    found = {}
    for folder in map(Path, shard_dirs):
        if not (folder / "run.json").is_file() or not (folder / "summary.json").is_file():
            raise ValueError(f"{folder}: not a finished attack run (no run.json and summary.json)")
        ran = json.loads((folder / "run.json").read_text())
        differ = [key for key, _, _ in differing(comparable(ran), comparable(asked)) if key.split(".")[0] not in ("shard", "png")]
        if differ:
            raise ValueError(f"{folder}: a shard of another run (its {', '.join(differ)} differ)")
        key = tuple(ran["shard"])
        if key in found:
            raise ValueError(f"{found[key]} and {folder} are both shard {key[0]}/{key[1]}")
        found[key] = folder
    counts = {count for _, count in found}
    if len(counts) != 1 or sorted(found) != [(k, max(counts)) for k in range(1, max(counts) + 1)]:
        have = ", ".join(f"{k}/{count}" for k, count in sorted(found))
        raise ValueError(f"the shards given are {have}: --merge needs all of 1/K ... K/K for one K")
    return [found[key] for key in sorted(found)]


def shards_eta(shard_dirs):
    """The C&W-wb η record (run.json's ``eta``) the shards share, which the merged run keeps
    whatever training data the merging machine has. Raises ValueError where they differ."""
    records = []
    for folder in map(Path, shard_dirs):
        try:
            records.append(json.loads((folder / "run.json").read_text()).get("eta"))
        except (OSError, ValueError):
            raise ValueError(f"{folder}: not a finished attack run (no readable run.json)") from None
    if any(r != records[0] for r in records):
        raise ValueError("the shards computed η differently (their run.json's eta differ): they are not one run")
    return records[0]


def merge_shards(asked: dict, shard_dirs, out_dir: Path, detector, claim) -> dict:
    """Write the single run's files into ``out_dir`` from its finished shards; return the summary.

    ``asked``: the single run's settings (its run.json, shard [1, 1]); ``detector``: the model's
    fitted detector or None (the summary's threshold figures); ``claim(out_dir, asked)``: creates
    run.json (``rcenp.attacks.run``'s rule). Raises ValueError (``finished_shards``) before writing
    anything, or when the shards do not hold images 0 ... n-1 in order."""
    from rcenp.attacks.summary import summarize

    ordered = finished_shards(asked, shard_dirs)
    # the options as the shards first recorded them (equal to asked's, up to options named at their default)
    asked = dict(asked, options=json.loads((ordered[0] / "run.json").read_text())["options"])
    texts = [(folder / "samples.jsonl").read_text() for folder in ordered]
    records = [json.loads(line) for text in texts for line in text.splitlines()]
    arrays = {}
    for folder in ordered:
        with np.load(folder / "adversarial.npz") as data:
            for name in data.files:
                arrays.setdefault(name, []).append(data[name])
    merged = {name: np.concatenate(parts) for name, parts in arrays.items()}
    if not np.array_equal(merged["indices"], np.arange(asked["n"])) or len(records) != asked["n"]:
        raise ValueError(f"the shards do not hold images 0-{asked['n'] - 1} in order")
    shards = [json.loads((folder / "summary.json").read_text()) for folder in ordered]
    summary = summarize(records, detector)
    timing = [s["timing"] for s in shards]
    attack_seconds = sum(t["attack_seconds_this_run"] for t in timing)
    images = sum(t["images_this_run"] for t in timing)
    code_groups = merge_code_groups([group for s in shards for group in summary_code_groups(s)])
    summary.update(settings=asked, effective_options=effective_options(asked["attack"], asked["options"]),
                   test_set=shards[0]["test_set"], software=shards[0]["software"],
                   code=summary_code(code_groups), code_by_batch=code_groups,
                   timing={"seconds_this_run": sum(t["seconds_this_run"] for t in timing),
                           "attack_seconds_this_run": attack_seconds, "images_this_run": images,
                           "images_finished_from_a_snapshot": sum(t.get("images_finished_from_a_snapshot", 0)
                                                                  for t in timing),
                           "images_per_s": images / attack_seconds if attack_seconds else None},
                   merged_from=[{"folder": str(folder), "shard": s["settings"]["shard"], "code": s["code"],
                                 "software": s["software"], "timing": s["timing"]}
                                for folder, s in zip(ordered, shards)])
    out_dir = Path(out_dir)
    claim(out_dir, asked)
    checkpoint.atomic_write_npz(out_dir / "adversarial.npz", **merged)
    checkpoint.atomic_write_text(out_dir / "samples.jsonl", "".join(texts))
    checkpoint.atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
