"""``synth.py``'s body: seed data → tuned synthesizer → synthesis + parsing → consistency filter → training data.

Each stage is a function of files and settings, stored under ``<cache>/synthesis/<stage>-<key>/`` (see
:mod:`mllm_da.synthesis.cache`), so a rerun, a later stage, or ``train.py data_mix=synthetic`` reuses whatever is
already there, and a crash loses at most the batch in flight (synthesis and the LLM filter are resumable).

Stages, in order (``stage=`` stops after the named one):

1. ``seed`` + ``tune``: only for a synthesizer preset that needs tuning (``tune.enabled`` and no
   ``synthesizer.checkpoint``). Tuning is ``train.py``'s own Lightning run on the seed set, composed from
   ``conf/train.yaml`` with ``data_mix=caption_only`` over the seed file (each seed conversation is one
   "caption" record) and ``data.mask_mode=synthesizer``; its merged export is the synthesizer.
2. ``synthesize``: generation for every image-caption record, then parsing and triplet extraction.
3. ``filter``: the consistency filter's label for every triplet.
4. ``format``: single-stage, caption-only and synthetic-only training files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mllm_da.data.domain import prepare_domain
from mllm_da.data.records import BadRecordError, Conversation, read_conversations, write_sharegpt
from mllm_da.synthesis import filter as consistency
from mllm_da.synthesis.cache import StageDir, digest, file_digest, folder_fingerprint
from mllm_da.synthesis.formatting import FormattedTask, build_training_sets, format_triplet, load_templates
from mllm_da.synthesis.parse import LLAMA3, ParseFormat, Triplet, extract_triplet, parse_output
from mllm_da.synthesis.quality import SynthesizedTask, format_quality_table, grounding, quality_report
from mllm_da.synthesis.runner import (
    BatchLog,
    IncompleteError,
    SynthesisInput,
    SynthesisJob,
    merge_batches,
    plan_batches,
    run_batches,
    run_in_processes,
    run_job,
)
from mllm_da.synthesis.sampling import SamplingConfig
from mllm_da.synthesis.seed import SeedFiles, build_seed
from mllm_da.utils.io import atomic_write_jsonl, atomic_write_text, read_jsonl_tolerant
from mllm_da.utils.progress import progress_bar

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
STAGES = ("tune_synthesizer", "synthesize", "filter", "all")
#: bump a stage's version when its code changes what it writes, so old cache folders are not reused
VERSIONS = {"seed": 1, "tune": 1, "synthesize": 1, "filter": 1, "format": 1}


@dataclass
class StageOutcome:
    """A stage's folder and what it recorded; ``reused`` when it was already complete."""

    name: str
    dir: StageDir
    meta: dict[str, Any]
    reused: bool

    def describe(self) -> dict[str, Any]:
        return {"key": self.dir.key, "dir": str(self.dir.path), "reused": self.reused}


@dataclass
class PipelineResult:
    stages: dict[str, StageOutcome] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    complete: bool = True
    #: what was read of the image-caption file: path, read / kept / rejected (+ beyond_limit), reasons, rejects
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DomainInputs:
    """The domain's image-caption records, validated once, and what synthesis reads of them."""

    captions: list[Conversation]
    inputs: list[SynthesisInput]
    image_root: Path
    digest: str
    #: records refused, by reason (the reader's reasons, plus duplicate_id and not_one_image)
    skipped: dict[str, int]
    #: read == kept + rejected + beyond_limit (records past ``synthesis.limit``); rejects_path lists the rejected
    counts: dict[str, int] = field(default_factory=dict)
    rejects_path: Path | None = None


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<name>.yaml``: inside a running Hydra app with its search path, else from the repo's conf/."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _run_stage(name: str, stage: StageDir, compute: Callable[[], dict[str, Any]], lock: bool = True) -> StageOutcome:
    """Reuse a complete stage folder or compute it (under the folder's lock unless ``lock`` is False)."""
    if stage.is_complete():
        log.info("%s: reusing %s", name, stage.path)
        return StageOutcome(name, stage, stage.meta(), True)
    if not lock:
        return StageOutcome(name, stage, compute(), False)
    with stage.lock():
        if stage.is_complete():
            return StageOutcome(name, stage, stage.meta(), True)
        log.info("%s: computing into %s", name, stage.path)
        return StageOutcome(name, stage, stage.complete(compute()), False)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --------------------------------------------------------------------------------------------- inputs


def read_domain_inputs(cfg: DictConfig, rejects_dir: Path | None = None) -> DomainInputs:
    """Image-caption records of ``cfg.domain``; synthesis uses the first assistant turn (the caption).

    Each record is validated (images decoded) by :func:`read_conversations`; a record that is not one image with
    a caption, or repeats an earlier record's id, is refused too. Under ``cfg.bad_records=skip`` refused records
    are counted and written to ``<rejects_dir>/image_caption_pairs.jsonl`` (default: ``<output_dir>/rejects``);
    under ``fail`` the first one raises :class:`BadRecordError` naming file, line and field.
    """
    domain = cfg.domain
    path, root = Path(domain.image_caption_pairs), Path(domain.image_root)
    if rejects_dir is None and cfg.get("paths") is not None and cfg.paths.get("output_dir"):
        rejects_dir = Path(cfg.paths.output_dir) / "rejects"
    rejects_path = rejects_dir / "image_caption_pairs.jsonl" if rejects_dir else None
    policy = cfg.bad_records
    captions, report = read_conversations(path, image_root=root, policy=policy, rejects_path=rejects_path)
    limit = cfg.synthesis.get("limit")
    beyond = 0
    if limit is not None:
        beyond = max(0, len(captions) - int(limit))
        captions = captions[: int(limit)]
    seen: dict[str, str] = {}
    inputs, kept, skipped = [], [], Counter(report.reasons)
    extra: list[dict[str, Any]] = []

    def refuse(record: Conversation, where: str, key: str, reason: str) -> None:
        skipped[key] += 1
        location = record.source.rsplit(":", 1)[-1] if path.suffix == ".jsonl" else record.source.rsplit("#", 1)[-1]
        extra.append({"source": record.source, "location": location, "reason_key": key, "field": where,
                      "reason": reason, "raw": record.to_sharegpt(root)})
        if policy == "fail":
            _append_rejects(rejects_path, extra)
            raise BadRecordError(path, location, record.source, where, key, reason)
        log.debug("%s: refused, field '%s': %s [%s]", record.source, where, reason, key)

    for record in captions:
        if record.id in seen:
            refuse(record, "id", "duplicate_id", f"record id {record.id!r} repeats {seen[record.id]}; ids must be unique")
            continue
        seen[record.id] = record.source
        caption = next((t.content for t in record.turns if t.role == "assistant"), None)
        if len(record.images) != 1:
            refuse(record, "images", "not_one_image",
                   f"an image-caption record needs exactly one image, got {len(record.images)}")
            continue
        if caption is None:
            refuse(record, "messages", "no_caption", "the record has no assistant turn (the caption)")
            continue
        kept.append(record)
        inputs.append(SynthesisInput(record.id, caption, str(record.images[0])))
    _append_rejects(rejects_path, extra)
    counts = {"read": report.read, "kept": len(kept), "rejected": report.rejected + len(extra), "beyond_limit": beyond}
    if extra:
        log.warning("%s: refused %d more record(s) as image-caption pairs (%s)", path, len(extra),
                    ", ".join(f"{k}={v}" for k, v in sorted(Counter(r["reason_key"] for r in extra).items())))
    key = digest({"file": file_digest(path), "root": str(root.resolve()), "limit": limit})
    return DomainInputs(kept, inputs, root, key, dict(skipped), counts, rejects_path)


def _append_rejects(path: Path | None, rows: list[dict[str, Any]]) -> None:
    """Add rows to the rejects file :func:`read_conversations` wrote (ASCII-escaped JSON lines, like its own)."""
    if path is None or not rows:
        return
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, before + "".join(json.dumps(row) + "\n" for row in rows))


# --------------------------------------------------------------------------------------------- seed + tune


def needs_tuning(cfg: DictConfig) -> bool:
    return cfg.synthesizer.kind == "model" and not cfg.synthesizer.get("checkpoint") and bool(cfg.tune.enabled)


def seed_stage(cfg: DictConfig) -> tuple[StageOutcome, SeedFiles]:
    settings = _container(cfg.seed_data)
    # what decides the seed set (not where VisionFLAN lives, nor whether it may be used on other domains)
    ignored = ("visionflan", "allow_on_other_domains")
    payload: dict[str, Any] = {"version": VERSIONS["seed"], **{k: v for k, v in settings.items() if k not in ignored}}
    if settings["source"] == "visionflan":
        vf = settings["visionflan"]
        files = {k: vf[k] for k in ("caption_file", "precise_file", "informative_file")}
        missing = [f"seed_data.visionflan.{k}={v}" for k, v in files.items() if not Path(v).is_file()]
        if missing:
            raise FileNotFoundError(f"seed_data.source=visionflan needs {', '.join(missing)} (set MLLM_DA_VISIONFLAN_DIR)")
        payload["visionflan"] = {k: file_digest(v) for k, v in files.items()}
        payload["image_root"] = str(Path(vf["image_root"]).resolve())
        payload["policy"] = cfg.bad_records
    stage = StageDir.for_stage(cfg.paths.cache_dir, "seed", payload)

    def compute() -> dict[str, Any]:
        seed_files, report = build_seed(stage.path, settings, policy=cfg.bad_records)
        return {"files": {k: str(v) for k, v in dataclasses.asdict(seed_files).items()}, "report": vars(report)}

    outcome = _run_stage("seed", stage, compute)
    return outcome, SeedFiles(**{k: Path(v) for k, v in outcome.meta["files"].items()})


def _point_domain(cfg: DictConfig, name: str, image_root: Any, caption_pairs: Any) -> None:
    """Make ``cfg.domain`` read ``caption_pairs`` (already prepared): its other keys stay as they are."""
    cfg.domain.name = name
    cfg.domain.root = str(image_root)
    cfg.domain.image_root = str(image_root)
    cfg.domain.image_caption_pairs = str(caption_pairs)
    cfg.domain.rule_tasks = None
    cfg.domain.external_tasks = None
    cfg.domain.prepare = None


def tune_config(cfg: DictConfig, seed: SeedFiles) -> DictConfig:
    """The train.py config that tunes the synthesizer on the seed set (tune.overrides are train.py overrides)."""
    tune = cfg.tune
    overrides = ["data_mix=caption_only", "data.mask_mode=synthesizer", "task_name=tune_synthesizer", "export=true"]
    if tune.get("steps"):
        overrides += [f"trainer.max_steps={int(tune.steps)}", "trainer.max_epochs=-1"]
    elif tune.get("epochs"):
        overrides += [f"trainer.max_epochs={int(tune.epochs)}"]
    for key, target in (("micro_batch_size", "data.micro_batch_size"), ("global_batch_size", "data.global_batch_size"),
                        ("lr", "optim.lr")):
        if tune.get(key) is not None:
            overrides.append(f"{target}={tune[key]}")
    overrides.append(f"seed={cfg.seed}")
    train_cfg = compose_config("train", [*overrides, *tune.get("overrides", [])])
    with open_dict(train_cfg):
        for key, value in _container(cfg.paths).items():
            if key != "output_dir":
                train_cfg.paths[key] = value
        train_cfg.paths.output_dir = ""  # set by tune_stage once the key (which must not depend on it) is known
        train_cfg.model = _container(cfg.model)
        _point_domain(train_cfg, "synthesizer_seed", seed.image_root, seed.train)
        train_cfg.data.bad_records = cfg.bad_records
        if "eval" in train_cfg:  # a synthesizer is not a domain model: no benchmark evaluation after tuning
            train_cfg.eval.enabled = False
    return train_cfg


def tune_stage(cfg: DictConfig, seed_outcome: StageOutcome, seed: SeedFiles) -> StageOutcome:
    from mllm_da.utils.runinfo import config_hash

    train_cfg = tune_config(cfg, seed)
    payload = {"version": VERSIONS["tune"], "seed": seed_outcome.dir.key, "train": config_hash(train_cfg)}
    stage = StageDir.for_stage(cfg.paths.cache_dir, "tune", payload)
    run_dir = stage.path / "run"
    with open_dict(train_cfg):
        train_cfg.paths.output_dir = str(run_dir)
        progress = cfg.synthesis.get("progress", "auto")
        if str(progress).lower() != "auto":  # synth.py's one switch covers tuning's bar too (not in the key)
            train_cfg.trainer.enable_progress_bar = progress
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():  # a killed tuning run continues from its last checkpoint
            train_cfg.ckpt_path = str(last)

    def compute() -> dict[str, Any]:
        from mllm_da.training.run import train

        metrics = train(train_cfg)
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        return {
            "export": summary["artifacts"]["export"],
            "metrics": metrics,
            "global_step": summary.get("global_step"),
            "wall_time_s": summary.get("wall_time_s"),
            "data": summary.get("data", {}).get("plan"),
        }

    return _run_stage("tune", stage, compute)


# --------------------------------------------------------------------------------------------- synthesize


def backbone_kwargs(cfg: DictConfig, tuned: StageOutcome | None) -> tuple[dict[str, Any], Any]:
    """load_backbone keywords for the synthesizer, and what identifies its weights for the cache key."""
    kwargs = {k: v for k, v in _container(cfg.model.backbone).items() if k != "_target_"}
    checkpoint = cfg.synthesizer.get("checkpoint")
    if tuned is not None:
        kwargs.update(variant="pretrained", source=tuned.meta["export"])
        identity: Any = {"tune": tuned.dir.key}
    elif checkpoint:
        if not Path(checkpoint).is_dir():
            raise FileNotFoundError(f"synthesizer.checkpoint={checkpoint} is not a folder")
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
    node = _container(cfg.synthesis.get("sampling") or {})
    config = SamplingConfig(temperature=float(node.get("temperature", 0.0)), top_p=float(node.get("top_p", 1.0)),
                            seed=int(node.get("seed", cfg.seed)))
    return {} if config.greedy else dataclasses.asdict(config)


def parse_format(cfg: DictConfig) -> ParseFormat:
    """The synthesizer's delimiters from its chat format (no model load); the rule synthesizer writes Llama-3's."""
    reference_cut = bool(cfg.synthesis.get("reference_answer_cut", False))
    if cfg.synthesizer.kind == "rules":
        return dataclasses.replace(LLAMA3, reference_cut=reference_cut)
    from mllm_da.backbones.loading import family_class

    backbone = cfg.model.backbone
    chat = dataclasses.replace(family_class(backbone.family).default_format, **_container(backbone.chat_format or {}))
    return dataclasses.replace(ParseFormat.from_chat_format(chat), reference_cut=reference_cut)


def _parse_rows(rows: Sequence[dict[str, Any]], fmt: ParseFormat) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    parsed_rows, stats = [], Counter()
    for row in rows:
        text = row.get("text")
        pairs = parse_output(text, fmt) if text is not None else []
        triplet = extract_triplet(pairs)
        stats["records"] += 1
        stats["image_errors"] += row.get("error") is not None
        stats["finished"] += bool(row.get("finished"))
        stats["parsed"] += bool(pairs)
        stats["qa_pairs"] += len(pairs)
        stats["triplets"] += triplet is not None
        parsed_rows.append({
            "id": row["id"],
            "qa": [[p.question, p.answer] for p in pairs],
            "triplet": triplet.as_fields() if triplet else None,
            "finished": bool(row.get("finished")),
            "error": row.get("error"),
        })
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
    return {"questions": questions, "records": len(written), "tasks": sum(written), "short_records": len(short),
            "missing_tasks": sum(short), "records_without_task": sum(n == 0 for n in written)}


def synthesize_stage(cfg: DictConfig, data: DomainInputs, tuned: StageOutcome | None) -> StageOutcome | None:
    """Generate (or apply the rules), merge by record id, parse. ``None`` while other shards are unfinished."""
    settings = cfg.synthesis
    fmt = parse_format(cfg)
    if cfg.synthesizer.kind == "rules":
        from mllm_da.synthesis.rules import RULES_VERSION

        kwargs, identity = {}, {"rules": rule_questions(cfg), "rules_version": RULES_VERSION}
        generation: dict[str, Any] = {}
    else:
        kwargs, identity = backbone_kwargs(cfg, tuned)
        generation = {"batch_size": int(settings.batch_size), "max_new_tokens": int(settings.max_new_tokens)}
        sampling = sampling_settings(cfg)
        if sampling:  # greedy keeps the keys synthesized sets had before sampling existed
            generation["sampling"] = sampling
    payload = {"version": VERSIONS["synthesize"], "inputs": data.digest, "synthesizer": identity,
               "generation": generation, "format": dataclasses.asdict(fmt)}
    stage = StageDir.for_stage(cfg.paths.cache_dir, "synthesize", payload)

    def finish(rows: list[dict[str, Any]], throughput: dict[str, Any]) -> dict[str, Any]:
        atomic_write_jsonl(stage.path / "generations.jsonl", rows)
        parsed, stats = _parse_rows(rows, fmt)
        atomic_write_jsonl(stage.path / "parsed.jsonl", parsed)
        return {"stats": stats, "throughput": throughput, "skipped_inputs": data.skipped}

    if cfg.synthesizer.kind == "rules":
        from mllm_da.synthesis.rules import render_output, rule_pairs

        def compute_rules() -> dict[str, Any]:
            start = time.perf_counter()
            questions = rule_questions(cfg)
            rows, written = [], []
            for it in sorted(data.inputs, key=lambda it: it.id):
                pairs = rule_pairs(it.id, it.caption, questions)
                written.append(len({question for _, question, _ in pairs}))
                rows.append({"id": it.id, "text": render_output(pairs, fmt), "finished": True, "new_tokens": 0,
                             "error": None})
            seconds = time.perf_counter() - start
            meta = finish(rows, {"generated_records": len(rows), "generation_seconds": round(seconds, 3),
                                 "records_per_s": round(len(rows) / seconds, 2) if seconds else None})
            meta["rules"] = rule_shortfall(written, questions)
            return meta

        return _run_stage("synthesize", stage, compute_rules)

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
    )
    processes = int(settings.get("processes") or 1)

    def generate() -> None:
        if processes > 1:
            count = torch.cuda.device_count() if job.device.startswith("cuda") else 0
            devices = [f"cuda:{i}" for i in range(count)] or [job.device]
            run_in_processes(job, devices, processes)
        else:
            run_job(job)

    def merge() -> dict[str, Any]:
        plan = json.loads((stage.path / "plan.json").read_text(encoding="utf-8"))["batches"]
        rows = merge_batches(BatchLog(stage.path, "generations"), plan, [it.id for it in data.inputs])
        return finish(rows, _throughput(stage.path / "runs.jsonl"))

    if shard_index is None:
        def compute() -> dict[str, Any]:
            generate()
            return merge()

        return _run_stage("synthesize", stage, compute)
    # one shard of several (one process per GPU): no lock while generating, then merge if every shard is done
    if not stage.is_complete():
        generate()
    try:
        return _run_stage("synthesize", stage, merge)
    except IncompleteError as err:
        log.info("shard %s done; %s", shard_index, err)
        return None


# --------------------------------------------------------------------------------------------- filter


def filter_stage(cfg: DictConfig, synth: StageOutcome) -> StageOutcome:
    settings = _container(cfg.filter)
    backend = settings["backend"]
    payload: dict[str, Any] = {"version": VERSIONS["filter"], "synthesize": synth.dir.key, "filter": settings}
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
        elif backend == "llm":
            labels = _llm_labels(cfg, settings, stage, rows, triplets)
        else:
            raise ValueError(f"filter.backend must be llm, heuristic or none, got {backend!r}")
        judged = [{"id": r["id"], "label": lab, "kept": consistency.is_kept(lab)} for r, lab in zip(rows, labels)]
        atomic_write_jsonl(stage.path / "judgements.jsonl", judged)
        kept = sum(j["kept"] for j in judged)
        return {"stats": {"triplets": len(judged), "kept": kept, "labels": consistency.label_counts(labels)}}

    return _run_stage("filter", stage, compute)


def _llm_labels(cfg: DictConfig, settings: Mapping[str, Any], stage: StageDir, rows: list[dict[str, Any]],
                triplets: list[Triplet]) -> list[str]:
    """Judge in resumable batches (same batch log as synthesis), ordered by prompt length."""
    template = consistency.load_prompt(settings.get("prompt_file"))
    prompts = [consistency.build_prompt(template, t) for t in triplets]
    ids = [r["id"] for r in rows]
    plan = plan_batches([len(p) for p in prompts], ids, int(settings["batch_size"]))
    batch_log = BatchLog(stage.path, "judgements")
    judge: consistency.LLMJudge | None = None
    done = set(batch_log.done())
    bar = progress_bar(sum(len(b) for i, b in enumerate(plan) if i not in done), "consistency filter", "triplet",
                       cfg.synthesis.get("progress", "auto"))

    def work(indices: list[int]) -> list[dict[str, Any]]:
        nonlocal judge
        if judge is None:
            judge = consistency.load_judge(settings, cfg.paths.cache_dir, resolve_device(settings.get("device", "auto")))
        labels = judge.labels([prompts[i] for i in indices])
        bar.update(len(indices))
        return [{"id": ids[i], "label": lab} for i, lab in zip(indices, labels)]

    with bar:
        run_batches(batch_log, plan, work, [0], 1)
    merged = {row["id"]: row["label"] for row in merge_batches(batch_log, plan, ids)}
    return [merged[i] for i in ids]


# --------------------------------------------------------------------------------------------- format


def format_stage(cfg: DictConfig, data: DomainInputs, judged: StageOutcome, synth: StageOutcome) -> StageOutcome:
    settings = _container(cfg.formatting)
    payload: dict[str, Any] = {"version": VERSIONS["format"], "filter": judged.dir.key, "inputs": data.digest,
                               "formatting": settings}
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
            task = format_triplet(Triplet.from_fields(row["triplet"]), row["id"], templates,
                                  bool(settings.get("inverse_tasks")))
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

    return _run_stage("format", stage, compute)


# --------------------------------------------------------------------------------------------- the chain


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
        metrics.update({
            "records": records,
            "parsed": s.get("parsed", 0),
            "parse_rate": _rate(s.get("parsed", 0), records),
            "triplets": s.get("triplets", 0),
            "triplet_rate": _rate(s.get("triplets", 0), records),
            "finished_rate": _rate(s.get("finished", 0), records),
            "qa_pairs_per_record": _rate(s.get("qa_pairs", 0), records),
            "image_errors": s.get("image_errors", 0),
        })
        metrics.update({k: v for k, v in stages["synthesize"].meta["throughput"].items() if v is not None})
        if "rules" in stages["synthesize"].meta:  # the rule synthesizer: tasks written and the shortfall
            metrics["rules"] = stages["synthesize"].meta["rules"]
    if "filter" in stages:
        f = stages["filter"].meta["stats"]
        metrics.update({
            "kept": f["kept"],
            "filter_yield": _rate(f["kept"], f["triplets"]),
            "kept_rate": _rate(f["kept"], metrics.get("records")),
            "labels": f["labels"],
        })
    if "format" in stages:
        metrics.update({f"format_{k}": v for k, v in stages["format"].meta["stats"].items()})
    return metrics


def run_pipeline(cfg: DictConfig, stop_after: str | None = None) -> PipelineResult:
    """Run (or reuse) every stage up to ``stop_after`` (default ``cfg.stage``)."""
    from mllm_da.config_checks import check_synth_config

    check_synth_config(cfg)
    stop_after = stop_after or cfg.stage
    result = PipelineResult()
    tuned = None
    if needs_tuning(cfg) or stop_after == "tune_synthesizer":
        if cfg.synthesizer.kind != "model":
            raise ValueError("stage=tune_synthesizer needs a model synthesizer (synthesizer.kind=model)")
        result.stages["seed"], seed_files = seed_stage(cfg)
        tuned = result.stages["tune"] = tune_stage(cfg, result.stages["seed"], seed_files)
        result.files["synthesizer"] = tuned.meta["export"]
    if stop_after == "tune_synthesizer":
        result.metrics = collect_metrics(result)
        return result
    prepare_domain(cfg.domain)
    data = read_domain_inputs(cfg)
    result.inputs = {"path": str(cfg.domain.image_caption_pairs), **data.counts, "reasons": dict(data.skipped),
                     "rejects_path": str(data.rejects_path) if data.rejects_path else None}
    synth = synthesize_stage(cfg, data, tuned)
    if synth is None:
        result.complete = False
        result.metrics = collect_metrics(result)
        return result
    result.stages["synthesize"] = synth
    result.files["generations"] = str(synth.dir.path / "generations.jsonl")
    result.files["parsed"] = str(synth.dir.path / "parsed.jsonl")
    if stop_after in ("filter", "all"):
        judged = result.stages["filter"] = filter_stage(cfg, synth)
        result.files["judgements"] = str(judged.dir.path / "judgements.jsonl")
        if stop_after == "all":
            formatted = result.stages["format"] = format_stage(cfg, data, judged, synth)
            result.files.update(formatted.meta["files"])
    result.metrics = collect_metrics(result)
    rules = result.metrics.get("rules")
    if rules and rules["short_records"]:  # logged on every run, a reused stage's too
        log.warning("rules: %d of %d captions support fewer than %d question templates (%d tasks short, %d with "
                    "none); docs/synthesis.md lists the templates", rules["short_records"], rules["records"],
                    rules["questions"], rules["missing_tasks"], rules["records_without_task"])
    if stop_after in ("filter", "all"):
        result.metrics["quality"] = synthesis_quality(cfg, data, synth, result.stages["filter"], tuned)
        log.info("synthetic data quality (all triplets):\n%s", format_quality_table(result.metrics["quality"]["all"]))
    return result


def _tasks(parsed: Sequence[dict[str, Any]], data: DomainInputs, judged: StageOutcome | None) -> list[SynthesizedTask]:
    """The triplets of a synthesize stage's parsed rows with their captions and (when filtered) the filter's
    labels."""
    captions = {it.id: it.caption for it in data.inputs}
    labels = {} if judged is None else {
        r["id"]: r["label"] for r in read_jsonl_tolerant(judged.dir.path / "judgements.jsonl")}
    return [SynthesizedTask(row["id"], captions.get(row["id"], ""), t["Q"], t["precise_A"], t["informative_A"],
                            labels.get(row["id"]))
            for row in parsed if (t := row.get("triplet"))]


def _first_pairs(parsed: Iterable[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Each record's (question, precise answer) of its triplet, else its first generated pair, else empty."""
    out = {}
    for row in parsed:
        triplet, qa = row.get("triplet"), row.get("qa") or []
        out[row["id"]] = ((triplet["Q"], triplet["precise_A"]) if triplet else tuple(qa[0]) if qa else ("", ""))
    return out


def synthesis_quality(cfg: DictConfig, data: DomainInputs, synth: StageOutcome, judged: StageOutcome | None,
                      tuned: StageOutcome | None) -> dict[str, Any]:
    """Quality of the synthetic set (mllm_da.synthesis.quality): of every triplet (with the filter judged against
    the toy truth), of the kept ones, and the grounding control: the first ``quality.blind_sample`` records
    synthesized again with each image swapped for the next record's (a cached stage of its own)."""
    parsed = list(read_jsonl_tolerant(synth.dir.path / "parsed.jsonl"))
    tasks = _tasks(parsed, data, judged)
    kept = [t for t in tasks if t.label is None or consistency.is_kept(t.label)]
    report: dict[str, Any] = {"all": quality_report(tasks), "kept": quality_report(kept)}
    sample = int(cfg.get("quality", {}).get("blind_sample", 0) or 0)
    ordered = sorted(data.inputs, key=lambda it: it.id)[:sample]
    if len(ordered) >= 2 and cfg.synthesis.get("shard_index") is None:
        swapped = [dataclasses.replace(it, image=ordered[(i + 1) % len(ordered)].image) for i, it in enumerate(ordered)]
        blind_data = dataclasses.replace(data, inputs=swapped, digest=digest({"blind": data.digest, "n": len(swapped)}))
        blind = synthesize_stage(cfg, blind_data, tuned)
        if blind is not None:
            original = _first_pairs(parsed)
            report["grounding"] = grounding({it.id: original.get(it.id, ("", "")) for it in ordered},
                                            _first_pairs(read_jsonl_tolerant(blind.dir.path / "parsed.jsonl")))
            report["all"]["grounding"] = report["grounding"]
    return report


def _log_to_loggers(cfg: DictConfig, metrics: Mapping[str, Any]) -> None:
    """The numeric metrics (labels flattened) to the configured Lightning loggers, as ``synth/<name>``."""
    from hydra.utils import instantiate

    from mllm_da.utils.runinfo import instantiate_dict

    flat: dict[str, float] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                add(f"{prefix}/{key}", inner)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[prefix] = float(value)

    for key, value in metrics.items():
        add(f"synth/{key}", value)
    for logger in instantiate_dict(cfg.get("logger"), instantiate):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        logger.log_metrics(flat, step=0)
        logger.finalize("success")


def synthesize(cfg: DictConfig) -> dict[str, Any]:
    """``synth.py``: run the pipeline, write ``summary.json`` (metrics, stage keys, files) and log the metrics."""
    from mllm_da.utils.runinfo import run_folder

    with run_folder(cfg, "synth") as summary:
        out = Path(cfg.paths.output_dir)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        result = run_pipeline(cfg)
        summary["metrics"] = result.metrics
        summary["stages"] = {name: outcome.describe() for name, outcome in result.stages.items()}
        summary["artifacts"] = result.files
        summary["complete"] = result.complete
        summary["data"] = {"image_caption_pairs": result.inputs}
        if cfg.domain.get("found"):  # a custom domain's conversion: rows refused before the records were read
            summary["domain"] = OmegaConf.to_container(cfg.domain.found)
        for key in ("parse_rate", "triplet_rate", "filter_yield", "records_per_s"):
            if key in result.metrics:
                log.info("%s: %s", key, result.metrics[key])
        _log_to_loggers(cfg, result.metrics)
        return result.metrics


def synthetic_task_file(
    domain: Any, spec: Mapping[str, Any], policy: str = "skip"
) -> tuple[Path, dict[str, Any]]:
    """For ``data_mix=synthetic``: the synthetic-only file of ``domain`` (a DomainFiles), synthesizing it once.

    ``spec`` is the data_mix's ``synthesis`` node: ``synthesizer`` and ``filter`` preset names, extra ``overrides``
    of conf/synth.yaml, and the training run's ``paths`` (so the cache is shared).
    """
    overrides = [f"synthesizer={spec['synthesizer']}", f"filter={spec['filter']}", *spec.get("overrides", [])]
    cfg = compose_config("synth", overrides)
    with open_dict(cfg):
        for key, value in (spec.get("paths") or {}).items():
            cfg.paths[key] = value
        cfg.paths.output_dir = str(Path(cfg.paths.cache_dir) / "synthesis")
        _point_domain(cfg, domain.name, domain.image_root, domain.image_caption_pairs)
        cfg.bad_records = policy
        cfg.stage = "all"
    result = run_pipeline(cfg)
    if not result.complete:
        raise RuntimeError("data_mix synthesis is waiting for other shards (synthesis.shard_index is set); run the "
                           "other shards with synth.py first, or drop shard_index from data_mix.synthesis.overrides")
    return Path(result.files["synthetic_only"]), result.metrics
