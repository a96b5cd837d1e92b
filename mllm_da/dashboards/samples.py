"""A finished run folder (train, synth or evaluate) read back as sample rows with their images: what the wandb
tables and the offline gallery show. Everything here reads files the run wrote (``summary.json``,
``config.yaml``, the predictions, the synthesis cache it points to, ``samples/train_data.jsonl``); nothing here
needs the model.

A row is a plain dict (JSON-safe but for ``image``: a path, bytes or None), so that both consumers share it."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from mllm_da.data.records import read_conversations
from mllm_da.evaluation.benchmarks import BenchmarkSpec, benchmark_specs
from mllm_da.evaluation.rows import image_reference
from mllm_da.evaluation.sources import open_source
from mllm_da.synthesis.filter import is_kept
from mllm_da.synthesis.quality import answer_is, informative_consistent, toy_truth
from mllm_da.utils.io import atomic_write_jsonl, read_json, read_jsonl_tolerant

log = logging.getLogger(__name__)

#: the eval variants a train run writes under eval/step_<n>/, and the column each fills beside the main one
EVAL_VARIANTS = {"trained_shuffled": "shuffled", "untrained": "untrained"}
TRAIN_SAMPLE = Path("samples") / "train_data.jsonl"
#: between the parts of a training conversation that carry loss, in its ``trained`` field
TRAINED_SEPARATOR = "\n⋯\n"


@dataclass(frozen=True)
class SampleSizes:
    """How many rows each table keeps (``logger.wandb.log_samples``): per benchmark, of the synthesized tasks, of
    the training conversations; the longest side of an image cell in pixels; whether the synthesized task files are
    recorded as a wandb artifact reference."""

    eval_rows: int = 32
    synth_rows: int = 32
    train_rows: int = 8
    image_px: int = 160
    artifact: bool = True

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, where: str = "logger.wandb.log_samples") -> SampleSizes:
        """Checked values from a config node; unknown keys and negative sizes name the key."""
        data = dict(node or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
        for key, value in data.items():
            if key == "artifact":
                if not isinstance(value, bool):
                    raise ValueError(f"{where}.artifact: expected true or false, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{where}.{key}: expected an integer >= 0, got {value!r}")
        if data.get("image_px", 1) == 0:
            raise ValueError(f"{where}.image_px: expected an integer >= 1, got 0")
        return cls(**data)


@dataclass
class RunFolder:
    """A run folder with what it says about itself: its summary, its resolved config and the folder it ran in
    (relative paths in both are relative to that)."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    cwd: Path

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunFolder:
        run = Path(path).expanduser().resolve()
        if not (run / "summary.json").is_file():
            raise FileNotFoundError(f"{run}: not a run folder (no summary.json); give a train, synth or evaluate run")
        summary = read_json(run / "summary.json", "run summary")
        config: dict[str, Any] = {}
        if (run / "config.yaml").is_file():
            config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        cwd = Path.cwd()
        hydra_file = run / ".hydra" / "hydra.yaml"
        if hydra_file.is_file():
            hydra = yaml.safe_load(hydra_file.read_text(encoding="utf-8")) or {}
            cwd = Path(hydra.get("hydra", {}).get("runtime", {}).get("cwd") or cwd)
        return cls(run, summary if isinstance(summary, dict) else {}, config, cwd)

    @property
    def entry(self) -> str:
        return str(self.summary.get("entry", "?"))

    def resolve(self, value: str | os.PathLike) -> Path:
        """A path the run wrote down: absolute as is; relative to the folder the run ran in."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.cwd / path).resolve()


def spread(rows: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], Any], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` rows taken in turn from each value of ``key`` (in first-seen order), kept in file order: a
    small sample still shows right and wrong answers, kept and dropped tasks."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    chosen: list[int] = []
    queues = [list(g) for g in groups.values()]
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(id(queue.pop(0)))
    keep = set(chosen)
    return [row for row in rows if id(row) in keep]


def thumbnail(ref: Path | bytes | None, size: int) -> Image.Image | None:
    """The image (a path or encoded bytes) as RGB, its longest side at most ``size``; None without one."""
    if ref is None:
        return None
    with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as opened:
        picture = opened.convert("RGB")
    picture.thumbnail((size, size))
    return picture


# ------------------------------------------------------------------------------------------------ evaluation
def prediction_folders(run: RunFolder) -> tuple[Path | None, dict[str, Path]]:
    """The main predictions folder (a train run's latest ``eval/step_<n>/trained``, or an evaluate run's own) and
    the variants beside it (``shuffled``, ``untrained``)."""
    if (run.path / "predictions").is_dir():
        return run.path / "predictions", {}
    steps = sorted(
        (p for p in (run.path / "eval").glob("step_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
    )
    if not steps:
        return None, {}
    latest = steps[-1]
    others = {name: latest / folder / "predictions" for folder, name in EVAL_VARIANTS.items()}
    return latest / "trained" / "predictions", {k: v for k, v in others.items() if v.is_dir()}


def benchmark_image_reader(run: RunFolder, name: str, fingerprint: Mapping[str, Any]) -> Callable[[int], Any]:
    """``image(i)``: the path or bytes of split row ``i``'s image, read from the benchmark's source as the run saw
    it (the run's definition of the benchmark, its relative paths taken from the folder it ran in)."""
    definitions = run.config.get("benchmark") or {}
    if isinstance(definitions, dict) and name in definitions:
        spec = benchmark_specs(definitions, [name])[0]
    else:
        spec = BenchmarkSpec.from_config({"name": name, **fingerprint})
    changes: dict[str, Any] = {}
    for field in ("source", "image_root"):
        value = getattr(spec, field)
        if value and not Path(value).expanduser().is_absolute() and run.resolve(value).exists():
            changes[field] = str(run.resolve(value))
    spec = dataclasses.replace(spec, **changes)
    cache = run.resolve(run.config.get("paths", {}).get("cache_dir", ".cache/mllm_da")) / "datasets"
    source = open_source(spec, str(cache))
    root = Path(spec.image_root) if spec.image_root else source.default_root

    def image(index: int) -> Any:
        ref, problem = image_reference(source.image_value(index), root)
        return None if problem is not None else ref

    return image


def _no_image(index: int) -> None:
    return None


def eval_rows(run: RunFolder, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` scored rows per benchmark (right and wrong in turn) with their images and, where the run
    made them, the predictions on shuffled images and of the untrained model for the same rows."""
    main, variants = prediction_folders(run)
    if main is None or limit == 0:
        return []
    out: list[dict[str, Any]] = []
    for path in sorted(main.glob("*.jsonl")):
        name = path.stem
        meta = read_json(path.with_suffix(".meta.json"), "predictions settings file")
        rows = list(read_jsonl_tolerant(path))
        picked = spread(rows, lambda r: r.get("score", 0) > 0, limit)
        beside = {
            column: {r["index"]: r for r in read_jsonl_tolerant(folder / path.name)}
            for column, folder in variants.items()
            if (folder / path.name).is_file()
        }
        try:
            image = benchmark_image_reader(run, name, meta.get("benchmark", {}))
        except Exception as err:  # the source moved or is not downloaded here: the rows are still worth showing
            log.warning(
                "%s: images of benchmark %s not found (%s: %s); rows shown without",
                run.path,
                name,
                type(err).__name__,
                err,
            )
            image = _no_image
        for row in picked:
            item = {
                "benchmark": name,
                "index": row["index"],
                "id": row.get("id"),
                "question": row.get("prompt", ""),
                "prediction": row.get("prediction", ""),
                "label": row.get("label"),
                "score": row.get("score"),
                "right": bool(row.get("score", 0) > 0),
                "question_type": row.get("group") or row.get("answer_type") or "",
                "answer_type": row.get("answer_type") or "",
                "images_shuffled": bool(meta.get("shuffle_images")),
                "image": image(row["image_index"]),
            }
            for column, by_index in beside.items():
                other = by_index.get(row["index"], {})
                item[f"{column}_prediction"] = other.get("prediction")
                item[f"{column}_score"] = other.get("score")
            out.append(item)
    return out


# ------------------------------------------------------------------------------------------------ synthesis
def synthesis_folders(run: RunFolder) -> dict[str, Path]:
    """The synthesis cache folders (``synthesize``, ``filter``, ``format``) behind the run's synthetic tasks,
    found from the files its summary names and the stage keys each folder's ``key.json`` records."""
    named: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)
        elif isinstance(value, str) and ("/synthesize-" in value or "/filter-" in value or "/format-" in value):
            named.append(value)

    walk(run.summary.get("artifacts", {}))
    walk(run.summary.get("stages", []))
    folders: dict[str, Path] = {}
    for value in named:
        folder = run.resolve(value)  # a stage folder (summary "stages") or a file in one (artifacts)
        if not (folder.is_dir() and folder.name.split("-", 1)[0] in ("synthesize", "filter", "format")):
            folder = folder.parent
        stage = folder.name.split("-", 1)[0]
        if stage in ("synthesize", "filter", "format") and folder.is_dir():
            folders.setdefault(stage, folder)
    for later, earlier in (("format", "filter"), ("filter", "synthesize")):
        if later in folders and earlier not in folders and (folders[later] / "key.json").is_file():
            key = read_json(folders[later] / "key.json", "stage key").get("payload", {}).get(earlier)
            if key and (folders[later].parent / f"{earlier}-{key}").is_dir():
                folders[earlier] = folders[later].parent / f"{earlier}-{key}"
    return folders


def synthesis_files(run: RunFolder) -> list[Path]:
    """The files that hold the run's synthesized data: generations, parsed triplets, filter labels, tasks."""
    folders = synthesis_folders(run)
    bookkeeping = ("done.json", "key.json")  # the cache's own records, not data
    return sorted(
        p
        for folder in folders.values()
        for p in folder.iterdir()
        if p.suffix in (".json", ".jsonl") and p.name not in bookkeeping
    )


def _captions(run: RunFolder) -> dict[str, tuple[str, Path | None]]:
    """Each domain record's caption and image (record id → (caption, image path))."""
    domain = run.config.get("domain") or {}
    # a custom domain's converted file: in the config of runs since 2026-12-04, else in what the summary says it read
    pairs = domain.get("image_caption_pairs") or ((run.summary.get("data") or {}).get("image_caption_pairs") or {}).get(
        "path"
    )
    if not pairs or not run.resolve(pairs).is_file():
        return {}
    root = domain.get("image_root") or domain.get("root")
    conversations, _ = read_conversations(
        run.resolve(pairs), image_root=run.resolve(root) if root else None, check_images=False
    )
    out = {}
    for conv in conversations:
        caption = next((t.content for t in reversed(conv.turns) if t.role == "assistant"), "")
        out[conv.id] = (caption, conv.images[0] if conv.images else None)
    return out


def synth_rows(run: RunFolder, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` synthesized tasks (kept and dropped in turn) with image, caption, triplet, filter label,
    formatted task and, on the toy domain, whether the answers are right."""
    folders = synthesis_folders(run)
    if "synthesize" not in folders or limit == 0:
        return []
    parsed = [r for r in read_jsonl_tolerant(folders["synthesize"] / "parsed.jsonl") if r.get("triplet")]
    labels = {}
    if "filter" in folders:
        labels = {r["id"]: r.get("label") for r in read_jsonl_tolerant(folders["filter"] / "judgements.jsonl")}
    tasks = {}
    if "format" in folders and (folders["format"] / "tasks.jsonl").is_file():
        tasks = {r["id"]: r for r in read_jsonl_tolerant(folders["format"] / "tasks.jsonl")}
    picked = spread(parsed, lambda r: labels.get(r["id"]), limit)
    captions = _captions(run)
    out = []
    for row in picked:
        triplet, label = row["triplet"], labels.get(row["id"])
        caption, image = captions.get(row["id"], ("", None))
        task = tasks.get(row["id"])
        truth = toy_truth(caption, triplet["Q"]) if caption else None
        item = {
            "id": row["id"],
            "image": image,
            "caption": caption,
            "instruction": triplet["Q"],
            "informative": triplet["informative_A"],
            "precise": triplet["precise_A"],
            "filter_label": label if label is not None else "",
            "kept": label is None or is_kept(label),
            "formatted_task": f"{task['instruction']}\n→ {task['response']}" if task else "",
            "question_type": truth[0] if truth else "",
            "toy_truth": truth[1] if truth else None,
            "precise_right": answer_is(triplet["precise_A"], truth[1], triplet["Q"]) if truth else None,
            "informative_right": informative_consistent(triplet["informative_A"], truth[1], caption) if truth else None,
        }
        out.append(item)
    return out


# ------------------------------------------------------------------------------------------------ training data
def evenly(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)] if count else []


def write_training_sample(
    out: Path, stages: Iterable[tuple[str, Sequence[Any]]], render: Callable[[Any], tuple[str, Any]], count: int
) -> Path | None:
    """``<run>/samples/train_data.jsonl``: ``count`` training conversations per stage as the model sees them (the
    chat template applied; ``trained`` holds the parts that carry loss). ``render`` maps turns to (text, spans)."""
    rows = []
    for stage, conversations in stages:
        for conv in evenly(conversations, count):
            text, spans = render(conv.turns)
            rows.append(
                {
                    "stage": stage,
                    "id": conv.id,
                    "images": [str(p) for p in conv.images],
                    "text": text,
                    "trained": TRAINED_SEPARATOR.join(text[a:b] for a, b in spans),
                    "source": conv.source,
                }
            )
    return atomic_write_jsonl(out / TRAIN_SAMPLE, rows) if rows else None


def train_rows(run: RunFolder, limit: int) -> list[dict[str, Any]]:
    """The training conversations the run saved (``samples/train_data.jsonl``), up to ``limit`` per stage."""
    path = run.path / TRAIN_SAMPLE
    if not path.is_file():
        return []
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for row in read_jsonl_tolerant(path):
        by_stage.setdefault(row["stage"], []).append(row)
    out = []
    for rows in by_stage.values():
        for row in rows[:limit]:
            images = [Path(p) for p in row.get("images", [])]
            out.append({**row, "image": images[0] if images and images[0].is_file() else None})
    return out
