"""Checkpoints: arrays in an ``.npz``, everything else in a JSON manifest; no pickle anywhere.

``<stem>.npz`` holds ``model/<state key>`` and ``optimizer/<state key>`` arrays. ``<stem>.json``
holds the configuration, the step, the data set's identity, versions and the SHA-256 of the npz.
Every file is written to a temporary file in the same directory, flushed, fsync'ed and renamed,
and the directory is fsync'ed after the rename. A save renames, in order: the new arrays to
``<stem>.npz.next``, the manifest (recording their SHA-256) to ``<stem>.json``, then
``<stem>.npz.next`` to ``<stem>.npz``. A crash before the manifest's rename leaves the previous
pair in force; a crash after it leaves the new manifest beside ``<stem>.npz.next``, which
``load`` recognises by its SHA-256 and reads. So a kill at any moment leaves one loadable
checkpoint, the previous or the new.

``HeldSignals`` lets a long loop (training, C&W) save its state when SIGINT or SIGTERM comes
before it stops, so that Ctrl-C or a polite kill loses nothing.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import signal
import subprocess
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or inconsistent."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def check_folder(path, option: str) -> None:
    """ValueError (one line) when ``path``, or a folder it would be made in, exists and is not a
    folder: caught before anything is written or printed, instead of the OS's 'File exists' or
    'Not a directory' halfway through."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: a file of that name exists; {option} names a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            break


def atomic_write_text(path, text: str) -> None:
    """Write text to ``path`` through a temporary file and a rename."""
    _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def atomic_write_bytes(path, data: bytes) -> None:
    """Write bytes to ``path`` through a temporary file and a rename."""
    _atomic_write(Path(path), lambda fh: fh.write(data))


def atomic_write_npz(path, **arrays) -> None:
    """Write arrays to an uncompressed ``.npz`` at ``path`` through a temporary file and a rename."""
    _atomic_write(Path(path), lambda fh: np.savez(fh, **arrays))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def take_lock(lock_file, busy) -> object | None:
    """Take an exclusive lock on ``lock_file`` (``fcntl.flock``; the operating system releases it
    when the returned file is closed or the process ends, however), writing this process's pid
    into it, so that two processes never write one run. Raises ValueError(``busy(holder)``), the
    holder's pid or "" where unknown, when another process holds it. Where ``fcntl`` is missing
    (Windows), nothing is locked and None is returned."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(lock_file, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise ValueError(busy(holder)) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def environment() -> dict:
    """Versions, the code's commit and the host (``host``), recorded with every checkpoint and
    result."""
    info = {"python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform()}
    from rcenp import __version__

    info["rcenp"] = __version__
    info.update(code_identity())
    info.update(host())
    return info


def host() -> dict:
    """{"cpu": the processor's model name, "blas_core": OpenBLAS's kernel set}, each None where
    unknown. A resumed run continues bit for bit on the same CPU and BLAS kernel; on another one
    its float32 GEMMs round differently in the last bits (a run resumed on another host of the
    same cloud drifts from the uninterrupted run, though it is as valid an SGD run)."""
    from rcenp.ops.layout import blas_core

    cpu = None
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or None, "blas_core": blas_core()}


def host_change(manifest: dict, device: str) -> str | None:
    """What differs between where a checkpoint was made and here: "device cuda -> cpu", "GPU A ->
    B" (its ``compute``, ``backend.device_identity``), or on the host "cpu A -> B, BLAS kernel C
    -> D" (its environment, ``host``); None when nothing recorded differs (older
    checkpoints record less). ``device``: where the resumed run computes now ("cpu" or "cuda")."""
    from rcenp.backend import device_identity

    before, here = manifest.get("compute") or {}, device_identity(device)
    if before.get("device") not in (None, here["device"]):
        return f"device {before['device']} -> {here['device']}"
    if here["device"] == "cuda":
        return f"GPU {before['gpu']} -> {here['gpu']}" if before.get("gpu") not in (None, here["gpu"]) else None
    saved_environment = manifest.get("environment", {})
    here, changes = host(), []
    for key, label in (("cpu", "cpu"), ("blas_core", "BLAS kernel")):
        before = saved_environment.get(key)
        if before is not None and here[key] is not None and before != here[key]:
            changes.append(f"{label} {before} -> {here[key]}")
    return ", ".join(changes) or None


# what makes rcenp's outputs, for "dirty": the package (its shipped models too), the scripts and the
# package's settings; not the long runs' progress (tracked, rewritten under background work), nor
# the docs, tests and published results, whose edits change no number a checkout computes
CODE = ("rcenp", "scripts", "pyproject.toml")
NOT_CODE = ("rcenp/models/pretrained/in-progress",)


@functools.lru_cache(maxsize=1)
def code_identity() -> dict:
    """{"commit", "dirty"} of the git checkout this process's rcenp came from, read on the first
    call (``rcenp train`` makes it at start-up), so that a checkout changing under a long run
    does not relabel that run's later checkpoints. Empty outside a git checkout."""
    return git_identity(Path(__file__).resolve().parent.parent)


def git_identity(root: Path) -> dict:
    """{"commit": HEAD, "dirty": whether a tracked file in ``CODE`` but not ``NOT_CODE`` differs
    from it (None where ``git status`` fails)} of the git checkout at ``root`` (paths from its
    top); empty when it is not one."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return {}
        paths = [*(f":(top){path}" for path in CODE), *(f":(top,exclude){path}" for path in NOT_CODE)]
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *paths],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {}
    # None where git could not say (a locked index, a git too old for these pathspecs): unknown, not clean
    return {"commit": out.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def _pending(npz: Path) -> Path:
    """Where ``save`` puts the new arrays until the manifest naming them is in place."""
    return npz.with_name(npz.name + ".next")


def save(stem, model_state: dict, optimizer_state: dict | None, manifest: dict) -> Path:
    """Write ``<stem>.npz`` and ``<stem>.json``, crash-safe (module docstring); returns the
    manifest path."""
    stem = Path(stem)
    arrays = {f"model/{k}": np.asarray(v) for k, v in model_state.items()}
    for k, v in (optimizer_state or {}).items():
        arrays[f"optimizer/{k}"] = np.asarray(v)
    npz = stem.with_suffix(".npz")
    pending = _pending(npz)
    _atomic_write(pending, lambda fh: np.savez(fh, **arrays))
    manifest = dict(manifest, arrays_file=npz.name, arrays_sha256=file_sha256(pending), environment=environment())
    manifest_path = stem.with_suffix(".json")
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(pending, npz)
    _fsync_dir(npz.parent)
    return manifest_path


def load(stem, verify: bool = True):
    """Read a checkpoint → (manifest dict, model state dict, optimizer state dict)."""
    stem = Path(stem)
    manifest_path = stem.with_suffix(".json")
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: no checkpoint manifest here")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from None
    npz = manifest_path.parent / manifest.get("arrays_file", stem.with_suffix(".npz").name)
    pending = _pending(npz)
    if pending.is_file() and manifest.get("arrays_sha256") and file_sha256(pending) == manifest["arrays_sha256"]:
        npz, verify = pending, False  # a save cut short between its manifest and its last rename
    if not npz.is_file():
        raise CheckpointError(f"{npz}: arrays file named by {manifest_path.name} is missing")
    if verify and manifest.get("arrays_sha256") and file_sha256(npz) != manifest["arrays_sha256"]:
        raise CheckpointError(f"{npz}: contents do not match the SHA-256 recorded in {manifest_path.name}")
    try:
        with np.load(npz, allow_pickle=False) as data:
            model = {k[len("model/"):]: data[k] for k in data.files if k.startswith("model/")}
            optimizer = {k[len("optimizer/"):]: data[k] for k in data.files if k.startswith("optimizer/")}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{npz}: unreadable arrays file ({exc})") from None
    return manifest, model, optimizer


class HeldSignals:
    """SIGINT and SIGTERM held while a loop runs, so that it can save its state before stopping.

    Inside ``with held:`` (in the main thread; elsewhere nothing changes) a signal is recorded in
    ``signum`` instead of acting; the loop looks at ``signum`` where its state is whole, saves,
    and calls ``stop()``, which raises what the signal would have: KeyboardInterrupt for SIGINT,
    SystemExit(128 + signum) for SIGTERM. The previous handlers come back on leaving. A signal the
    process ignores stays ignored (a command started with ``&`` from a script ignores SIGINT, as
    Python's own Ctrl-C handling then does): stop such a run with SIGTERM."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: handler for sig in (signal.SIGINT, signal.SIGTERM)
                              if (handler := signal.getsignal(sig)) is not signal.SIG_IGN}
            for sig in self._previous:
                signal.signal(sig, self._hold)
        return self

    def _hold(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def stop(self):
        """Raise the held signal as the exception it stands for."""
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + int(self.signum))
