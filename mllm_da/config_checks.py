"""Refuse configs that cannot run, at start, with a message that says what to change.

Each node's own keys (types, ranges, choices, unknown keys) are checked by its typed config (mllm_da/config/, by
the generic mechanism of mllm_da/utils/typed_config.py). This module keeps the rules that span groups or look at
the machine: device vs strategy, QLoRA vs sharding, data mix vs domain and stages, benchmark names vs definitions,
the toy seed set vs the domain, files that must exist. Every problem found is reported in one :class:`ConfigError`
naming the key(s); a rule that needs a node's values runs only when that node is valid.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mllm_da.config.run_nodes import SYNTH_NODES, EvaluateRoot, PredictRoot, SynthRoot, TuneConfig
from mllm_da.config.train_nodes import TRAIN_NODES, ModelConfig, TrainerConfig, TrainRoot
from mllm_da.evaluation.benchmarks import benchmark_specs
from mllm_da.training.finetune import FinetuneConfig
from mllm_da.utils.typed_config import ConfigError, field_value, raise_problems, try_load

__all__ = [
    "ConfigError",
    "accumulation_steps",
    "check_eval_config",
    "check_predict_config",
    "check_synth_config",
    "check_train_config",
    "device_count",
]


class _Problems:
    """The problems of one config, gathered; :meth:`node` checks a node by its schema."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.found: list[str] = []

    def node(self, key: str, schema: type, node: Any = None) -> Any:
        """``cfg.<key>`` as a ``schema`` instance, or None when it has problems (recorded)."""
        if node is None:
            try:
                node = OmegaConf.select(self.cfg, key, throw_on_missing=True) if key else self.cfg
            except Exception as err:  # an interpolation that does not resolve, a mandatory ??? value
                self.found.append(f"{key} cannot be read: {type(err).__name__}: {err}")
                return None
        if node is None:
            self.found.append(f"{key} is missing; pick a {key}= preset")
            return None
        instance, found = try_load(node, schema, key)
        self.found += found
        return None if found else instance

    def add(self, message: str) -> None:
        self.found.append(message)

    def raise_any(self) -> None:
        raise_problems(self.found)


# --------------------------------------------------------------------------------------------- train.py


def device_count(trainer: DictConfig) -> int:
    """The number of processes ``trainer`` starts (devices per node × nodes)."""
    spec: TrainerConfig = _load(trainer, TrainerConfig, "trainer")
    devices = spec.devices
    if isinstance(devices, str) and devices.strip().lstrip("+-").isdigit():
        devices = int(devices)
    if isinstance(devices, list):
        per_node = len(devices)
    elif devices == -1 or devices == "auto" and spec.accelerator in ("gpu", "cuda"):
        per_node = max(1, torch.cuda.device_count())
    else:
        per_node = devices if isinstance(devices, int) else 1
    return max(1, per_node) * spec.num_nodes


def _load(node: Any, schema: type, key: str) -> Any:
    instance, found = try_load(node, schema, key)
    raise_problems(found)
    return instance


def accumulation_steps(cfg: DictConfig) -> int:
    """Gradient accumulation that turns micro batches on every device into the configured global batch."""
    world = device_count(cfg.trainer)
    micro, found = field_value(cfg.data, TRAIN_NODES["data"], "micro_batch_size", "data")
    global_batch, more = field_value(cfg.data, TRAIN_NODES["data"], "global_batch_size", "data")
    raise_problems(found + more)
    if global_batch % (micro * world):
        raise ConfigError(
            f"data.global_batch_size={global_batch} is not a multiple of data.micro_batch_size={micro} × "
            f"{world} device(s); change one of them"
        )
    return global_batch // (micro * world)


def check_train_config(cfg: DictConfig) -> None:
    """train.py's config, checked before any data is read or model loaded."""
    check = _Problems(cfg)
    check.node("", TrainRoot)
    nodes = {key: check.node(key, schema) for key, schema in TRAIN_NODES.items()}
    model, trainer, mix, stage_mode = nodes["model"], nodes["trainer"], nodes["data_mix"], nodes["stage_mode"]
    finetune = None
    try:
        groups = cfg.model.get("groups") if model is not None else None
        finetune = FinetuneConfig.from_config(cfg.finetune, groups)
    except ConfigError as err:
        check.add(str(err))
    if trainer is not None:
        _check_machine(check, trainer)
        strategy = str(trainer.strategy)
        sharded = "deepspeed" in strategy or "fsdp" in strategy
        if finetune is not None and finetune.method == "qlora" and sharded:
            check.add(f"finetune=qlora cannot be sharded with {strategy}; use trainer=gpu or trainer=ddp")
        if nodes["data"] is not None:
            try:
                accumulation_steps(cfg)
            except ConfigError as err:
                check.add(str(err))
    if finetune is not None and finetune.method == "qlora" and model is not None and model.backbone.variant == "random":
        check.add(
            "finetune=qlora needs a saved checkpoint; model variant 'random' has none (use tiny or a real preset)"
        )
    if mix is not None:
        _check_mix_vs_domain(check, mix)
        if stage_mode is not None:
            _check_stages_vs_mix(check, stage_mode, mix)
    evaluation = nodes["eval"]
    if evaluation is not None and evaluation.enabled:
        _check_benchmarks(check, "eval.benchmarks", evaluation.benchmarks, evaluation.limit, evaluation.max_new_tokens)
    check.raise_any()


def _check_machine(check: _Problems, trainer: Any) -> None:
    """What the trainer asks of this machine: a visible GPU, the deepspeed package."""
    accelerator = str(trainer.accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        check.add(f"trainer.accelerator={accelerator} needs a CUDA GPU and none is visible; use trainer=cpu")
    if "deepspeed" in str(trainer.strategy) and importlib.util.find_spec("deepspeed") is None:
        check.add("trainer=deepspeed needs the deepspeed package: pip install deepspeed")


def _check_mix_vs_domain(check: _Problems, mix: Any) -> None:
    domain = check.cfg.domain
    if mix.tasks == "rule_based" and not domain.get("rule_tasks") and not (mix.synthesis and mix.synthesis.synthesizer):
        check.add(
            f"data_mix={mix.name} needs rule-based tasks but domain={domain.name} has no rule_tasks file and "
            "the mix has no synthesis node for the rule-based synthesizer; use data_mix=rule_based, "
            "data_mix=caption_only or data_mix=external"
        )
    if mix.tasks == "external" and not (mix.external_file or domain.get("external_tasks")):
        check.add("data_mix=external needs data_mix.external_file=<your instruction file>")
    if mix.tasks == "external" and mix.external_file and not Path(mix.external_file).is_file():
        check.add(f"data_mix.external_file={mix.external_file} does not exist")


def _check_stages_vs_mix(check: _Problems, stage_mode: Any, mix: Any) -> None:
    """Every stage has data in the data mix."""
    for stage in stage_mode.stages:
        if stage.tasks and not stage.captions and mix.tasks == "none":
            check.add(
                f"stage_mode={stage_mode.name} has a task-only stage ({stage.name}) but data_mix={mix.name} has no "
                "tasks; pick a data_mix with tasks (e.g. rule_based, synthetic)"
            )
        if stage.captions and not stage.tasks and not mix.captions:
            check.add(
                f"stage_mode={stage_mode.name} has a caption-only stage ({stage.name}) but data_mix.captions=false; "
                "keep the captions in the mix or use stage_mode=single_stage"
            )


def _check_benchmarks(check: _Problems, key: str, names: Any, limit: Any, tokens: Any, bad_rows: Any = None) -> None:
    """The selected benchmark names exist in the ``benchmark`` node and their definitions are valid (with the
    run's limit, token budget and bad-row policy, already checked: None where they are not valid)."""
    names = [names] if isinstance(names, str) else list(names or [])
    defined = check.cfg.get("benchmark") or {}
    definitions: dict[str, Any] = {}
    for name in names:
        if not isinstance(name, str) or name not in defined:
            check.add(f"{key}: {name!r} is not a benchmark; defined: {sorted(defined)} (conf/benchmark/)")
            return
        try:  # only the selected ones: another's unset environment variable does not matter here
            definitions[name] = OmegaConf.to_container(defined[name], resolve=True)
        except Exception as err:
            check.add(f"benchmark.{name} cannot be read: {type(err).__name__}: {err}")
            return
    try:
        benchmark_specs(definitions, names, limit=limit, max_new_tokens=tokens, bad_rows=bad_rows)
    except (ValueError, TypeError) as err:
        check.add(f"{key}: {err} (set it with benchmark.<name>.<key>=...)")


# --------------------------------------------------------------------------------------------- synth.py


def _check_toy_seed_domain(check: _Problems) -> None:
    """A synthesizer tuned on the toy seed set asks about coloured shapes: refused on any other domain (synth.py
    and train.py data_mix=synthetic both come here) unless the user says they mean it."""
    cfg = check.cfg
    tuned_here = bool(cfg.tune.enabled) and not cfg.synthesizer.get("checkpoint")
    seed = cfg.seed_data
    if not tuned_here or seed.source != "toy" or cfg.domain.name == "toy" or seed.get("allow_on_other_domains"):
        return
    check.add(
        f"synthesizer={cfg.synthesizer.name} would be tuned on the toy seed set (coloured shapes) and then asked "
        f"to write tasks for domain={cfg.domain.name}: it would ask about shapes. Use one of: "
        "synthesizer=adamllm (the released AdaMLLM synthesizer, GPU); "
        "seed_data.source=visionflan seed_data.visionflan.root=<folder with the reference's three seed files> "
        "(tune on VisionFLAN, as the paper); synthesizer=rules (the rule-based synthesizer, CPU). "
        "Through train.py, put these in data_mix.synthesis (synthesizer=...) or data_mix.synthesis.overrides. "
        "seed_data.allow_on_other_domains=true allows the toy seed set anyway"
    )


def check_synth_config(cfg: DictConfig) -> None:
    """synth.py's options, checked before any stage runs."""
    check = _Problems(cfg)
    root = check.node("", SynthRoot)
    nodes = {key: check.node(key, schema) for key, schema in SYNTH_NODES.items()}
    synthesizer, seed = nodes["synthesizer"], nodes["seed_data"]
    if synthesizer is not None:
        if synthesizer.checkpoint and not Path(synthesizer.checkpoint).is_dir():
            check.add(f"synthesizer.checkpoint={synthesizer.checkpoint} is not a folder holding a tuned synthesizer")
        if synthesizer.kind == "rules" and cfg.stage == "tune_synthesizer":
            check.add("stage=tune_synthesizer needs a model synthesizer; synthesizer=rules is not tuned")
        elif synthesizer.kind == "model":
            check.node("model", ModelConfig)
            if seed is not None:
                _check_toy_seed_domain(check)
        tuning = synthesizer.kind == "model" and bool(cfg.tune.enabled) and not synthesizer.checkpoint
        if root is not None and (tuning or root.stage == "tune_synthesizer") and synthesizer.kind == "model":
            check.node("tune", TuneConfig)
            if seed is not None and seed.source == "visionflan":
                _check_visionflan_files(check, seed)
    # what the machine must have, read as given (a node with another problem still gets these named)
    device = str(cfg.synthesis.get("device"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        check.add(f"synthesis.device={device} needs a CUDA GPU and none is visible; use synthesis.device=cpu")
    filter_sharded = cfg.filter.get("shard_index") is not None or cfg.filter.get("merge_only") is True
    if filter_sharded and cfg.synthesis.get("shard_index") is not None:
        check.add(
            "filter.shard_index / filter.merge_only judge the merged synthesis; they cannot go with "
            "synthesis.shard_index (merge the synthesis first: synthesis.merge_only=true stage=synthesize)"
        )
    if filter_sharded and cfg.stage in ("tune_synthesizer", "synthesize"):
        check.add(f"filter.shard_index / filter.merge_only need stage=filter or stage=all, not stage={cfg.stage}")
    prompt = cfg.filter.get("prompt_file")
    if cfg.filter.get("backend") == "llm" and isinstance(prompt, str) and prompt and not Path(prompt).is_file():
        check.add(f"filter.prompt_file={prompt} does not exist")
    templates = cfg.formatting.get("templates_file")
    if isinstance(templates, str) and templates and not Path(templates).is_file():
        check.add(f"formatting.templates_file={templates} does not exist")
    check.raise_any()


def _check_visionflan_files(check: _Problems, seed: Any) -> None:
    files = seed.visionflan
    for key in ("caption_file", "precise_file", "informative_file"):
        path = getattr(files, key)
        if not path or not Path(path).is_file():
            check.add(f"seed_data.visionflan.{key}={path} does not exist (set MLLM_DA_VISIONFLAN_DIR)")
    if not files.image_root or not Path(files.image_root).is_dir():
        check.add(f"seed_data.visionflan.image_root={files.image_root} is not a folder")


# --------------------------------------------------------------------------------------------- evaluate.py


def check_eval_config(cfg: DictConfig) -> None:
    """evaluate.py's options, checked before any model is loaded or any row generated."""
    check = _Problems(cfg)
    names = cfg.get("benchmarks")
    if not names:
        check.add("benchmarks: no benchmark selected; set benchmarks=[...] (names of conf/benchmark/*.yaml)")
    else:
        values = {k: field_value(cfg, EvaluateRoot, k, "") for k in ("limit", "max_new_tokens", "bad_rows")}
        usable = {k: None if found else value for k, (value, found) in values.items()}
        _check_benchmarks(check, "benchmarks", names, usable["limit"], usable["max_new_tokens"], usable["bad_rows"])
    _check_generation(check, EvaluateRoot)
    check.raise_any()


def check_predict_config(cfg: DictConfig) -> None:
    """predict.py's options, checked before any model is loaded."""
    check = _Problems(cfg)
    _check_generation(check, PredictRoot)
    check.raise_any()


def _check_generation(check: _Problems, schema: type) -> None:
    """What evaluate.py and predict.py share: the generation backend, seed, device and model."""
    root = check.node("", schema)
    device = check.cfg.get("device")
    if (
        root is not None
        and device not in (None, "auto")
        and str(device).startswith("cuda")
        and not torch.cuda.is_available()
    ):
        check.add(f"device={device} needs a CUDA GPU and none is visible; use device=cpu or device=auto")
    check.node("model", ModelConfig)
