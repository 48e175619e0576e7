"""Downloads against an HTTP server on the loopback address (nothing else is contacted)."""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rcenp.data import DataError, cifar, idx, load
from rcenp.data.fetch import CIFAR_MEMBERS, CIFAR_TARBALL, MIRRORS, fetch

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SHARED = Path(os.environ["RCENP_DATA"]) if os.environ.get("RCENP_DATA") else None


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, served, log, **kwargs):
        self.log = log
        super().__init__(*args, directory=str(served), **kwargs)

    def do_GET(self):
        self.log.append(self.path)
        if self.path.startswith("/short/"):  # promises more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """An HTTP server on 127.0.0.1 (a free port) serving ``folder``, in a thread."""
    log: list[str] = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, served=folder, log=log))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(dir=folder, url=f"http://127.0.0.1:{httpd.server_port}/", log=log)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server(tmp_path):
    (tmp_path / "served").mkdir()
    with serve(tmp_path / "served") as running:
        yield running


def fake_mnist(folder: Path, n=5) -> dict[str, str]:
    """Serve four small IDX files; return their uncompressed SHA-256 by name."""
    rng = np.random.default_rng(n)
    arrays = [rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)] * 2
    digests = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(NAMES, arrays, strict=True):
        content = idx.encode(array)
        (folder / f"{name}.gz").write_bytes(gzip.compress(content))
        digests[name] = hashlib.sha256(content).hexdigest()
    return digests


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_idx_and_skip_when_present(server, tmp_path):
    digests = fake_mnist(server.dir)
    seen = []
    paths = fetch("mnist", tmp_path / "root", [server.url], lambda *a: seen.append(a), checksums=digests)
    assert paths == [tmp_path / "root" / "mnist" / f"{n}.gz" for n in NAMES]
    for path in paths:
        assert path.read_bytes() == (server.dir / path.name).read_bytes()
    assert leftovers(tmp_path / "root" / "mnist") == sorted(p.name for p in paths)
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in paths)
    assert len(load("mnist", "test", tmp_path / "root")) == 5
    assert seen[-1][0] == f"{NAMES[-1]}.gz" and seen[-1][1] == seen[-1][2] > 0
    assert len(server.log) == 4
    assert fetch("mnist", tmp_path / "root", [server.url], checksums=digests) == paths
    assert len(server.log) == 4  # nothing downloaded again


def test_present_variant_names_are_kept(server, tmp_path):
    """Valid files under variant names (dotted, plain) count as present; an invalid one does not."""
    digests = fake_mnist(server.dir)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in NAMES[:3]:
        dotted = name.replace("-idx", ".idx")
        (folder / dotted).write_bytes(gzip.decompress((server.dir / f"{name}.gz").read_bytes()))
    (folder / "t10k-labels.idx1-ubyte").write_bytes(b"stale")
    paths = fetch("mnist", tmp_path, [server.url], checksums=digests)
    assert [p.name for p in paths] == [n.replace("-idx", ".idx") for n in NAMES[:3]] + [f"{NAMES[3]}.gz"]
    assert server.log == [f"/{NAMES[3]}.gz"]
    assert len(load("mnist", "test", tmp_path)) == 5


def test_mirrors_tried_in_order(server, tmp_path):
    digests = fake_mnist(server.dir / "good")
    paths = fetch("fashion-mnist", tmp_path, [server.url + "missing", server.url + "good/"], checksums=digests)
    assert all(p.parent == tmp_path / "fashion-mnist" for p in paths)
    assert server.log[:2] == [f"/missing/{NAMES[0]}.gz", f"/good/{NAMES[0]}.gz"]


def test_corrupt_download_rejected_and_leaves_nothing(server, tmp_path):
    digests = fake_mnist(server.dir)
    digests[NAMES[2]] = "0" * 64
    folder = tmp_path / "mnist"
    with pytest.raises(DataError) as info:
        fetch("mnist", tmp_path, [server.url], checksums=digests)
    message = str(info.value)
    assert "\n" not in message and f"{NAMES[2]}.gz" in message and "SHA-256" in message
    assert leftovers(folder) == [f"{n}.gz" for n in sorted(NAMES[:2])]  # no partial file, no temporary


def test_truncated_gzip_download_rejected(server, tmp_path):
    digests = fake_mnist(server.dir)
    target = server.dir / f"{NAMES[1]}.gz"
    target.write_bytes(target.read_bytes()[:-9])
    with pytest.raises(DataError, match="not readable gzip"):
        fetch("mnist", tmp_path, [server.url], checksums=digests)
    assert leftovers(tmp_path / "mnist") == [f"{NAMES[0]}.gz"]


def test_short_response_rejected(server, tmp_path):
    with pytest.raises(DataError, match="received 10 of 1,000 bytes"):
        fetch("cifar10", tmp_path / "root", [server.url + "short/"])
    assert leftovers(tmp_path / "root") == []


def test_invalid_present_file_replaced(server, tmp_path):
    digests = fake_mnist(server.dir)
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / f"{NAMES[0]}.gz").write_bytes(b"junk")
    fetch("mnist", tmp_path, [server.url], checksums=digests)
    assert (folder / f"{NAMES[0]}.gz").read_bytes() == (server.dir / f"{NAMES[0]}.gz").read_bytes()


def test_refuses_bad_mirrors_and_names(tmp_path):
    with pytest.raises(DataError, match="only http"):
        fetch("mnist", tmp_path, ["file:///etc/"])
    with pytest.raises(DataError, match="no mirror"):
        fetch("mnist", tmp_path, [])
    with pytest.raises(DataError, match="unknown data set"):
        fetch("svhn", tmp_path)
    assert MIRRORS["cifar10"] == ("https://www.cs.toronto.edu/~kriz/",)


def batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return pickle.dumps({b"data": rows, b"labels": rng.integers(0, 10, n).tolist()}, protocol=2)


def add(tar: tarfile.TarFile, name: str, content: bytes = b"", kind=tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(content) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)


def fake_cifar(served: Path, rows=3, symlink_member: str | None = None, drop: str | None = None) -> dict[str, str]:
    """Serve a small cifar-10-python.tar.gz with traps; return the checksums to pass to fetch."""
    meta = b"fake batches.meta"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        add(tar, "cifar-10-batches-py", kind=tarfile.DIRTYPE)
        add(tar, "../escaped", b"outside")
        add(tar, "cifar-10-batches-py/../../escaped2", b"outside")
        add(tar, "cifar-10-batches-py/readme.html", b"<html>")
        add(tar, "cifar-10-batches-py/link", kind=tarfile.SYMTYPE, link="/etc/passwd")
        for i, member in enumerate(CIFAR_MEMBERS):
            if member == drop:
                continue
            name = f"cifar-10-batches-py/{member}"
            if member == symlink_member:
                add(tar, name, kind=tarfile.SYMTYPE, link="/etc/passwd")
            else:
                add(tar, name, meta if member == cifar.META else batch(rows, i))
    archive = buffer.getvalue()
    (served / CIFAR_TARBALL).write_bytes(archive)
    return {CIFAR_TARBALL: hashlib.md5(archive).hexdigest(), cifar.META: hashlib.sha256(meta).hexdigest()}


def test_fetch_cifar_extracts_only_expected_members(server, tmp_path):
    sums = fake_cifar(server.dir)
    root = tmp_path / "root"
    paths = fetch("cifar10", root, [server.url], checksums=sums)
    folder = root / "cifar-10-batches-py"
    assert paths == [folder / m for m in CIFAR_MEMBERS]
    assert leftovers(root) == ["cifar-10-batches-py"]
    assert leftovers(folder) == sorted(CIFAR_MEMBERS)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "escaped2").exists()
    with tarfile.open(server.dir / CIFAR_TARBALL) as tar:
        assert (folder / "test_batch").read_bytes() == tar.extractfile("cifar-10-batches-py/test_batch").read()
    assert len(cifar.read_batch(folder / "data_batch_2")[0]) == 3


def test_fetch_cifar_skips_a_complete_set(server, tmp_path, monkeypatch):
    sums = fake_cifar(server.dir)
    fetch("cifar10", tmp_path, [server.url], checksums=sums)
    fetch("cifar10", tmp_path, [server.url], checksums=sums)
    assert len(server.log) == 2  # 3 rows per batch is not complete: fetched again
    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 3)
    fetch("cifar10", tmp_path, [server.url], checksums=sums)
    assert len(server.log) == 2


def test_fetch_cifar_keeps_a_complete_set_under_variant_names(server, tmp_path, monkeypatch):
    sums = fake_cifar(server.dir)
    folder = tmp_path / "cifar-10-batches-py"
    fetch("cifar10", tmp_path, [server.url], checksums=sums)
    for member in CIFAR_MEMBERS[:-1]:
        (folder / member).rename(folder / f"{member}.pkl")
    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 3)
    paths = fetch("cifar10", tmp_path, [server.url], checksums=sums)
    assert len(server.log) == 1
    assert paths == [folder / f"{m}.pkl" for m in CIFAR_MEMBERS[:-1]] + [folder / cifar.META]


def test_fetch_cifar_bad_md5_leaves_nothing(server, tmp_path):
    sums = fake_cifar(server.dir)
    sums[CIFAR_TARBALL] = "0" * 32
    with pytest.raises(DataError, match="MD5"):
        fetch("cifar10", tmp_path / "root", [server.url], checksums=sums)
    assert leftovers(tmp_path / "root") == []


@pytest.mark.parametrize("trap", ["symlink", "missing", "meta"])
def test_fetch_cifar_bad_archive_writes_nothing(server, tmp_path, trap):
    sums = fake_cifar(server.dir, symlink_member="test_batch" if trap == "symlink" else None,
                      drop="data_batch_4" if trap == "missing" else None)
    if trap == "meta":
        sums[cifar.META] = "0" * 64
    with pytest.raises(DataError) as info:
        fetch("cifar10", tmp_path / "root", [server.url], checksums=sums)
    assert {"symlink": "not a regular file", "missing": "lacks", "meta": "batches.meta"}[trap] in str(info.value)
    assert leftovers(tmp_path / "root" / "cifar-10-batches-py") == []
    assert leftovers(tmp_path / "root") in ([], ["cifar-10-batches-py"])


@pytest.mark.skipif(SHARED is None, reason="RCENP_DATA is not set")
def test_fetch_real_mnist_from_loopback(tmp_path):
    """Serve the shared MNIST folder itself and fetch it with the published checksums."""
    with serve(SHARED / "mnist") as server:
        paths = fetch("mnist", tmp_path, [server.url])
        assert [p.name for p in paths] == [f"{n}.gz" for n in NAMES]
        assert load("mnist", "test", tmp_path).identity["full"] is True
        fetch("mnist", tmp_path, [server.url])
        assert len(server.log) == 4


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_failed_fetch_leaves_no_empty_folder_behind(server, tmp_path, name):
    """No network (here: a mirror without the files): the data set folder, and the data root when the
    fetch made it, are gone again; a data root that was there stays."""
    with pytest.raises(DataError, match="no valid copy"):
        fetch(name, tmp_path / "new" / "root", [server.url + "missing/"])
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="no valid copy"):
        fetch(name, tmp_path / "mine", [server.url + "missing/"])
    assert (tmp_path / "mine").is_dir() and leftovers(tmp_path / "mine") == []
