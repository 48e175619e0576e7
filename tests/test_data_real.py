"""The real data sets, when ``RCENP_DATA`` points at them (skipped otherwise)."""
from __future__ import annotations

import os
import pickletools
from pathlib import Path

import numpy as np
import pytest

from rcenp.data import checksums, datasets, load

ROOT = Path(os.environ["RCENP_DATA"]) if os.environ.get("RCENP_DATA") else None
pytestmark = pytest.mark.skipif(ROOT is None, reason="RCENP_DATA is not set")


def check_arrays(data, n, shape):
    assert data.images.shape == (n, *shape) and data.images.dtype == np.float32
    assert data.labels.shape == (n,) and data.labels.dtype == np.int64
    assert data.images.min() == -0.5 and data.images.max() == 0.5
    assert set(np.unique(data.labels).tolist()) == set(range(10))


@pytest.mark.parametrize("split,n", [("train", 60_000), ("test", 10_000)])
def test_full_mnist_verified(split, n, monkeypatch):
    monkeypatch.setattr(checksums, "_cache", {})  # a first load: the checksums are computed, not cached
    data = load("mnist", split, ROOT)
    check_arrays(data, n, (1, 28, 28))
    ident = data.identity
    assert ident["full"] is True and ident["subset"] is False and ident["n"] == n
    known = checksums.IDX_SHA256["mnist"]
    assert ident["sha256"] == {f"{name}.gz": known[name] for name in datasets.IDX_FILES[split]}


def test_mnist_first_test_labels():
    assert load("mnist", "test", ROOT).labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.mark.parametrize("split,n", [("train", 5_085), ("test", 1_017)])
def test_cifar_subset_recognised(split, n):
    data = load("cifar10", split, ROOT)
    check_arrays(data, n, (3, 32, 32))
    ident = data.identity
    assert ident["subset"] is True and ident["full"] is False and ident["n"] == n
    assert f"{n:,} of" in ident["note"] and "SUBSET" in data.describe()
    assert ident["sha256"]["batches.meta"] == checksums.CIFAR_META_SHA256
    assert all(v is not None for v in ident["sha256"].values())


def raw_rows(path: Path) -> np.ndarray:
    """The uint8 rows of a published batch, read from its pickle opcodes without unpickling."""
    payloads = [arg for op, arg, _ in pickletools.genops(path.read_bytes())
                if op.name == "BINSTRING" and len(arg) % 3072 == 0 and len(arg) > 3072]
    (payload,) = payloads
    return np.frombuffer(payload.encode("latin-1"), np.uint8).reshape(-1, 3072)


def test_cifar_pixels_match_the_file():
    data = load("cifar10", "test", ROOT)
    rows = raw_rows(ROOT / "cifar-10-batches-py" / "test_batch")
    expected = rows.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255) - np.float32(0.5)
    np.testing.assert_array_equal(data.images, expected)


def fashion_available() -> bool:
    return any((d / "t10k-images-idx3-ubyte.gz").is_file()
               for d in (ROOT / "fashion-mnist" if ROOT else Path("/nonexistent"), datasets.DEBIAN_FASHION_MNIST))


@pytest.mark.skipif(not fashion_available(), reason="Fashion-MNIST is not installed")
def test_fashion_mnist_verified():
    data = load("fashion-mnist", "test", ROOT)
    check_arrays(data, 10_000, (1, 28, 28))
    assert data.identity["full"] is True


def test_full_mnist_under_dotted_uncompressed_names(tmp_path):
    """The published test files gunzipped under 7-Zip's dotted names: verified as the full set."""
    import gzip

    (tmp_path / "mnist").mkdir()
    for name in datasets.IDX_FILES["test"]:
        plain = gzip.decompress((ROOT / "mnist" / f"{name}.gz").read_bytes())
        (tmp_path / "mnist" / name.replace("-idx", ".idx")).write_bytes(plain)
    data = load("mnist", "test", tmp_path)
    assert data.identity["full"] is True and "SHA-256 verified" in data.identity["note"]
    np.testing.assert_array_equal(data.images, load("mnist", "test", ROOT).images)
