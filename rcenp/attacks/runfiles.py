"""The bookkeeping of an ``rcenp attack`` run folder: ``run.json`` (what was asked, checked on
resume and merge), the code each finished batch was computed with, and the detector's identity.

Resuming with other settings, or with a detector refitted since the run began, is refused: the
earlier batches' records would mean something else. A resume with other code is allowed (runs
span sessions while the project changes), but never silently: every batch records the code that
computed it (``partial/batch-NNNNN.code.json``), the progress log says when the code differs
from the earlier batches', and ``summary.json``'s ``code_by_batch`` lists each version with its
batches.

A ``--png`` folder holds one run's images: ``png-run.json`` there names the run (``check_png_dir``).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

from rcenp import checkpoint
from rcenp.data.names import canonical_digests


RECORDED_LATER = ("detector", "substitute_detector", "eta", "model_sha256",
                  "substitute_sha256")  # run.json keys that older runs lack


def claim(out_dir: Path, asked: dict, resume: bool) -> bool:
    """Create ``out_dir``'s run.json (→ True), or check that a resumed run asks for the same thing
    (→ False). A finished run (summary.json) whose run.json predates a key of ``RECORDED_LATER``
    is not refused for lacking it, nor a finished transfer for naming its ``crafted`` source
    otherwise (or not at all): resuming it recomputes nothing. Raises ValueError for a run
    folder without ``resume`` (naming what differs, ``another_run``, where ``resume`` would not
    continue it either) or with other settings."""
    run_file = out_dir / "run.json"
    if run_file.is_file():
        there, asked = comparable(json.loads(run_file.read_text())), comparable(asked)
        changed = differing(there, asked)
        if (out_dir / "summary.json").is_file():  # finished: nothing is recomputed, so neither of these matters
            changed = [d for d in changed if not (d[0] in RECORDED_LATER and d[1] is MISSING)  # not recorded then
                       and d[0].split(".")[0] != "crafted"]  # where a finished transfer took its images from
        if not resume:
            if changed:
                raise ValueError(another_run(out_dir, changed, there, asked))
            raise ValueError(f"{out_dir} already holds an attack run: pass --resume (resume=True in Python) to "
                             "continue it (a finished one prints its summary), or choose another --out (out_dir) or "
                             "remove the folder to redo it")
        if changed:
            raise ValueError(f"{out_dir}: --resume with other settings than the run there: "
                             + brief(changed, there, asked))
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write_text(run_file, json.dumps(asked, indent=2) + "\n")
    return True


def another_run(folder, changed: list[tuple], there: dict, now: dict) -> str:
    """The one line refusing to start a run in ``folder``, which holds the run ``there`` whose
    settings differ from those asked for, ``now`` (``changed``: ``differing``'s records): what
    differs, and that another folder is the way, since ``--resume`` would refuse these settings."""
    return (f"{folder} already holds another attack run, which --resume would not continue ("
            + brief(changed, there, now) + "): choose another --out (out_dir in Python) for this run, or remove "
            "that folder to replace it")


NOT_OPTIONS = ("model", "x", "detector", "labels", "batch_size", "progress", "snapshot", "train_features",
               "train_labels")  # attack-function parameters that a run's ``options`` never hold


def effective_options(attack: str, options: dict) -> dict:
    """``options`` (an attack run's, as run.json records them) with every option of ``attack``'s
    function that they leave out filled in at its default, so that an option given at its default
    and one left out compare equal (``--kappa 5`` for cw-wb, ``--binary-steps 9`` for cw): C&W's
    ``targets`` "random" (None), cw-hc's κ 10, cw-wb's ``stage1``/``stage2`` from its STAGE1 and
    STAGE2. Used only for comparing; run.json keeps what was given. An unknown attack's options
    come back unchanged."""
    import inspect

    import rcenp.attacks as attacks
    from rcenp.attacks.cw_wb import STAGE1, STAGE2

    name = {"cw": "cw_l2", "cw-hc": "cw_l2", "cw-wb": "cw_wb"}.get(attack, attack)
    if name not in ("fgsm", "bim", "ilcm", "jsma", "cw_l2", "cw_wb"):
        return dict(options)
    filled = {key: parameter.default for key, parameter in inspect.signature(getattr(attacks, name)).parameters.items()
              if key not in NOT_OPTIONS and parameter.default is not inspect.Parameter.empty}
    if name in ("cw_l2", "cw_wb"):
        filled["targets"] = "random"
    if attack == "cw-hc":
        filled["kappa"] = 10.0
    filled.update(options)
    if name == "cw_wb":
        for stage, defaults in (("stage1", STAGE1), ("stage2", STAGE2)):
            filled[stage] = {**defaults, **(filled.get(stage) or {})}
    return filled


def comparable(settings: dict) -> dict:
    """A run's settings (run.json's, or a run asked for) with ``effective_options`` in place of
    its options, for ``differing``."""
    if isinstance(settings.get("options"), dict) and isinstance(settings.get("attack"), str):
        return {**settings, "options": effective_options(settings["attack"], settings["options"])}
    return settings


LOCATION_ONLY = ("data.source",)  # where the data was read, not what it is (its SHA-256 is compared)


MISSING = object()  # a key one side lacks


def differing(there: dict, now: dict, prefix: str = "") -> list[tuple]:
    """(dotted key, value there, value now) for each setting that differs between ``there`` and
    ``now``, a key missing on either side included (``MISSING``: an option left off a resume
    command is a difference, unless ``comparable`` filled it in at its default); nested dicts by dotted key ("options.eps"). Both are compared as JSON
    holds them (a tuple equals the list it is written as). ``LOCATION_ONLY`` keys are not
    compared: the same data under another folder (another machine's shard) is the same. Data
    digests (a ``sha256`` dict) are compared by content: keyed by canonical file name, since a
    file may go by a variant name, and a digest recorded as None (before rcenp kept unverified
    digests) matches any. Under ``options``, an attack's keyword arguments, null on one side and
    absent on the other are the same: None is every such argument's 'not given' (``comparable``
    fills in an attack's None defaults, which another attack's options lack, and they were
    listed as 'options.targets: null there, (none) now'); elsewhere a key missing on one side
    was not recorded then (``RECORDED_LATER``), which null does not mean."""
    if not prefix:  # once, at the top: the nested dicts are then JSON's already
        there, now = json.loads(json.dumps(there)), json.loads(json.dumps(now))
    out = []
    for key in list(there) + [k for k in now if k not in there]:
        dotted = f"{prefix}{key}"
        if dotted in LOCATION_ONLY:
            continue
        a, b = there.get(key, MISSING), now.get(key, MISSING)
        if key == "sha256" and isinstance(a, dict) and isinstance(b, dict):
            a, b = canonical_digests(a), canonical_digests(b)
            a = {name: b.get(name) if digest is None else digest for name, digest in a.items()}
            b = {name: a.get(name) if digest is None else digest for name, digest in b.items()}
        if dotted.startswith("options.") and (a is None and b is MISSING or a is MISSING and b is None):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing(a, b, f"{dotted}.")
        elif a is MISSING or b is MISSING or a != b:
            out.append((dotted, a, b))
    return out


# recorded names that the command line spells otherwise, as a person reads a difference
AS_TYPED = {"options.theta": "options.theta (JSMA's --eps)"}


def describe(difference: tuple) -> str:
    """'options.eps: 0.1 there, 0.2 now' ('(none)' for a missing key)."""
    key, a, b = difference
    key = AS_TYPED.get(key, key)
    return (f"{key}: {'(none)' if a is MISSING else json.dumps(a)} there, "
            f"{'(none)' if b is MISSING else json.dumps(b)} now")


def brief(changed: list[tuple], there: dict, now: dict, most: int = 4) -> str:
    """``changed`` (``differing``'s records) for one line: the test images as a whole ('data: ...'
    from each side's note, not every digest), then at most ``most`` settings and how many more.
    Where the attacks differ, an option that only one side has is left out (the other attack
    takes no such option: 'attack: "bim" there, "fgsm" now' says it)."""
    attacks_differ = any(d[0] == "attack" for d in changed)
    parts = [describe(d) for d in changed if not d[0].startswith("data.") and not (
        attacks_differ and d[0].startswith("options.") and (d[1] is MISSING or d[2] is MISSING))]
    if any(d[0].startswith("data.") for d in changed):
        notes = [(side.get("data") or {}).get("note", "(unrecorded)") for side in (there, now)]
        parts.insert(0, f"data: {notes[0]} there, {notes[1]} now" if notes[0] != notes[1]
                     else "data: other test images (their SHA-256 differ)")
    more = len(parts) - most
    return "; ".join(parts[:most]) + (f"; and {more} more" if more > 0 else "")


def differences(there: dict, now: dict) -> list[str]:
    """``differing`` as lines for a person ('options.eps: 0.1 there, 0.2 now')."""
    return [describe(d) for d in differing(there, now)]


def read_samples(run_dir) -> list[dict]:
    """One dict per image from a finished run's ``samples.jsonl``, or the ``samples.jsonl.gz`` a
    published copy keeps instead."""
    plain, packed = Path(run_dir) / "samples.jsonl", Path(run_dir) / "samples.jsonl.gz"
    text = plain.read_text() if plain.is_file() else gzip.decompress(packed.read_bytes()).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def lock_run(partial: Path, run_dir: Path | None = None):
    """Hold an exclusive lock on ``partial/.lock`` (``rcenp.checkpoint.take_lock``, released when
    the returned file is closed or the process dies, however) so that two processes never compute
    one run (``run_dir``, default ``partial``'s parent): a ``--resume`` while an earlier process
    still runs would write the same batches and remove each other's files. ``rcenp attack --jobs``
    holds OUT/shards/.lock the same way. Raises ValueError (one line, with the holder's pid) when
    another process holds it. Where ``fcntl`` is missing (Windows), nothing is locked and None is
    returned."""
    return checkpoint.take_lock(partial / ".lock", lambda holder: (
        f"{run_dir or partial.parent}: another process{f' (pid {holder})' if holder else ''} is computing this "
        "run; wait for it to end, or stop it and resume"))


def unclaim(out_dir: Path, partial: Path, made_dir: bool) -> None:
    """Undo ``claim`` for a run that failed before its first batch (a bad setting the attack
    itself rejects): its run.json, log and empty partial/ go, and ``out_dir`` if this run made it."""
    shutil.rmtree(partial, ignore_errors=True)
    for name in ("run.json", "attack.log"):
        (out_dir / name).unlink(missing_ok=True)
    if made_dir and not any(out_dir.iterdir()):
        out_dir.rmdir()


PNG_MARKER = "png-run.json"  # in a --png folder: the run whose images it holds
PNG_SETTINGS = ("model", "attack", "options", "n", "seed", "batch_size")  # a shard's PNGs are its run's


def png_owner(out_dir) -> str:
    """The run a ``--png`` folder's images belong to: ``out_dir`` (absolute), or for a shard of a
    ``--jobs`` run (OUT/shards/K-of-J) that run's OUT, since its shards share one PNG folder."""
    out = Path(out_dir).resolve()
    if out.parent.name == "shards" and re.fullmatch(r"\d+-of-\d+", out.name):
        out = out.parent.parent
    return str(out)


def check_png_dir(png_dir, out_dir, asked: dict, resume: bool) -> None:
    """ValueError (one line) when the ``--png`` folder ``png_dir`` holds PNG files that the run
    ``asked`` in ``out_dir`` did not write, which its images would overwrite or sit beside: its
    ``PNG_MARKER`` names another run (``png_owner``) or other settings, or there is none. A folder
    without PNG files is free. A run begun before the marker existed, resumed, may go on in the
    folder it wrote into (no marker; ``out_dir``'s run.json records ``png``)."""
    png_dir = Path(png_dir)
    if not png_dir.is_dir() or not any(png_dir.glob("*.png")):
        return
    advice = "choose an empty folder for --png (png_dir in Python), so that it holds one run's images"
    try:
        recorded = json.loads((png_dir / PNG_MARKER).read_text())
    except FileNotFoundError:
        run_file = Path(out_dir) / "run.json"
        if resume and run_file.is_file() and json.loads(run_file.read_text()).get("png"):
            return
        raise ValueError(f"--png {png_dir} already holds PNG files that are not this run's (no {PNG_MARKER} names "
                         f"it): {advice}") from None
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("settings"), dict):
        raise ValueError(f"--png {png_dir}: unreadable {PNG_MARKER}, so its PNG files may be another run's: {advice}")
    owner = png_owner(out_dir)
    if recorded.get("run") != owner:
        raise ValueError(f"--png {png_dir} holds the PNG images of another run ({recorded.get('run')}): {advice}")
    there, now = comparable(recorded["settings"]), comparable({key: asked.get(key) for key in PNG_SETTINGS})
    if changed := differing(there, now):
        raise ValueError(f"--png {png_dir} holds the PNG images of an earlier run in {owner} with other settings ("
                         + brief(changed, there, now) + f"): {advice}")


def claim_png(png_dir, out_dir, asked: dict) -> bool:
    """Write ``png_dir``'s ``PNG_MARKER`` for the run ``asked`` in ``out_dir`` (after
    ``check_png_dir``, before its first image) → whether this made ``png_dir``."""
    png_dir = Path(png_dir)
    made = not png_dir.exists()
    checkpoint.atomic_write_text(png_dir / PNG_MARKER, json.dumps(
        {"run": png_owner(out_dir), "settings": {key: asked.get(key) for key in PNG_SETTINGS}}, indent=2) + "\n")
    return made


def unclaim_png(png_dir, made: bool) -> None:
    """Undo ``claim_png`` for a run that wrote no image: the marker goes if the folder holds no
    PNG file, and the folder if ``claim_png`` made it and it is empty."""
    png_dir = Path(png_dir)
    if not any(png_dir.glob("*.png")):
        (png_dir / PNG_MARKER).unlink(missing_ok=True)
        if made and png_dir.is_dir() and not any(png_dir.iterdir()):
            png_dir.rmdir()


def format_options(options: dict) -> str:
    """An attack's options for a person: 'eps=0.1 steps=10'; nested ones as 'stage2.kappa=5'."""
    parts = []
    for key, value in options.items():
        if isinstance(value, dict):
            parts += [f"{key}.{item}" for item in format_options(value).split()]
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def weights_identity(model_ref) -> tuple[str | None, int | None]:
    """(SHA-256 of the weight arrays, training step) of the model ``model_ref`` names now, from its
    manifest; (None, None) where there is none. A retrained model under the same name changes it."""
    from rcenp.models.registry import resolve

    try:
        manifest = json.loads(resolve(model_ref).with_suffix(".json").read_text())
    except (OSError, ValueError, checkpoint.CheckpointError):
        return None, None
    return manifest.get("arrays_sha256"), manifest.get("step")


def detector_identity(model_ref) -> dict | None:
    """The fitted detector of ``model_ref`` as run.json records it: its kernel arrays' SHA-256,
    threshold, σ² and metric (None without a detector). A refit changes it."""
    from rcenp.detect.detector import detector_stem
    from rcenp.models.registry import resolve

    path = detector_stem(resolve(model_ref)).with_suffix(".json")
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return {key: manifest.get(key) for key in ("arrays_sha256", "threshold", "sigma2", "metric")}


@functools.lru_cache(maxsize=1)
def source_sha256() -> str:
    """SHA-256 over the rcenp package's Python sources (path and bytes of every ``rcenp/**/*.py``,
    sorted) as they are on disk at this process's first call (a run calls it at its start): equal
    exactly when the library code is equal, whatever the git history or the docs around it did."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_record(device: str | None = None) -> dict:
    """The code this process runs: git commit and dirty flag (``checkpoint.code_identity``) and
    ``source_sha256``; with ``device`` ("cpu" or "cuda"), where it computes too."""
    return {**checkpoint.code_identity(), "source_sha256": source_sha256(), **({"device": device} if device else {})}


def write_batch_code(stem: Path, code: dict) -> None:
    checkpoint.atomic_write_text(stem.with_suffix(".code.json"), json.dumps(code) + "\n")


def batch_code(stem: Path) -> dict:
    """The code record of batch ``stem`` (``{}`` for a batch from before batches recorded it)."""
    path = stem.with_suffix(".code.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def earlier_code(stems) -> list[dict]:
    """The distinct code records of the finished batches among ``stems``, in order of first
    appearance."""
    seen = []
    for stem in stems:
        if stem.with_suffix(".jsonl").is_file():
            code = batch_code(stem)
            if code not in seen:
                seen.append(code)
    return seen


def code_group(code: dict, batches: list) -> dict:
    """One ``code_by_batch`` entry: a code record's library source, its commit (with the device it
    computed on, where the record names one) and ``batches``."""
    commit = {"commit": code.get("commit"), "dirty": code.get("dirty")}
    if "device" in code:
        commit["device"] = code["device"]
    return {"source_sha256": code.get("source_sha256"), "commits": [commit] if code else [], "batches": batches}


def code_by_batch(stems) -> list[dict]:
    """``summary.json``'s ``code_by_batch``: one entry per distinct library source
    (``source_sha256``; ``None``: batches from before batches recorded their code) with the git
    commits it was seen at (``commits``, with ``dirty`` flags) and the numbers of the batches it
    computed (``partial/batch-NNNNN``'s NNNNN, 0-based over the whole run, shards included); a
    commit entry names the device too (batches from before records named it do not). A run
    resumed across commits that left rcenp/ unchanged is one entry. A C&W batch resumed mid-way
    from a snapshot made by other code (its code record's ``earlier``, ``rcenp.attacks.cw_snapshot``)
    is listed under that code too."""
    groups = []
    for stem in stems:
        code, number = batch_code(stem), [int(stem.name.rpartition("-")[2])]
        groups += [code_group(earlier, number) for earlier in code.get("earlier", [])]
        groups.append(code_group({k: v for k, v in code.items() if k != "earlier"}, number))
    return merge_code_groups(groups)


def merge_code_groups(groups) -> list[dict]:
    """``code_by_batch`` lists joined: one entry per ``source_sha256``, commits without repeats,
    batches in the order given."""
    out: list[dict] = []
    for group in groups:
        same = next((g for g in out if g["source_sha256"] == group["source_sha256"]), None)
        if same is None:
            out.append({"source_sha256": group["source_sha256"], "commits": [], "batches": []})
            same = out[-1]
        same["commits"] += [c for c in group["commits"] if c not in same["commits"]]
        same["batches"] += group["batches"]
    return out


def summary_code(groups) -> dict | None:
    """``summary.json``'s ``code``: the run's code record when every batch ran the same library
    source (its last commit seen, dirty flag and ``source_sha256``), else None (``code_by_batch``
    lists them)."""
    if len(groups) != 1 or groups[0]["source_sha256"] is None:
        return None
    last = groups[0]["commits"][-1] if groups[0]["commits"] else {}
    return {**last, "source_sha256": groups[0]["source_sha256"]}


def summary_code_groups(summary: dict) -> list[dict]:
    """A finished run's ``code_by_batch``; for a summary from before batches recorded their code,
    one entry from its ``code`` (batches unknown: [])."""
    if "code_by_batch" in summary:
        return summary["code_by_batch"]
    return [code_group(summary.get("code") or {}, [])]
