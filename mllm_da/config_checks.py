"""Refuse option combinations that cannot work, at start, with a message that says what to change."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A composed config that cannot run; the message names the option(s) and a fix."""


def device_count(trainer: DictConfig) -> int:
    devices: Any = trainer.get("devices", 1)
    nodes = int(trainer.get("num_nodes", 1))
    if isinstance(devices, int):
        per_node = devices
    elif isinstance(devices, str) and devices.isdigit():
        per_node = int(devices)
    elif isinstance(devices, str) and devices == "auto":
        per_node = max(1, torch.cuda.device_count()) if trainer.get("accelerator") in ("gpu", "cuda") else 1
    else:
        per_node = len(devices)
    return max(1, per_node) * nodes


def accumulation_steps(cfg: DictConfig) -> int:
    """Gradient accumulation that turns micro batches on every device into the configured global batch."""
    world = device_count(cfg.trainer)
    micro = int(cfg.data.micro_batch_size)
    global_batch = int(cfg.data.global_batch_size)
    if global_batch % (micro * world):
        raise ConfigError(
            f"data.global_batch_size={global_batch} is not a multiple of data.micro_batch_size={micro} × "
            f"{world} device(s); change one of them"
        )
    return global_batch // (micro * world)


def check_train_config(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    accelerator = str(trainer.get("accelerator", "cpu"))
    strategy = str(trainer.get("strategy", "auto"))
    method = cfg.finetune.method
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} needs a CUDA GPU and none is visible; use trainer=cpu")
    if "deepspeed" in strategy:
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("trainer=deepspeed needs the deepspeed package: pip install deepspeed")
        if accelerator == "cpu":
            raise ConfigError("trainer=deepspeed runs on GPUs only; use trainer=cpu or trainer=ddp here")
    if "fsdp" in strategy and accelerator == "cpu":
        raise ConfigError("trainer=fsdp needs GPUs (NCCL); on CPU use trainer=cpu or trainer=ddp")
    if method == "qlora" and ("deepspeed" in strategy or "fsdp" in strategy):
        raise ConfigError(f"finetune=qlora cannot be sharded with {strategy}; use trainer=gpu or trainer=ddp")
    if method == "qlora" and cfg.model.backbone.variant == "random":
        raise ConfigError("finetune=qlora needs a saved checkpoint; model variant 'random' has none (use tiny or a real preset)")
    mix = cfg.data_mix
    if mix.tasks == "rule_based" and not cfg.domain.get("rule_tasks"):
        raise ConfigError(
            f"data_mix={mix.name} needs rule-based tasks but domain={cfg.domain.name} has no rule_tasks file; "
            "use data_mix=caption_only or data_mix=external"
        )
    external = None if OmegaConf.is_missing(mix, "external_file") else mix.get("external_file")
    if mix.tasks == "external" and not (external or cfg.domain.get("external_tasks")):
        raise ConfigError("data_mix=external needs data_mix.external_file=<your instruction file>")
    if cfg.data.truncation not in ("drop", "cut_text"):
        raise ConfigError(f"data.truncation must be drop or cut_text, got {cfg.data.truncation!r}")
    if cfg.data.bad_records not in ("skip", "fail"):
        raise ConfigError(f"data.bad_records must be skip or fail, got {cfg.data.bad_records!r}")
    if cfg.data.mask_mode not in ("assistant", "synthesizer"):
        raise ConfigError(f"data.mask_mode must be assistant or synthesizer, got {cfg.data.mask_mode!r}")
    if mix.tasks == "synthetic":
        check_synthesis_spec(mix)
    accumulation_steps(cfg)


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _preset_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_synthesis_spec(mix: DictConfig) -> None:
    """``data_mix=synthetic``: the synthesis node names presets that exist."""
    spec = mix.get("synthesis")
    if not spec:
        raise ConfigError(f"data_mix={mix.name} has tasks=synthetic but no 'synthesis' node; start from data_mix=synthetic")
    for group in ("synthesizer", "filter"):
        names = _preset_names(group)
        if spec.get(group) not in names:
            raise ConfigError(f"data_mix.synthesis.{group}={spec.get(group)!r} is not a preset; choose one of {names}")


SYNTH_STAGES = ("tune_synthesizer", "synthesize", "filter", "all")


def check_synth_config(cfg: DictConfig) -> None:
    """synth.py's options, checked before any stage runs."""
    if cfg.stage not in SYNTH_STAGES:
        raise ConfigError(f"stage must be one of {list(SYNTH_STAGES)}, got {cfg.stage!r}")
    if cfg.bad_records not in ("skip", "fail"):
        raise ConfigError(f"bad_records must be skip or fail, got {cfg.bad_records!r}")
    kind = cfg.synthesizer.kind
    if kind not in ("model", "rules"):
        raise ConfigError(f"synthesizer.kind must be model or rules, got {kind!r}")
    checkpoint = cfg.synthesizer.get("checkpoint")
    if checkpoint and not Path(checkpoint).is_dir():
        raise ConfigError(f"synthesizer.checkpoint={checkpoint} is not a folder holding a tuned synthesizer")
    syn = cfg.synthesis
    for key in ("batch_size", "max_new_tokens", "num_shards", "processes"):
        if int(syn.get(key) or 0) < 1:
            raise ConfigError(f"synthesis.{key} must be >= 1, got {syn.get(key)!r}")
    if syn.get("limit") is not None and int(syn.limit) < 1:
        raise ConfigError(f"synthesis.limit must be null or >= 1, got {syn.limit}")
    shard = syn.get("shard_index")
    if shard is not None and not 0 <= int(shard) < int(syn.num_shards):
        raise ConfigError(f"synthesis.shard_index={shard} must lie in [0, num_shards={syn.num_shards})")
    if shard is not None and int(syn.processes) > 1:
        raise ConfigError("synthesis.shard_index runs one shard in this process; it cannot go with processes > 1")
    if int(syn.processes) > int(syn.num_shards):
        raise ConfigError(f"synthesis.processes={syn.processes} needs at least as many shards; set synthesis.num_shards")
    device = str(syn.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"synthesis.device={device} needs a CUDA GPU and none is visible; use synthesis.device=cpu")
    backend = cfg.filter.backend
    if backend not in ("llm", "heuristic", "none"):
        raise ConfigError(f"filter.backend must be llm, heuristic or none, got {backend!r}")
    if backend == "llm":
        prompt = cfg.filter.get("prompt_file")
        if prompt and not Path(prompt).is_file():
            raise ConfigError(f"filter.prompt_file={prompt} does not exist")
        if int(cfg.filter.max_new_tokens) < 1 or int(cfg.filter.batch_size) < 1:
            raise ConfigError("filter.max_new_tokens and filter.batch_size must be >= 1")
    templates = cfg.formatting.get("templates_file")
    if templates and not Path(templates).is_file():
        raise ConfigError(f"formatting.templates_file={templates} does not exist")
    seed = cfg.seed_data
    if seed.source not in ("toy", "visionflan"):
        raise ConfigError(f"seed_data.source must be toy or visionflan, got {seed.source!r}")
    if not 0.0 <= float(seed.blank_fraction) <= 1.0 or not 0.0 <= float(seed.dev_fraction) < 1.0:
        raise ConfigError("seed_data.blank_fraction must lie in [0, 1] and seed_data.dev_fraction in [0, 1)")
    tune = cfg.tune
    if kind == "model" and tune.enabled and not checkpoint and not (tune.get("steps") or tune.get("epochs")):
        raise ConfigError("tune needs tune.steps or tune.epochs")
