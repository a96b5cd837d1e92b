"""The LLM consistency filter's judging in resumable, shardable batches: the synthesis batch log
(:mod:`mllm_da.synthesis.batches`) with the judge as the work, so sharding, retries, resumption and the merge's
refusal are the same code as synthesis's.

The triplets' prompts are planned into batches by (prompt length, record id) and batch ``b`` belongs to shard
``b % filter.num_shards``; the plan depends on the synthesized triplets, the prompt and ``filter.batch_size`` only
(all in the filter stage's cache key), so every shard job, process or rerun plans the same batches. Each finished
batch is one fsynced line of ``judgements-shard<i>.jsonl`` in the filter stage's folder; the merge takes the union
and refuses, naming shards and batches, while any is missing.

``python -m mllm_da.synthesis.judging JOB.json`` runs one :class:`FilterJob` in its own process: how
``filter.processes`` spreads shards over processes or GPUs (a vLLM judge always runs in one, so that its GPU
memory is returned before the next stage).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mllm_da.synthesis import filter as consistency
from mllm_da.synthesis.batches import BatchLog, merge_batches, plan_batches, run_batches
from mllm_da.synthesis.engines import VLLMJudge
from mllm_da.synthesis.parse import Triplet
from mllm_da.synthesis.runner import run_shard_workers, vllm_process_gpus
from mllm_da.utils.devices import resolve_device
from mllm_da.utils.io import read_jsonl_tolerant
from mllm_da.utils.progress import progress_bar

log = logging.getLogger(__name__)

#: the filter settings that say where judging runs, not what it labels: never part of the filter's cache key
SHARDING_KEYS = ("num_shards", "shard_index", "processes", "merge_only")


@dataclass
class FilterJob:
    """Everything one process needs to judge its shards (JSON-able, so it can cross a process boundary)."""

    #: the ``filter`` node (resolved)
    settings: dict[str, Any]
    cache_dir: str
    #: the synthesize stage's parsed.jsonl (its rows with a triplet are judged)
    parsed_file: str
    #: the filter stage's folder (the batch log)
    folder: str
    num_shards: int = 1
    shards: list[int] = field(default_factory=lambda: [0])
    #: the transformers judge's device (a vLLM judge uses the GPUs this process sees)
    device: str = "cpu"
    progress: bool | str = "auto"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def triplet_rows(parsed_file: str | Path) -> tuple[list[dict[str, Any]], list[Triplet]]:
    """The parsed rows that hold a triplet, and their triplets, in file order."""
    rows = [r for r in read_jsonl_tolerant(Path(parsed_file)) if r["triplet"] is not None]
    return rows, [Triplet.from_fields(r["triplet"]) for r in rows]


def judge_plan(
    settings: Mapping[str, Any], ids: Sequence[str], triplets: Sequence[Triplet]
) -> tuple[list[str], list[list[int]]]:
    """The filter prompts and their batch plan (fixed by the triplets, the prompt and ``filter.batch_size``)."""
    template = consistency.load_prompt(settings.get("prompt_file"))
    prompts = [consistency.build_prompt(template, t) for t in triplets]
    return prompts, plan_batches([len(p) for p in prompts], ids, int(settings["batch_size"]))


def make_judge(settings: Mapping[str, Any], cache_dir: str, device: str | None = None) -> Any:
    """The ``llm`` filter's judge on its engine (``filter.engine``: hf on ``device``, default ``filter.device``,
    or vllm with ``filter.vllm`` settings)."""
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
    return consistency.load_judge(settings, cache_dir, device or resolve_device(settings.get("device", "auto")))


def judge_shards(
    settings: Mapping[str, Any],
    cache_dir: str,
    folder: str | Path,
    ids: Sequence[str],
    triplets: Sequence[Triplet],
    *,
    shards: Sequence[int] = (0,),
    num_shards: int = 1,
    device: str | None = None,
    progress: bool | str = "auto",
) -> int:
    """Judge every unfinished batch of ``shards`` into ``folder``'s batch log (the judge is loaded only when a
    batch is left); returns how many batches this call did."""
    prompts, plan = judge_plan(settings, ids, triplets)
    batch_log = BatchLog(folder, "judgements")
    lines = batch_log.lines()
    todo = sum(
        len(b) for i, b in enumerate(plan) if i % num_shards in shards and (i not in lines or lines[i]["failed"])
    )
    bar = progress_bar(
        todo, "consistency filter" + (f" shards {list(shards)}" if num_shards > 1 else ""), "triplet", progress
    )
    judge: Any = None

    def work(indices: list[int]) -> list[dict[str, Any]]:
        nonlocal judge
        if judge is None:
            judge = make_judge(settings, cache_dir, device)
        labels = judge.labels([prompts[i] for i in indices])
        bar.update(len(indices))
        return [{"id": ids[i], "label": lab} for i, lab in zip(indices, labels)]

    def failed_row(i: int, error: str) -> dict[str, Any]:
        bar.update(1)
        return {"id": ids[i], "label": consistency.FAILED, "error": error}

    with bar:
        return run_batches(
            batch_log,
            plan,
            work,
            list(shards),
            num_shards,
            retries=int(settings.get("batch_retries", 2)),
            failed_row=failed_row,
        )


def merged_labels(
    settings: Mapping[str, Any], folder: str | Path, ids: Sequence[str], triplets: Sequence[Triplet], num_shards: int
) -> list[str]:
    """Every triplet's label in ``ids`` order; :class:`~mllm_da.synthesis.batches.IncompleteError` naming the
    shards and batches still missing."""
    _, plan = judge_plan(settings, ids, triplets)
    merged = {row["id"]: row["label"] for row in merge_batches(BatchLog(folder, "judgements"), plan, ids, num_shards)}
    return [merged[i] for i in ids]


def judge_in_processes(job: FilterJob, devices: Sequence[str], processes: int) -> None:
    """One worker process per shard group (``python -m mllm_da.synthesis.judging``), each with its own judge: on
    ``devices[i % n]`` (transformers) or its own ``filter.vllm.tensor_parallel_size`` GPUs (vLLM)."""
    folder = Path(job.folder)
    vllm_gpus = (
        vllm_process_gpus(
            devices, processes, int((job.settings.get("vllm") or {}).get("tensor_parallel_size") or 1), "filter"
        )
        if job.settings.get("engine") == "vllm"
        else None
    )

    def spec(shards: list[int], device: str) -> dict[str, Any]:
        return FilterJob(**{**asdict(job), "shards": shards, "device": device}).to_json()

    run_shard_workers(
        "mllm_da.synthesis.judging", folder, "judge", job.shards, processes, devices, vllm_gpus, spec, "filter"
    )


def run_filter_job(job: FilterJob) -> int:
    """Judge the job's shards (what a worker process does); returns the batches done."""
    rows, triplets = triplet_rows(job.parsed_file)
    return judge_shards(
        job.settings,
        job.cache_dir,
        job.folder,
        [r["id"] for r in rows],
        triplets,
        shards=job.shards,
        num_shards=job.num_shards,
        device=job.device,
        progress=job.progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mllm_da.synthesis.judging JOB.json``: judge one job's shards."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    job = FilterJob(**json.loads(Path(args[0]).read_text(encoding="utf-8")))
    print(json.dumps({"shards": job.shards, "batches": run_filter_job(job)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
