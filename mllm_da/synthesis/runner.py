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

from mllm_da.backbones.generate import cut_at_stop_token, new_tokens
from mllm_da.backbones.loading import load_backbone
from mllm_da.data.images import BadImageError, load_image
from mllm_da.synthesis.parse import CAPTION_HINT
from mllm_da.synthesis.sampling import RecordSeededSampler, SamplingConfig, record_seed
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER, Turn
from mllm_da.utils.io import append_jsonl, atomic_write_json, read_json
from mllm_da.utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthesisInput:
    """One image-caption record to synthesize for; ``image`` is an absolute path."""

    id: str
    caption: str
    image: str


def synthesizer_prompt(caption: str) -> list[Turn]:
    """The §2.2 prompt's turns; the backbone appends the open user header after the assistant turn."""
    return [Turn("user", f"{IMAGE_PLACEHOLDER}\n{CAPTION_HINT}"), Turn("assistant", caption)]


# --------------------------------------------------------------------------------------------- batch log


class IncompleteError(RuntimeError):
    """A merge found batches that no shard has finished yet."""


class BatchLog:
    """Append-only per-batch results of one stage: ``<folder>/<name>-shard<i>.jsonl``, one line per batch."""

    def __init__(self, folder: str | os.PathLike, name: str) -> None:
        self.folder = Path(folder)
        self.name = name

    def shard_file(self, shard: int) -> Path:
        return self.folder / f"{self.name}-shard{shard}.jsonl"

    def done(self) -> dict[int, list[dict[str, Any]]]:
        """Finished batches from every shard file (whatever shard count wrote them), by batch index."""
        batches: dict[int, list[dict[str, Any]]] = {}
        for path in sorted(self.folder.glob(f"{self.name}-shard*.jsonl")):
            for number, line in enumerate(_complete_lines(path), start=1):
                try:
                    row = json.loads(line)
                    batch, results = int(row["batch"]), row["results"]
                except (ValueError, KeyError, TypeError) as err:
                    # only the last line can be torn by a kill (and is cut off before reading); this is damage
                    raise ValueError(
                        f"{path}:{number}: not a batch record ({err}); delete {path} to redo its batches"
                    ) from err
                batches.setdefault(batch, results)
        return batches

    def append(self, shard: int, batch: int, results: list[dict[str, Any]]) -> None:
        path = self.shard_file(shard)
        _cut_torn_tail(path)
        append_jsonl(path, [{"batch": batch, "results": results}])


def _complete_lines(path: Path) -> list[str]:
    """Lines that end with a newline; a torn last line (a write cut by a kill) is not a finished batch."""
    text = path.read_text(encoding="utf-8", errors="replace")  # a torn tail may end inside a character
    complete = text[: text.rfind("\n") + 1]
    return [line for line in complete.split("\n") if line.strip()]


def _cut_torn_tail(path: Path) -> None:
    """Truncate a torn last line, so that the next append starts on a line of its own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def prompt_cost(item: SynthesisInput) -> tuple[int, int]:
    """A model-free proxy of the prompt length: image area in 28-px cells (header only), then caption length."""
    from PIL import Image

    try:
        with Image.open(item.image) as image:
            width, height = image.size
    except OSError:
        width = height = 0  # an unreadable image fails in its batch, with a recorded error
    return (width * height) // (28 * 28), len(item.caption)


def plan_batches(costs: Sequence[Any], ids: Sequence[str], batch_size: int) -> list[list[int]]:
    """Input indices in batches of ``batch_size``, sorted by (cost, id): little padding, fixed membership."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(ids)), key=lambda i: (costs[i], ids[i]))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def run_batches(
    log_: BatchLog,
    plan: Sequence[Sequence[int]],
    work: Callable[[list[int]], list[dict[str, Any]]],
    shards: Sequence[int],
    num_shards: int,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Do every unfinished batch of ``shards``; returns how many batches this call did."""
    done = set(log_.done())
    todo = [b for b in range(len(plan)) if b % num_shards in shards and b not in done]
    for n, b in enumerate(todo, start=1):
        log_.append(b % num_shards, b, work(list(plan[b])))
        if progress is not None:
            progress(n, len(todo))
    return len(todo)


def merge_batches(log_: BatchLog, plan: Sequence[Sequence[int]], ids: Sequence[str]) -> list[dict[str, Any]]:
    """All results, one per input, sorted by record id; raises :class:`IncompleteError` if a batch is missing."""
    done = log_.done()
    missing = [b for b in range(len(plan)) if b not in done]
    if missing:
        raise IncompleteError(f"{log_.folder}: {len(missing)} of {len(plan)} batches not done yet (e.g. {missing[:5]})")
    rows: dict[str, dict[str, Any]] = {}
    for b, indices in enumerate(plan):
        results = done[b]
        if [r["id"] for r in results] != [ids[i] for i in indices]:
            raise RuntimeError(f"{log_.folder}: batch {b} holds other records than the plan; delete the folder")
        for row in results:
            rows[row["id"]] = row
    return [rows[key] for key in sorted(rows)]


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
    ) -> None:
        self.backbone = backbone
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling or SamplingConfig()
        self.device = torch.device(device)
        self.stop_ids = backbone.stop_token_ids(synthesizer=True)
        if not self.stop_ids:
            raise ValueError(f"{backbone.family}: the chat format's synthesizer_end is not a token of the tokenizer")
        backbone.model.to(self.device).eval()
        self.new_tokens = 0

    @torch.inference_mode()
    def __call__(self, items: Sequence[SynthesisInput]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [
            {"id": it.id, "text": None, "finished": False, "new_tokens": 0, "error": None} for it in items
        ]
        prompts, slots = [], []
        for slot, item in enumerate(items):
            try:
                prompts.append((synthesizer_prompt(item.caption), [load_image(item.image)]))
                slots.append(slot)
            except BadImageError as err:
                rows[slot]["error"] = str(err)
        if not prompts:
            return rows
        batch = self.backbone.generation_batch(prompts)
        sampler = (
            []
            if self.sampling.greedy
            else [
                RecordSeededSampler(self.sampling, [record_seed(self.sampling.seed, items[slot].id) for slot in slots])
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
        stops = set(self.stop_ids)
        for slot, tokens in zip(slots, generated):
            kept, finished = cut_at_stop_token(tokens, stops)
            rows[slot]["text"] = self.backbone.tokenizer.decode(
                kept, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            rows[slot]["finished"] = finished
            rows[slot]["new_tokens"] = len(kept)
            self.new_tokens += len(kept)
        return rows


def run_job(job: SynthesisJob, generator: SynthesizerGenerator | None = None) -> dict[str, Any]:
    """Synthesize the job's shards into ``job.folder``; returns this call's throughput numbers."""
    if job.threads:
        torch.set_num_threads(job.threads)
    if generator is None:
        generator = SynthesizerGenerator(
            load_backbone(**job.backbone), job.max_new_tokens, job.device, SamplingConfig(**job.sampling)
        )
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

    finished = log_.done()  # read the batch logs once: they can be large on a resumed run
    todo_records = sum(len(plan[b]) for b in range(len(plan)) if b % job.num_shards in job.shards and b not in finished)
    bar = progress_bar(todo_records, f"synthesis shards {list(job.shards)}", "record", job.progress)

    def progress(n: int, total: int) -> None:
        bar.update(records - bar.n)
        if bar.disable and (n == total or n % max(1, total // 10) == 0):  # no bar: a log line every tenth
            log.info("synthesis shards %s: %d/%d batches", job.shards, n, total)

    with bar:
        batches = run_batches(log_, plan, work, job.shards, job.num_shards, progress)
    seconds = time.perf_counter() - start
    stats = {
        "shards": list(job.shards),
        "batches": batches,
        "records": records,
        "new_tokens": generator.new_tokens - start_tokens,
        "seconds": round(seconds, 3),
        "device": str(job.device),
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


def run_in_processes(job: SynthesisJob, devices: Sequence[str], processes: int) -> list[dict[str, Any]]:
    """One subprocess per shard group (``python -m mllm_da.synthesis.runner``), each on ``devices[i % n]``."""
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    load_or_write_plan(folder, job.inputs, job.batch_size)  # once, before the workers read it
    procs = []
    for p in range(processes):
        shards = [s for s in job.shards if s % processes == p]
        if not shards:
            continue
        sub = SynthesisJob(
            **{**asdict(job), "inputs": job.inputs, "shards": shards, "device": devices[p % len(devices)]}
        )
        spec = folder / f"job-{p}.json"
        atomic_write_json(spec, sub.to_json(), indent=None)
        procs.append((p, subprocess.Popen([sys.executable, "-m", "mllm_da.synthesis.runner", str(spec)])))
    failed = [p for p, proc in procs if proc.wait() != 0]
    if failed:
        raise RuntimeError(f"synthesis worker process(es) {failed} failed; rerun to resume (see their output above)")
    return (
        [json.loads(line) for line in _complete_lines(folder / "runs.jsonl")]
        if (folder / "runs.jsonl").exists()
        else []
    )


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
