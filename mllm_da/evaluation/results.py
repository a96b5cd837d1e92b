"""A benchmark's outcome (:class:`TaskResult`, written to ``scores.json``), its per-group numbers, and the Markdown
score table (``scores.md``, the table after training)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mllm_da.evaluation.scorers import SCORERS, RowScore
from mllm_da.utils.tables import markdown_table


@dataclass
class TaskResult:
    """One benchmark's outcome, as written to ``scores.json``."""

    name: str
    metric: str
    scores: dict[str, float]
    by_group: dict[str, dict[str, float]]
    group_field: str | None
    rows: int
    read: int
    skipped: dict[str, int]
    generated: int
    resumed: int
    shuffle_images: bool
    predictions: str
    origin: str
    generation: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``eval/<task>/<metric>`` and, per group (question type), ``eval/<task>/<group>/<metric>``."""
        out = {f"eval/{self.name}/{k}": v for k, v in self.scores.items()}
        for group, scores in self.by_group.items():
            out.update({f"eval/{self.name}/{group}/{k}": v for k, v in scores.items()})
        return out


def json_safe(value: Any) -> Any:
    """NaN (a task with no OPEN row: the reference divides by zero) is written as null; JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def group_name(value: str) -> str:
    return value.replace("/", "_").strip() or "_"


def group_scores(metric: str, per_row: Sequence[RowScore]) -> dict[str, float]:
    """A group's numbers, keeping only those that have rows: a question type with only OPEN rows reports no
    CLOSED accuracy (the task-level 0.0-for-none is a reference convention, meaningless for a breakdown). The
    random-fallback share stays a task-level diagnostic."""
    scores = SCORERS[metric].aggregate(per_row)
    if metric == "vqa_open_closed" and not any(r.get("closed") for r in per_row):
        scores.pop("closed_accuracy", None)
    scores.pop("random_selected_pct", None)
    return {k: v for k, v in scores.items() if not (isinstance(v, float) and math.isnan(v))}


def format_score_table(
    results: Mapping[str, Mapping[str, float]], *, keys: Sequence[str] | None = None, digits: int = 2
) -> str:
    """A Markdown table: one row per metric (``eval/`` prefix dropped), one column per named result.

    ``results`` maps a column name (e.g. "trained", "trained + shuffled images", "untrained") to a metrics
    dict as :func:`evaluate_backbone` returns. Rows follow ``keys`` or the order in which metrics first
    appear; a metric a column lacks shows "–", a NaN (no row of that kind) shows "n/a".
    """
    if not results:
        raise ValueError("format_score_table needs at least one named result")
    order: list[str] = (
        list(keys) if keys is not None else list(dict.fromkeys(k for metrics in results.values() for k in metrics))
    )
    names = list(results)

    def cell(value: float | None) -> str:
        if value is None:
            return "–"
        if isinstance(value, float) and math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"

    labels = [k.removeprefix("eval/") for k in order]
    head = ["metric", *names]
    body = [[label, *(cell(results[n].get(k)) for n in names)] for k, label in zip(order, labels, strict=True)]
    return markdown_table(head, body, right_aligned=[i > 0 for i in range(len(head))])
