"""The resumable predictions file of one benchmark: ``predictions/<task>.jsonl`` (a line per row, appended after
every batch) and ``<task>.meta.json`` (the settings it was made with). A rerun into the same folder keeps the rows
already predicted for the same rows, prompts and settings, and refuses to mix in others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mllm_da.evaluation.benchmarks import Benchmark, BenchmarkRow
from mllm_da.evaluation.results import json_safe
from mllm_da.evaluation.scorers import SCORERS, RowScore
from mllm_da.utils.io import atomic_write_json, read_json, read_jsonl_tolerant


def prediction_record(
    row: BenchmarkRow, prediction: str, image_index: int, metric: str, bench: Benchmark
) -> tuple[dict[str, Any], RowScore]:
    score = SCORERS[metric].score_row(prediction, row.fields, row.index, bench.labels)
    record = {
        "index": row.index,
        "id": row.id,
        "prompt": row.prompt,
        "prediction": prediction,
        "label": row.label,
        "score": float(score["score"]),
        "random_selected": bool(score.get("random_selected", False)),
        "image_index": image_index,
        "group": row.group,
    }
    if row.fields.get("answer_type") is not None:  # open and closed rows are scored differently: kept apart
        record["answer_type"] = str(row.fields["answer_type"])
    return record, score


def previous_predictions(path: Path, bench: Benchmark) -> dict[int, dict[str, Any]]:
    """Rows already generated, checked against the benchmark (same id and prompt at the same index)."""
    by_index = {row.index: row for row in bench.rows}
    done: dict[int, dict[str, Any]] = {}
    for number, rec in enumerate(read_jsonl_tolerant(path), start=1):
        index = rec.get("index")
        if not isinstance(index, int) or "prediction" not in rec:
            raise ValueError(f"{path}:{number}: not a predictions line (needs index and prediction)")
        row = by_index.get(index)
        if row is None or index in done:
            continue  # outside the current limit, or a duplicate: the final rewrite drops it
        if rec.get("prompt") != row.prompt or rec.get("id") != row.id:
            raise ValueError(
                f"{path}:{number}: row {index + 1} was generated for a different prompt or id than the "
                "benchmark now has; "
                "evaluate into a new folder or delete the predictions file"
            )
        done[index] = rec
    return done


def check_meta(path: Path, meta: dict[str, Any], resuming: bool) -> None:
    """Refuse to resume predictions made with other settings (another model, prompt or image pairing)."""
    if resuming and path.exists():
        old = read_json(path, "predictions settings file")
        if old != json_safe(meta):
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != json_safe(meta).get(k))
            raise ValueError(
                f"{path}: the predictions beside it were made with different settings ({', '.join(diff)}); "
                "evaluate into a new output folder or delete them"
            )
    atomic_write_json(path, json_safe(meta))
