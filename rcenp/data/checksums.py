"""Known checksums of the published data files, and a per-process SHA-256 cache.

Every SHA-256 here is of the *uncompressed* bytes, so a ``.gz`` and a plain copy of the same IDX
file carry the same digest, and recompressing a file does not change it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

# IDX files, keyed by dataset and file name without ".gz" (the published releases).
IDX_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

# The embedded sample (rcenp/data/sample/): the first 1,000 MNIST test images and labels.
SAMPLE_SHA256: dict[str, str] = {
    "t10k-images-idx3-ubyte": "de7c252b04f05e1f8309634180ccdf286dc6dbac8c579b74e76e02ae0331ca52",
    "t10k-labels-idx1-ubyte": "832c0d20f0dc42e575488c75a83a970787d4c8d4d05831b2ef03701b4a478a90",
}

# CIFAR-10, python version. The published archive's MD5 and its batches.meta.
CIFAR_TARBALL_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_META_SHA256 = "f962466ef690d46b226450fb9aadc74ba4bc64a76aa526b5827fe4bc5c7125cb"

# A known CIFAR-10 subset: the first 1,017 rows of each published batch, byte-for-byte, without the
# "filenames" key (the copy these project machines hold). No digests of the full batches are
# published; a full set is recognised by its row counts.
CIFAR_SUBSET_ROWS = 1017
CIFAR_SUBSET_SHA256: dict[str, str] = {
    "data_batch_1": "70b2c40351389cfc8621c45525d6edde48e7675cf424d0fe9da430a9ec232d3a",
    "data_batch_2": "b700085feb830c0722d39ce4e30fa733ce038bf1f9bd8d4622a474387880cd1e",
    "data_batch_3": "8f72a6331f547a1e80cd4f6ef075edd3a2998349b0c42a41badaeba913f1d8a2",
    "data_batch_4": "c45c8cce229f6f177f07362eb2081fd451195b31b922de269d80650b279572d0",
    "data_batch_5": "c071b8164cbcb91c4d64ea0acf6ba196d8d34ae8eaab6f2fe8a690fc34a11a7b",
    "test_batch": "75e7336beb2929d15e15552561fd51c7658a75ea18b7de89710d7885baa76925",
}

_cache: dict[tuple[str, int, int], str] = {}


def file_key(path: Path) -> tuple[str, int, int]:
    """The cache key of ``path``: (absolute path, mtime in ns, size in bytes)."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def sha256_of(key: tuple[str, int, int], content: bytes) -> str:
    """SHA-256 hex digest of ``content``, the uncompressed bytes of the file behind ``key``.

    Take ``key`` with :func:`file_key` *before* reading the file. The digest is computed once per
    process for each (path, mtime, size); a changed file gets a new key and is hashed again.
    """
    digest = _cache.get(key)
    if digest is None:
        digest = hashlib.sha256(content).hexdigest()
        _cache[key] = digest
    return digest
