"""Download the published data files into the data root (urllib only, verified, atomic).

Every file is downloaded to a temporary file in its destination folder, verified, and only then
moved into place with :func:`os.replace`; a failed or corrupt download leaves nothing behind.
IDX files are verified by the SHA-256 of their uncompressed bytes, the CIFAR-10 archive by its
published MD5. From the CIFAR-10 archive only the seven expected regular files are written, to
names this module chooses (never to a path taken from the archive).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from . import cifar, idx, names
from .checksums import CIFAR_META_SHA256, CIFAR_TARBALL_MD5, IDX_SHA256, file_key, sha256_of
from .datasets import DATASETS, IDX_FILES, data_root
from .errors import DataError

MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_MEMBERS = (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH, cifar.META)
TIMEOUT_S = 60
MAX_BYTES = 1 << 30  # refuse any response larger than this (the largest file is ~170 MB)
CHUNK = 1 << 20

Progress = Callable[[str, int, int | None], None]


def fetch(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Iterable[str] | None = None,
    progress: Progress | None = None,
    *,
    checksums: Mapping[str, str] | None = None,
) -> list[Path]:
    """Download data set ``name`` into ``data_root(root)`` and return the paths of its files.

    ``mirrors``: base URLs (http or https) tried in order for each file; default :data:`MIRRORS`.
    ``progress(file_name, bytes_done, bytes_total_or_None)`` is called as data arrives.
    ``checksums`` overrides known digests by key: an IDX file name without ``.gz`` (SHA-256 of the
    uncompressed bytes), ``"cifar-10-python.tar.gz"`` (MD5 of the archive) or ``"batches.meta"``.
    Files already present and valid, under their canonical names or a variant
    (:mod:`rcenp.data.names`), are kept and not downloaded again.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS)}")
    bases = [_base_url(m) for m in (MIRRORS[name] if mirrors is None else mirrors)]
    if not bases:
        raise DataError(f"no mirror given for {name}")
    root = data_root(root)
    known = dict(checksums or {})
    folder = root / (cifar.DIRNAME if name == "cifar10" else name)
    new_folders = [f for f in (folder, *folder.parents) if not f.exists()]  # deepest first
    try:
        if name == "cifar10":
            return _fetch_cifar(root, bases, progress, known)
        return [
            _fetch_idx(folder, base_name, known.get(base_name, IDX_SHA256[name][base_name]), bases, progress)
            for base_name in IDX_FILES["train"] + IDX_FILES["test"]
        ]
    except BaseException:
        _remove_if_empty(new_folders)  # a failed fetch (no network) leaves no empty data set folder
        raise


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that exists and is empty; stop at the first that is not."""
    for f in folders:
        try:
            f.rmdir()
        except OSError:  # not empty (a file was fetched), already gone, or not ours to remove
            if f.exists():
                return


def _base_url(url: str) -> str:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DataError(f"mirror {url!r}: only http:// and https:// URLs are allowed")
    return url if url.endswith("/") else url + "/"


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create ({exc.strerror or exc})") from exc


def _temporary(folder: Path, file_name: str) -> tuple[int, Path]:
    """A new hidden temporary file next to ``folder/file_name``: (open descriptor, path)."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{file_name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"{folder}: cannot write ({exc.strerror or exc})") from exc
    return fd, Path(tmp_name)


def _publish(tmp: Path, target: Path) -> None:
    """Move a verified temporary file into place atomically, readable like any downloaded file."""
    os.chmod(tmp, 0o644)  # mkstemp creates 0o600
    os.replace(tmp, target)


def _idx_sha256(path: Path, gzipped: bool | None = None) -> str | None:
    """SHA-256 of the uncompressed content of an IDX file, or None if it cannot be read."""
    try:
        key = file_key(path)
        return sha256_of(key, idx.read_content(path, gzipped))
    except (OSError, DataError):
        return None


def _fetch_idx(folder: Path, base_name: str, expected: str, bases: list[str], progress: Progress | None) -> Path:
    present = names.find(folder, base_name)
    if present is not None and _idx_sha256(present) == expected:
        return present
    _make_dir(folder)
    target = folder / f"{base_name}.gz"
    errors = []
    for base in bases:
        url = base + target.name
        try:
            tmp = _download(url, folder, target.name, progress)
        except DataError as exc:
            errors.append(str(exc))
            continue
        digest = _idx_sha256(tmp, gzipped=True)
        if digest == expected:
            _publish(tmp, target)
            return target
        tmp.unlink(missing_ok=True)
        got = "not readable gzip data" if digest is None else f"uncompressed SHA-256 {digest}"
        errors.append(f"{url}: {got}, expected {expected}")
    raise DataError(f"{target}: no valid copy from any mirror ({'; '.join(errors)})")


def _download(url: str, folder: Path, file_name: str, progress: Progress | None, hasher=None) -> Path:
    """Stream ``url`` into a new temporary file in ``folder``; return its path (deleted on error)."""
    fd, tmp = _temporary(folder, file_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "rcenp"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            if progress:
                progress(file_name, done, total)
            while chunk := response.read(CHUNK):
                done += len(chunk)
                if done > MAX_BYTES:
                    raise DataError(f"{url}: more than {MAX_BYTES:,} bytes, refused")
                out.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                if progress:
                    progress(file_name, done, total)
            if total is not None and done != total:
                raise DataError(f"{url}: received {done:,} of {total:,} bytes")
            out.flush()
            os.fsync(out.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, DataError):
            raise
        if isinstance(exc, (OSError, http.client.HTTPException, ValueError)):
            raise DataError(f"{url}: {type(exc).__name__}: {exc}") from exc
        raise
    return tmp


def _cifar_complete(folder: Path, meta_sha256: str) -> list[Path] | None:
    """The paths of the seven files when ``folder`` holds them all (under their names or variants),
    batches.meta verified and every batch full-size; else None."""
    found = [names.find(folder, m) for m in CIFAR_MEMBERS]
    if None in found:
        return None
    *batches, meta = found
    try:
        if cifar.read_meta(meta) != meta_sha256:
            return None
        return found if all(len(cifar.read_batch(b)[0]) == cifar.ROWS_PER_BATCH for b in batches) else None
    except DataError:
        return None


def _fetch_cifar(root: Path, bases: list[str], progress: Progress | None, known: dict[str, str]) -> list[Path]:
    folder = root / cifar.DIRNAME
    targets = [folder / m for m in CIFAR_MEMBERS]
    meta_sha256 = known.get(cifar.META, CIFAR_META_SHA256)
    present = _cifar_complete(folder, meta_sha256)
    if present is not None:
        return present
    expected_md5 = known.get(CIFAR_TARBALL, CIFAR_TARBALL_MD5)
    _make_dir(root)
    errors = []
    for base in bases:
        url = base + CIFAR_TARBALL
        md5 = hashlib.md5(usedforsecurity=False)
        try:
            archive = _download(url, root, CIFAR_TARBALL, progress, md5)
        except DataError as exc:
            errors.append(str(exc))
            continue
        try:
            if md5.hexdigest() != expected_md5:
                errors.append(f"{url}: MD5 {md5.hexdigest()}, expected {expected_md5}")
                continue
            _extract_cifar(archive, url, folder, meta_sha256)
            return targets
        finally:
            archive.unlink(missing_ok=True)
    raise DataError(f"{root / CIFAR_TARBALL}: no valid copy from any mirror ({'; '.join(errors)})")


def _extract_cifar(archive: Path, url: str, folder: Path, meta_sha256: str) -> None:
    """Write the seven expected members of the verified archive into ``folder``.

    All seven are staged as temporary files and batches.meta is verified before any is moved
    into place; member names select members but never form an output path.
    """
    _make_dir(folder)
    wanted = {f"{cifar.DIRNAME}/{m}": m for m in CIFAR_MEMBERS}
    staged: dict[str, Path] = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:  # one sequential pass, no seeking
            for info in tar:
                member = wanted.get(info.name)
                if member is None:
                    continue
                if member in staged or not info.isreg():
                    what = "appears twice" if member in staged else "is not a regular file"
                    raise DataError(f"{url}: archive member {info.name} {what}")
                fd, staged[member] = _temporary(folder, member)
                with os.fdopen(fd, "wb") as out:
                    src = tar.extractfile(info)
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
        missing = [n for n, m in wanted.items() if m not in staged]
        if missing:
            raise DataError(f"{url}: archive lacks {', '.join(missing)}")
        meta = staged[cifar.META]
        digest = hashlib.sha256(meta.read_bytes()).hexdigest()
        if digest != meta_sha256:
            raise DataError(f"{url}: {cifar.DIRNAME}/{cifar.META} has SHA-256 {digest}, expected {meta_sha256}")
        for member, tmp in staged.items():
            _publish(tmp, folder / member)
        staged.clear()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{url}: unreadable archive ({type(exc).__name__}: {exc})") from exc
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
