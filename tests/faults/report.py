"""Render the fault suite's tally (``MLLM_DA_FAULT_REPORT``) as the table in docs/reliability.md.

    python -m tests.faults.report faults-report.json docs/reliability.md

The table replaces what lies between the ``<!-- fault-table -->`` and ``<!-- /fault-table -->`` markers.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

START, END = "<!-- fault-table -->", "<!-- /fault-table -->"


def render(payload: dict) -> str:
    """One row per (input kind, fault), the outcomes with their counts, then totals per input kind."""
    rows = payload["rows"]
    lines = [
        f"Profile `{payload['profile']}`; pytest exit status {payload['exitstatus']} (0: every case passed).",
        "",
        "| input or process | fault | cases | outcome |",
        "|---|---|--:|---|",
    ]
    grouped: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for row in rows:
        grouped[(row["kind"], row["fault"])][row["outcome"]] = row["cases"]
    totals: dict[str, int] = defaultdict(int)
    for (kind, fault), outcomes in sorted(grouped.items()):
        cases = sum(outcomes.values())
        totals[kind] += cases
        described = "; ".join(f"{outcome} ({count})" for outcome, count in sorted(outcomes.items()))
        lines.append(f"| {kind} | {fault} | {cases} | {described} |")
    lines += ["", "| input or process | cases |", "|---|--:|"]
    lines += [f"| {kind} | {count} |" for kind, count in sorted(totals.items())]
    lines.append(f"| **all** | **{sum(totals.values())}** |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    payload = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    doc = Path(argv[1])
    text = doc.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{doc}: no {START} ... {END} markers to replace", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{render(payload)}\n{END}{tail}", encoding="utf-8")
    print(f"{doc}: table of {len(payload['rows'])} rows written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
