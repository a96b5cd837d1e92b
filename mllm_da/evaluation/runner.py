"""Evaluate a backbone on benchmarks: generate, score, write predictions and scores, resume after a crash.

Per task the run folder gets ``predictions/<task>.jsonl`` (one line per row: row index, id, prompt,
prediction, label, per-row score, ``random_selected``, the row whose image was shown) and the run gets
``scores.json``. Lines are appended after every batch, so a rerun into the same folder generates only the rows
not yet there; the file is finally rewritten in row order with each row exactly once and every row re-scored,
so a resumed run reports exactly what an uninterrupted one would.

``shuffle_images=True`` is the "blind" control (:mod:`mllm_da.evaluation.pairing`); the predictions file is
:mod:`mllm_da.evaluation.predictions`, the outcome and score table :mod:`mllm_da.evaluation.results`, the choice of
model (preset or checkpoint) :mod:`mllm_da.evaluation.model_choice`.

``evaluate(cfg)`` is ``evaluate.py``'s body: it builds the model from the ``model=`` preset (or a
``checkpoint=`` folder), runs the domain's benchmarks and logs ``eval/<task>/<metric>`` to the configured
loggers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mllm_da.backbones.base import Backbone
from mllm_da.evaluation.benchmarks import (
    Benchmark,
    BenchmarkRow,
    BenchmarkSpec,
    load_benchmark,
)
from mllm_da.evaluation.generation import (
    GenerationRequest,
    Generator,
    GeneratorOptions,
    make_generator,
    question_turns,
)
from mllm_da.evaluation.model_choice import backbone_config, column_name, resolve_checkpoint
from mllm_da.evaluation.pairing import derangement, image_pairing
from mllm_da.evaluation.predictions import check_meta, prediction_record, previous_predictions
from mllm_da.evaluation.results import TaskResult, format_score_table, group_name, group_scores, json_safe
from mllm_da.evaluation.scorers import SCORERS, RowScore
from mllm_da.utils.devices import resolve_device
from mllm_da.utils.io import append_jsonl, atomic_write_json, atomic_write_jsonl

#: what callers import from here (the blind control, the score table and the model choice live beside it)
__all__ = [
    "TaskResult",
    "backbone_config",
    "column_name",
    "derangement",
    "evaluate_backbone",
    "format_score_table",
    "image_pairing",
    "resolve_checkpoint",
    "resolve_device",
    "run_benchmark",
]

log = logging.getLogger(__name__)

LoggerFn = Callable[[dict[str, float]], None]


def run_benchmark(
    bench: Benchmark,
    generator: Generator,
    out_dir: str | Path,
    *,
    shuffle_images: bool = False,
    seed: int = 0,
    image_separator: str = "",
    model_id: Mapping[str, Any] | None = None,
) -> TaskResult:
    """Generate the rows missing from ``out_dir/predictions/<task>.jsonl``, then score every row."""
    spec = bench.spec
    pred_dir = Path(out_dir) / "predictions"
    pred_path = pred_dir / f"{spec.name}.jsonl"
    meta = {
        "benchmark": spec.fingerprint(),
        "shuffle_images": shuffle_images,
        "seed": seed if shuffle_images else None,
        "image_separator": image_separator,
        "model": dict(model_id or {}),
    }
    check_meta(pred_dir / f"{spec.name}.meta.json", meta, resuming=pred_path.exists())
    pairing = image_pairing(bench, seed) if shuffle_images else {row.index: row.index for row in bench.rows}

    done = previous_predictions(pred_path, bench)
    # rewrite what survived before appending: a torn last line would otherwise swallow the next record
    atomic_write_jsonl(pred_path, [done[i] for i in sorted(done)])
    resumed = len(done)
    rows = {row.index: row for row in bench.rows}

    def request(row: BenchmarkRow) -> GenerationRequest:
        source = pairing[row.index]
        return GenerationRequest(
            key=row.index,
            turns=question_turns(row.prompt, 1, image_separator),
            images=functools.partial(lambda i: [bench.image(i)], source),
            image_sizes=(bench.image_size(source),),
        )

    def on_batch(pairs: list[tuple[int, str]]) -> None:
        records = [prediction_record(rows[key], text, pairing[key], spec.metric, bench)[0] for key, text in pairs]
        append_jsonl(pred_path, records)
        done.update((r["index"], r) for r in records)

    pending = [row for row in bench.rows if row.index not in done]
    if resumed:
        log.info("%s: resuming, %d of %d rows already predicted", spec.name, resumed, len(bench.rows))
    if pending:
        assert spec.max_new_tokens is not None  # BenchmarkSpec fills in the metric's default
        # every row goes to the generator with the done ones marked: it batches them exactly as an uninterrupted
        # run does (same batch members, same padding, same greedy tokens) and skips the batches already done
        generator.generate(
            [request(row) for row in bench.rows],
            max_new_tokens=spec.max_new_tokens,
            on_batch=on_batch,
            desc=f"eval {spec.name}",
            done=frozenset(done),
        )

    final, per_row = [], []
    for row in bench.rows:
        record, score = prediction_record(row, done[row.index]["prediction"], pairing[row.index], spec.metric, bench)
        final.append(record)
        per_row.append(score)
    atomic_write_jsonl(pred_path, final)

    groups: dict[str, list[RowScore]] = {}
    for row, score in zip(bench.rows, per_row, strict=True):
        if row.group is not None:
            groups.setdefault(group_name(row.group), []).append(score)
    return TaskResult(
        name=spec.name,
        metric=spec.metric,
        scores=SCORERS[spec.metric].aggregate(per_row),
        by_group={g: group_scores(spec.metric, groups[g]) for g in sorted(groups)},
        group_field=spec.group_field if groups else None,
        rows=len(bench.rows),
        read=bench.read,
        skipped=dict(bench.skipped),
        generated=len(pending),
        resumed=resumed,
        shuffle_images=shuffle_images,
        predictions=str(pred_path),
        origin=bench.origin,
        generation=generator.stats.as_dict() if pending else {},
    )


def evaluate_backbone(
    backbone: Backbone,
    benchmarks: Sequence[BenchmarkSpec | Benchmark],
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    shuffle_images: bool = False,
    seed: int = 0,
    logger_fn: LoggerFn | None = None,
    image_separator: str = "",
    generation: GeneratorOptions | None = None,
    cache_dir: str | Path | None = None,
    model_id: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Evaluate ``backbone`` on each benchmark; returns ``eval/<task>/<metric>`` (and per-group) metrics.

    Writes ``out_dir/predictions/<task>.jsonl`` and ``out_dir/scores.json`` (updated after each task); rows a
    benchmark file refuses are listed in ``out_dir/rejects/<task>.jsonl``. A rerun
    into the same ``out_dir`` resumes. ``logger_fn`` gets each task's metrics when the task ends. ``model_id``
    names the model in the resume check (default: the backbone's family, variant and source); give it when two
    different in-memory models could be evaluated into one folder.
    """
    out_dir = Path(out_dir)
    generator = make_generator(backbone, dataclasses.replace(generation or GeneratorOptions(), batch_size=batch_size))
    identity = (
        dict(model_id)
        if model_id is not None
        else {
            "family": backbone.spec.family,
            "variant": backbone.spec.variant,
            "source": backbone.spec.source,
        }
    )
    metrics: dict[str, float] = {}
    report: dict[str, Any] = {}
    for item in benchmarks:
        bench = (
            item
            if isinstance(item, Benchmark)
            else load_benchmark(item, cache_dir=cache_dir, rejects_path=out_dir / "rejects" / f"{item.name}.jsonl")
        )
        result = run_benchmark(
            bench,
            generator,
            out_dir,
            shuffle_images=shuffle_images,
            seed=seed,
            image_separator=image_separator,
            model_id=identity,
        )
        task_metrics = result.metrics()
        metrics.update(task_metrics)
        report[result.name] = asdict(result)
        atomic_write_json(out_dir / "scores.json", json_safe(report))
        log.info("%s: %s", result.name, {k: round(v, 2) for k, v in result.scores.items()})
        if logger_fn is not None:
            logger_fn(task_metrics)
    return metrics
