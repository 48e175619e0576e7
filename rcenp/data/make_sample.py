"""Build the embedded sample, ``rcenp/data/sample/``, from a complete MNIST test set.

    python -m rcenp.data.make_sample [MNIST_FOLDER] [OUT_FOLDER]

MNIST_FOLDER defaults to ``data_root()/mnist``; OUT_FOLDER to this package's ``sample/``. Writes
``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` holding the first 1,000 test images
and labels as canonical IDX files (header count 1000), gzip level 9 with mtime 0, and prints the
SHA-256 of their uncompressed bytes, which ``checksums.SAMPLE_SHA256`` must record.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
from pathlib import Path

from . import idx, names
from .checksums import IDX_SHA256
from .datasets import IDX_FILES, SAMPLE_DIR, data_root
from .errors import DataError

SAMPLE_SIZE = 1000


def build(mnist_folder: Path, out_folder: Path) -> dict[str, str]:
    """Write the two sample files; return {file name without .gz: SHA-256 of its uncompressed bytes}."""
    out_folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, ndim in zip(IDX_FILES["test"], (3, 1), strict=True):
        path = names.find(mnist_folder, name)
        if path is None:
            raise DataError(f"{mnist_folder}: {name} missing (looked for {names.variants(name)}; "
                            "the sample is cut from the full MNIST test set)")
        array, digest = idx.read(path, ndim)
        if digest != IDX_SHA256["mnist"][name]:
            raise DataError(f"{path}: not the published MNIST file (SHA-256 {digest})")
        content = idx.encode(array[:SAMPLE_SIZE])
        target = out_folder / f"{name}.gz"
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(gzip.compress(content, compresslevel=9, mtime=0))
        os.replace(tmp, target)
        digests[name] = hashlib.sha256(content).hexdigest()
    return digests


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    mnist_folder = Path(args[0]) if args else data_root() / "mnist"
    out_folder = Path(args[1]) if len(args) > 1 else SAMPLE_DIR
    for name, digest in build(mnist_folder, out_folder).items():
        print(f"{name}: {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
