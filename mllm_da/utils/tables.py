"""One Markdown table writer for score tables (evaluation) and sweep reports (``mllm_da.report``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUMERIC_CELL = re.compile(r"-?[\d.]+|–|n/a")


def markdown_table(
    header: Sequence[str], body: Sequence[Sequence[str]], right_aligned: Sequence[bool] | None = None
) -> str:
    """A padded Markdown table; right-aligned columns get a ``--:`` rule.

    ``right_aligned`` says per column whether it is right-aligned; by default a column is when it is not the first
    and every body cell in it is a number, "–" (missing) or "n/a" (no rows of that kind).
    """
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    if right_aligned is None:
        right_aligned = [i >= 1 and all(_NUMERIC_CELL.fullmatch(str(r[i])) for r in body) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right_aligned))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right_aligned)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])
