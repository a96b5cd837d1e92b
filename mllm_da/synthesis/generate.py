"""The ``synthesize`` stage: generation (or the rules) for every image-caption record, merged by record id,
then parsed into question-answer pairs and triplets."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mllm_da.backbones.loading import family_class
from mllm_da.synthesis.batches import BatchLog, IncompleteError, merge_batches
from mllm_da.synthesis.cache import StageDir, folder_fingerprint
from mllm_da.synthesis.inputs import DomainInputs
from mllm_da.synthesis.parse import LLAMA3, ParseFormat, extract_triplet, parse_output
from mllm_da.synthesis.requests import SelfCheck
from mllm_da.synthesis.rules import RULES_VERSION, render_output, rule_pairs
from mllm_da.synthesis.runner import SynthesisJob, run_in_processes, run_job
from mllm_da.synthesis.sampling import SamplingConfig
from mllm_da.synthesis.stage import VERSIONS, StageOutcome, config_container, run_stage
from mllm_da.utils.devices import resolve_device
from mllm_da.utils.io import atomic_write_jsonl, read_jsonl_tolerant

log = logging.getLogger(__name__)


def backbone_kwargs(cfg: DictConfig, tuned: StageOutcome | None) -> tuple[dict[str, Any], Any]:
    """load_backbone keywords for the synthesizer, and what identifies its weights for the cache key."""
    kwargs = {k: v for k, v in config_container(cfg.model.backbone).items() if k != "_target_"}
    checkpoint = cfg.synthesizer.get("checkpoint")
    if tuned is not None:
        kwargs.update(variant="pretrained", source=tuned.meta["export"])
        identity: Any = {"tune": tuned.dir.key}
    elif checkpoint:  # a folder (check_synth_config)
        kwargs.update(variant="pretrained", source=str(checkpoint))
        identity = {"folder": folder_fingerprint(checkpoint)}
    elif kwargs.get("variant") == "pretrained" and kwargs.get("source") and Path(kwargs["source"]).is_dir():
        identity = {"folder": folder_fingerprint(kwargs["source"])}
    else:
        identity = {"source": kwargs.get("source"), "variant": kwargs.get("variant")}
    spec = {k: v for k, v in kwargs.items() if k not in ("cache_dir", "source")}
    return kwargs, {"weights": identity, "spec": spec}


def sampling_settings(cfg: DictConfig) -> dict[str, Any]:
    """``synthesis.sampling`` as SamplingConfig fields (validated), or {} for greedy decoding."""
    node = config_container(cfg.synthesis.get("sampling") or {})
    config = SamplingConfig(
        temperature=float(node.get("temperature", 0.0)),
        top_p=float(node.get("top_p", 1.0)),
        seed=int(node.get("seed", cfg.seed)),
        greedy_answers=bool(node.get("greedy_answers", False)),
    )
    if config.greedy_answers and backend(cfg) != "hf":
        raise ValueError(
            "synthesis.sampling.greedy_answers: only synthesis.backend=hf decodes so (vLLM samples a request "
            "with one setting throughout)"
        )
    settings = {} if config.greedy else dataclasses.asdict(config)
    if not config.greedy_answers:  # sets sampled before the option existed keep their cache keys
        settings.pop("greedy_answers", None)
    return settings


def first_hint(cfg: DictConfig) -> str | None:
    """``synthesis.first_hint`` (null: the synthesizer picks; the rule synthesizer writes its own order)."""
    hint = cfg.synthesis.get("first_hint")
    if hint is not None and cfg.synthesizer.kind == "rules":
        raise ValueError("synthesis.first_hint: the rule synthesizer writes its own turns; set it to null")
    return None if hint is None else str(hint)


def self_check(cfg: DictConfig) -> SelfCheck | None:
    """``synthesis.self_check``: None when off; refused for the rule synthesizer (no model to ask)."""
    node = cfg.synthesis.get("self_check") or {}
    if not node.get("enabled", False):
        return None
    if cfg.synthesizer.kind == "rules":
        raise ValueError("synthesis.self_check: the rule synthesizer has no model to ask again; set enabled=false")
    return SelfCheck(parse_format(cfg), int(node.get("max_new_tokens", 32)))


def backend(cfg: DictConfig) -> str:
    """``synthesis.backend``: hf (transformers' generate) or vllm."""
    return str(cfg.synthesis.get("backend") or "hf")


def vllm_settings(node: Any) -> dict[str, Any]:
    """A ``vllm`` settings node (synthesis.vllm, filter.vllm) as a plain dict for ``engines.engine_kwargs``."""
    return dict(config_container(node) or {})


def parse_format(cfg: DictConfig) -> ParseFormat:
    """The synthesizer's delimiters from its chat format (no model load); the rule synthesizer writes Llama-3's."""
    reference_cut = bool(cfg.synthesis.get("reference_answer_cut", False))
    if cfg.synthesizer.kind == "rules":
        return dataclasses.replace(LLAMA3, reference_cut=reference_cut)
    backbone = cfg.model.backbone
    chat = dataclasses.replace(
        family_class(backbone.family).default_format, **config_container(backbone.chat_format or {})
    )
    return dataclasses.replace(ParseFormat.from_chat_format(chat), reference_cut=reference_cut)


def _parse_rows(
    rows: Sequence[dict[str, Any]], fmt: ParseFormat, self_checked: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    parsed_rows: list[dict[str, Any]] = []
    stats: Counter[str] = Counter()
    for row in rows:
        text = row.get("text")
        pairs = parse_output(text, fmt) if text is not None else []
        triplet = extract_triplet(pairs)
        stats["records"] += 1
        stats["image_errors"] += row.get("error") is not None and not row.get("failed")
        stats["failed"] += bool(row.get("failed"))  # generation failed after retries (batches.attempt_batch)
        stats["finished"] += bool(row.get("finished"))
        stats["parsed"] += bool(pairs)
        stats["qa_pairs"] += len(pairs)
        stats["triplets"] += triplet is not None
        parsed_rows.append(
            {
                "id": row["id"],
                "qa": [[p.question, p.answer] for p in pairs],
                "triplet": triplet.as_fields() if triplet else None,
                "finished": bool(row.get("finished")),
                "error": row.get("error"),
            }
        )
        if self_checked:  # the synthesizer's second, direct answer to the triplet's question (None: no triplet)
            parsed_rows[-1]["self_check"] = row.get("self_check")
    return parsed_rows, dict(stats)


def _throughput(runs_file: Path) -> dict[str, float]:
    runs = list(read_jsonl_tolerant(runs_file))
    records = sum(r["records"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    tokens = sum(r["new_tokens"] for r in runs)
    return {
        "generated_records": records,
        "generation_seconds": round(seconds, 3),
        "records_per_s": round(records / seconds, 4) if seconds else None,
        "new_tokens_per_s": round(tokens / seconds, 2) if seconds else None,
    }


def rule_questions(cfg: DictConfig) -> int:
    """``synthesizer.questions`` of the rule synthesizer (null: the preset's default, 3)."""
    return int(cfg.synthesizer.get("questions") or 3)


def rule_shortfall(written: Sequence[int], questions: int) -> dict[str, int]:
    """How far the rule synthesizer fell short of ``questions`` tasks per caption: a caption supports only the
    templates it has phrases for (docs/synthesis.md), so a short caption gets fewer tasks, and that is counted."""
    short = [questions - n for n in written if n < questions]
    return {
        "questions": questions,
        "records": len(written),
        "tasks": sum(written),
        "short_records": len(short),
        "missing_tasks": sum(short),
        "records_without_task": sum(n == 0 for n in written),
    }


def synthesize_stage(
    cfg: DictConfig, data: DomainInputs, tuned: StageOutcome | None, merge_only: bool = False
) -> StageOutcome | None:
    """Generate (or apply the rules), merge by record id, parse. ``None`` while other shards are unfinished.
    ``merge_only`` (or ``synthesis.merge_only``): generate nothing, merge the shards' batches or refuse."""
    settings = cfg.synthesis
    fmt = parse_format(cfg)
    hint = first_hint(cfg)
    check = self_check(cfg)
    kwargs: dict[str, Any]
    if cfg.synthesizer.kind == "rules":
        kwargs, identity = {}, {"rules": rule_questions(cfg), "rules_version": RULES_VERSION}
        generation: dict[str, Any] = {}
    else:
        kwargs, identity = backbone_kwargs(cfg, tuned)
        generation = {"batch_size": int(settings.batch_size), "max_new_tokens": int(settings.max_new_tokens)}
        sampling = sampling_settings(cfg)
        if sampling:  # greedy keeps the keys synthesized sets had before sampling existed
            generation["sampling"] = sampling
        if backend(cfg) != "hf":  # another engine's kernels may pick other tokens: its own folder (hf keeps its keys)
            generation["backend"] = backend(cfg)
        if hint:  # sets whose synthesizer picked its first hint keep their keys
            generation["first_hint"] = hint
        if check is not None:  # sets without a self-check keep their keys
            generation["self_check"] = {"max_new_tokens": check.max_new_tokens}
    payload = {
        "version": VERSIONS["synthesize"],
        "inputs": data.digest,
        "synthesizer": identity,
        "generation": generation,
        "format": dataclasses.asdict(fmt),
    }
    stage = StageDir.for_stage(cfg.paths.cache_dir, "synthesize", payload)

    def finish(rows: list[dict[str, Any]], throughput: dict[str, Any]) -> dict[str, Any]:
        atomic_write_jsonl(stage.path / "generations.jsonl", rows)
        parsed, stats = _parse_rows(rows, fmt, check is not None)
        atomic_write_jsonl(stage.path / "parsed.jsonl", parsed)
        return {"stats": stats, "throughput": throughput, "skipped_inputs": data.skipped}

    if cfg.synthesizer.kind == "rules":

        def compute_rules() -> dict[str, Any]:
            start = time.perf_counter()
            questions = rule_questions(cfg)
            rows, written = [], []
            for it in sorted(data.inputs, key=lambda it: it.id):
                pairs = rule_pairs(it.id, it.caption, questions)
                written.append(len({question for _, question, _ in pairs}))
                rows.append(
                    {
                        "id": it.id,
                        "text": render_output(pairs, fmt),
                        "finished": True,
                        "new_tokens": 0,
                        "error": None,
                    }
                )
            seconds = time.perf_counter() - start
            meta = finish(
                rows,
                {
                    "generated_records": len(rows),
                    "generation_seconds": round(seconds, 3),
                    "records_per_s": round(len(rows) / seconds, 2) if seconds else None,
                },
            )
            meta["rules"] = rule_shortfall(written, questions)
            return meta

        return run_stage("synthesize", stage, compute_rules)

    num_shards = int(settings.num_shards)
    shard_index = settings.get("shard_index")
    job = SynthesisJob(
        backbone=kwargs,
        inputs=data.inputs,
        folder=str(stage.path),
        batch_size=int(settings.batch_size),
        max_new_tokens=int(settings.max_new_tokens),
        num_shards=num_shards,
        shards=[int(shard_index)] if shard_index is not None else list(range(num_shards)),
        device=resolve_device(settings.device),
        threads=settings.get("threads"),
        progress=settings.get("progress", "auto"),
        sampling=sampling_settings(cfg),
        backend=backend(cfg),
        vllm=vllm_settings(cfg.synthesis.get("vllm")),
        retries=int(settings.get("batch_retries", 2)),
        first_hint=hint,
        self_check=check.to_json() if check is not None else {},
    )
    processes = int(settings.get("processes") or 1)
    merge_only = merge_only or bool(settings.get("merge_only", False))

    def generate() -> None:
        if processes > 1 or job.backend == "vllm":  # a vLLM engine in a process of its own returns its GPU memory
            count = torch.cuda.device_count() if job.device.startswith("cuda") else 0
            devices = [f"cuda:{i}" for i in range(count)] or [job.device]
            run_in_processes(job, devices, processes)
        else:
            run_job(job)

    def merge() -> dict[str, Any]:
        plan = json.loads((stage.path / "plan.json").read_text(encoding="utf-8"))["batches"]
        rows = merge_batches(BatchLog(stage.path, "generations"), plan, [it.id for it in data.inputs], num_shards)
        return finish(rows, _throughput(stage.path / "runs.jsonl"))

    if merge_only:  # the merge step after shards ran elsewhere (other jobs or nodes): refuses while any is missing
        if not stage.is_complete() and not (stage.path / "plan.json").exists():
            raise IncompleteError(
                f"{stage.path}: no shard of this synthesis has started (no plan.json); run the shards first "
                f"(synthesis.num_shards={num_shards} synthesis.shard_index=0..{num_shards - 1}) with the same settings"
            )
        return run_stage("synthesize", stage, merge)

    if shard_index is None:

        def compute() -> dict[str, Any]:
            generate()
            return merge()

        return run_stage("synthesize", stage, compute)
    # one shard of several (one process per GPU): no lock while generating, then merge if every shard is done
    if not stage.is_complete():
        generate()
    try:
        return run_stage("synthesize", stage, merge)
    except IncompleteError as err:
        log.info("shard %s done; %s", shard_index, err)
        return None
