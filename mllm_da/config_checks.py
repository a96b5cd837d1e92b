"""Refuse option combinations that cannot work, at start, with a message that says what to change."""

from __future__ import annotations

import importlib.util
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
    accumulation_steps(cfg)
