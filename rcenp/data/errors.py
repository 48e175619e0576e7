"""The one exception type of :mod:`rcenp.data`."""
from __future__ import annotations


class DataError(Exception):
    """A data file is missing, malformed, or not the file it claims to be.

    The message is a single line that names the file and what is wrong with it.
    """
