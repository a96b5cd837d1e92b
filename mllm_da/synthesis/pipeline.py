"""The synthesis chain: seed data → tuned synthesizer → synthesis + parsing → consistency filter → training data.

Each stage is a function of files and settings, stored under ``<cache>/synthesis/<stage>-<key>/`` (see
:mod:`mllm_da.synthesis.cache`), so a rerun, a later stage, or ``train.py data_mix=synthetic`` reuses whatever is
already there, and a crash loses at most the batch in flight (synthesis and the LLM filter are resumable).

Stages, in order (``stage=`` stops after the named one), each in its own module:

1. ``seed`` + ``tune`` (:mod:`~mllm_da.synthesis.tuning`): only for a synthesizer preset that needs tuning.
2. ``synthesize`` (:mod:`~mllm_da.synthesis.generate`): generation for every image-caption record, then parsing
   and triplet extraction.
3. ``filter`` (:mod:`~mllm_da.synthesis.finishing`): the consistency filter's label for every triplet.
4. ``format`` (:mod:`~mllm_da.synthesis.finishing`): single-stage, caption-only and synthetic-only training files.

``synth.py`` runs the chain through :func:`mllm_da.orchestration.synth.synthesize`; ``data_mix=synthetic``
through :func:`mllm_da.synthesis.task_file.synthetic_task_file`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from mllm_da.data.domain import prepare_domain
from mllm_da.synthesis import filter as consistency
from mllm_da.synthesis.cache import digest
from mllm_da.synthesis.finishing import filter_stage, format_stage
from mllm_da.synthesis.generate import synthesize_stage
from mllm_da.synthesis.inputs import DomainInputs, read_domain_inputs
from mllm_da.synthesis.quality import SynthesizedTask, format_quality_table, grounding, quality_report
from mllm_da.synthesis.stage import StageOutcome
from mllm_da.synthesis.tuning import needs_tuning, seed_stage, tune_stage
from mllm_da.utils.io import read_jsonl_tolerant

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    stages: dict[str, StageOutcome] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    complete: bool = True
    #: what was read of the image-caption file: path, read / kept / rejected (+ beyond_limit), reasons, rejects
    inputs: dict[str, Any] = field(default_factory=dict)


def filter_is_sharded(cfg: DictConfig) -> bool:
    """A filter shard job (``filter.shard_index``) or the filter's merge step (``filter.merge_only``)."""
    return cfg.filter.get("shard_index") is not None or bool(cfg.filter.get("merge_only", False))


def _rate(part: Any, whole: Any) -> float | None:
    return round(part / whole, 4) if whole else None


def collect_metrics(result: PipelineResult) -> dict[str, Any]:
    """The yield numbers: parse rate, triplet rate, filter yield, per-label counts, throughput, tuning loss."""
    metrics: dict[str, Any] = {}
    stages = result.stages
    if "tune" in stages:
        tune = stages["tune"].meta
        metrics["tune_loss_first"] = tune["metrics"].get("train/loss_first")
        metrics["tune_loss_last"] = tune["metrics"].get("train/loss_last")
        metrics["tune_steps"] = tune.get("global_step")
        metrics["tune_wall_time_s"] = tune.get("wall_time_s")
    if "synthesize" in stages:
        s = stages["synthesize"].meta["stats"]
        records = s.get("records", 0)
        metrics.update(
            {
                "records": records,
                "parsed": s.get("parsed", 0),
                "parse_rate": _rate(s.get("parsed", 0), records),
                "triplets": s.get("triplets", 0),
                "triplet_rate": _rate(s.get("triplets", 0), records),
                "finished_rate": _rate(s.get("finished", 0), records),
                "qa_pairs_per_record": _rate(s.get("qa_pairs", 0), records),
                "image_errors": s.get("image_errors", 0),
                "failed_records": s.get("failed", 0),
            }
        )
        metrics.update({k: v for k, v in stages["synthesize"].meta["throughput"].items() if v is not None})
        if "rules" in stages["synthesize"].meta:  # the rule synthesizer: tasks written and the shortfall
            metrics["rules"] = stages["synthesize"].meta["rules"]
    if "filter" in stages:
        f = stages["filter"].meta["stats"]
        metrics.update(
            {
                "kept": f["kept"],
                "filter_yield": _rate(f["kept"], f["triplets"]),
                "kept_rate": _rate(f["kept"], metrics.get("records")),
                "labels": f["labels"],
            }
        )
        if "self_check" in f:
            check = f["self_check"]
            metrics["self_check_agreement"] = _rate(check["agreed"], check["checked"])
    if "format" in stages:
        metrics.update({f"format_{k}": v for k, v in stages["format"].meta["stats"].items()})
    return metrics


def run_pipeline(cfg: DictConfig, stop_after: str | None = None) -> PipelineResult:
    """Run (or reuse) every stage up to ``stop_after`` (default ``cfg.stage``); ``cfg`` has passed
    ``check_synth_config``."""
    stop_after = stop_after or cfg.stage
    result = PipelineResult()
    tuned = None
    if needs_tuning(cfg) or stop_after == "tune_synthesizer":
        result.stages["seed"], seed_files = seed_stage(cfg)
        tuned = result.stages["tune"] = tune_stage(cfg, result.stages["seed"], seed_files)
        result.files["synthesizer"] = tuned.meta["export"]
    if stop_after == "tune_synthesizer":
        result.metrics = collect_metrics(result)
        return result
    prepare_domain(cfg.domain)
    data = read_domain_inputs(cfg)
    result.inputs = {
        "path": str(cfg.domain.image_caption_pairs),
        **data.counts,
        "reasons": dict(data.skipped),
        "rejects_path": str(data.rejects_path) if data.rejects_path else None,
    }
    # a filter shard job or merge step judges a merged synthesis: it never generates (refused, naming the synthesis
    # shards, while one is missing)
    judges_shards = stop_after in ("filter", "all") and filter_is_sharded(cfg)
    synth = synthesize_stage(cfg, data, tuned, merge_only=judges_shards)
    if synth is None:
        result.complete = False
        result.metrics = collect_metrics(result)
        return result
    result.stages["synthesize"] = synth
    result.files["generations"] = str(synth.dir.path / "generations.jsonl")
    result.files["parsed"] = str(synth.dir.path / "parsed.jsonl")
    if stop_after in ("filter", "all"):
        judged = filter_stage(cfg, synth)
        if judged is None:  # a filter shard job while other filter shards are unfinished
            result.complete = False
            result.metrics = collect_metrics(result)
            return result
        result.stages["filter"] = judged
        result.files["judgements"] = str(judged.dir.path / "judgements.jsonl")
        if stop_after == "all":
            formatted = result.stages["format"] = format_stage(cfg, data, judged, synth)
            result.files.update(formatted.meta["files"])
    result.metrics = collect_metrics(result)
    rules = result.metrics.get("rules")
    if rules and rules["short_records"]:  # logged on every run, a reused stage's too
        log.warning(
            "rules: %d of %d captions support fewer than %d question templates (%d tasks short, %d with "
            "none); docs/synthesis.md lists the templates",
            rules["short_records"],
            rules["records"],
            rules["questions"],
            rules["missing_tasks"],
            rules["records_without_task"],
        )
    if stop_after in ("filter", "all"):
        result.metrics["quality"] = synthesis_quality(cfg, data, synth, result.stages["filter"], tuned)
        log.info(
            "synthetic data quality (all triplets):\n%s",
            format_quality_table(result.metrics["quality"]["all"]),
        )
    return result


def _tasks(parsed: Sequence[dict[str, Any]], data: DomainInputs, judged: StageOutcome | None) -> list[SynthesizedTask]:
    """The triplets of a synthesize stage's parsed rows with their captions and (when filtered) the filter's
    labels."""
    captions = {it.id: it.caption for it in data.inputs}
    labels = (
        {}
        if judged is None
        else {r["id"]: r["label"] for r in read_jsonl_tolerant(judged.dir.path / "judgements.jsonl")}
    )
    return [
        SynthesizedTask(
            row["id"],
            captions.get(row["id"], ""),
            t["Q"],
            t["precise_A"],
            t["informative_A"],
            labels.get(row["id"]),
        )
        for row in parsed
        if (t := row.get("triplet"))
    ]


def _first_pairs(parsed: Iterable[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Each record's (question, precise answer) of its triplet, else its first generated pair, else empty."""
    out = {}
    for row in parsed:
        triplet, qa = row.get("triplet"), row.get("qa") or []
        out[row["id"]] = (triplet["Q"], triplet["precise_A"]) if triplet else tuple(qa[0]) if qa else ("", "")
    return out


def synthesis_quality(
    cfg: DictConfig,
    data: DomainInputs,
    synth: StageOutcome,
    judged: StageOutcome | None,
    tuned: StageOutcome | None,
) -> dict[str, Any]:
    """Quality of the synthetic set (mllm_da.synthesis.quality): of every triplet (with the filter judged against
    the toy truth), of the kept ones, and the grounding control: the first ``quality.blind_sample`` records
    synthesized again with each image swapped for the next record's (a cached stage of its own)."""
    parsed = list(read_jsonl_tolerant(synth.dir.path / "parsed.jsonl"))
    tasks = _tasks(parsed, data, judged)
    kept = [t for t in tasks if t.label is None or consistency.is_kept(t.label)]
    report: dict[str, Any] = {"all": quality_report(tasks), "kept": quality_report(kept)}
    sample = int(cfg.get("quality", {}).get("blind_sample", 0) or 0)
    ordered = sorted(data.inputs, key=lambda it: it.id)[:sample]
    # the control generates: not in one shard's job, nor in the merge step (which generates nothing)
    generates_here = (
        cfg.synthesis.get("shard_index") is None
        and not cfg.synthesis.get("merge_only", False)
        and not filter_is_sharded(cfg)
    )
    if len(ordered) >= 2 and generates_here:
        swapped = [dataclasses.replace(it, image=ordered[(i + 1) % len(ordered)].image) for i, it in enumerate(ordered)]
        blind_data = dataclasses.replace(data, inputs=swapped, digest=digest({"blind": data.digest, "n": len(swapped)}))
        blind = synthesize_stage(cfg, blind_data, tuned)
        if blind is not None:
            original = _first_pairs(parsed)
            report["grounding"] = grounding(
                {it.id: original.get(it.id, ("", "")) for it in ordered},
                _first_pairs(read_jsonl_tolerant(blind.dir.path / "parsed.jsonl")),
            )
            report["all"]["grounding"] = report["grounding"]
    return report
