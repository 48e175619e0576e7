"""Loading MNIST, Fashion-MNIST and CIFAR-10 from their canonical files, with integrity checks.

Layout under the data root (see :func:`data_root`)::

    mnist/                {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    fashion-mnist/        the same four names (else /usr/share/datasets/fashion-mnist/, Debian)
    cifar-10-batches-py/  data_batch_1 ... data_batch_5, test_batch, batches.meta

and the common variants of those names (``t10k-images.idx3-ubyte``, ...; see :mod:`.names`).

Images come back as float32 (N, C, H, W) scaled ``x/255 - 0.5`` into [-0.5, 0.5] (float32
arithmetic); labels as int64 (N,) in 0..9.
"""
from __future__ import annotations

import os
import shlex
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cifar, idx, names
from .checksums import CIFAR_META_SHA256, CIFAR_SUBSET_ROWS, CIFAR_SUBSET_SHA256, IDX_SHA256, SAMPLE_SHA256
from .errors import DataError

DATASETS = ("mnist", "fashion-mnist", "cifar10")
SPLITS = ("train", "test")
NUM_CLASSES = 10
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}  # (C, H, W)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FULL_SIZE = {
    "mnist": {"train": 60_000, "test": 10_000},
    "fashion-mnist": {"train": 60_000, "test": 10_000},
    "cifar10": {"train": 50_000, "test": 10_000},
}
CLASS_NAMES = {  # label -> name, in the published label order
    "mnist": tuple(str(digit) for digit in range(NUM_CLASSES)),
    "fashion-mnist": ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
DATA_DIR_DEFAULT = ("default: $RCENP_DATA, else the per-user cache; Fashion-MNIST not found there is read from "
                    f"{DEBIAN_FASHION_MNIST} (Debian's package) when present")  # for --data-dir help texts
_FALLBACK_LISTENER: ContextVar = ContextVar("rcenp_data_fallback", default=None)  # see on_fallback
SAMPLE_DIR = Path(__file__).resolve().with_name("sample")
SAMPLE_NOTE = "embedded sample: first 1,000 MNIST test images"


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of one data set.

    ``images``: float32 (N, C, H, W) in [-0.5, 0.5]; ``labels``: int64 (N,) in 0..9;
    ``identity``: a JSON-serialisable record of what was loaded: ``name``, ``split``, ``n``,
    ``full`` (the complete published split), ``subset`` (fewer images than that), ``note``,
    ``sha256`` ({file name on disk: SHA-256 of its (uncompressed) content}; ``note`` says whether
    they were verified against published values; compare two records through
    ``rcenp.data.names.canonical_digests``, since a file may go by a variant name) and ``source``
    (the folder read).
    """

    images: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    identity: dict

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        """One line for logs, e.g. ``cifar10/train: 5,085 images, SUBSET (CIFAR-10 subset: ...)``."""
        ident = self.identity
        kind = "full" if ident["full"] else "SUBSET" if ident["subset"] else "partial"
        return f"{ident['name']}/{ident['split']}: {ident['n']:,} images, {kind} ({ident['note']})"


def class_name(name: str, label: int) -> str:
    """The name of class ``label`` of data set ``name`` (MNIST's are its digits: '7'; Fashion-MNIST
    7: 'sneaker'; CIFAR-10 3: 'cat'). Raises DataError for an unknown data set or label."""
    if name not in CLASS_NAMES:
        raise DataError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS)}")
    if not 0 <= int(label) < NUM_CLASSES:
        raise DataError(f"label {label} is outside 0..{NUM_CLASSES - 1}")
    return CLASS_NAMES[name][int(label)]


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data folder: ``explicit`` (a ``--data-dir`` value), else ``$RCENP_DATA``, else a per-user
    cache, ``$XDG_CACHE_HOME/rcenp`` (when set to an absolute path) or ``~/.cache/rcenp``."""
    if explicit is not None and os.fspath(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get("RCENP_DATA", "")
    if env:
        return Path(env).expanduser()
    return user_cache()


def user_cache() -> Path:
    """rcenp's per-user cache folder: ``$XDG_CACHE_HOME/rcenp`` (when set to an absolute path), else
    ``~/.cache/rcenp``."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    return base / "rcenp"


@contextmanager
def on_fallback(callback):
    """Within the block, :func:`load` calls ``callback(message)`` when it was given a data root
    explicitly (a ``--data-dir``) but read the data from elsewhere, Debian's Fashion-MNIST folder:
    'fashion-mnist: not under ROOT; using /usr/share/datasets/fashion-mnist (Debian's
    dataset-fashion-mnist)'. The library itself prints nothing; the command line says it on stderr."""
    token = _FALLBACK_LISTENER.set(callback)
    try:
        yield
    finally:
        _FALLBACK_LISTENER.reset(token)


def scale(raw: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 ``x/255 - 0.5`` (computed in float32), same shape."""
    out = raw.astype(np.float32)
    out /= np.float32(255)
    out -= np.float32(0.5)
    return out


def check_labels(labels: np.ndarray, path: Path) -> None:
    """Raise DataError naming ``path`` unless every label is in 0..9."""
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: label {int(labels[i])} at index {i:,} is outside 0..{NUM_CLASSES - 1}")


def load(name: str, split: str, root: str | os.PathLike | None = None) -> Dataset:
    """Load split ``split`` ("train" or "test") of data set ``name`` (one of :data:`DATASETS`)
    from ``data_root(root)``; Fashion-MNIST falls back to Debian's folder when not under the root.

    Files expected in full (a full-size IDX header, ``batches.meta``) must match their published
    SHA-256, else DataError. Smaller files load as a subset (``identity["subset"]`` True). A
    fallback from an explicit ``root`` is reported to the :func:`on_fallback` listener, if any.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} of {name}: expected 'train' or 'test'")
    explicit = root is not None and os.fspath(root) != ""
    root = data_root(root)
    if name == "cifar10":
        return _load_cifar(root / cifar.DIRNAME, split, root)
    folder = _idx_folder(name, split, root)
    data = _load_idx(name, split, folder, root)
    listener = _FALLBACK_LISTENER.get()
    if explicit and folder != root / name and listener is not None:
        listener(f"{name}: not under {root}; using {folder} (Debian's dataset-fashion-mnist)")
    return data


def load_sample() -> Dataset:
    """The embedded sample: the first 1,000 MNIST test images (N = 1000, C = 1, H = W = 28)."""
    damaged = "the installation is damaged; reinstall rcenp"
    images, labels, paths, digests = _read_idx_pair(SAMPLE_DIR, "test", "mnist sample", damaged)
    for path, canonical, digest in zip(paths, IDX_FILES["test"], digests, strict=True):
        if digest != SAMPLE_SHA256[canonical]:
            raise DataError(f"{path}: SHA-256 {digest} is not the embedded sample's; {damaged}")
    identity = _identity("mnist", "test", len(labels), full=False, note=SAMPLE_NOTE,
                         sha256=dict(zip((p.name for p in paths), digests, strict=True)), source=SAMPLE_DIR)
    return Dataset(scale(images).reshape(-1, 1, 28, 28), labels, identity)


def find_test_split(name: str, root: str | os.PathLike | None = None, strict: bool = False):
    """(test ``Dataset``, note) for data set ``name``: from ``data_root(root)`` when it holds the
    data; else, for MNIST, the embedded sample (the note says why when a root was named); else
    (None, why not, with the ``rcenp data fetch`` hint).

    ``strict``: a root named by ``root`` or ``$RCENP_DATA`` must hold the data (DataError
    otherwise): a command asked for that folder must not quietly use the sample instead.
    """
    named = (root is not None and os.fspath(root) != "") or bool(os.environ.get("RCENP_DATA"))
    try:
        return load(name, "test", root), None
    except DataError as exc:
        if strict and named:
            raise
        if name == "mnist":
            return load_sample(), (f"no MNIST test set under the data root ({exc}); using the sample" if named else None)
        if "rcenp data fetch" in str(exc):  # the error already says how to get the data: once is enough
            return None, f"no {name} test data: {exc}"
        return None, (f"no {name} test data (set RCENP_DATA or --data-dir, or run `rcenp data fetch {name}`): {exc}")


def _identity(name: str, split: str, n: int, *, full: bool, note: str, sha256: dict, source: Path) -> dict:
    return {
        "name": name,
        "split": split,
        "n": int(n),
        "full": full,
        "subset": n < FULL_SIZE[name][split],
        "note": note,
        "sha256": sha256,
        "source": str(source),
    }


def fetch_hint(name: str, root: Path) -> str:
    """How to get data set ``name`` into data root ``root``: the command line, and from Python."""
    command = f"rcenp data fetch {name}"
    if root != data_root():
        command += f" --data-dir {shlex.quote(str(root))}"
    subfolder = cifar.DIRNAME if name == "cifar10" else name
    return (f"download it with `{command}` (rcenp.data.fetch.fetch({name!r}) in Python), "
            f"or point --data-dir or $RCENP_DATA at a data root that holds {subfolder}/")


def _why_not_a_folder(folder: Path) -> str:
    """'no such folder', or which part of the path is a file (a --data-dir given a file)."""
    for part in [folder, *folder.parents]:
        if part.exists() and not part.is_dir():
            return "a file" if part == folder else f"{part} is a file, not a folder"
    return "no such folder"


def _not_found(what: str, canonical: str, folders: list[Path], hint: str) -> DataError:
    """'<what>: no <file> in <folder>[ or <folder>] (looked for <names>); <hint>'."""
    where = " or ".join(str(f) if f.is_dir() else f"{f} ({_why_not_a_folder(f)})" for f in folders)
    return DataError(f"{what}: no {canonical} in {where} (looked for {names.variants(canonical)}); {hint}")


def _idx_folder(name: str, split: str, root: Path) -> Path:
    """The first folder that holds the split's image file: the root's, then (Fashion) Debian's."""
    folders = [root / name] + ([DEBIAN_FASHION_MNIST] if name == "fashion-mnist" else [])
    image_name = IDX_FILES[split][0]
    for folder in folders:
        if names.find(folder, image_name) is not None:
            return folder
    raise _not_found(f"{name} {split} images", image_name, folders, fetch_hint(name, root))


def _read_idx_pair(folder: Path, split: str, what: str, hint: str):
    """uint8 images (N, 28, 28), int64 labels (N,), the two paths and their SHA-256 digests.

    The paths are those found for ``IDX_FILES[split]``, in that order; ``what`` and ``hint`` word
    the error for a missing file.
    """
    paths = []
    for canonical, kind in zip(IDX_FILES[split], ("images", "labels"), strict=True):
        path = names.find(folder, canonical)
        if path is None:
            raise _not_found(f"{what} {split} {kind}", canonical, [folder], hint)
        paths.append(path)
    image_path, label_path = paths
    images, image_digest = idx.read(image_path, 3)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: images of {images.shape[1]}x{images.shape[2]} pixels, expected 28x28")
    labels, label_digest = idx.read(label_path, 1)
    if len(labels) != len(images):
        raise DataError(f"{label_path}: {len(labels):,} labels but {image_path.name} holds {len(images):,} images")
    check_labels(labels, label_path)
    return images, labels.astype(np.int64), paths, [image_digest, label_digest]


def _published_as(digest: str) -> str:
    """' (its content is the published <data set> <file>)' when ``digest`` is a known one, else ''."""
    for dataset, files in IDX_SHA256.items():
        for file_name, known in files.items():
            if known == digest:
                return f" (its content is the published {dataset} {file_name})"
    return ""


def _load_idx(name: str, split: str, folder: Path, root: Path) -> Dataset:
    images, labels, paths, digests = _read_idx_pair(folder, split, name, fetch_hint(name, root))
    n = len(labels)
    if n == 0:
        raise DataError(f"{paths[0]}: holds no images (its header counts 0)")
    full_n = FULL_SIZE[name][split]
    full = n == full_n
    sha256 = {}
    for path, canonical, digest in zip(paths, IDX_FILES[split], digests, strict=True):
        known = IDX_SHA256[name][canonical]
        if full and digest != known:
            raise DataError(
                f"{path}: header says the full {name} {split} set but the SHA-256 of its uncompressed "
                f"content is {digest}, not the published {known}{_published_as(digest)}"
            )
        sha256[path.name] = digest
    if full:
        note = f"complete {name} {split} set, published SHA-256 verified"
    else:
        note = f"{name} subset: {n:,} of {full_n:,} {split} images, not verifiable against published checksums"
    identity = _identity(name, split, n, full=full, note=note, sha256=sha256, source=folder)
    return Dataset(scale(images).reshape(n, 1, 28, 28), labels, identity)


def _load_cifar(folder: Path, split: str, root: Path) -> Dataset:
    hint = fetch_hint("cifar10", root)
    if not folder.is_dir():
        raise DataError(f"cifar10 {split}: no folder {folder}; {hint}")
    sha256: dict[str, str | None] = {}
    meta = names.find(folder, cifar.META)
    if meta is not None:
        digest = cifar.read_meta(meta)
        if digest != CIFAR_META_SHA256:
            raise DataError(f"{meta}: SHA-256 {digest} is not that of the published batches.meta")
        sha256[cifar.META] = digest
    batches = cifar.TRAIN_BATCHES if split == "train" else (cifar.TEST_BATCH,)
    rows, labels, verified = [], [], []
    for batch_name in batches:
        path = names.find(folder, batch_name)
        if path is None:
            raise _not_found(f"cifar10 {split}", batch_name, [folder], hint)
        data, batch_labels, digest = cifar.read_batch(path)
        check_labels(batch_labels, path)
        rows.append(data)
        labels.append(batch_labels)
        sha256[batch_name] = digest
        verified.append(digest == CIFAR_SUBSET_SHA256[batch_name])
    counts = [len(r) for r in rows]
    n = sum(counts)
    full_n = FULL_SIZE["cifar10"][split]
    full = all(c == cifar.ROWS_PER_BATCH for c in counts)
    if full:
        note = f"complete CIFAR-10 {split} set ({len(batches)} batch(es) of {cifar.ROWS_PER_BATCH:,})"
    elif all(verified):
        note = (f"CIFAR-10 subset: {n:,} of {full_n:,} {split} images, the first "
                f"{CIFAR_SUBSET_ROWS:,} of each published batch, SHA-256 verified")
    else:
        per_batch = ", ".join(f"{c:,}" for c in counts)
        note = f"CIFAR-10 subset: {n:,} of {full_n:,} {split} images (rows per batch: {per_batch}), not verified"
    identity = _identity("cifar10", split, n, full=full, note=note, sha256=sha256, source=folder)
    images = scale(np.concatenate(rows)).reshape(n, 3, 32, 32)
    return Dataset(images, np.concatenate(labels), identity)
