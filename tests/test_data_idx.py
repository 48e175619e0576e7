"""IDX loading (MNIST, Fashion-MNIST) on small files written here, and its failure modes."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from rcenp.data import DATASETS, DataError, Dataset, checksums, data_root, datasets, idx, load, names

TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write(path: Path, content: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content, mtime=0)
    path.write_bytes(content)
    return path


def write_pair(folder: Path, images: np.ndarray, labels: np.ndarray, names=TEST, gz=True) -> tuple[Path, Path]:
    return (write(folder / names[0], idx.encode(images), gz), write(folder / names[1], idx.encode(labels), gz))


def tiny(n=7, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def error_of(call, path: Path) -> str:
    """Run ``call``; it must raise DataError with one line naming ``path``."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message, message
    return message


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split,names", [("train", TRAIN), ("test", TEST)])
def test_load_small_mnist(tmp_path, gz, split, names):
    raw, raw_labels = tiny(7)
    write_pair(tmp_path / "mnist", raw, raw_labels, names, gz)
    data = load("mnist", split, tmp_path)
    assert isinstance(data, Dataset) and len(data) == 7
    assert data.images.shape == (7, 1, 28, 28) and data.images.dtype == np.float32
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, raw_labels)
    expected = raw.astype(np.float32)[:, None] / np.float32(255) - np.float32(0.5)
    np.testing.assert_array_equal(data.images, expected)
    ident = data.identity
    assert ident["name"] == "mnist" and ident["split"] == split and ident["n"] == 7
    assert ident["subset"] is True and ident["full"] is False
    for file_name, digest in ident["sha256"].items():  # a subset: recorded, not verifiable
        content = (tmp_path / "mnist" / file_name).read_bytes()
        assert digest == hashlib.sha256(gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content).hexdigest()
    assert "not verifiable" in ident["note"]
    assert ident["source"] == str(tmp_path / "mnist")
    json.dumps(ident)
    assert "SUBSET" in data.describe()


def test_gz_preferred_over_plain(tmp_path):
    raw, labels = tiny(3)
    write_pair(tmp_path / "mnist", raw, labels, gz=True)
    write_pair(tmp_path / "mnist", raw[:2], labels[:2], gz=False)
    assert len(load("mnist", "test", tmp_path)) == 3


def test_scale_exact_endpoints():
    raw = np.arange(256, dtype=np.uint8)
    out = datasets.scale(raw)
    assert out.dtype == np.float32
    assert out[0] == -0.5 and out[255] == 0.5 and out[51] == np.float32(51) / np.float32(255) - np.float32(0.5)
    assert np.all(np.diff(out) > 0)


def test_fashion_mnist_falls_back_to_debian_folder(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    raw, labels = tiny(4)
    write_pair(debian, raw, labels)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", debian)
    data = load("fashion-mnist", "test", tmp_path / "root")
    assert data.identity["source"] == str(debian) and data.identity["name"] == "fashion-mnist"
    own = tmp_path / "root" / "fashion-mnist"
    write_pair(own, raw[:2], labels[:2])
    assert load("fashion-mnist", "test", tmp_path / "root").identity["source"] == str(own)


def test_full_size_header_with_wrong_hash_is_refused(tmp_path):
    images = np.zeros((10_000, 28, 28), np.uint8)
    labels = np.zeros(10_000, np.uint8)
    image_path, _ = write_pair(tmp_path / "mnist", images, labels)
    message = error_of(lambda: load("mnist", "test", tmp_path), image_path)
    assert "SHA-256" in message and checksums.IDX_SHA256["mnist"]["t10k-images-idx3-ubyte"] in message


def test_missing_files(tmp_path):
    error_of(lambda: load("mnist", "train", tmp_path), tmp_path / "mnist" / TRAIN[0])
    raw, labels = tiny(3)
    write(tmp_path / "mnist" / TEST[0], idx.encode(raw), gz=True)
    error_of(lambda: load("mnist", "test", tmp_path), tmp_path / "mnist" / TEST[1])


def test_missing_fashion_names_both_places(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    message = error_of(lambda: load("fashion-mnist", "test", tmp_path), tmp_path / "nowhere")
    assert str(tmp_path / "fashion-mnist") in message


def test_truncated_gzip(tmp_path):
    raw, labels = tiny(5)
    image_path, _ = write_pair(tmp_path / "mnist", raw, labels)
    image_path.write_bytes(image_path.read_bytes()[:-100])
    assert "gzip" in error_of(lambda: load("mnist", "test", tmp_path), image_path)


def test_not_gzip_at_all(tmp_path):
    raw, labels = tiny(5)
    _, label_path = write_pair(tmp_path / "mnist", raw, labels)
    label_path.write_bytes(b"this is not gzip")
    error_of(lambda: load("mnist", "test", tmp_path), label_path)


@pytest.mark.parametrize("which", [0, 1])
def test_wrong_magic(tmp_path, which):
    raw, labels = tiny(5)
    contents = [bytearray(idx.encode(raw)), bytearray(idx.encode(labels))]
    contents[which][3] ^= 0x02  # 0x803 <-> 0x801
    paths = [write(tmp_path / "mnist" / name, bytes(c), gz=False) for name, c in zip(TEST, contents, strict=True)]
    assert "magic" in error_of(lambda: load("mnist", "test", tmp_path), paths[which])


@pytest.mark.parametrize("cut", [1, 500])
def test_header_disagrees_with_size(tmp_path, cut):
    raw, labels = tiny(5)
    content = idx.encode(raw)
    image_path = write(tmp_path / "mnist" / TEST[0], content[:-cut], gz=True)
    write(tmp_path / "mnist" / TEST[1], idx.encode(labels), gz=True)
    assert "header says 5x28x28" in error_of(lambda: load("mnist", "test", tmp_path), image_path)


def test_extra_bytes_after_data(tmp_path):
    raw, labels = tiny(5)
    _, label_path = write_pair(tmp_path / "mnist", raw, labels)
    label_path.write_bytes(gzip.compress(idx.encode(labels) + b"\0"))
    error_of(lambda: load("mnist", "test", tmp_path), label_path)


@pytest.mark.parametrize("content", [b"", b"\0\0\x08", b"\0\0\x08\x03\0\0"])
def test_too_short_for_header(tmp_path, content):
    raw, labels = tiny(2)
    _, label_path = write_pair(tmp_path / "mnist", raw, labels)
    image_path = write(tmp_path / "mnist" / TEST[0], content, gz=True)
    error_of(lambda: load("mnist", "test", tmp_path), image_path)


def test_wrong_image_size(tmp_path):
    image_path, _ = write_pair(tmp_path / "mnist", np.zeros((3, 32, 32), np.uint8), np.zeros(3, np.uint8))
    assert "28x28" in error_of(lambda: load("mnist", "test", tmp_path), image_path)


def test_label_out_of_range(tmp_path):
    raw, labels = tiny(6)
    labels[4] = 10
    _, label_path = write_pair(tmp_path / "mnist", raw, labels)
    assert "label 10 at index 4" in error_of(lambda: load("mnist", "test", tmp_path), label_path)


def test_count_mismatch(tmp_path):
    raw, labels = tiny(6)
    _, label_path = write_pair(tmp_path / "mnist", raw, labels[:5])
    assert "5 labels" in error_of(lambda: load("mnist", "test", tmp_path), label_path)


def test_unknown_name_or_split(tmp_path):
    with pytest.raises(DataError, match="svhn"):
        load("svhn", "train", tmp_path)
    with pytest.raises(DataError, match="valid"):
        load("mnist", "valid", tmp_path)
    assert DATASETS == ("mnist", "fashion-mnist", "cifar10")


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("RCENP_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root(tmp_path / "cli") == tmp_path / "cli"
    assert data_root(str(tmp_path / "cli")) == tmp_path / "cli"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("RCENP_DATA")
    assert data_root() == tmp_path / "xdg" / "rcenp"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "rcenp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_root() == tmp_path / "home" / ".cache" / "rcenp"


def test_hash_computed_once_per_file_version(tmp_path, monkeypatch):
    calls = []
    real = checksums.hashlib.sha256
    monkeypatch.setattr(checksums.hashlib, "sha256", lambda data: calls.append(1) or real(data))
    raw, labels = tiny(4)
    image_path, _ = write_pair(tmp_path / "mnist", raw, labels)
    load("mnist", "test", tmp_path)
    load("mnist", "test", tmp_path)
    assert len(calls) == 2  # images and labels, once each
    write(tmp_path / "mnist" / TEST[0], idx.encode(raw[:3]), gz=True)
    os.utime(image_path, ns=(1, 1))  # a different mtime whatever the clock resolution
    with pytest.raises(DataError):  # 3 images, 4 labels: the new file was read and hashed
        load("mnist", "test", tmp_path)
    assert len(calls) == 3


def test_encode_parse_round_trip():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    content = idx.encode(array)
    assert content[:4] == b"\x00\x00\x08\x03" and content[4:16] == b"\0\0\0\x02\0\0\0\x03\0\0\0\x04"
    np.testing.assert_array_equal(idx.parse(content, 3, Path("x")), array)
    with pytest.raises(ValueError):
        idx.encode(array.astype(np.int16))


def test_public_api_and_frozen_dataset():
    import dataclasses

    import rcenp.data

    assert set(rcenp.data.__all__) == {
        "DATASETS", "BatchStream", "DataError", "Dataset", "augment_cifar", "data_root", "find_test_split", "load", "load_sample",
        "read_image", "write_png16",
    }
    assert issubclass(DataError, Exception)
    data = Dataset(np.zeros((1, 1, 28, 28), np.float32), np.zeros(1, np.int64), {"n": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.labels = np.ones(1, np.int64)
    assert "array" not in repr(data)


# ---- the names a file goes by (rcenp.data.names) and the messages for a missing set ----

DOTTED = ("t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte")


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("file_names", [DOTTED, tuple(n.upper() for n in DOTTED), tuple(n.upper() for n in TEST)],
                         ids=["dotted", "DOTTED", "UPPER"])
def test_variant_names_load(tmp_path, gz, file_names):
    raw, raw_labels = tiny(6)
    image_path, label_path = write_pair(tmp_path / "mnist", raw, raw_labels, file_names, gz)
    data = load("mnist", "test", tmp_path)
    np.testing.assert_array_equal(data.images, datasets.scale(raw)[:, None])
    np.testing.assert_array_equal(data.labels, raw_labels)
    assert set(data.identity["sha256"]) == {image_path.name, label_path.name}


@pytest.mark.parametrize("gz_content", [True, False])
def test_compression_read_from_the_content_not_the_name(tmp_path, gz_content):
    """A .gz name over plain bytes (a browser undid the compression) and gzip bytes without .gz."""
    raw, raw_labels = tiny(4)
    folder = tmp_path / "mnist"
    for name, array in zip(DOTTED, (raw, raw_labels), strict=True):
        path = write(folder / name, idx.encode(array), gz=gz_content)
        path.rename(folder / (name if gz_content else name + ".gz"))
    data = load("mnist", "test", tmp_path)
    np.testing.assert_array_equal(data.labels, raw_labels)
    np.testing.assert_array_equal(data.images, datasets.scale(raw)[:, None])


def test_canonical_name_preferred_over_variants(tmp_path):
    folder = tmp_path / "mnist"
    raw, labels = tiny(5)
    write_pair(folder, raw[:1], labels[:1], DOTTED, gz=True)
    write_pair(folder, raw[:2], labels[:2], tuple(n.upper() for n in TEST), gz=False)
    write_pair(folder, raw[:3], labels[:3], DOTTED, gz=False)
    assert [p.name for p in names.candidates(folder, TEST[0])] == [
        "t10k-images.idx3-ubyte.gz", "T10K-IMAGES-IDX3-UBYTE", "t10k-images.idx3-ubyte"]
    assert len(load("mnist", "test", tmp_path)) == 1
    write_pair(folder, raw[:4], labels[:4], TEST, gz=False)
    assert len(load("mnist", "test", tmp_path)) == 4
    write_pair(folder, raw, labels, TEST, gz=True)
    assert len(load("mnist", "test", tmp_path)) == 5


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte.gz.part", "xt10k-images-idx3-ubyte", "t10k-images_idx3-ubyte",
                                  "t10k-images-idx3-ubyte.zip", "t10k-labels-idx1-ubyte", "t10k-images-idx1-ubyte"])
def test_other_names_are_not_taken(tmp_path, name):
    write(tmp_path / name, idx.encode(tiny(1)[0]), gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").mkdir()  # a folder with the right name is no file
    assert names.find(tmp_path, TEST[0]) is None


def test_wrong_content_under_a_right_name_is_refused(tmp_path):
    raw, labels = tiny(3)
    image_path, _ = write_pair(tmp_path / "mnist", labels, labels, DOTTED, gz=False)  # labels as images
    assert "wrong magic number 0x00000801" in error_of(lambda: load("mnist", "test", tmp_path), image_path)
    image_path.write_bytes(b"<!DOCTYPE html><html><body>Not Found</body></html>")
    assert "web page" in error_of(lambda: load("mnist", "test", tmp_path), image_path)


def test_full_size_file_of_another_data_set_is_named(tmp_path, monkeypatch):
    """Fashion-MNIST's test images under MNIST's dotted name: refused, and said what they are."""
    raw, labels = tiny(4)
    image_path, label_path = write_pair(tmp_path / "mnist", raw, labels, DOTTED, gz=False)
    monkeypatch.setitem(datasets.FULL_SIZE["mnist"], "test", 4)  # make 4 images "the full set"
    fashion = checksums.IDX_SHA256["fashion-mnist"]
    monkeypatch.setitem(fashion, TEST[0], hashlib.sha256(idx.encode(raw)).hexdigest())
    message = error_of(lambda: load("mnist", "test", tmp_path), image_path)
    assert "not the published" in message and "its content is the published fashion-mnist t10k-images-idx3-ubyte" in message


def test_missing_set_says_what_was_looked_for_where_and_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("RCENP_DATA", str(tmp_path))
    with pytest.raises(DataError) as info:
        load("mnist", "test")
    message = str(info.value)
    assert message == (
        f"mnist test images: no t10k-images-idx3-ubyte in {tmp_path / 'mnist'} (no such folder) (looked for "
        "t10k-images-idx3-ubyte or t10k-images.idx3-ubyte, with or without .gz, in any letter case); download "
        "it with `rcenp data fetch mnist` (rcenp.data.fetch.fetch('mnist') in Python), or point --data-dir or "
        "$RCENP_DATA at a data root that holds mnist/")
    for given, why in [(tmp_path / "a file", f"{tmp_path / 'a file'} is a file, not a folder")]:
        given.write_text("not a data root")   # --data-dir given a file: said so, not 'no such folder'
        assert f"no t10k-images-idx3-ubyte in {given / 'mnist'} ({why}) (looked for" in \
            str(pytest.raises(DataError, load, "mnist", "test", given).value)
    (tmp_path / "root" / "mnist").parent.mkdir()
    (tmp_path / "root" / "mnist").write_text("a file where the folder should be")
    assert f"in {tmp_path / 'root' / 'mnist'} (a file) (looked for" in \
        str(pytest.raises(DataError, load, "mnist", "test", tmp_path / "root").value)
    elsewhere = tmp_path / "my data"
    write(elsewhere / "mnist" / DOTTED[0], idx.encode(tiny(2)[0]), gz=True)
    message = error_of(lambda: load("mnist", "test", elsewhere), elsewhere / "mnist" / TEST[1])
    assert f"test labels: no t10k-labels-idx1-ubyte in {elsewhere / 'mnist'} (looked for" in message
    assert "t10k-labels.idx1-ubyte" in message
    assert f"`rcenp data fetch mnist --data-dir '{elsewhere}'`" in message


def test_cli_missing_data_is_one_error_line(tmp_path, capsys):
    from rcenp.cli import main

    assert main(["eval", "mnist-resnet32-ce", "--data-dir", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rcenp eval: error: mnist test images: no t10k-images-idx3-ubyte")
    assert f"rcenp data fetch mnist --data-dir {tmp_path}" in err


def test_a_file_of_no_images_is_a_data_error_not_a_division_by_zero(tmp_path):
    images, labels = tiny(0)
    write_pair(tmp_path / "mnist", images, labels)
    with pytest.raises(DataError, match="holds no images"):
        load("mnist", "test", tmp_path)
