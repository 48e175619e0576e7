"""CIFAR-10 "python version" batches, read with a restricted unpickler.

A batch file (``data_batch_1`` ... ``data_batch_5``, ``test_batch``) is a pickled dict (protocol 2,
written by Python 2) with bytes keys: ``b"data"``, a uint8 array of shape (N, 3072) whose rows hold
1024 red, then 1024 green, then 1024 blue values of a 32x32 image in row-major order; ``b"labels"``,
a list of N ints in 0..9; ``b"batch_label"`` and (in the published files) ``b"filenames"``.

Unpickling can run arbitrary code, so :class:`BatchUnpickler` admits only the globals a batch needs.
This is the only place in rcenp that unpickles anything.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .checksums import file_key, sha256_of
from .errors import DataError

try:  # NumPy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

DIRNAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
ROWS_PER_BATCH = 10_000  # in the published files
ROW_WIDTH = 3 * 32 * 32


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` restricted to what Python 3 writes for a bytes object at protocol <= 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a global that a CIFAR-10 batch does not need."""


class BatchUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only NumPy's array-reconstruction globals.

    Dicts, lists, strings, bytes and ints are built by plain opcodes and need no global. NumPy
    arrays need ``_reconstruct`` (under its NumPy 1 or NumPy 2 module name), ``ndarray`` and
    ``dtype``, as the published files do. A batch re-pickled by Python 3 needs at protocol 2
    ``_codecs.encode`` for its bytes (admitted for latin-1 only), at protocol 5 NumPy's
    ``_frombuffer``. Any other global raises before anything is called.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def unpickle(path: Path, content: bytes) -> object:
    """Unpickle ``content`` (the bytes of ``path``) with :class:`BatchUnpickler`."""
    try:
        return BatchUnpickler(io.BytesIO(content), encoding="bytes").load()
    except _Refused as exc:
        raise DataError(f"{path}: refused pickle global {exc} (a CIFAR-10 batch needs only NumPy arrays)") from None
    except Exception as exc:  # noqa: BLE001 - a malformed pickle can fail in many ways
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {_one_line(exc)})") from exc


def _item(batch: dict, key: str, path: Path) -> object:
    for k in (key.encode(), key):  # bytes keys as published; str keys if re-pickled by Python 3
        if k in batch:
            return batch[k]
    raise DataError(f"{path}: CIFAR-10 batch has no {key!r} entry")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Read one batch: (uint8 rows (N, 3072), int64 labels (N,), SHA-256 of the file).

    Labels are not range-checked here. Raises DataError naming ``path`` if the file is missing,
    refused, or not shaped like a CIFAR-10 batch.
    """
    try:
        key = file_key(path)
        content = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    batch = unpickle(path, content)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: pickle holds a {type(batch).__name__}, not a CIFAR-10 batch dict")
    data = _item(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is a {desc}, expected a uint8 array of shape (N, {ROW_WIDTH})")
    if data.shape[1] != ROW_WIDTH:
        raise DataError(f"{path}: rows of {data.shape[1]} values, expected {ROW_WIDTH} (32x32 red, green, blue)")
    try:
        labels = np.asarray(_item(batch, "labels", path))
    except (ValueError, TypeError) as exc:  # e.g. a ragged list
        raise DataError(f"{path}: 'labels' is not a flat list of ints ({_one_line(exc)})") from exc
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' is not a flat list of ints ({labels.dtype}, shape {labels.shape})")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels):,} labels for {len(data):,} images")
    return data, labels.astype(np.int64), sha256_of(key, content)


def read_meta(path: Path) -> str:
    """SHA-256 of ``batches.meta`` (the file is verified by digest, never unpickled)."""
    try:
        key = file_key(path)
        content = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return sha256_of(key, content)
