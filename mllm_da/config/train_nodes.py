"""The nodes of train.py's config (conf/train.yaml and its groups) as typed configs.

Defaults equal the YAML's (tests/test_config_schemas.py checks it); a key without a default here is one the YAML
always sets (often from the model preset's ``recipe``), so the YAML is its one source.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from omegaconf import ListConfig

from mllm_da.backbones.base import GROUPS
from mllm_da.backbones.chat_format import MaskMode
from mllm_da.backbones.loading import FAMILIES
from mllm_da.backbones.spec import BackboneSpec, Truncation
from mllm_da.training.finetune import GroupSetting
from mllm_da.training.module import OptimConfig
from mllm_da.utils.typed_config import option

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
BadRecords = Literal["skip", "fail"]


def preset_names(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _is_preset(group: str, unset_ok: bool = False):
    def check(value: Any) -> str | None:
        if value is None and unset_ok:
            return None
        names = preset_names(group)
        return None if value in names else f"={value!r} is not a preset; choose one of {names}"

    return check


def _enabled(node: Any) -> bool:
    return bool(node.get("enabled", True))


# --------------------------------------------------------------------------------------------- model


@dataclass
class BackboneNode(BackboneSpec):
    """``model.backbone``: a BackboneSpec whose family is one this project has an adapter for."""

    family: str = option(choices=FAMILIES)


@dataclass
class ModelConfig:
    """A ``model=`` preset (conf/model/*.yaml). ``recipe`` is free-form: the model's reference recipe and strategy,
    read by interpolations elsewhere (``${model.recipe.lr}``)."""

    backbone: BackboneNode
    #: the preset's name, used in run and task names (``paper/*`` presets)
    name: str | None = None
    groups: dict[str, GroupSetting] = option(default_factory=lambda: {g: GroupSetting() for g in GROUPS}, keys=GROUPS)
    recipe: dict[str, Any] = field(default_factory=dict)
    #: text between image and question at evaluation ("\n" for AdaMLLM's LLaVA)
    eval_image_separator: str | None = None


# --------------------------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    """``data``: batches, sequence length and what to do with bad or over-long records."""

    micro_batch_size: int = option(ge=1)
    global_batch_size: int = option(ge=1)
    cutoff_len: int = option(ge=1)
    eval_batch_size: int | None = option(None, ge=1)
    truncation: Truncation = "drop"
    group_by_length: bool = True
    packing: bool = False
    num_workers: int = option(0, ge=0)
    pin_memory: bool = False
    bad_records: BadRecords = "skip"
    val_fraction: float = option(0.02, ge=0.0, lt=1.0)
    mask_mode: MaskMode = "assistant"


@dataclass
class SynthesisRef:
    """``data_mix.synthesis``: the synth.py presets that make a mix's synthetic (or rule-made) tasks. Unset presets
    are refused only where the mix synthesizes (an experiment may set ``overrides`` for every mix it sweeps)."""

    synthesizer: str | None = option(None, check=_is_preset("synthesizer", unset_ok=True))
    filter: str | None = option(None, check=_is_preset("filter", unset_ok=True))
    overrides: list[str] = field(default_factory=list)
    paths: dict[str, Any] = field(default_factory=dict)


@dataclass
class ComponentConfig:
    """One part of a weighted mix: a data mix and its weight (below 1 subsamples, above 1 repeats)."""

    mix: DataMixConfig
    weight: float = option(1.0, ge=0.0)


@dataclass
class DataMixConfig:
    """A ``data_mix=`` preset (mllm_da.data.mixing.DataMix, or a weighted mix of them)."""

    name: str
    tasks: Literal["none", "rule_based", "synthetic", "external", "mixed"]
    captions: bool = True
    external_file: str | None = None
    max_tasks_per_image: int | None = option(None, ge=0)
    synthesis: SynthesisRef | None = None
    #: data_mix=weighted only
    components: dict[str, ComponentConfig] | None = None
    seed: int | None = option(None, ge=0)

    def rules(self, path: str) -> list[str]:
        if not self.captions and self.tasks == "none":
            return [f"data_mix={self.name} has neither captions ({path}.captions=false) nor tasks: no data"]
        if self.tasks == "synthetic" and self.synthesis is None:
            return [f"data_mix={self.name} has tasks=synthetic but no 'synthesis' node; start from data_mix=synthetic"]
        if self.tasks == "synthetic" and self.synthesis is not None:
            unset = [k for k in ("synthesizer", "filter") if getattr(self.synthesis, k) is None]
            if unset:
                return [f"data_mix={self.name} has tasks=synthetic but {path}.synthesis.{unset[0]} is not set"]
        if self.tasks == "mixed" and not self.components:
            return [f"data_mix={self.name}: no components ({path}.components)"]
        return []


# --------------------------------------------------------------------------------------------- stages


def _stage_name(value: Any) -> str | None:
    ok = isinstance(value, str) and value and "/" not in value
    return None if ok else f"must be a unique non-empty name without '/', got {value!r}"


@dataclass
class StageConfig:
    """One stage of ``stage_mode.stages`` (mllm_da.training.stages.Stage)."""

    name: str = option(check=_stage_name)
    captions: bool = True
    tasks: bool = True
    steps_fraction: float = option(1.0, gt=0.0, le=1.0)

    def rules(self, path: str) -> list[str]:
        if not self.captions and not self.tasks:
            return [f"{path} ({self.name}) trains on neither captions nor tasks"]
        return []


@dataclass
class StageModeConfig:
    """A ``stage_mode=`` preset: the fits of a run, in order."""

    name: str
    stages: list[StageConfig]

    def rules(self, path: str) -> list[str]:
        if not self.stages:
            return [f"stage_mode={self.name} lists no stages ({path}.stages)"]
        names = [s.name for s in self.stages]
        return [
            f"{path}.stages[{i}].name must be a unique non-empty name without '/', got {n!r} twice"
            for i, n in enumerate(names)
            if n in names[:i]
        ]


# --------------------------------------------------------------------------------------------- trainer


def _devices(value: Any) -> str | None:
    """trainer.devices: a count >= 1, -1 (all GPUs), 'auto' or a non-empty list of device indices."""
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value >= 1 or value == -1 else f"must be >= 1, -1 (all) or 'auto', got {value}"
    if value == "auto":
        return None
    if isinstance(value, (list, tuple, ListConfig)):
        ids = list(value)
        ok = ids and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        return None if ok else f"as a list must hold device indices >= 0, got {ids}"
    return f"must be a count, -1, 'auto' or a list of device indices, got {value!r}"


@dataclass
class TrainerConfig:
    """A ``trainer=`` preset: the Lightning Trainer's arguments (any of them is accepted); these are checked."""

    EXTRA_KEYS = frozenset(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}

    accelerator: str = "cpu"
    devices: int | str | list[int] = option(1, check=_devices)
    num_nodes: int = option(1, ge=1)
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_epochs: int | None = option(None, ge=1, special=(-1,))
    max_steps: int = option(-1, ge=1, special=(-1,))

    def rules(self, path: str) -> list[str]:
        strategy, problems = str(self.strategy), []
        if str(self.devices) == "-1" and self.accelerator not in ("gpu", "cuda", "auto"):
            problems.append(
                f"{path}.devices=-1 (all GPUs) needs a GPU accelerator, got "
                f"{path}.accelerator={self.accelerator}; give a count"
            )
        if "deepspeed" in strategy and self.accelerator == "cpu":
            problems.append("trainer=deepspeed runs on GPUs only; use trainer=cpu or trainer=ddp here")
        if "fsdp" in strategy and self.accelerator == "cpu":
            problems.append("trainer=fsdp needs GPUs (NCCL); on CPU use trainer=cpu or trainer=ddp")
        if self.max_steps == -1 and self.max_epochs == -1:
            problems.append(
                f"{path}.max_steps=-1 and {path}.max_epochs=-1: training would never stop; "
                f"set {path}.max_steps or {path}.max_epochs"
            )
        return problems


# --------------------------------------------------------------------------------------------- the rest


@dataclass
class CheckpointConfig:
    """``checkpoint``: resumable checkpoints during training."""

    every_n_steps: int = option(200, ge=0)
    keep: int = option(1, ge=0, special=(-1,))
    save_trainable_only: Literal["auto", True, False] = "auto"


@dataclass
class EvalConfig:
    """``eval``: the benchmarks run after training (their names are checked against ``benchmark``)."""

    benchmarks: Any
    enabled: bool = True
    batch_size: int = option(32, ge=1, when=_enabled)
    limit: int | None = option(None, ge=0, when=_enabled)
    max_new_tokens: int | None = option(None, ge=1, when=_enabled)
    shuffled_control: bool = False
    untrained_baseline: bool = False
    image_separator: str = ""


@dataclass
class TrainRoot:
    """conf/train.yaml's top-level values; its nodes are TRAIN_NODES, other keys (paths, domain, loggers...) pass."""

    EXTRA_KEYS = "*"

    seed: int = option(0, ge=0)
    ckpt_path: str | None = None
    export: bool = True
    skip_finished: bool = True
    sweep_continue_on_error: bool = True
    compile: bool = False


#: train.py's nodes and their schemas (finetune: FinetuneConfig.from_config, with model.groups)
TRAIN_NODES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "checkpoint": CheckpointConfig,
    "eval": EvalConfig,
    "data_mix": DataMixConfig,
    "stage_mode": StageModeConfig,
}
