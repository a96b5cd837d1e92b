"""The stages after generation: the consistency filter's label for every triplet (``filter``) and the training
files of the kept ones (``format``: single-stage, caption-only and synthetic-only)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mllm_da.data.records import write_sharegpt
from mllm_da.synthesis import filter as consistency
from mllm_da.synthesis.batches import BatchLog, merge_batches, plan_batches, run_batches
from mllm_da.synthesis.cache import StageDir, file_digest, folder_fingerprint
from mllm_da.synthesis.engines import VLLMJudge
from mllm_da.synthesis.formatting import FormattedTask, build_training_sets, format_triplet, load_templates
from mllm_da.synthesis.inputs import DomainInputs
from mllm_da.synthesis.parse import Triplet
from mllm_da.synthesis.stage import VERSIONS, StageOutcome, config_container, run_stage
from mllm_da.utils.devices import resolve_device
from mllm_da.utils.io import atomic_write_jsonl, read_jsonl_tolerant
from mllm_da.utils.progress import progress_bar


def filter_stage(cfg: DictConfig, synth: StageOutcome) -> StageOutcome:
    settings = config_container(cfg.filter)
    backend = settings["backend"]
    # engine settings that do not change labels stay out of the key, so hf judgements keep their folders
    keyed = {k: v for k, v in settings.items() if k not in ("engine", "vllm", "batch_retries")}
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

    def compute() -> dict[str, Any]:
        rows = [r for r in read_jsonl_tolerant(synth.dir.path / "parsed.jsonl") if r["triplet"] is not None]
        triplets = [Triplet.from_fields(r["triplet"]) for r in rows]
        if backend == "none":
            labels = [consistency.UNFILTERED] * len(rows)
        elif backend == "heuristic":
            labels = [consistency.heuristic_label(t) for t in triplets]
        else:  # llm (check_synth_config refuses other backends)
            labels = llm_labels(cfg, settings, stage, rows, triplets)
        judged = [{"id": r["id"], "label": lab, "kept": consistency.is_kept(lab)} for r, lab in zip(rows, labels)]
        atomic_write_jsonl(stage.path / "judgements.jsonl", judged)
        kept = sum(j["kept"] for j in judged)
        return {"stats": {"triplets": len(judged), "kept": kept, "labels": consistency.label_counts(labels)}}

    return run_stage("filter", stage, compute)


def llm_labels(
    cfg: DictConfig,
    settings: Mapping[str, Any],
    stage: StageDir,
    rows: list[dict[str, Any]],
    triplets: list[Triplet],
) -> list[str]:
    """Judge in resumable batches (same batch log as synthesis), ordered by prompt length."""
    template = consistency.load_prompt(settings.get("prompt_file"))
    prompts = [consistency.build_prompt(template, t) for t in triplets]
    ids = [r["id"] for r in rows]
    plan = plan_batches([len(p) for p in prompts], ids, int(settings["batch_size"]))
    batch_log = BatchLog(stage.path, "judgements")
    judge: consistency.LLMJudge | VLLMJudge | None = None
    done = set(batch_log.done())
    bar = progress_bar(
        sum(len(b) for i, b in enumerate(plan) if i not in done),
        "consistency filter",
        "triplet",
        cfg.synthesis.get("progress", "auto"),
    )

    def work(indices: list[int]) -> list[dict[str, Any]]:
        nonlocal judge
        if judge is None:
            judge = make_judge(settings, cfg.paths.cache_dir)
        labels = judge.labels([prompts[i] for i in indices])
        bar.update(len(indices))
        return [{"id": ids[i], "label": lab} for i, lab in zip(indices, labels)]

    def failed_row(i: int, error: str) -> dict[str, Any]:
        bar.update(1)
        return {"id": ids[i], "label": consistency.FAILED, "error": error}

    with bar:
        run_batches(batch_log, plan, work, [0], 1, retries=int(settings.get("batch_retries", 2)), failed_row=failed_row)
    merged = {row["id"]: row["label"] for row in merge_batches(batch_log, plan, ids)}
    return [merged[i] for i in ids]


def make_judge(settings: Mapping[str, Any], cache_dir: str) -> consistency.LLMJudge | VLLMJudge:
    """The ``llm`` filter's judge on its engine (``filter.engine``: hf, or vllm with ``filter.vllm`` settings)."""
    engine = settings.get("engine") or "hf"
    if engine == "vllm":
        model = settings["model"]
        return VLLMJudge(
            consistency.judge_source(settings, cache_dir),
            max_new_tokens=int(settings["max_new_tokens"]),
            max_length=int(settings["max_length"]),
            stop_token=settings.get("stop_token"),
            dtype=model.get("dtype") or "float32",
            engine=settings.get("vllm") or {},
        )
    if engine != "hf":
        raise ValueError(f"filter.engine must be hf or vllm, got {engine!r}")
    return consistency.load_judge(settings, cache_dir, resolve_device(settings.get("device", "auto")))


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
