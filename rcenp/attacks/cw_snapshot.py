"""Mid-batch snapshots of the streamed C&W optimiser (``rcenp.attacks.cw.optimise``), so that a
batch killed after hours resumes at the iteration it reached instead of its first.

``rcenp attack`` saves a run batch by batch, and a C&W batch can outlast a session: 20 images at
9 binary steps × 10,000 iterations take hours on one CPU core. With a ``Snapshot``, ``optimise``
saves its whole state every ``every`` seconds (the slots' arrays, the binary search, what the
finished samples returned) and once more when it ends; a later call with the same inputs restores
it and goes on. The result is an uninterrupted run's: the optimiser draws no random numbers and
every array comes back bit for bit (tests/test_attacks_cw_snapshot.py). A finished snapshot
(C&W-wb's stage 1, ``part``) returns its result without recomputing it.

A snapshot carries a key of what the optimisation depends on (the network's weights and buffers,
the start and anchor images, the classes, the settings, the device, C&W-wb's kernel points, σ² and
η, and ``SNAPSHOT_FORMAT``); one with another key, unreadable, or lacking an array or holding one
of another shape or dtype than the state needs (``state_problem``) is ignored and the batch starts
afresh, said through ``notes``. SIGINT and SIGTERM during a snapshotted optimisation (main thread)
are held until the top of the next iteration, where the state is saved before the interrupt goes on
(``Snapshot.interruptible``), so Ctrl-C or a polite kill loses nothing. It also records the library code that made it (``rcenp.attacks.runfiles.code_record``):
one made by other code is used, and that code is listed in ``earlier``, which ``rcenp attack``
writes into the batch's code record so that ``code_by_batch`` names both.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from rcenp import checkpoint
from rcenp.attacks.cw_search import Slots
from rcenp.backend import as_numpy, to_device

SNAPSHOT_SECONDS = 300.0  # at most this much of a batch's work is lost to a kill (RCENP_SNAPSHOT_SECONDS overrides)
SNAPSHOT_FORMAT = 1       # part of the key: a state written by a version with other arrays is not restored


def period() -> float:
    """Seconds between snapshots: $RCENP_SNAPSHOT_SECONDS where set (reaches ``--jobs`` shards),
    else ``SNAPSHOT_SECONDS``. Raises ValueError for a value that is not a number >= 0."""
    text = os.environ.get("RCENP_SNAPSHOT_SECONDS")
    if text is None:
        return SNAPSHOT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"RCENP_SNAPSHOT_SECONDS must be a number of seconds >= 0, got {text!r}")
    return value


def snapshot_key(model, start, anchor, classes, settings: dict, density=None) -> str:
    """SHA-256 of what ``optimise``'s result depends on: host ``start``/``anchor`` (N, C, H, W),
    ``classes`` (N,), the JSON-able ``settings``, the model's device, NumPy's version (its
    arithmetic may differ) and every array of its network's state (weights and batch-norm
    statistics), and ``density``'s kernel points, σ², η."""
    digest = hashlib.sha256(f"rcenp C&W snapshot, format {SNAPSHOT_FORMAT}".encode())
    for array in (start, anchor, classes):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode() + array.tobytes())
    digest.update(json.dumps({**settings, "device": model.device, "numpy": np.__version__}, sort_keys=True).encode())
    for name, value in sorted(model.network.state_dict().items()):
        value = np.ascontiguousarray(as_numpy(value))
        digest.update(f"{name}{value.dtype}{value.shape}".encode() + value.tobytes())
    if density is not None:
        for array in (density.kernel_points, density.eta):
            digest.update(np.ascontiguousarray(as_numpy(array)).tobytes())
        digest.update(repr(density.sigma2).encode())
    return digest.hexdigest()


class Snapshot:
    """Where ``optimise`` keeps its state: ``path`` (.npz), saved when ``due`` (every ``every``
    seconds of work, default ``period()``) and at the end. ``code``: the record of the code running now (None in a
    plain library call: no code is compared). ``notes``: lines for a person (a snapshot ignored);
    ``earlier``: the code records of restored snapshots made by other code; ``resumed``: whether
    one was restored."""

    def __init__(self, path, every: float | None = None, code: dict | None = None):
        self.path, self.code = Path(path), code
        self.every = float(period() if every is None else every)
        self._held = checkpoint.HeldSignals()  # replaced by each ``interruptible``
        self.notes: list[str] = []
        self.earlier: list[dict] = []
        self.resumed = False           # whether a load (of this snapshot or a part) found a state to go on from
        self._parent: Snapshot | None = None
        self._codes: list[dict] = []   # the code that made the restored state, then this one
        self._saved_at = time.monotonic()

    def part(self, name: str) -> "Snapshot":
        """A snapshot beside this one for one stage of a multi-stage attack (``<stem>-<name>.npz``),
        sharing its notes and earlier code."""
        child = Snapshot(self.path.with_name(f"{self.path.stem}-{name}.npz"), self.every, self.code)
        child.notes, child.earlier = self.notes, self.earlier
        child._parent = self
        return child

    def due(self) -> bool:
        return time.monotonic() - self._saved_at >= self.every

    def save(self, key: str, arrays: dict, finished: bool = False) -> None:
        """Write ``arrays`` (name → host array) with the key, the codes and ``finished``, through a
        temporary file and a rename."""
        codes = self._codes + ([self.code] if self.code is not None and self.code not in self._codes else [])
        checkpoint.atomic_write_npz(self.path, **arrays, snapshot_key=np.array(key),
                                    snapshot_codes=np.array(json.dumps(codes)), snapshot_finished=np.array(finished))
        self._saved_at = time.monotonic()

    def load(self, key: str, check=None) -> tuple[dict, bool] | None:
        """(arrays, finished) of the snapshot at ``path`` when it has ``key`` and ``check(arrays)``
        (``state_problem``) finds nothing wrong; else None (with a note when there was one that is
        ignored)."""
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            found = str(arrays.pop("snapshot_key"))
            codes = json.loads(str(arrays.pop("snapshot_codes")))
            finished = bool(arrays.pop("snapshot_finished"))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            self.notes.append(f"snapshot {self.path.name} unreadable ({type(exc).__name__}); starting afresh")
            return None
        if found != key:
            self.notes.append(f"snapshot {self.path.name} is of other images, settings or weights; starting afresh")
            return None
        if check is not None and (problem := check(arrays)) is not None:
            self.notes.append(f"snapshot {self.path.name} is damaged ({problem}); starting afresh")
            return None
        self._codes = codes
        self.resumed = True
        if self._parent is not None:
            self._parent.resumed = True
        if self.code is not None:
            for code in codes:
                if code.get("source_sha256") != self.code.get("source_sha256") and code not in self.earlier:
                    self.earlier.append(code)
        return arrays, finished

    def open(self, key: str, check=None, progress=None, label: str = "C&W") -> tuple[dict, bool] | None:
        """``load``, telling ``progress`` (when given) each note, as "LABEL: note"."""
        restored = self.load(key, check)
        if progress is not None:
            for note in self.notes:
                progress(f"{label}: {note}")
            self.notes.clear()
        return restored

    def resumed_line(self, label: str, age: float, s: Slots, queued: int, n: int, finished: bool) -> str:
        """The line for a person once a state of ``age`` seconds is restored into slots ``s``."""
        return (f"{label}: resumed from {self.path.name} ({age / 60:.0f} min old"
                + (", made by other library code: code_by_batch names both" if self.earlier else "")
                + f"): {queued - len(s.sample)}/{n} images finished"
                + ("" if finished else f", {len(s.sample)} in work at binary step {s.step.min() + 1}-"
                   f"{s.step.max() + 1}, iteration up to {s.it.max()}"))

    def paths(self) -> list[Path]:
        """This snapshot's file and its parts', and temporary files a kill during a write left."""
        stem, folder = self.path.stem, self.path.parent
        return sorted(folder.glob(f"{stem}.npz")) + sorted(folder.glob(f"{stem}-*.npz")) + \
            sorted(folder.glob(f"{stem}.npz.*.tmp")) + sorted(folder.glob(f"{stem}-*.npz.*.tmp"))

    def age(self) -> float:
        """Seconds since the file was written (0 when there is none)."""
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except OSError:
            return 0.0

    def interruptible(self) -> checkpoint.HeldSignals:
        """Hold SIGINT and SIGTERM (``rcenp.checkpoint.HeldSignals``) while ``optimise`` runs: it
        saves and then raises KeyboardInterrupt (SIGINT) or SystemExit(143) (SIGTERM) at the top of
        its next iteration."""
        self._held = checkpoint.HeldSignals()
        return self._held

    @property
    def interrupted(self) -> int | None:
        """The signal held by ``interruptible``, if one came."""
        return self._held.signum

    def raise_interrupt(self):
        """The held signal as the exception it stands for."""
        self._held.stop()

    def remove(self) -> None:
        for path in self.paths():
            path.unlink(missing_ok=True)


OUT_LISTS = ("c", "step_success", "iterations", "step_stop")  # optimise's per-sample lists; the rest are arrays


def capture_state(s: Slots, const, lower, upper, queued: int, out: dict) -> dict:
    """Everything ``optimise`` needs to go on from the top of an iteration, as host arrays."""
    arrays = {f"slot_{name}": as_numpy(getattr(s, name)) for name in Slots.HOST + Slots.DEVICE
              if getattr(s, name) is not None}
    arrays.update(const=const, lower=lower, upper=upper, queued=np.array(queued),
                  out_lists=np.array(json.dumps({key: out[key] for key in OUT_LISTS})),
                  **{f"out_{key}": value for key, value in out.items() if key not in OUT_LISTS})
    return arrays


def state_problem(arrays: dict, n: int, image_shape: tuple, dtype, density: bool, out: dict) -> str | None:
    """Why ``arrays`` are not a state ``capture_state`` wrote for these n images (an array
    missing, or of another shape or dtype), or None."""
    try:
        size = len(arrays["slot_sample"])
        images = ("anchor", "w0", "delta", "m", "v", "best_adv") + (("fallback_adv",) if density else ())
        floats = ("c", "best_d2", "best_margin") + (("best_f2", "eta", "fallback_f2", "fallback_margin") if density else ())
        expected = {**{f"slot_{k}": ((size,), np.int64) for k in ("sample", "step", "it", "cls")},
                    "slot_step_success": ((size,), np.bool_), "slot_prev": ((size,), np.float64),
                    **{f"slot_{k}": ((size,) + tuple(image_shape), dtype) for k in images},
                    **{f"slot_{k}": ((size,), dtype) for k in floats},
                    **{k: ((n,), np.float64) for k in ("const", "lower", "upper")}, "queued": ((), np.int64),
                    **{f"out_{k}": (v.shape, v.dtype) for k, v in out.items() if k not in OUT_LISTS}}
        for name, (shape, kind) in expected.items():
            if name not in arrays:
                return f"no {name}"
            if arrays[name].shape != shape or arrays[name].dtype != np.dtype(kind):
                return f"{name} is {arrays[name].dtype}{arrays[name].shape}, not {np.dtype(kind)}{shape}"
        lists = json.loads(str(arrays["out_lists"]))
        if set(lists) != set(OUT_LISTS) or any(len(lists[k]) != n for k in OUT_LISTS):
            return "out_lists is not one list per image of each per-sample record"
        if not size <= int(arrays["queued"]) <= n:
            return f"queued {int(arrays['queued'])} with {size} slots of {n} images"
    except (KeyError, ValueError, TypeError) as exc:
        return f"unreadable state ({type(exc).__name__})"
    return None


def restore_state(arrays: dict, xp, device, dtype, density: bool, const, lower, upper, out: dict):
    """``capture_state``'s arrays (checked by ``state_problem``) back into ``const``, ``lower``,
    ``upper`` and ``out`` (in place) and new slots → (slots, queued)."""
    sample = arrays["slot_sample"]
    s = Slots(xp, len(sample), (len(sample),) + arrays["slot_w0"].shape[1:], dtype, density)
    for name in Slots.HOST:
        setattr(s, name, arrays[f"slot_{name}"])
    for name in Slots.DEVICE:  # state_problem has checked that each one used is there
        if getattr(s, name) is not None:
            setattr(s, name, to_device(arrays[f"slot_{name}"], device))
    const[...], lower[...], upper[...] = arrays["const"], arrays["lower"], arrays["upper"]
    for key in out:
        if key not in OUT_LISTS:
            out[key][...] = arrays[f"out_{key}"]
    out.update(json.loads(str(arrays["out_lists"])))
    return s, int(arrays["queued"])
