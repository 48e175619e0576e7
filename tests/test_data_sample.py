"""The embedded 1,000-image MNIST sample and the script that makes it."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from rcenp.data import DataError, checksums, datasets, load, load_sample, make_sample

ROOT = Path(os.environ["RCENP_DATA"]) if os.environ.get("RCENP_DATA") else None
needs_data = pytest.mark.skipif(ROOT is None, reason="RCENP_DATA is not set")


def test_sample_loads_and_is_labelled_as_a_subset():
    data = load_sample()
    assert data.images.shape == (1000, 1, 28, 28) and data.images.dtype == np.float32
    assert data.labels.shape == (1000,) and data.labels.dtype == np.int64
    assert data.images.min() == -0.5 and data.images.max() == 0.5
    ident = data.identity
    expected = {"name": "mnist", "split": "test", "n": 1000, "subset": True,
                "note": "embedded sample: first 1,000 MNIST test images"}
    assert {k: ident[k] for k in expected} == expected and ident["full"] is False
    assert ident["sha256"] == {f"{k}.gz": v for k, v in checksums.SAMPLE_SHA256.items()}
    json.dumps(ident)


def test_sample_files_are_canonical_idx():
    for name, count in zip(datasets.IDX_FILES["test"], (1000, 1000), strict=True):
        content = gzip.decompress((datasets.SAMPLE_DIR / f"{name}.gz").read_bytes())
        assert int.from_bytes(content[4:8], "big") == count
        assert hashlib.sha256(content).hexdigest() == checksums.SAMPLE_SHA256[name]


def test_damaged_sample_refused(tmp_path, monkeypatch):
    for name in datasets.IDX_FILES["test"]:
        (tmp_path / f"{name}.gz").write_bytes((datasets.SAMPLE_DIR / f"{name}.gz").read_bytes())
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[-1] = (content[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(content)))
    monkeypatch.setattr(datasets, "SAMPLE_DIR", tmp_path)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: SHA-256"):
        load_sample()


@needs_data
def test_sample_is_the_first_thousand_test_images():
    full, sample = load("mnist", "test", ROOT), load_sample()
    np.testing.assert_array_equal(sample.images, full.images[:1000])
    np.testing.assert_array_equal(sample.labels, full.labels[:1000])


@needs_data
def test_make_sample_reproduces_the_sample(tmp_path, capsys):
    assert make_sample.main([str(ROOT / "mnist"), str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name, digest in checksums.SAMPLE_SHA256.items():
        assert f"{name}: {digest}" in printed
        made = tmp_path / f"{name}.gz"
        assert gzip.decompress(made.read_bytes()) == gzip.decompress((datasets.SAMPLE_DIR / made.name).read_bytes())
        assert made.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.gz" for n in checksums.SAMPLE_SHA256)


def test_make_sample_needs_the_published_files(tmp_path):
    with pytest.raises(DataError, match="missing"):
        make_sample.build(tmp_path, tmp_path / "out")
