"""full / LoRA / QLoRA on top of any backbone, with per-group (vision / projector / llm) freezing."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import torch
from hydra.utils import instantiate

from mllm_da.backbones.base import GROUPS, Backbone
from mllm_da.backbones.spec import QuantizationBits
from mllm_da.utils.typed_config import Rules, check_value, load, option, plain, raise_problems, validate

log = logging.getLogger(__name__)

Method = Literal["full", "lora", "qlora"]


@dataclass
class GroupSetting:
    """Whether a module group trains, and its own learning rate (``None``: the optimiser's base rate)."""

    train: bool = True
    lr: float | None = None


def _adapters(node: Any) -> bool:
    """The LoRA keys matter only when adapters are trained."""
    return node.get("method") in ("lora", "qlora")


@dataclass
class FinetuneConfig:
    """The ``finetune=`` group (conf/finetune/*.yaml, whose ``_target_`` is this class) with the model preset's
    per-group settings (``model.groups``, reference §4.2). Defaults are those of the YAML files."""

    method: Method = "full"
    lora_r: int = option(8, ge=1, when=_adapters)
    lora_alpha: float = option(16, gt=0.0, when=_adapters)
    lora_dropout: float = option(0.05, ge=0.0, lt=1.0, when=_adapters)
    #: QLoRA weight bits (4 or 8); ignored for full and LoRA
    quantization_bits: int | None = None
    gradient_checkpointing: bool = False
    groups: dict[str, GroupSetting] = option(default_factory=lambda: {g: GroupSetting() for g in GROUPS}, keys=GROUPS)
    #: the preset's name (conf/finetune/<name>.yaml), if it gives one
    name: str | None = None

    def __post_init__(self) -> None:
        given = {g: s if isinstance(s, GroupSetting) else GroupSetting(**s) for g, s in dict(self.groups).items()}
        self.groups = {g: GroupSetting() for g in GROUPS} | given
        validate(self, "finetune")

    def rules(self, path: str) -> list[str]:
        if self.method == "qlora" and self.quantization_bits not in get_args(QuantizationBits):
            return [f"finetune=qlora needs {path}.quantization_bits: 4 or 8, got {self.quantization_bits!r}"]
        if not any(s.train for s in self.groups.values()):
            return ["every module group is frozen (model.groups.*.train=false): nothing would train"]
        if self.method in ("lora", "qlora") and not self.groups["llm"].train:
            return [f"finetune={self.method} puts adapters on the LLM, but model.groups.llm.train=false"]
        return []

    @classmethod
    def from_config(cls, finetune: Mapping[str, Any], groups: Mapping[str, Any] | None) -> FinetuneConfig:
        """Instantiate the ``finetune=`` node through its ``_target_`` (this class by default) with the model
        preset's ``model.groups``, after checking both."""
        node = {**plain(finetune), "groups": plain(groups or {})}
        found = check_value(node["groups"], dict[str, GroupSetting], "model.groups", Rules(keys=GROUPS))[1]
        raise_problems(found)
        # every problem at once, before Hydra would wrap the first in its own error; then the checked values
        checked = dataclasses.asdict(load(node, cls, "finetune"))
        target = node.get("_target_") or f"{cls.__module__}.{cls.__qualname__}"
        return instantiate({"_target_": target, **checked}, _convert_="all")

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

        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # peft annotates int; a float works (scaling = alpha / r)
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
        # a transformers model or its PEFT wrapper (which forwards to it): nn.Module's stubs know neither's methods
        wrapped = cast(Any, model)
        wrapped.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method != "full" and hasattr(model, "enable_input_require_grads"):
            wrapped.enable_input_require_grads()
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
        out.append(
            {
                "params": params,
                "lr": lr,
                "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay,
                "name": key,
            }
        )
    if not out:
        raise ValueError("no trainable parameter: check finetune and model.groups settings")
    return out
