"""Plain-text tables for the terminal."""
from __future__ import annotations

from typing import List, Sequence


def table(headers: Sequence[str], rows: List[Sequence[object]]) -> str:
    """`rows` under `headers` as a text table: columns padded to their widest cell, the first left-aligned,
    the others right-aligned, a dashed rule under the header; None prints as ''."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)
