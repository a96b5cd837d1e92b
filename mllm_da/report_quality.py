"""The data-quality table of a sweep's synthetic task sets, for the report beside the scores.

Each job that trained on synthesized tasks recorded the synthesis's metrics in its ``summary.json`` (a stage's
``data.read.synthesis``, with ``quality`` from :mod:`mllm_da.synthesis.quality`). Jobs that differ only in their
seed or stage mode share one synthesis, so the table has one row per distinct set, naming the jobs that used it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mllm_da.utils.tables import markdown_table

HEADER = [
    "data_mix",
    "jobs",
    "triplets",
    "tasks",
    "distinct questions",
    "question types",
    "largest type",
    "type entropy (bits)",
    "precise accuracy",
    "informative consistency",
    "filter keep precision / recall",
    "precise copied from caption",
    "changed with a swapped image",
]


def job_synthesis(summary: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(data mix name, synthesis metrics)`` of the stage of a job that read synthesized tasks, if any."""
    for stage in reversed(summary.get("stages") or []):
        data = stage.get("data") or {} if isinstance(stage, Mapping) else {}
        synthesis = (data.get("read") or {}).get("synthesis")
        if isinstance(synthesis, Mapping) and isinstance(synthesis.get("quality"), Mapping):
            return str(data.get("mix", "?")), dict(synthesis)
    return None


def _value(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def quality_row(mix: str, jobs: Sequence[str], synthesis: Mapping[str, Any]) -> list[str]:
    """One set's headline measures: of the tasks the mix trains on (the filter's kept ones, all when unfiltered)."""
    quality = synthesis["quality"]
    kept = quality.get("kept") or quality.get("all") or {}
    diversity, truth = kept.get("diversity", {}), kept.get("toy_truth", {})
    filter_truth = (quality.get("all", {}).get("toy_truth") or {}).get("filter") or {}
    types = diversity.get("type_counts", {})
    largest = max(types, key=types.get) if types else None
    share = diversity.get("largest_type_share")
    return [
        mix,
        ", ".join(jobs),
        _value(synthesis.get("triplets")),
        _value(diversity.get("tasks")),
        _value(diversity.get("distinct_questions")),
        ", ".join(f"{k} {v}" for k, v in sorted(types.items())) or "–",
        f"{largest} {share:.0%}" if largest is not None and share is not None else "–",
        _value(diversity.get("type_entropy_bits")),
        _value(truth.get("precise_accuracy")),
        _value(truth.get("informative_consistency")),
        f"{_value(filter_truth.get('keep_precision'))} / {_value(filter_truth.get('keep_recall'))}"
        if filter_truth.get("keep_precision") is not None  # none kept by a filter: no filter ran (unfiltered)
        else "–",
        _value((kept.get("copied") or {}).get("precise_share")),
        _value((quality.get("grounding") or {}).get("changed_share")),
    ]


def quality_table(job_folders: Sequence[Path], names: Sequence[str] | None = None) -> str:
    """The Markdown table of every distinct synthetic set the jobs in ``job_folders`` trained on ('' if none),
    naming each job by ``names`` (default: its folder's name)."""
    sets: dict[str, tuple[str, dict[str, Any], list[str]]] = {}
    for folder, name in zip(job_folders, names or [f.name for f in job_folders]):
        path = folder / "summary.json"
        try:
            found = job_synthesis(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # read_jobs already refused an unreadable summary; a job that never got that far has none
        if found is None:
            continue
        mix, synthesis = found
        key = json.dumps([mix, synthesis.get("quality")], sort_keys=True, default=str)
        sets.setdefault(key, (mix, synthesis, []))[2].append(name)
    if not sets:
        return ""
    return markdown_table(HEADER, [quality_row(mix, jobs, s) for mix, s, jobs in sets.values()])
