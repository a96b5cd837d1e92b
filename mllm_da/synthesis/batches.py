"""The resumable batch log that synthesis and the LLM filter share, whatever engine generates (transformers or
vLLM): a fixed batch plan, one fsynced line per finished batch, bounded retries of a failing batch, and a merge
that refuses while a batch is missing and names the shards and batches it waits for.

A failing batch is tried ``1 + retries`` times; if it still fails, each of its records is tried alone, so one bad
record (an over-long prompt that makes vLLM refuse the whole call, say) does not take its neighbours down. A
record that fails alone too gets a failed row (its id and the error) and the batch line says which ids failed
(``"failed"``). Nothing is dropped: the merge has one row per input, and a rerun before the merge tries the
failed batches again (a later clean line supersedes a failed one).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mllm_da.utils.io import append_jsonl

log = logging.getLogger(__name__)

#: builds the row of a record that failed: (input index, error text) -> row
FailedRow = Callable[[int, str], dict[str, Any]]


class IncompleteError(RuntimeError):
    """A merge found batches that no shard has finished yet."""


class BatchLog:
    """Append-only per-batch results of one stage: ``<folder>/<name>-shard<i>.jsonl``, one line per batch."""

    def __init__(self, folder: str | os.PathLike, name: str) -> None:
        self.folder = Path(folder)
        self.name = name

    def shard_file(self, shard: int) -> Path:
        return self.folder / f"{self.name}-shard{shard}.jsonl"

    def lines(self) -> dict[int, dict[str, Any]]:
        """The best line of every finished batch (from every shard file, whatever shard count wrote them): the
        first clean line, else the first line with failed records."""
        best: dict[int, dict[str, Any]] = {}
        for path in sorted(self.folder.glob(f"{self.name}-shard*.jsonl")):
            for number, line in enumerate(complete_lines(path), start=1):
                try:
                    row = json.loads(line)
                    batch, results = int(row["batch"]), row["results"]
                    failed = list(row.get("failed") or [])
                except (ValueError, KeyError, TypeError) as err:
                    # only the last line can be torn by a kill (and is cut off before reading); this is damage
                    raise ValueError(
                        f"{path}:{number}: not a batch record ({err}); delete {path} to redo its batches"
                    ) from err
                if batch not in best or (best[batch]["failed"] and not failed):
                    best[batch] = {"results": results, "failed": failed}
        return best

    def done(self) -> dict[int, list[dict[str, Any]]]:
        """Finished batches' result rows by batch index (rows of failed records included)."""
        return {b: line["results"] for b, line in self.lines().items()}

    def failed(self) -> dict[int, list[str]]:
        """Batches whose best line still has failed records: batch index -> the failed record ids."""
        return {b: line["failed"] for b, line in self.lines().items() if line["failed"]}

    def append(self, shard: int, batch: int, results: list[dict[str, Any]], failed: Sequence[str] = ()) -> None:
        path = self.shard_file(shard)
        _cut_torn_tail(path)
        row: dict[str, Any] = {"batch": batch, "results": results}
        if failed:
            row["failed"] = list(failed)
        append_jsonl(path, [row])


def complete_lines(path: Path) -> list[str]:
    """Lines that end with a newline; a torn last line (a write cut by a kill) is not a finished batch."""
    text = path.read_text(encoding="utf-8", errors="replace")  # a torn tail may end inside a character
    complete = text[: text.rfind("\n") + 1]
    return [line for line in complete.split("\n") if line.strip()]


def _cut_torn_tail(path: Path) -> None:
    """Truncate a torn last line, so that the next append starts on a line of its own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def plan_batches(costs: Sequence[Any], ids: Sequence[str], batch_size: int) -> list[list[int]]:
    """Input indices in batches of ``batch_size``, sorted by (cost, id): little padding, fixed membership."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(ids)), key=lambda i: (costs[i], ids[i]))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:500]


def attempt_batch(
    indices: list[int],
    work: Callable[[list[int]], list[dict[str, Any]]],
    retries: int,
    failed_row: FailedRow | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """``work(indices)`` tried ``1 + retries`` times; then (with ``failed_row``) each record alone, a record that
    fails alone getting ``failed_row``. Returns the rows and the ids of failed records. Without ``failed_row`` the
    last error is raised."""
    error: BaseException | None = None
    for attempt in range(1 + retries):
        try:
            return work(indices), []
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - any engine error: retried, then isolated per record
            error = err
            log.warning(
                "batch of %d records failed (attempt %d of %d): %s",
                len(indices),
                attempt + 1,
                1 + retries,
                _error_text(err),
            )
    assert error is not None
    if failed_row is None:
        raise error
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for i in indices:
        try:
            if len(indices) == 1:  # already tried alone
                raise error
            rows.extend(work([i]))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - the record alone fails too: recorded, never dropped
            row = failed_row(i, _error_text(err))
            rows.append(row)
            failed.append(str(row["id"]))
    if failed:
        log.error("records failed after %d attempts of their batch and one alone: %s", 1 + retries, failed)
    return rows, failed


def run_batches(
    log_: BatchLog,
    plan: Sequence[Sequence[int]],
    work: Callable[[list[int]], list[dict[str, Any]]],
    shards: Sequence[int],
    num_shards: int,
    progress: Callable[[int, int], None] | None = None,
    *,
    retries: int = 0,
    failed_row: FailedRow | None = None,
) -> int:
    """Do every unfinished batch of ``shards`` (and again every batch with failed records); returns how many
    batches this call did."""
    lines = log_.lines()
    todo = [b for b in range(len(plan)) if b % num_shards in shards and (b not in lines or lines[b]["failed"])]
    for n, b in enumerate(todo, start=1):
        rows, failed = attempt_batch(list(plan[b]), work, retries, failed_row)
        log_.append(b % num_shards, b, rows, failed)
        if progress is not None:
            progress(n, len(todo))
    return len(todo)


def missing_by_shard(missing: Sequence[int], num_shards: int) -> str:
    """``shard 1: batches [1, 5] (2 of 4)``-style text, one part per shard that still has missing batches."""
    parts = []
    for shard in range(num_shards):
        mine = [b for b in missing if b % num_shards == shard]
        if mine:
            shown = ", ".join(map(str, mine[:8])) + (", ..." if len(mine) > 8 else "")
            parts.append(f"shard {shard}: batches [{shown}] ({len(mine)} missing)")
    return "; ".join(parts)


def merge_batches(
    log_: BatchLog, plan: Sequence[Sequence[int]], ids: Sequence[str], num_shards: int = 1
) -> list[dict[str, Any]]:
    """All results, one per input, sorted by record id; raises :class:`IncompleteError` naming the shards and
    batches still missing (``num_shards``: how the batches were dealt out)."""
    done = log_.done()
    missing = [b for b in range(len(plan)) if b not in done]
    if missing:
        raise IncompleteError(
            f"{log_.folder}: {len(missing)} of {len(plan)} batches not done yet ("
            f"{missing_by_shard(missing, num_shards)}); run those shards again (they resume), then merge"
        )
    rows: dict[str, dict[str, Any]] = {}
    for b, indices in enumerate(plan):
        results = done[b]
        if [r["id"] for r in results] != [ids[i] for i in indices]:
            raise RuntimeError(f"{log_.folder}: batch {b} holds other records than the plan; delete the folder")
        for row in results:
            rows[row["id"]] = row
    return [rows[key] for key in sorted(rows)]
