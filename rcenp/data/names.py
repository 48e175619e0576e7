"""The names a data file goes by on disk: its canonical name and the common variants of it.

Mirrors and unpackers rename the published files. Accepted, in any letter case:

* IDX files (MNIST, Fashion-MNIST), e.g. ``t10k-images-idx3-ubyte``: a dot instead of the dash
  before ``idx`` (``t10k-images.idx3-ubyte``, as 7-Zip, Kaggle and several mirrors have it), with
  or without ``.gz``. Whether the content is gzip-compressed is read from its first bytes, never
  from the name (:func:`rcenp.data.idx.read_content`).
* CIFAR-10 batches, e.g. ``data_batch_1``: also with a ``.pkl`` or ``.pickle`` suffix.

A name only selects a file: what it holds is then verified as for the canonical name (structure,
and the published SHA-256 where one is known).
"""
from __future__ import annotations

import os
import re
from pathlib import Path


def idx_pattern(canonical: str) -> re.Pattern:
    """The names of IDX file ``canonical`` (``<stem>-idx<d>-ubyte``), matched case-insensitively."""
    stem, sep, rest = canonical.partition("-idx")
    if not sep:
        raise ValueError(f"{canonical!r} is not an IDX file name (<stem>-idx<d>-ubyte)")
    return re.compile(rf"{re.escape(stem)}[-.]idx{re.escape(rest)}(\.gz)?", re.IGNORECASE)


def batch_pattern(canonical: str) -> re.Pattern:
    """The names of CIFAR-10 file ``canonical`` (a batch or ``batches.meta``), case-insensitively."""
    return re.compile(rf"{re.escape(canonical)}(\.pkl|\.pickle)?", re.IGNORECASE)


def pattern(canonical: str) -> re.Pattern:
    """:func:`idx_pattern` for IDX names, else :func:`batch_pattern`."""
    return idx_pattern(canonical) if "-idx" in canonical else batch_pattern(canonical)


def variants(canonical: str) -> str:
    """The accepted names of ``canonical`` in words, for error messages."""
    if "-idx" in canonical:
        stem, _, rest = canonical.partition("-idx")
        return f"{canonical} or {stem}.idx{rest}, with or without .gz, in any letter case"
    return f"{canonical}, {canonical}.pkl or {canonical}.pickle, in any letter case"


def canonical_name(name: str) -> str:
    """The canonical name a file name stands for, whatever variant it is:
    ``T10K-images.idx3-ubyte.gz`` → ``t10k-images-idx3-ubyte``, ``data_batch_1.pkl`` →
    ``data_batch_1``. Records of what was read key digests by the name on disk; compare them
    through this (``canonical_digests``)."""
    base = re.sub(r"\.(gz|pkl|pickle)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"\.idx(\d)", r"-idx\1", base, flags=re.IGNORECASE).lower()


def canonical_digests(sha256: dict | None) -> dict | None:
    """{canonical file name: digest} of a data identity's ``sha256`` record ({name on disk: digest})."""
    if not isinstance(sha256, dict):
        return sha256
    return {canonical_name(name): digest for name, digest in sha256.items()}


def candidates(folder: Path, canonical: str) -> list[Path]:
    """The files in ``folder`` named like ``canonical``, best first: the canonical name itself (for
    IDX, ``.gz`` before plain), then the variants, compressed before plain, then by name.

    A folder that does not exist or cannot be listed has none.
    """
    match = pattern(canonical).fullmatch
    try:
        with os.scandir(folder) as entries:
            found = [Path(e.path) for e in entries if match(e.name) and e.is_file()]
    except OSError:
        return []
    exact = (f"{canonical}.gz", canonical)
    return sorted(found, key=lambda p: (p.name not in exact, not p.name.lower().endswith(".gz"), p.name))


def find(folder: Path, canonical: str) -> Path | None:
    """The best file in ``folder`` named like ``canonical`` (see :func:`candidates`), or None."""
    found = candidates(folder, canonical)
    return found[0] if found else None
