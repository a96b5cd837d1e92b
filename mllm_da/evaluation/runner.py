"""Evaluate a backbone on benchmarks: generate, score, write predictions and scores, resume after a crash.

Per task the run folder gets ``predictions/<task>.jsonl`` (one line per row: row index, id, prompt,
prediction, label, per-row score, ``random_selected``, the row whose image was shown) and the run gets
``scores.json``. Lines are appended after every batch, so a rerun into the same folder generates only the rows
not yet there; the file is finally rewritten in row order with each row exactly once and every row re-scored,
so a resumed run reports exactly what an uninterrupted one would.

``shuffle_images=True`` is the "blind" control: each question is shown another row's picture (a seeded
derangement of the distinct images), which tells whether a model's score comes from the image at all.

``evaluate(cfg)`` is ``evaluate.py``'s body: it builds the model from the ``model=`` preset (or a
``checkpoint=`` folder), runs the domain's benchmarks and logs ``eval/<task>/<metric>`` to the configured
loggers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mllm_da.backbones.base import Backbone
from mllm_da.backbones.loading import check_checkpoint_folder
from mllm_da.evaluation.benchmarks import (
    Benchmark,
    BenchmarkRow,
    BenchmarkSpec,
    benchmark_specs,
    load_benchmark,
)
from mllm_da.evaluation.generation import (
    GenerationRequest,
    Generator,
    GeneratorOptions,
    make_generator,
    question_turns,
)
from mllm_da.evaluation.scorers import SCORERS, RowScore
from mllm_da.utils.io import (
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    read_json,
    read_jsonl_tolerant,
)

log = logging.getLogger(__name__)

LoggerFn = Callable[[dict[str, float]], None]


# ------------------------------------------------------------------------------------------- blind control


def derangement(n: int, rng: random.Random) -> list[int]:
    """A uniformly random cyclic permutation (Sattolo's algorithm): ``perm[i] != i`` for all i if n >= 2."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: never leaves an element in place
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def image_pairing(bench: Benchmark, seed: int) -> dict[int, int]:
    """Row index -> the row index whose image it is shown instead of its own.

    The derangement is over DISTINCT images (rows sharing a picture, as VQA-RAD's and the toy's do, share a
    key), so no question is ever paired with its own picture through a sibling row. Seeded by ``seed`` and the
    task name, so reruns (and resumes) pair identically.
    """
    keys = {row.index: bench.image_key(row.index) for row in bench.rows}
    first_row: dict[str, int] = {}
    for index, key in keys.items():
        first_row.setdefault(key, index)
    distinct = list(first_row)
    if len(distinct) < 2:
        raise ValueError(
            f"{bench.name}: shuffle_images needs at least two distinct images, found {len(distinct)}"
        )
    perm = derangement(len(distinct), random.Random(f"mllm-da/shuffle-images/{seed}/{bench.name}"))
    position = {key: i for i, key in enumerate(distinct)}
    return {index: first_row[distinct[perm[position[key]]]] for index, key in keys.items()}


# --------------------------------------------------------------------------------------------------- results


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


def _json_safe(value: Any) -> Any:
    """NaN (a task with no OPEN row: the reference divides by zero) is written as null; JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _group_name(value: str) -> str:
    return value.replace("/", "_").strip() or "_"


def _group_scores(metric: str, per_row: Sequence[RowScore]) -> dict[str, float]:
    """A group's numbers, keeping only those that have rows: a question type with only OPEN rows reports no
    CLOSED accuracy (the task-level 0.0-for-none is a reference convention, meaningless for a breakdown). The
    random-fallback share stays a task-level diagnostic."""
    scores = SCORERS[metric].aggregate(per_row)
    if metric == "vqa_open_closed" and not any(r.get("closed") for r in per_row):
        scores.pop("closed_accuracy", None)
    scores.pop("random_selected_pct", None)
    return {k: v for k, v in scores.items() if not (isinstance(v, float) and math.isnan(v))}


# ------------------------------------------------------------------------------------------------ one task


def _record(
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


def _previous_predictions(path: Path, bench: Benchmark) -> dict[int, dict[str, Any]]:
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


def _check_meta(path: Path, meta: dict[str, Any], resuming: bool) -> None:
    """Refuse to resume predictions made with other settings (another model, prompt or image pairing)."""
    if resuming and path.exists():
        old = read_json(path, "predictions settings file")
        if old != _json_safe(meta):
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != _json_safe(meta).get(k))
            raise ValueError(
                f"{path}: the predictions beside it were made with different settings ({', '.join(diff)}); "
                "evaluate into a new output folder or delete them"
            )
    atomic_write_json(path, _json_safe(meta))


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
    _check_meta(pred_dir / f"{spec.name}.meta.json", meta, resuming=pred_path.exists())
    pairing = image_pairing(bench, seed) if shuffle_images else {row.index: row.index for row in bench.rows}

    done = _previous_predictions(pred_path, bench)
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
        records = [_record(rows[key], text, pairing[key], spec.metric, bench)[0] for key, text in pairs]
        append_jsonl(pred_path, records)
        done.update((r["index"], r) for r in records)

    pending = [row for row in bench.rows if row.index not in done]
    if resumed:
        log.info("%s: resuming, %d of %d rows already predicted", spec.name, resumed, len(bench.rows))
    if pending:
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
        record, score = _record(row, done[row.index]["prediction"], pairing[row.index], spec.metric, bench)
        final.append(record)
        per_row.append(score)
    atomic_write_jsonl(pred_path, final)

    groups: dict[str, list[RowScore]] = {}
    for row, score in zip(bench.rows, per_row, strict=True):
        if row.group is not None:
            groups.setdefault(_group_name(row.group), []).append(score)
    return TaskResult(
        name=spec.name,
        metric=spec.metric,
        scores=SCORERS[spec.metric].aggregate(per_row),
        by_group={g: _group_scores(spec.metric, groups[g]) for g in sorted(groups)},
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
    generator = make_generator(
        backbone, dataclasses.replace(generation or GeneratorOptions(), batch_size=batch_size)
    )
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
        atomic_write_json(out_dir / "scores.json", _json_safe(report))
        log.info("%s: %s", result.name, {k: round(v, 2) for k, v in result.scores.items()})
        if logger_fn is not None:
            logger_fn(task_metrics)
    return metrics


# ---------------------------------------------------------------------------------------------------- table


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
        list(keys)
        if keys is not None
        else list(dict.fromkeys(k for metrics in results.values() for k in metrics))
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
    body = [
        [label, *(cell(results[n].get(k)) for n in names)] for k, label in zip(order, labels, strict=True)
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in body)])


# ------------------------------------------------------------------------------------------- evaluate.py body


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A plain-transformers folder from ``checkpoint=``: the folder, or a train run folder's ``export/``. A Lightning
    ``.ckpt`` is refused without being read (it is a pickle); :func:`backbone_config` then checks the folder
    (:func:`~mllm_da.backbones.loading.check_checkpoint_folder`) before anything in it is loaded."""
    path = Path(checkpoint).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        raise ValueError(
            f"checkpoint={path} is a Lightning training checkpoint; evaluate the exported folder "
            "(<run>/export) "
            "or resume training from it with train.py ckpt_path=..."
        )
    for folder in (path, path / "export"):
        if (folder / "config.json").is_file():
            return folder
    raise FileNotFoundError(
        f"checkpoint={path}: no config.json there or in {path / 'export'} (a saved model folder)"
    )


def backbone_config(cfg: DictConfig) -> DictConfig:
    """The ``model.backbone`` node, pointed at ``checkpoint`` (variant=pretrained, source=folder) when one is
    set.

    The preset still decides the family, image settings and chat format, so its family must match the
    checkpoint's.
    """
    node = OmegaConf.create(OmegaConf.to_container(cfg.model.backbone, resolve=True))
    checkpoint = cfg.get("checkpoint")
    if not checkpoint:
        return node
    folder = resolve_checkpoint(checkpoint)
    # before anything in it is read: no custom code (unless the preset trusts it), no pickle-only weights
    check_checkpoint_folder(folder, bool(node.get("trust_remote_code", False)))
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type and model_type != node.family:
        raise ValueError(
            f"checkpoint {folder} is a {model_type} model but model.backbone.family is {node.family}; "
            f"pick the model= preset of that family (e.g. model=tiny_{model_type} for a tiny one)"
        )
    with open_dict(node):
        node.variant = "pretrained"
        node.source = str(folder)
    return node


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device} but no CUDA GPU is visible; use device=cpu or device=auto")
    return str(device)


def column_name(cfg: DictConfig, backbone_node: DictConfig) -> str:
    """The score table's column: ``label`` if set, else the checkpoint or the preset's source/variant."""
    if cfg.get("label"):
        return str(cfg.label)
    name = str(cfg.checkpoint) if cfg.get("checkpoint") else str(backbone_node.get("source") or "")
    name = name or f"{backbone_node.family} ({backbone_node.variant})"
    return name + (" + shuffled images" if cfg.get("shuffle_images") else "")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate one model on the selected benchmarks; ``summary.json`` records the metrics and the files."""
    from hydra.utils import instantiate

    from mllm_da.config_checks import check_eval_config
    from mllm_da.data.domain import prepare_domain
    from mllm_da.utils.runinfo import instantiate_loggers, run_folder

    with run_folder(cfg, "evaluate") as summary:
        prepare_domain(cfg.domain)  # the toy domain builds its benchmark on first use, a custom one finds it
        if cfg.domain.get("found"):
            summary["domain"] = OmegaConf.to_container(cfg.domain.found)
        check_eval_config(cfg)
        out = Path(cfg.paths.output_dir)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        torch.manual_seed(int(cfg.seed))
        definitions = OmegaConf.to_container(cfg.benchmark, resolve=True)
        assert isinstance(definitions, dict)
        names = [cfg.benchmarks] if isinstance(cfg.benchmarks, str) else list(cfg.benchmarks)
        specs = benchmark_specs(
            definitions,  # type: ignore[arg-type]
            names,
            limit=cfg.get("limit"),
            max_new_tokens=cfg.get("max_new_tokens"),
            bad_rows=cfg.get("bad_rows"),
        )
        node = backbone_config(cfg)
        backbone: Backbone = instantiate(node, device=resolve_device(cfg.get("device")), _convert_="all")
        loggers = instantiate_loggers(cfg)
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]

        def log_metrics(metrics: dict[str, float]) -> None:
            finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
            for lg in loggers:
                lg.log_metrics(finite, step=0)

        engine_args = OmegaConf.to_container(cfg.vllm, resolve=True) if cfg.get("vllm") else {}
        generation = GeneratorOptions(
            backend=cfg.backend,
            batch_size=int(cfg.batch_size),
            progress=cfg.progress,
            vllm=engine_args,
        )
        metrics = evaluate_backbone(
            backbone,
            specs,
            out,
            batch_size=int(cfg.batch_size),
            shuffle_images=bool(cfg.shuffle_images),
            seed=int(cfg.seed),
            logger_fn=log_metrics,
            image_separator=str(cfg.image_separator),
            generation=generation,
            cache_dir=Path(cfg.paths.cache_dir) / "datasets",
        )
        for lg in loggers:
            lg.save()
            lg.finalize("success")
        table = format_score_table({column_name(cfg, node): metrics})
        atomic_write_text(out / "scores.md", table + "\n")
        print(table, flush=True)
        summary["metrics"] = _json_safe(metrics)
        summary["benchmarks"] = [s.name for s in specs]
        # rows read, kept and refused by reason per benchmark, as train.py and synth.py count their records
        tasks = json.loads((out / "scores.json").read_text(encoding="utf-8"))
        summary["data"] = {name: {"read": task["read"], "kept": task["rows"], "rejected": sum(task["skipped"].values()),
                                  "reasons": task["skipped"]} for name, task in tasks.items()}
        summary["artifacts"] = {
            "scores": str(out / "scores.json"),
            "table": str(out / "scores.md"),
            "predictions": str(out / "predictions"),
        }
        return metrics
