"""The typed configs (mllm_da/config/, the generic check of mllm_da/utils/typed_config.py) against the YAML: every
option of every group is valid by its schema, a schema's defaults equal the YAML's, and the check names the full
dotted key and what to change."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from conftest import CONF
from omegaconf import OmegaConf

from mllm_da.backbones.base import BackboneSpec
from mllm_da.config.run_nodes import (
    EvaluateRoot,
    FilterConfig,
    FormattingConfig,
    PredictRoot,
    QualityConfig,
    SeedDataConfig,
    SynthesisConfig,
    SynthesizerConfig,
    SynthRoot,
    TuneConfig,
)
from mllm_da.config.train_nodes import (
    CheckpointConfig,
    DataConfig,
    DataMixConfig,
    EvalConfig,
    ModelConfig,
    StageModeConfig,
    TrainerConfig,
    TrainRoot,
)
from mllm_da.training.finetune import FinetuneConfig
from mllm_da.training.module import OptimConfig
from mllm_da.utils.typed_config import ConfigError, default_of, has_default, load, plain, try_load

#: (entry config, group whose options are composed or None, node, schema, keys whose value the options choose)
NODES: list[tuple[str, str | None, str, type, set[str]]] = [
    ("train", "finetune", "finetune", FinetuneConfig, {"method", "quantization_bits"}),
    ("train", "trainer", "trainer", TrainerConfig, {"accelerator", "devices", "strategy", "precision"}),
    (
        "train",
        "data_mix",
        "data_mix",
        DataMixConfig,
        {"name", "tasks", "synthesis", "seed", "components", "external_file"},
    ),
    ("train", "stage_mode", "stage_mode", StageModeConfig, set()),
    ("train", "model", "model", ModelConfig, {"name", "groups", "recipe", "eval_image_separator"}),
    ("train", None, "", TrainRoot, set()),
    ("train", None, "data", DataConfig, set()),
    ("train", None, "optim", OptimConfig, set()),
    ("train", None, "checkpoint", CheckpointConfig, set()),
    ("train", None, "eval", EvalConfig, set()),
    ("synth", "synthesizer", "synthesizer", SynthesizerConfig, {"name", "kind", "questions"}),
    (
        "synth",
        "synthesizer",
        "tune",
        TuneConfig,
        {"enabled", "steps", "epochs", "micro_batch_size", "global_batch_size", "lr", "overrides"},
    ),
    ("synth", "filter", "filter", FilterConfig, {"backend", "model"}),
    ("synth", None, "", SynthRoot, set()),
    ("synth", None, "synthesis", SynthesisConfig, set()),
    ("synth", None, "seed_data", SeedDataConfig, set()),
    ("synth", None, "formatting", FormattingConfig, set()),
    ("synth", None, "quality", QualityConfig, set()),
    ("evaluate", None, "", EvaluateRoot, set()),
    ("predict", None, "", PredictRoot, set()),
]
REQUIRED = {("data_mix", "external"): ["data_mix.external_file=/x/tasks.json"]}
CASES = [
    (entry, group, option, node, schema, varies)
    for entry, group, node, schema, varies in NODES
    for option in ([p.stem for p in sorted((CONF / group).glob("*.yaml"))] if group else [None])
]


def _same(value: Any) -> Any:
    return tuple(_same(v) for v in value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize(
    ("entry", "group", "option", "node", "schema", "varies"),
    CASES,
    ids=[f"{c[0]}:{c[3] or 'top'}:{c[2] or 'default'}" for c in CASES],
)
def test_every_option_is_valid_and_schema_defaults_equal_the_yaml(
    compose_cfg, entry, group, option, node, schema, varies
):
    overrides = [f"{group}={option}", *REQUIRED.get((group, option), [])] if group else []
    cfg = compose_cfg(overrides, config_name=entry)
    values = OmegaConf.select(cfg, node) if node else cfg
    assert try_load(values, schema, node)[1] == []
    for field in dataclasses.fields(schema):
        if not has_default(field) or field.name in varies or field.name not in values:
            continue
        default = default_of(field)
        if dataclasses.is_dataclass(default):
            continue  # a nested node: its own schema's defaults are checked where it is listed
        given = plain(values[field.name])
        assert _same(given) == _same(default), (
            f"{node}.{field.name}: the YAML says {given!r}, {schema.__name__} {default!r}"
        )


def test_finetune_presets_are_instantiated_through_their_target(compose_cfg):
    for option in ("full", "lora", "qlora"):
        cfg = compose_cfg([f"finetune={option}"])
        assert cfg.finetune._target_ == "mllm_da.training.finetune.FinetuneConfig"
        spec = FinetuneConfig.from_config(cfg.finetune, cfg.model.groups)
        assert type(spec) is FinetuneConfig and spec.method == option


def test_messages_name_the_full_key_and_the_fix():
    node = {
        "micro_batch_size": "8",
        "global_batch_size": 0,
        "cutoff_len": 2.5,
        "truncation": "middle",
        "val_fraction": 1.0,
        "typo": 1,
    }
    with pytest.raises(ConfigError) as caught:
        load(node, DataConfig, "data")
    message = str(caught.value)
    assert "data: unknown key(s) ['typo']" in message
    assert "data.global_batch_size must be >= 1, got 0" in message
    assert "data.cutoff_len must be an integer, got 2.5" in message
    assert "data.truncation must be one of ['drop', 'cut_text'], got 'middle'" in message
    assert "data.val_fraction must lie in [0.0, 1.0), got 1.0" in message
    assert "data.micro_batch_size must" not in message  # "8" reads as 8


def test_the_same_rules_guard_python_callers():
    with pytest.raises(ConfigError, match=r"model\.backbone\.dtype must be one of"):
        BackboneSpec(family="qwen2_vl", dtype="fp8")
    with pytest.raises(ConfigError, match=r"finetune\.lora_r must be >= 1"):
        FinetuneConfig(method="lora", lora_r=0)
    with pytest.raises(ConfigError, match=r"finetune\.method must be one of"):
        FinetuneConfig(method="dora")
    assert FinetuneConfig(method="full", lora_r=0).lora_r == 0  # LoRA keys matter only for adapters
    with pytest.raises(ConfigError, match="llm.train=false"):
        FinetuneConfig.from_config({"method": "lora"}, {"llm": {"train": False}})
    with pytest.raises(ConfigError, match=r"model\.groups\.audio: unknown key"):
        FinetuneConfig.from_config({"method": "full"}, {"audio": {"train": True}})
