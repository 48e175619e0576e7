"""CIFAR-10 batches: loading, subset/full recognition, the restricted unpickler, failure modes."""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from rcenp.data import DataError, checksums, cifar, datasets, load

DIR = "cifar-10-batches-py"


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as cPickle wrote the published batches."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def batch_bytes(rows: np.ndarray, labels, py2: bool = False, **extra) -> bytes:
    batch = {b"batch_label": b"testing batch", b"labels": list(labels), b"data": rows, **extra}
    if py2:
        import io

        out = io.BytesIO()
        Py2Pickler(out, protocol=2).dump(batch)
        return out.getvalue()
    return pickle.dumps(batch, protocol=2)


def write_batch(folder: Path, name: str, n: int, seed: int = 0, py2: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(batch_bytes(images.reshape(n, 3072), labels.tolist(), py2))
    return images, labels


def write_split(root: Path, counts=(3, 5, 1, 4, 2), test=6) -> tuple[np.ndarray, np.ndarray]:
    parts = [write_batch(root / DIR, f"data_batch_{i + 1}", c, seed=i) for i, c in enumerate(counts)]
    write_batch(root / DIR, "test_batch", test, seed=99)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def error_of(call, path: Path) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and path.name in message, message
    return message


def scaled(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / np.float32(255) - np.float32(0.5)


def test_load_variable_row_counts(tmp_path):
    images, labels = write_split(tmp_path)
    data = load("cifar10", "train", tmp_path)
    assert data.images.shape == (15, 3, 32, 32) and data.images.dtype == np.float32
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.images, scaled(images))
    np.testing.assert_array_equal(data.labels, labels)
    ident = data.identity
    assert ident["n"] == 15 and ident["subset"] is True and ident["full"] is False
    assert "15 of 50,000" in ident["note"] and "3, 5, 1, 4, 2" in ident["note"]
    assert "not verified" in ident["note"]
    batch_files = {f"data_batch_{i}": tmp_path / DIR / f"data_batch_{i}" for i in range(1, 6)}
    assert ident["sha256"] == {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in batch_files.items()}
    json.dumps(ident)
    test = load("cifar10", "test", tmp_path)
    assert len(test) == 6 and test.identity["subset"] is True


def test_row_layout_is_red_green_blue_row_major(tmp_path):
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.arange(1024) % 256]).astype(np.uint8)
    (tmp_path / DIR).mkdir()
    (tmp_path / DIR / "test_batch").write_bytes(batch_bytes(row[None], [3]))
    image = load("cifar10", "test", tmp_path).images[0]
    assert np.all(image[0] == scaled(np.uint8(10))) and np.all(image[1] == scaled(np.uint8(20)))
    assert image[2, 0, 1] == scaled(np.uint8(1)) and image[2, 1, 0] == scaled(np.uint8(32))


def test_python2_style_pickle_and_numpy1_global_name(tmp_path):
    rows = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    content = batch_bytes(rows, [1, 2], py2=True)
    assert b"_codecs" not in content and pickle.SHORT_BINSTRING in content
    content = content.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    (tmp_path / DIR).mkdir()
    (tmp_path / DIR / "test_batch").write_bytes(content)
    data = load("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(data.images.reshape(2, 3072), scaled(rows))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_protocols(tmp_path, protocol):
    rows = np.random.default_rng(1).integers(0, 256, (4, 3072), dtype=np.uint8)
    (tmp_path / DIR).mkdir()
    content = pickle.dumps({b"data": rows, b"labels": [0, 1, 2, 3]}, protocol=protocol)
    (tmp_path / DIR / "test_batch").write_bytes(content)
    np.testing.assert_array_equal(load("cifar10", "test", tmp_path).images.reshape(4, 3072), scaled(rows))


def test_str_keys_accepted(tmp_path):
    (tmp_path / DIR).mkdir()
    rows = np.zeros((2, 3072), np.uint8)
    (tmp_path / DIR / "test_batch").write_bytes(pickle.dumps({"data": rows, "labels": [0, 9]}, protocol=2))
    assert load("cifar10", "test", tmp_path).labels.tolist() == [0, 9]


def test_full_size_test_batch_is_full(tmp_path):
    (tmp_path / DIR).mkdir()
    rows = np.zeros((10_000, 3072), np.uint8)
    (tmp_path / DIR / "test_batch").write_bytes(pickle.dumps({b"data": rows, b"labels": [0] * 10_000}, protocol=2))
    data = load("cifar10", "test", tmp_path)
    assert data.identity["full"] is True and data.identity["subset"] is False and data.identity["n"] == 10_000
    assert "complete" in data.describe() and "full" in data.describe()


def test_full_train_set_needs_every_batch_full(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 4)
    monkeypatch.setitem(datasets.FULL_SIZE["cifar10"], "train", 20)
    write_split(tmp_path, counts=(4, 4, 4, 4, 4))
    assert load("cifar10", "train", tmp_path).identity["full"] is True
    write_split(tmp_path, counts=(4, 4, 4, 4, 3))
    ident = load("cifar10", "train", tmp_path).identity
    assert ident["full"] is False and ident["subset"] is True and ident["n"] == 19


def test_meta_verified_when_present(tmp_path):
    write_split(tmp_path)
    meta = tmp_path / DIR / "batches.meta"
    meta.write_bytes(b"not the published meta")
    assert "batches.meta" in error_of(lambda: load("cifar10", "test", tmp_path), meta)


def test_known_subset_recognised_by_digest(tmp_path, monkeypatch):
    write_split(tmp_path)
    digest = checksums.hashlib.sha256((tmp_path / DIR / "test_batch").read_bytes()).hexdigest()
    monkeypatch.setitem(checksums.CIFAR_SUBSET_SHA256, "test_batch", digest)
    ident = load("cifar10", "test", tmp_path).identity
    assert ident["sha256"]["test_batch"] == digest and "SHA-256 verified" in ident["note"]


def test_missing_folder_and_batch(tmp_path):
    error_of(lambda: load("cifar10", "train", tmp_path), tmp_path / DIR)
    write_split(tmp_path)
    (tmp_path / DIR / "data_batch_3").unlink()
    error_of(lambda: load("cifar10", "train", tmp_path), tmp_path / DIR / "data_batch_3")


def bad_batch(tmp_path: Path, content: bytes) -> Path:
    (tmp_path / DIR).mkdir(exist_ok=True)
    path = tmp_path / DIR / "test_batch"
    path.write_bytes(content)
    return path


ROWS = np.zeros((3, 3072), np.uint8)


@pytest.mark.parametrize(
    "content,words",
    [
        (batch_bytes(np.zeros((3, 3071), np.uint8), [0, 1, 2]), "rows of 3071 values"),
        (batch_bytes(ROWS, [0, 1]), "2 labels for 3 images"),
        (batch_bytes(ROWS, [0, 1, 10]), "label 10 at index 2"),
        (batch_bytes(ROWS, [0, -1, 2]), "label -1 at index 1"),
        (batch_bytes(ROWS, ["a", "b", "c"]), "'labels'"),
        (batch_bytes(ROWS, [[0], [1, 2], 3]), "'labels'"),
        (batch_bytes(ROWS.astype(np.float32), [0, 1, 2]), "float32"),
        (batch_bytes(ROWS.reshape(3, 3, 1024), [0, 1, 2]), "(3, 3, 1024)"),
        (pickle.dumps({b"data": [[0] * 3072], b"labels": [0]}, protocol=2), "'data' is a list"),
        (pickle.dumps({b"data": ROWS}, protocol=2), "no 'labels'"),
        (pickle.dumps([ROWS, [0, 1, 2]], protocol=2), "not a CIFAR-10 batch dict"),
        (batch_bytes(ROWS, [0, 1, 2])[:-50], "not a readable pickle"),
        (b"", "not a readable pickle"),
    ],
)
def test_bad_batches(tmp_path, content, words):
    path = bad_batch(tmp_path, content)
    assert words in error_of(lambda: load("cifar10", "test", tmp_path), path)


class Evil:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("nested", [False, True])
def test_malicious_pickle_refused_never_run(tmp_path, protocol, nested):
    marker = tmp_path / "marker"
    payload = Evil(marker)
    obj = {b"data": ROWS, b"labels": [0, 1, 2], b"filenames": [b"a", payload, b"c"]} if nested else payload
    path = bad_batch(tmp_path, pickle.dumps(obj, protocol=protocol))
    message = error_of(lambda: load("cifar10", "test", tmp_path), path)
    assert f"refused pickle global {os.system.__module__}.system" in message
    assert not marker.exists()


class NotLatin1:
    def __reduce__(self):
        return (codecs.encode, ("abc", "rot13"))


def test_codecs_encode_only_for_latin1(tmp_path):
    path = bad_batch(tmp_path, pickle.dumps({b"data": NotLatin1()}, protocol=2))
    assert "_codecs.encode with encoding 'rot13'" in error_of(lambda: load("cifar10", "test", tmp_path), path)


def test_unpickler_admits_only_the_array_globals():
    names = {f"{m}.{n}" for m, n in cifar.BatchUnpickler.ALLOWED}
    assert names == {
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer",
        "_codecs.encode",
    }


def test_variant_batch_names_load(tmp_path):
    """Batches renamed with .pkl / .pickle or in upper case load as the canonical ones would."""
    images, labels = write_split(tmp_path)
    test_images, _ = write_batch(tmp_path / DIR, "test_batch", 6, seed=99)
    folder = tmp_path / DIR
    for i, suffix in enumerate([".pkl", ".pickle", "", ".PKL", ""]):
        name = f"data_batch_{i + 1}"
        (folder / name).rename(folder / ((name.upper() if i == 2 else name) + suffix))
    (folder / "test_batch").rename(folder / "Test_Batch.pkl")
    train = load("cifar10", "train", tmp_path)
    np.testing.assert_array_equal(train.images, scaled(images))
    np.testing.assert_array_equal(train.labels, labels)
    assert sorted(train.identity["sha256"]) == [f"data_batch_{i}" for i in range(1, 6)]
    np.testing.assert_array_equal(load("cifar10", "test", tmp_path).images, scaled(test_images))


def test_missing_batch_message_lists_names_and_fetch_command(tmp_path):
    write_split(tmp_path)
    (tmp_path / DIR / "data_batch_4").rename(tmp_path / DIR / "data_batch_4.npy")
    message = error_of(lambda: load("cifar10", "train", tmp_path), tmp_path / DIR / "data_batch_4")
    assert "data_batch_4.pkl or data_batch_4.pickle" in message and "rcenp data fetch cifar10" in message
    message = error_of(lambda: load("cifar10", "test", tmp_path / "elsewhere"), tmp_path / "elsewhere" / DIR)
    assert f"rcenp data fetch cifar10 --data-dir {tmp_path / 'elsewhere'}" in message
