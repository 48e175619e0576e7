"""Number and folder types for the subcommands' options, one set for all of them.

argparse's own ``type=int`` answers "invalid int value: 'x'", and a checking function of ours
"invalid _eps value"; these say what was expected ("not an integer: 'x'", "must be positive, got
0") and raise ``argparse.ArgumentTypeError``, which the parser turns into its one-line error.
"""
from __future__ import annotations

import argparse
import math

from rcenp.checks import INT64_MAX


def integer(text: str) -> int:
    """An int option (argparse type)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def real(text: str) -> float:
    """A finite float option (argparse type); nan and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive(kind=real):
    """An argparse type for a number > 0 of ``kind`` (``integer`` or ``real``)."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def nonnegative(kind=real):
    """An argparse type for a number >= 0 of ``kind`` (``integer`` or ``real``)."""
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value
    return parse


def count(text: str) -> int:
    """A count option (argparse type): an integer from 1 to ``INT64_MAX``. A larger one names no
    budget a run could reach and would fail halfway through as NumPy's OverflowError (``--batch-size
    99999999999999999999`` did, after its run folder was made), so it is refused here."""
    value = positive(integer)(text)
    if value > INT64_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {INT64_MAX} (an int64), got {text}")
    return value


def folder(text: str) -> str:
    """A folder option to write into (argparse type): an empty name is refused, which would
    otherwise mean the current directory (an unset shell variable: ``--out "$OUT"``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"names no folder ({'an empty' if not text else 'a blank'} name, which would "
                                         "write into the current directory)")
    return text
