"""The stages after generation: the consistency filter's label for every triplet (``filter``) and the training
files of the kept ones (``format``: single-stage, caption-only and synthetic-only)."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mllm_da.data.records import write_sharegpt
from mllm_da.synthesis import filter as consistency
from mllm_da.synthesis.batches import IncompleteError
from mllm_da.synthesis.cache import StageDir, file_digest, folder_fingerprint
from mllm_da.synthesis.formatting import FormattedTask, build_training_sets, format_triplet, load_templates
from mllm_da.synthesis.inputs import DomainInputs
from mllm_da.synthesis.judging import (
    SHARDING_KEYS,
    FilterJob,
    judge_in_processes,
    judge_shards,
    make_judge,
    merged_labels,
    run_filter_job,
    triplet_rows,
)
from mllm_da.synthesis.parse import Triplet
from mllm_da.synthesis.stage import VERSIONS, StageOutcome, config_container, run_stage
from mllm_da.utils.devices import resolve_device
from mllm_da.utils.io import atomic_write_jsonl, read_jsonl_tolerant

log = logging.getLogger(__name__)

#: make_judge moved to judging.py with the sharded filter; importable from here as before
__all__ = ["filter_stage", "format_stage", "llm_labels", "make_judge"]


def filter_stage(cfg: DictConfig, synth: StageOutcome) -> StageOutcome | None:
    """Every triplet's label. The ``llm`` judge shards like synthesis (``filter.processes`` here,
    ``filter.shard_index`` as one job of several, ``filter.merge_only`` to merge); ``None`` while another shard is
    unfinished."""
    settings = config_container(cfg.filter)
    backend = settings["backend"]
    # engine and sharding settings do not change labels: they stay out of the key, so judgements keep their folders
    unkeyed = ("engine", "vllm", "batch_retries", *SHARDING_KEYS)
    keyed = {k: v for k, v in settings.items() if k not in unkeyed}
    if settings.get("engine") == "vllm":
        keyed["engine"] = "vllm"
    payload: dict[str, Any] = {"version": VERSIONS["filter"], "synthesize": synth.dir.key, "filter": keyed}
    if backend == "llm":
        if settings.get("prompt_file"):
            payload["prompt"] = file_digest(settings["prompt_file"])
        source = settings["model"].get("source")
        if settings["model"]["variant"] == "pretrained" and source and Path(source).is_dir():
            payload["judge"] = folder_fingerprint(source)
    stage = StageDir.for_stage(cfg.paths.cache_dir, "filter", payload)
    parsed_file = synth.dir.path / "parsed.jsonl"

    def judged(labels_of: Callable[[list[dict[str, Any]], list[Triplet]], list[str]]) -> Callable[[], dict[str, Any]]:
        def compute() -> dict[str, Any]:
            rows, triplets = triplet_rows(parsed_file)
            labels = labels_of(rows, triplets)
            stats: dict[str, Any] = {}
            agrees = [consistency.self_check_agrees(r, t) for r, t in zip(rows, triplets)]
            checked = [a for a in agrees if a is not None]
            if checked:  # synthesized with synthesis.self_check
                stats["self_check"] = {"checked": len(checked), "agreed": sum(checked)}
                if backend != "none":
                    labels = [consistency.self_checked_label(lab, a) for lab, a in zip(labels, agrees)]
            out = [{"id": r["id"], "label": lab, "kept": consistency.is_kept(lab)} for r, lab in zip(rows, labels)]
            atomic_write_jsonl(stage.path / "judgements.jsonl", out)
            kept = sum(j["kept"] for j in out)
            return {"stats": {"triplets": len(out), "kept": kept, "labels": consistency.label_counts(labels), **stats}}

        return compute

    if backend == "none":
        return run_stage("filter", stage, judged(lambda rows, _: [consistency.UNFILTERED] * len(rows)))
    if backend == "heuristic":
        return run_stage("filter", stage, judged(lambda _, ts: [consistency.heuristic_label(t) for t in ts]))
    # llm (check_synth_config refuses other backends)
    num_shards = int(settings.get("num_shards") or 1)
    shard_index = settings.get("shard_index")
    processes = int(settings.get("processes") or 1)

    def merged(rows: list[dict[str, Any]], triplets: list[Triplet]) -> list[str]:
        return merged_labels(settings, stage.path, [r["id"] for r in rows], triplets, num_shards)

    if settings.get("merge_only"):  # the merge step after shard jobs: refuses, naming them, while any is missing
        return run_stage("filter", stage, judged(merged))
    if shard_index is None and processes == 1 and settings.get("engine") != "vllm":
        return run_stage("filter", stage, judged(lambda rows, ts: llm_labels(cfg, settings, stage, rows, ts)))
    job = FilterJob(
        settings=dict(settings),
        cache_dir=str(cfg.paths.cache_dir),
        parsed_file=str(parsed_file),
        folder=str(stage.path),
        num_shards=num_shards,
        shards=[int(shard_index)] if shard_index is not None else list(range(num_shards)),
        device=resolve_device(settings.get("device", "auto")),
        progress=cfg.synthesis.get("progress", "auto"),
    )

    def judge() -> None:  # a vLLM judge in a process of its own returns its GPU memory before the next stage
        count = torch.cuda.device_count() if job.device.startswith("cuda") else 0
        judge_in_processes(job, [f"cuda:{i}" for i in range(count)] or [job.device], processes)

    if shard_index is None:

        def judge_all(rows: list[dict[str, Any]], triplets: list[Triplet]) -> list[str]:
            judge()
            return merged(rows, triplets)

        return run_stage("filter", stage, judged(judge_all))
    # one shard job of several: no lock while judging, then merge if every shard is done
    if not stage.is_complete() and job.settings.get("engine") == "vllm":
        judge()
    elif not stage.is_complete():
        run_filter_job(job)
    try:
        return run_stage("filter", stage, judged(merged))
    except IncompleteError as err:
        log.info("filter shard %s done; %s", shard_index, err)
        return None


def llm_labels(
    cfg: DictConfig,
    settings: Mapping[str, Any],
    stage: StageDir,
    rows: list[dict[str, Any]],
    triplets: list[Triplet],
) -> list[str]:
    """Judge every batch here, in resumable batches (the synthesis batch log), ordered by prompt length."""
    ids = [r["id"] for r in rows]
    judge_shards(
        settings, str(cfg.paths.cache_dir), stage.path, ids, triplets, progress=cfg.synthesis.get("progress", "auto")
    )
    return merged_labels(settings, stage.path, ids, triplets, 1)


def format_stage(cfg: DictConfig, data: DomainInputs, judged: StageOutcome, synth: StageOutcome) -> StageOutcome:
    settings = config_container(cfg.formatting)
    payload: dict[str, Any] = {
        "version": VERSIONS["format"],
        "filter": judged.dir.key,
        "inputs": data.digest,
        "formatting": settings,
    }
    if settings.get("templates_file"):
        payload["templates"] = file_digest(settings["templates_file"])
    stage = StageDir.for_stage(cfg.paths.cache_dir, "format", payload)

    def compute() -> dict[str, Any]:
        templates = load_templates(settings.get("templates_file"))
        kept = {j["id"] for j in read_jsonl_tolerant(judged.dir.path / "judgements.jsonl") if j["kept"]}
        tasks: dict[str, FormattedTask] = {}
        empty = 0
        for row in read_jsonl_tolerant(synth.dir.path / "parsed.jsonl"):
            if row["id"] not in kept:
                continue
            task = format_triplet(
                Triplet.from_fields(row["triplet"]), row["id"], templates, bool(settings.get("inverse_tasks"))
            )
            if task.instruction and task.response:
                tasks[row["id"]] = task
            else:
                empty += 1
        out = build_training_sets(data.captions, tasks)
        files = {}
        for name in ("single_stage", "caption_only", "synthetic_only"):
            files[name] = str(write_sharegpt(stage.path / f"{name}.json", getattr(out, name), data.image_root))
        atomic_write_jsonl(stage.path / "tasks.jsonl", [{"id": k, **dataclasses.asdict(v)} for k, v in tasks.items()])
        branches = Counter(t.branch for t in tasks.values())
        return {
            "files": files,
            "stats": {
                "synthetic_tasks": len(tasks),
                "empty_after_cleaning": empty,
                "inverse_tasks": sum(t.inverse for t in tasks.values()),
                "branches": dict(sorted(branches.items())),
                "single_stage": len(out.single_stage),
                "caption_only": len(out.caption_only),
                "synthetic_only": len(out.synthetic_only),
            },
        }

    return run_stage("format", stage, compute)
