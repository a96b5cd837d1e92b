"""full / LoRA / QLoRA on top of any backbone, with per-group (vision / projector / llm) freezing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mllm_da.backbones.base import GROUPS, Backbone

log = logging.getLogger(__name__)

Method = Literal["full", "lora", "qlora"]


@dataclass
class GroupSetting:
    """Whether a module group trains, and its own learning rate (``None``: the optimiser's base rate)."""

    train: bool = True
    lr: float | None = None


@dataclass
class FinetuneConfig:
    method: Method = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    #: QLoRA weight bits (4 or 8); ignored for full and LoRA
    quantization_bits: int | None = None
    gradient_checkpointing: bool = False
    groups: dict[str, GroupSetting] = field(default_factory=lambda: {g: GroupSetting() for g in GROUPS})

    @classmethod
    def from_config(cls, finetune: Mapping[str, Any], groups: Mapping[str, Any] | None) -> FinetuneConfig:
        """Combine the ``finetune=`` group with the model preset's per-group defaults (reference §4.2)."""
        values = {k: v for k, v in finetune.items() if k not in ("_target_", "name")}
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"finetune config: unknown field(s) {sorted(unknown)}")
        settings = {g: GroupSetting() for g in GROUPS}
        for group, value in (groups or {}).items():
            if group not in settings:
                raise ValueError(f"model.groups.{group}: unknown module group; use one of {list(GROUPS)}")
            settings[group] = GroupSetting(**dict(value))
        values["groups"] = settings
        cfg = cls(**values)
        if cfg.method not in ("full", "lora", "qlora"):
            raise ValueError(f"finetune.method must be full, lora or qlora, got {cfg.method!r}")
        if cfg.method == "qlora" and cfg.quantization_bits not in (4, 8):
            raise ValueError("finetune=qlora needs finetune.quantization_bits: 4 or 8")
        if not any(s.train for s in settings.values()):
            raise ValueError("every module group is frozen (model.groups.*.train=false): nothing would train")
        return cfg

    @property
    def load_bits(self) -> int | None:
        return self.quantization_bits if self.method == "qlora" else None


def apply_finetune(backbone: Backbone, cfg: FinetuneConfig) -> torch.nn.Module:
    """Freeze, wrap with LoRA if asked, and return the module to train (``backbone.model`` is updated)."""
    model = backbone.model
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        if not cfg.groups["llm"].train:
            raise ValueError(f"finetune={cfg.method} puts adapters on the LLM, but model.groups.llm.train=false")
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=backbone.lora_target_regex,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        # non-LLM groups that train are trained in full next to the adapters (LLaMA-Factory's additional targets)
        for name, param in model.named_parameters():
            group = backbone.group_of(name)
            if group != "llm" and cfg.groups[group].train and param.dtype.is_floating_point:
                param.requires_grad_(True)
    else:
        for name, param in model.named_parameters():
            param.requires_grad_(cfg.groups[backbone.group_of(name)].train)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method != "full" and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    backbone.model = model
    counts = backbone.group_counts(model)
    log.info(
        "trainable parameters: %s",
        ", ".join(f"{g} {c.trainable:,}/{c.total:,}" for g, c in counts.items()),
    )
    return model


def parameter_groups(
    backbone: Backbone, model: torch.nn.Module, base_lr: float, weight_decay: float, cfg: FinetuneConfig
) -> list[dict[str, Any]]:
    """Optimiser groups per module group, each split into decayed (matrices) and undecayed (biases, norms)."""
    buckets: dict[str, list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = backbone.group_of(name)
        decay = param.ndim >= 2 and "norm" not in name.lower()
        buckets.setdefault(f"{group}" if decay else f"{group}/no_decay", []).append(param)
    out = []
    for key, params in sorted(buckets.items()):
        group = key.split("/")[0]
        lr = cfg.groups[group].lr or base_lr
        out.append({"params": params, "lr": lr, "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay,
                    "name": key})
    if not out:
        raise ValueError("no trainable parameter: check finetune and model.groups settings")
    return out
