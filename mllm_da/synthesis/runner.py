"""Batched, sharded, resumable synthesis (reference §2.2) and the resumable batch log it shares with the filter.

Prompt: the caption round (user ``<image>\\nDescribe the image.``, assistant: the caption) and an open user header,
rendered by the backbone (:meth:`Backbone.generation_batch`). Decoding: greedy, ``max_new_tokens`` (512 by
default), stopping at the synthesizer's own end-of-text token; the new tokens are decoded with special tokens kept
(the parser needs the headers), cut at the first stop token.

Determinism and resumption. The inputs are planned once into batches (sorted by prompt length, then id), and the
plan is fixed by the inputs and the batch size alone. Batch ``b`` belongs to shard ``b % num_shards``, so every
batch holds the same records (hence the same padding, hence the same greedy tokens) whatever the shard count. A
finished batch is appended as ONE line to its shard file (``<name>-shard<i>.jsonl``) and fsynced; a killed run
leaves at most a torn last line, which the next run cuts off before appending. A rerun reads every shard file,
skips the batches already there and does the rest; the merge takes the union of all batches and sorts by record
id, so it finishes with exactly one result per input however often it was interrupted or resharded.

``python -m mllm_da.synthesis.runner JOB.json`` runs one :class:`SynthesisJob` in its own process: how
``synthesis.processes`` spreads shards over processes or GPUs, and how the kill-and-resume test runs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mllm_da.backbones.generate import new_tokens
from mllm_da.backbones.loading import engine_checkpoint, load_backbone, load_prompt_backbone
from mllm_da.data.images import BadImageError, load_image
from mllm_da.synthesis.batches import (
    BatchLog,
    IncompleteError,
    complete_lines,
    merge_batches,
    plan_batches,
    run_batches,
)
from mllm_da.synthesis.engines import VLLMSynthesizerGenerator
from mllm_da.synthesis.requests import (
    SelfCheck,
    SynthesisInput,
    answer_self_checks,
    empty_row,
    failed_generation_row,
    fill_generated_rows,
    first_turn_prefill,
    synthesizer_prompt,
)
from mllm_da.synthesis.sampling import RecordSeededSampler, SamplingConfig, record_seed
from mllm_da.utils.io import append_jsonl, atomic_write_json, read_json
from mllm_da.utils.progress import progress_bar

log = logging.getLogger(__name__)

#: the batch log and the request types live in batches.py and requests.py; these names stay importable from here
__all__ = [
    "BatchLog",
    "IncompleteError",
    "SynthesisInput",
    "SynthesisJob",
    "SynthesizerGenerator",
    "make_generator",
    "merge_batches",
    "plan_batches",
    "prompt_cost",
    "run_in_processes",
    "run_job",
    "synthesizer_prompt",
]


def prompt_cost(item: SynthesisInput) -> tuple[int, int]:
    """A model-free proxy of the prompt length: image area in 28-px cells (header only), then caption length."""
    from PIL import Image

    try:
        with Image.open(item.image) as image:
            width, height = image.size
    except OSError:
        width = height = 0  # an unreadable image fails in its batch, with a recorded error
    return (width * height) // (28 * 28), len(item.caption)


# --------------------------------------------------------------------------------------------- generation


@dataclass
class SynthesisJob:
    """Everything one process needs to synthesize its shards (JSON-able, so it can cross a process boundary)."""

    backbone: dict[str, Any]
    inputs: list[SynthesisInput]
    folder: str
    batch_size: int = 16
    max_new_tokens: int = 512
    num_shards: int = 1
    shards: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    threads: int | None = None
    #: auto (a bar on a terminal outside CI, else a log line every tenth of the batches), true or false
    progress: bool | str = "auto"
    #: SamplingConfig fields; empty: greedy
    sampling: dict[str, Any] = field(default_factory=dict)
    #: hf (transformers' generate) or vllm (engine settings in ``vllm``: synthesis.vllm)
    backend: str = "hf"
    vllm: dict[str, Any] = field(default_factory=dict)
    #: extra attempts of a failing batch before its records are tried alone (batches.attempt_batch)
    retries: int = 2
    #: synthesis.first_hint: the hint every output is made to start with (null: the synthesizer picks)
    first_hint: str | None = None
    #: synthesis.self_check as SelfCheck.to_json(); empty: off
    self_check: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SynthesisJob:
        data = dict(data)
        data["inputs"] = [SynthesisInput(**row) for row in data["inputs"]]
        return cls(**data)


class SynthesizerGenerator:
    """Synthesizer decoding for a batch of inputs, one result row per input: greedy (the reference), or sampled
    from each record's own seeded stream (:mod:`mllm_da.synthesis.sampling`)."""

    def __init__(
        self,
        backbone: Any,
        max_new_tokens: int = 512,
        device: str = "cpu",
        sampling: SamplingConfig | None = None,
        prefill: str = "",
        self_check: SelfCheck | None = None,
    ) -> None:
        self.backbone = backbone
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling or SamplingConfig()
        self.prefill = prefill
        self.self_check = self_check
        self.device = torch.device(device)
        self.stop_ids = backbone.stop_token_ids(synthesizer=True)
        if not self.stop_ids:
            raise ValueError(f"{backbone.family}: the chat format's synthesizer_end is not a token of the tokenizer")
        backbone.model.to(self.device).eval()
        self.new_tokens = 0

    @torch.inference_mode()
    def __call__(self, items: Sequence[SynthesisInput]) -> list[dict[str, Any]]:
        rows = [empty_row(it.id) for it in items]
        prompts, slots = [], []
        for slot, item in enumerate(items):
            try:
                prompts.append((synthesizer_prompt(item.caption), [load_image(item.image)]))
                slots.append(slot)
            except BadImageError as err:
                rows[slot]["error"] = str(err)
        if not prompts:
            return rows
        batch = self.backbone.generation_batch(prompts, self.prefill)
        sampler = (
            []
            if self.sampling.greedy
            else [
                RecordSeededSampler(
                    self.sampling,
                    [record_seed(self.sampling.seed, items[slot].id) for slot in slots],
                    turn_end_ids=self.backbone.stop_token_ids(),
                )
            ]
        )
        generated = new_tokens(
            self.backbone.model,
            self.backbone.tokenizer,
            batch,
            self.stop_ids,
            self.max_new_tokens,
            logits_processor=sampler,
        )
        self.new_tokens += fill_generated_rows(
            rows, slots, generated, self.stop_ids, self.backbone.tokenizer, self.prefill
        )
        if self.self_check is not None:
            images = {slot: image for slot, (_, (image,)) in zip(slots, prompts)}
            self.new_tokens += answer_self_checks(rows, items, images, self.self_check, self.backbone, self._greedy)
        return rows

    def _greedy(self, prompts: list[tuple[list[Any], Any]], stop_ids: list[int], max_new: int) -> list[list[int]]:
        """Greedy generation of (turns, image) prompts in one batch (the self-check's engine call)."""
        batch = self.backbone.generation_batch([(turns, [image]) for turns, image in prompts])
        return new_tokens(self.backbone.model, self.backbone.tokenizer, batch, stop_ids, max_new)


Generator = SynthesizerGenerator | VLLMSynthesizerGenerator


def make_generator(job: SynthesisJob) -> Generator:
    """The job's engine: transformers' generate on ``job.device``, or one vLLM engine (over the GPUs this process
    sees: ``tensor_parallel_size`` of them)."""
    sampling = SamplingConfig(**job.sampling)
    prefill = first_turn_prefill(job.first_hint)
    self_check = SelfCheck.from_json(job.self_check)
    if job.backend == "vllm":
        backbone = load_prompt_backbone(**job.backbone)
        return VLLMSynthesizerGenerator(
            backbone,
            engine_checkpoint(backbone.spec),
            max_new_tokens=job.max_new_tokens,
            sampling=sampling,
            engine=job.vllm,
            prefill=prefill,
            self_check=self_check,
        )
    if job.backend != "hf":
        raise ValueError(f"synthesis.backend must be hf or vllm, got {job.backend!r}")
    return SynthesizerGenerator(
        load_backbone(**job.backbone), job.max_new_tokens, job.device, sampling, prefill, self_check
    )


def run_job(job: SynthesisJob, generator: Generator | None = None) -> dict[str, Any]:
    """Synthesize the job's shards into ``job.folder``; returns this call's throughput numbers."""
    if job.threads:
        torch.set_num_threads(job.threads)
    if generator is None:
        generator = make_generator(job)
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = load_or_write_plan(folder, job.inputs, job.batch_size)
    log_ = BatchLog(folder, "generations")
    by_index = job.inputs
    start_tokens, start = generator.new_tokens, time.perf_counter()
    records = 0

    def work(indices: list[int]) -> list[dict[str, Any]]:
        nonlocal records
        records += len(indices)
        return generator([by_index[i] for i in indices])

    lines = log_.lines()  # read the batch logs once: they can be large on a resumed run
    todo_records = sum(
        len(plan[b])
        for b in range(len(plan))
        if b % job.num_shards in job.shards and (b not in lines or lines[b]["failed"])
    )
    bar = progress_bar(todo_records, f"synthesis shards {list(job.shards)}", "record", job.progress)

    def progress(n: int, total: int) -> None:
        bar.update(records - bar.n)
        if bar.disable and (n == total or n % max(1, total // 10) == 0):  # no bar: a log line every tenth
            log.info("synthesis shards %s: %d/%d batches", job.shards, n, total)

    with bar:
        batches = run_batches(
            log_,
            plan,
            work,
            job.shards,
            job.num_shards,
            progress,
            retries=job.retries,
            failed_row=lambda i, error: failed_generation_row(by_index[i].id, error),
        )
    seconds = time.perf_counter() - start
    stats = {
        "shards": list(job.shards),
        "batches": batches,
        "records": records,
        "new_tokens": generator.new_tokens - start_tokens,
        "seconds": round(seconds, 3),
        "device": str(job.device),
        "backend": job.backend,
        "batch_size": job.batch_size,
    }
    if batches:
        append_jsonl(folder / "runs.jsonl", [stats])
    return stats


def load_or_write_plan(folder: Path, inputs: Sequence[SynthesisInput], batch_size: int) -> list[list[int]]:
    """The batch plan of this folder: computed once and stored, so that every later process uses the same one."""
    path = folder / "plan.json"
    ids = [it.id for it in inputs]
    if path.exists():
        stored = read_json(path, "batch plan")
        if stored["ids"] != ids or stored["batch_size"] != batch_size:
            raise RuntimeError(f"{path}: planned for other inputs or another batch size; delete {folder} to restart")
        return stored["batches"]
    plan = plan_batches([prompt_cost(it) for it in inputs], ids, batch_size)
    atomic_write_json(path, {"ids": ids, "batch_size": batch_size, "batches": plan}, indent=None)
    return plan


def vllm_process_gpus(
    devices: Sequence[str], processes: int, tensor_parallel_size: int, setting: str = "synthesis"
) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each vLLM worker process: ``tensor_parallel_size`` GPUs of its own (one engine
    per GPU, or per group of GPUs for a tensor-parallel synthesizer), named as this process sees them (a
    scheduler's ``CUDA_VISIBLE_DEVICES`` is kept); None each when no GPU is visible (vLLM decides)."""
    indices = [int(d.split(":", 1)[1]) for d in devices if d.startswith("cuda:")]
    if not indices:
        return [None] * processes
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",") if visible else [str(i) for i in range(max(indices) + 1)]
    gpus = [names[i] for i in indices]
    need = processes * tensor_parallel_size
    if len(gpus) < need:
        raise ValueError(
            f"{setting}.processes={processes} x {setting}.vllm.tensor_parallel_size={tensor_parallel_size} needs "
            f"{need} GPUs; {len(gpus)} visible"
        )
    return [",".join(gpus[p * tensor_parallel_size : (p + 1) * tensor_parallel_size]) for p in range(processes)]


def run_in_processes(job: SynthesisJob, devices: Sequence[str], processes: int) -> list[dict[str, Any]]:
    """One subprocess per shard group (``python -m mllm_da.synthesis.runner``), each on ``devices[i % n]`` (vLLM:
    on its own GPUs, :func:`vllm_process_gpus`)."""
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    load_or_write_plan(folder, job.inputs, job.batch_size)  # once, before the workers read it
    vllm_gpus = (
        vllm_process_gpus(devices, processes, int(job.vllm.get("tensor_parallel_size") or 1))
        if job.backend == "vllm"
        else None
    )

    def spec(shards: list[int], device: str) -> dict[str, Any]:
        return SynthesisJob(**{**asdict(job), "inputs": job.inputs, "shards": shards, "device": device}).to_json()

    run_shard_workers(
        "mllm_da.synthesis.runner", folder, "job", job.shards, processes, devices, vllm_gpus, spec, "synthesis"
    )
    return (
        [json.loads(line) for line in complete_lines(folder / "runs.jsonl")] if (folder / "runs.jsonl").exists() else []
    )


def run_shard_workers(
    module: str,
    folder: Path,
    prefix: str,
    shards: Sequence[int],
    processes: int,
    devices: Sequence[str],
    vllm_gpus: Sequence[str | None] | None,
    spec: Callable[[list[int], str], dict[str, Any]],
    what: str,
) -> None:
    """Split ``shards`` over ``processes`` workers (shard ``s`` to worker ``s % processes``, on ``devices[p % n]``
    or its own vLLM GPUs), write each worker's job as ``<prefix>-shards-<ids>.json`` (unique: jobs on other nodes
    may share the folder) and run them with :func:`run_workers`."""
    workers = []
    for p in range(processes):
        group = [s for s in shards if s % processes == p]
        if not group:
            continue
        path = folder / f"{prefix}-shards-{'-'.join(map(str, group))}.json"
        atomic_write_json(path, spec(group, devices[p % len(devices)]), indent=None)
        workers.append((path, vllm_gpus[p] if vllm_gpus else None))
    run_workers(module, workers, what)


def run_workers(module: str, workers: Sequence[tuple[Path, str | None]], what: str) -> None:
    """``python -m <module> <spec>`` per worker, all at once, each with its ``CUDA_VISIBLE_DEVICES`` (None: this
    process's); waits for all and raises naming the ones that failed (their batches are on disk: a rerun resumes)."""
    procs = []
    for p, (spec, gpus) in enumerate(workers):
        env = None if gpus is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpus}
        procs.append((p, subprocess.Popen([sys.executable, "-m", module, str(spec)], env=env)))
    failed = [p for p, proc in procs if proc.wait() != 0]
    if failed:
        raise RuntimeError(f"{what} worker process(es) {failed} failed; rerun to resume (see their output above)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mllm_da.synthesis.runner JOB.json``: run one job (its shards) and print its numbers."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    job = SynthesisJob.from_json(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    print(json.dumps(run_job(job)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
