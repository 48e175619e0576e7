"""Plain-text tables for people; commands print JSON lines instead under ``--json``.

    print(format_table(["model", "test error"], [["mnist-resnet32-rce", "0.33%"]], align="lr"))

    model               test error
    ------------------  ----------
    mnist-resnet32-rce       0.33%
"""
from __future__ import annotations

GAP = "  "


def format_table(headers, rows, align: str | None = None) -> str:
    """``rows`` (lists of cells, one per header) under ``headers``, each column as wide as its
    widest cell, two spaces apart, with a rule under the headers.

    Cells are shown with ``str`` (``None`` as an empty cell), so format numbers before passing
    them. ``align`` has one letter per column, ``l`` or ``r`` (default: all left). Raises
    ValueError for a row or an ``align`` whose length is not the number of headers.
    """
    headers = [str(h) for h in headers]
    align = align or "l" * len(headers)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one of 'l'/'r' per column ({len(headers)}), got {align!r}")
    cells = []
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row of {len(row)} cells under {len(headers)} headers: {row!r}")
        cells.append(["" if c is None else str(c) for c in row])
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]

    def line(values):
        padded = (v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align))
        return GAP.join(padded).rstrip()

    return "\n".join([line(headers), GAP.join("-" * w for w in widths), *(line(r) for r in cells)])
