"""Options that do not fit: train.py, synth.py and evaluate.py configs composed with Hydra, then changed.

Each case draws one family of options (batch sizes × devices, step budgets, fractions, fine-tuning method, trainer
strategy, stages × data mix, model family, benchmarks, synthesis shards, seed data ...) with values from valid to
absurd (zero, negative, a string, null, NaN), computes what the checks must say, and runs the entry point's check:
a config that cannot run raises :class:`ConfigError` naming the offending key before anything is executed; one
that can is accepted. Group options that do not exist, and keys that do not exist, are refused by Hydra's
composition with a message naming them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra.errors import HydraException
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf, open_dict

from mllm_da.config_checks import ConfigError, check_eval_config, check_synth_config, check_train_config

from ._input_helpers import ACCEPTED, REFUSED

KINDS = {"train": "config (train.py)", "synth": "config (synth.py)", "evaluate": "config (evaluate.py)"}
CHECKS = {"train": check_train_config, "synth": check_synth_config, "evaluate": check_eval_config}
_CACHE: dict[tuple[str, tuple[str, ...]], DictConfig] = {}
_ABSURD = st.sampled_from(["abc", None, True, [1], 2.5, float("nan")])


@pytest.fixture(scope="module")
def make(compose_cfg, tmp_path_factory) -> Callable[..., DictConfig]:
    """Compose ``name`` with group ``choices`` (cached), then set ``values`` (dotted keys) on a copy."""

    def _make(name: str, choices: tuple[str, ...] = (), values: dict[str, Any] | None = None) -> DictConfig:
        key = (name, choices)
        if key not in _CACHE:
            _CACHE[key] = compose_cfg(list(choices), config_name=name)
        cfg = copy.deepcopy(_CACHE[key])
        with open_dict(cfg):
            for dotted, value in (values or {}).items():
                OmegaConf.update(cfg, dotted, value, force_add=True)
        return cfg

    return _make


def run_check(tally: Any, name: str, family: str, cfg: DictConfig, expected: str | None) -> None:
    """``expected``: a key the ConfigError must name, or None for a config that must pass."""
    if expected is None:
        CHECKS[name](cfg)
    else:
        with pytest.raises(ConfigError) as info:
            CHECKS[name](cfg)
        assert expected in str(info.value), (expected, str(info.value))
    tally.record(KINDS[name], family, ACCEPTED if expected is None else REFUSED)


# --------------------------------------------------------------------------------------------- expectations


def _is_int(value: Any) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        or (isinstance(value, str) and value.strip().lstrip("+-").isdigit())
    )


def _as_int(value: Any) -> int:
    return int(value)


def int_ok(value: Any, minimum: int | None = None, special: tuple[int, ...] = (), null: bool = False) -> bool:
    if value is None:
        return null
    if not _is_int(value):
        return False
    number = _as_int(value)
    return number in special or minimum is None or number >= minimum


def float_ok(
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    null: bool = False,
) -> bool:
    if value is None:
        return null
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        number = float(value)
    except ValueError:
        return False
    if not math.isfinite(number):
        return False
    if low is not None and (number <= low if low_open else number < low):
        return False
    return not (high is not None and (number >= high if high_open else number > high))


# --------------------------------------------------------------------------------------------- train.py


@given(
    micro=st.integers(-2, 40) | _ABSURD | st.just("8"),
    global_batch=st.integers(-2, 70) | _ABSURD,
    devices=st.sampled_from([1, 2, 4, 0, -3, "abc", [0, 1], []]),
)
def test_train_batch_sizes_and_devices(make, fault_tally, micro, global_batch, devices) -> None:
    cfg = make(
        "train",
        values={"data.micro_batch_size": micro, "data.global_batch_size": global_batch, "trainer.devices": devices},
    )
    if isinstance(devices, int) and devices >= 1:
        world = devices
    elif isinstance(devices, list) and devices:
        world = len(devices)
    else:
        world = None
    if world is None:
        expected = "trainer.devices"
    elif not int_ok(micro, 1):
        expected = "data.micro_batch_size"
    elif not int_ok(global_batch, 1) or int(global_batch) % (int(micro) * world):
        expected = "data.global_batch_size"
    else:
        expected = None
    run_check(fault_tally, "train", "batch sizes × devices", cfg, expected)


@given(steps=st.sampled_from([-5, -1, 0, 1, 50, None, "x", 2.5]), epochs=st.sampled_from([None, -1, 0, 1, 3, "x", -7]))
def test_train_step_budget(make, fault_tally, steps, epochs) -> None:
    cfg = make("train", values={"trainer.max_steps": steps, "trainer.max_epochs": epochs})
    if not int_ok(steps, 1, (-1,)):
        expected = "trainer.max_steps"
    elif not int_ok(epochs, 1, (-1,), null=True) or steps == -1 and epochs == -1:
        expected = "trainer.max_epochs"
    else:
        expected = None
    run_check(fault_tally, "train", "step budget (max_steps × max_epochs)", cfg, expected)


_NUMBERS: dict[str, Callable[[Any], bool]] = {
    "seed": lambda v: int_ok(v, 0),
    "data.cutoff_len": lambda v: int_ok(v, 1),
    "data.num_workers": lambda v: int_ok(v, 0),
    "data.eval_batch_size": lambda v: int_ok(v, 1, null=True),
    "checkpoint.every_n_steps": lambda v: int_ok(v, 0),
    "checkpoint.keep": lambda v: int_ok(v, 0, (-1,)),
    "data.val_fraction": lambda v: float_ok(v, 0.0, 1.0, high_open=True),
    "optim.lr": lambda v: float_ok(v, 0.0, low_open=True),
    "optim.weight_decay": lambda v: float_ok(v, 0.0),
    "optim.warmup_ratio": lambda v: float_ok(v, 0.0, 1.0),
    "optim.min_lr_ratio": lambda v: float_ok(v, 0.0, 1.0, null=True),
}


@given(
    key=st.sampled_from(sorted(_NUMBERS)),
    value=st.integers(-3, 5) | st.floats(-2, 3) | _ABSURD | st.sampled_from(["7", "0.5", "1e-3", float("inf")]),
)
def test_train_plain_numbers(make, fault_tally, key, value) -> None:
    cfg = make("train", values={key: value})
    run_check(
        fault_tally,
        "train",
        f"number out of range or mistyped ({key.split('.')[0]})",
        cfg,
        None if _NUMBERS[key](value) else key,
    )


@given(
    method=st.sampled_from(["full", "lora", "qlora"]),
    bits=st.sampled_from([None, 4, 8, 16, 3]),
    lora_r=st.sampled_from([8, 0, -1, "x"]),
    override=st.sampled_from([None, "dora", "prefix"]),
    frozen=st.booleans(),
)
def test_train_finetune_method(make, fault_tally, method, bits, lora_r, override, frozen) -> None:
    values: dict[str, Any] = {"finetune.quantization_bits": bits, "finetune.lora_r": lora_r}
    if override:
        values["finetune.method"] = override
    if frozen:
        values.update({f"model.groups.{g}.train": False for g in ("vision", "projector", "llm")})
    cfg = make("train", (f"finetune={method}",), values)
    actual = override or method
    if actual not in ("full", "lora", "qlora"):
        expected = "finetune.method"
    elif actual == "qlora" and bits not in (4, 8):
        expected = "finetune.quantization_bits"
    elif frozen:
        expected = "model.groups"
    elif actual in ("lora", "qlora") and not int_ok(lora_r, 1):
        expected = "finetune.lora_r"
    else:
        expected = None
    run_check(fault_tally, "train", "fine-tuning method × quantization", cfg, expected)


@given(
    trainer=st.sampled_from(["cpu", "gpu", "ddp", "fsdp", "deepspeed"]),
    method=st.sampled_from(["full", "qlora"]),
    accelerator=st.sampled_from([None, "cpu"]),
    devices=st.sampled_from([None, 1, 2, -1]),
)
def test_train_trainer_strategy(make, fault_tally, trainer, method, accelerator, devices) -> None:
    import importlib.util

    import torch

    values: dict[str, Any] = {"data.micro_batch_size": 1, "data.global_batch_size": 8}
    if accelerator:
        values["trainer.accelerator"] = accelerator
    if devices is not None:
        values["trainer.devices"] = devices
    cfg = make("train", (f"trainer={trainer}", f"finetune={method}"), values)
    accel, strategy, devs = cfg.trainer.accelerator, str(cfg.trainer.get("strategy", "auto")), cfg.trainer.devices
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        expected = "trainer.accelerator"
    elif "deepspeed" in strategy:
        expected = "deepspeed" if importlib.util.find_spec("deepspeed") is None or accel == "cpu" else None
    elif "fsdp" in strategy and accel == "cpu":
        expected = "trainer=fsdp"
    elif method == "qlora" and ("fsdp" in strategy or "deepspeed" in strategy):
        expected = "finetune=qlora"
    elif devs == -1 and accel == "cpu":
        expected = "trainer.devices"
    else:
        expected = None
    run_check(fault_tally, "train", "trainer strategy × accelerator × fine-tuning", cfg, expected)


@given(
    stage_mode=st.sampled_from(["single_stage", "two_stage"]),
    mix=st.sampled_from(["caption_only", "rule_based", "external", "synthetic"]),
    captions=st.booleans(),
    external=st.sampled_from(["exists", "missing", None]),
)
def test_train_stages_and_data_mix(make, fault_tally, tmp_path_factory, stage_mode, mix, captions, external) -> None:
    values: dict[str, Any] = {"data_mix.captions": captions}
    if mix == "external":
        if external == "exists":
            path = tmp_path_factory.getbasetemp() / "external_tasks.json"
            path.write_text("[]")
            values["data_mix.external_file"] = str(path)
        else:
            values["data_mix.external_file"] = None if external is None else "/nonexistent/tasks.json"
    cfg = make("train", (f"stage_mode={stage_mode}", f"data_mix={mix}"), values)
    tasks = cfg.data_mix.tasks
    if mix == "external" and external != "exists":
        expected = "external_file"
    elif not captions and tasks == "none":
        expected = "data_mix.captions"
    elif stage_mode == "two_stage" and tasks == "none":
        expected = "stage_mode"
    elif stage_mode == "two_stage" and not captions:
        expected = "data_mix.captions"
    else:
        expected = None
    run_check(fault_tally, "train", "stage mode × data mix", cfg, expected)


_STAGE_LISTS: list[tuple[Any, str | None]] = [
    ([{"name": "all", "captions": True, "tasks": True, "steps_fraction": 1.0}], None),
    ([], "stage_mode"),
    ([{"name": "a", "captions": True, "tasks": True, "typo": 1}], "stage_mode.stages[0]"),
    (
        [{"name": "a", "captions": True, "tasks": True}, {"name": "a", "captions": False, "tasks": True}],
        "stage_mode.stages[1].name",
    ),
    ([{"name": "", "captions": True, "tasks": True}], "stage_mode.stages[0].name"),
    ([{"name": "a", "captions": "yes", "tasks": True}], "stage_mode.stages[0].captions"),
    ([{"name": "a", "captions": False, "tasks": False}], "stage_mode.stages[0]"),
    ([{"name": "a", "captions": True, "tasks": True, "steps_fraction": 0}], "stage_mode.stages[0].steps_fraction"),
    ([{"name": "a", "captions": True, "tasks": True, "steps_fraction": 1.5}], "stage_mode.stages[0].steps_fraction"),
    ([{"name": "a", "captions": True, "tasks": True, "steps_fraction": "half"}], "stage_mode.stages[0].steps_fraction"),
    (["stage one"], "stage_mode.stages[0]"),
]


@given(case=st.sampled_from(range(len(_STAGE_LISTS))))
def test_train_stage_definitions(make, fault_tally, case) -> None:
    stages, expected = _STAGE_LISTS[case]
    cfg = make("train", (), {"stage_mode.stages": stages})
    run_check(fault_tally, "train", "stage definitions", cfg, expected)


@given(
    family=st.sampled_from(["qwen2_vl", "mllama", "gpt2", "", None]),
    variant=st.sampled_from(["tiny", "random", "pretrained", "huge"]),
    source=st.sampled_from([None, "Qwen/Qwen2-VL-2B-Instruct"]),
    dtype=st.sampled_from(["float32", "fp8"]),
)
def test_train_model_family_and_variant(make, fault_tally, family, variant, source, dtype) -> None:
    cfg = make(
        "train",
        (),
        {
            "model.backbone.family": family,
            "model.backbone.variant": variant,
            "model.backbone.source": source,
            "model.backbone.dtype": dtype,
        },
    )
    if family not in ("qwen2_vl", "mllama"):
        expected = "model.backbone.family"
    elif variant not in ("tiny", "random", "pretrained"):
        expected = "model.backbone.variant"
    elif variant == "random":
        expected = "model.backbone.random_config"
    elif variant == "pretrained" and not source:
        expected = "model.backbone.source"
    elif dtype != "float32":
        expected = "model.backbone.dtype"
    else:
        expected = None
    run_check(fault_tally, "train", "model family × variant × dtype", cfg, expected)


_NAMES = st.sampled_from([["toy_vqa"], ["toy_vqa", "toy_mc"], ["no_such_benchmark"], ["generic"], "toy_mc", [], [5]])


def _benchmarks_expected(names: Any, limit: Any, tokens: Any, batch: Any, prefix: str) -> str | None:
    names = [names] if isinstance(names, str) else names
    if not int_ok(limit, 0, null=True):
        return f"{prefix}limit"
    if not int_ok(tokens, 1, null=True):
        return f"{prefix}max_new_tokens"
    if not int_ok(batch, 1):
        return f"{prefix}batch_size"
    if any(n not in ("toy_vqa", "toy_mc") for n in names):  # unknown, or generic without metric and source
        return f"{prefix}benchmarks"
    return None


@given(
    enabled=st.booleans(),
    names=_NAMES,
    limit=st.sampled_from([None, 0, 5, -1, "x"]),
    batch=st.sampled_from([4, 0]),
    tokens=st.sampled_from([None, 8, 0]),
)
def test_train_evaluation_options(make, fault_tally, enabled, names, limit, batch, tokens) -> None:
    cfg = make(
        "train",
        (),
        {
            "eval.enabled": enabled,
            "eval.benchmarks": names,
            "eval.limit": limit,
            "eval.batch_size": batch,
            "eval.max_new_tokens": tokens,
        },
    )
    expected = _benchmarks_expected(names, limit, tokens, batch, "eval.") if enabled else None
    run_check(fault_tally, "train", "evaluation benchmarks × limit", cfg, expected)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model=gpt5"], "model/gpt5"),
        (["finetune=dora"], "finetune/dora"),
        (["trainer=tpu"], "trainer/tpu"),
        (["data_mix=nope"], "data_mix/nope"),
        (["stage_mode=three_stage"], "stage_mode/three_stage"),
        (["benchmark=nope"], "benchmark/nope"),
        (["trainer.max_stepz=5"], "trainer.max_stepz"),
        (["data.micro_batch=4"], "data.micro_batch"),
        (["finetune=qlora", "finetune.bits=4"], "finetune.bits"),
    ],
)
def test_train_composition_refuses_unknown_options(compose_cfg, fault_tally, overrides: list[str], named: str) -> None:
    with pytest.raises(HydraException) as info:
        compose_cfg(overrides)
    assert named in str(info.value)
    fault_tally.record(KINDS["train"], "unknown group option or key (Hydra)", REFUSED)


def test_default_configs_pass(make, fault_tally) -> None:
    for name in CHECKS:
        CHECKS[name](make(name))
        fault_tally.record(KINDS[name], "defaults", ACCEPTED)


# --------------------------------------------------------------------------------------------- synth.py


@given(
    batch=st.sampled_from([1, 32, 0, -1, "x", None]),
    shards=st.sampled_from([1, 2, 4, 0]),
    processes=st.sampled_from([1, 2, 3]),
    shard=st.sampled_from([None, 0, 1, 3, -1]),
    limit=st.sampled_from([None, 0, 5, "x"]),
    device=st.sampled_from(["auto", "cpu", "cuda", "cuda:1"]),
)
def test_synth_shards_and_batches(make, fault_tally, batch, shards, processes, shard, limit, device) -> None:
    import torch

    cfg = make(
        "synth",
        (),
        {
            "synthesis.batch_size": batch,
            "synthesis.num_shards": shards,
            "synthesis.processes": processes,
            "synthesis.shard_index": shard,
            "synthesis.limit": limit,
            "synthesis.device": device,
        },
    )
    if not int_ok(batch, 1):
        expected = "synthesis.batch_size"
    elif shards < 1:
        expected = "synthesis.num_shards"
    elif not int_ok(limit, 1, null=True):
        expected = "synthesis.limit"
    elif shard is not None and not 0 <= shard < shards or shard is not None and processes > 1:
        expected = "synthesis.shard_index"
    elif processes > shards:
        expected = "synthesis.processes"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        expected = "synthesis.device"
    else:
        expected = None
    run_check(fault_tally, "synth", "synthesis shards × processes × batch × device", cfg, expected)


@given(
    synthesizer=st.sampled_from(["tiny_llava_next", "rules"]),
    stage=st.sampled_from(["all", "tune_synthesizer", "synthesise"]),
    steps=st.sampled_from([None, -3, 0, 5]),
    epochs=st.sampled_from([None, 0, 1]),
    micro=st.sampled_from([None, 4, 0]),
    global_batch=st.sampled_from([None, 8, 6]),
    lr=st.sampled_from([None, 1e-3, 0.0, "fast"]),
)
def test_synth_tuning_options(make, fault_tally, synthesizer, stage, steps, epochs, micro, global_batch, lr) -> None:
    cfg = make(
        "synth",
        (f"synthesizer={synthesizer}",),
        {
            "stage": stage,
            "tune.steps": steps,
            "tune.epochs": epochs,
            "tune.micro_batch_size": micro,
            "tune.global_batch_size": global_batch,
            "tune.lr": lr,
        },
    )
    tuning = synthesizer != "rules" and bool(cfg.tune.enabled) and not cfg.synthesizer.get("checkpoint")
    if stage not in ("all", "tune_synthesizer"):
        expected = "stage"
    elif synthesizer == "rules" and stage == "tune_synthesizer":
        expected = "stage=tune_synthesizer"
    elif not (tuning or stage == "tune_synthesizer"):
        expected = None
    elif not int_ok(steps, 1, null=True):
        expected = "tune.steps"
    elif not int_ok(epochs, 1, null=True):
        expected = "tune.epochs"
    elif steps is None and epochs is None:
        expected = "tune.steps or tune.epochs"
    elif not int_ok(micro, 1, null=True):
        expected = "tune.micro_batch_size"
    elif not int_ok(global_batch, 1, null=True) or micro and global_batch and global_batch % micro:
        expected = "tune.global_batch_size"
    elif not float_ok(lr, 0.0, low_open=True, null=True):
        expected = "tune.lr"
    else:
        expected = None
    run_check(fault_tally, "synth", "synthesizer × stage × tuning", cfg, expected)


@given(
    source=st.sampled_from(["toy", "visionflan", "laion"]),
    blank=st.floats(-0.5, 1.5) | st.sampled_from(["x", None]),
    dev=st.sampled_from([0.1, 0.0, 1.0, -0.1]),
    n_images=st.sampled_from([10, 0, "x"]),
    files=st.booleans(),
)
def test_synth_seed_data(make, fault_tally, tmp_path_factory, source, blank, dev, n_images, files) -> None:
    root = tmp_path_factory.getbasetemp() / "visionflan"
    if files and not root.exists():
        (root / "images").mkdir(parents=True)
        for name in ("ALLaVA-Caption-VFLAN-4V.json", "metadata.json", "ALLaVA-Instruct-VFLAN-4V.json"):
            (root / name).write_text("[]")
    cfg = make(
        "synth",
        (),
        {
            "seed_data.source": source,
            "seed_data.blank_fraction": blank,
            "seed_data.dev_fraction": dev,
            "seed_data.n_images": n_images,
            "seed_data.visionflan.root": str(root if files else root.parent / "no_visionflan"),
        },
    )
    if source not in ("toy", "visionflan"):
        expected = "seed_data.source"
    elif not float_ok(blank, 0.0, 1.0):
        expected = "seed_data.blank_fraction"
    elif not float_ok(dev, 0.0, 1.0, high_open=True):
        expected = "seed_data.dev_fraction"
    elif source == "toy" and not int_ok(n_images, 1):
        expected = "seed_data.n_images"
    elif source == "visionflan" and not files:
        expected = "seed_data.visionflan.caption_file"
    else:
        expected = None
    run_check(fault_tally, "synth", "seed data source × fractions", cfg, expected)


@given(
    filter_=st.sampled_from(["heuristic", "llm", "none"]),
    backend=st.sampled_from([None, "regex"]),
    prompt=st.sampled_from([None, "missing"]),
    batch=st.sampled_from([16, 0]),
    templates=st.sampled_from([None, "missing"]),
)
def test_synth_filter_and_formatting(make, fault_tally, filter_, backend, prompt, batch, templates) -> None:
    values: dict[str, Any] = {
        "filter.batch_size": batch,
        "filter.prompt_file": "/nonexistent/prompt.txt" if prompt else None,
        "formatting.templates_file": "/nonexistent/templates.json" if templates else None,
    }
    if backend:
        values["filter.backend"] = backend
    cfg = make("synth", (f"filter={filter_}",), values)
    actual = backend or cfg.filter.backend
    if actual not in ("llm", "heuristic", "none"):
        expected = "filter.backend"
    elif actual == "llm" and prompt:
        expected = "filter.prompt_file"
    elif actual == "llm" and batch < 1:
        expected = "filter.batch_size"
    elif templates:
        expected = "formatting.templates_file"
    else:
        expected = None
    run_check(fault_tally, "synth", "consistency filter × prompt × templates", cfg, expected)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["synthesizer=gpt5"], "synthesizer/gpt5"),
        (["filter=regex"], "filter/regex"),
        (["synthesis.batchsize=4"], "synthesis.batchsize"),
    ],
)
def test_synth_composition_refuses_unknown_options(compose_cfg, fault_tally, overrides, named) -> None:
    with pytest.raises(HydraException) as info:
        compose_cfg(overrides, config_name="synth")
    assert named in str(info.value)
    fault_tally.record(KINDS["synth"], "unknown group option or key (Hydra)", REFUSED)


# --------------------------------------------------------------------------------------------- evaluate.py


@given(
    names=_NAMES,
    limit=st.sampled_from([None, 0, 5, -1, "x"]),
    batch=st.sampled_from([8, 0]),
    tokens=st.sampled_from([None, 8, 0]),
    bad_rows=st.sampled_from([None, "fail", "skip", "ignore"]),
    backend=st.sampled_from(["hf", "vllm", "tgi"]),
    device=st.sampled_from(["auto", "cpu", "cuda"]),
)
def test_evaluate_options(make, fault_tally, names, limit, batch, tokens, bad_rows, backend, device) -> None:
    import torch

    cfg = make(
        "evaluate",
        (),
        {
            "benchmarks": names,
            "limit": limit,
            "batch_size": batch,
            "max_new_tokens": tokens,
            "bad_rows": bad_rows,
            "backend": backend,
            "device": device,
        },
    )
    if not names:
        expected = "benchmarks"
    elif not int_ok(limit, 0, null=True):
        expected = "limit"
    elif not int_ok(tokens, 1, null=True):
        expected = "max_new_tokens"
    elif not int_ok(batch, 1):
        expected = "batch_size"
    elif bad_rows not in (None, "fail", "skip"):
        expected = "bad_rows"
    elif any(n not in ("toy_vqa", "toy_mc") for n in ([names] if isinstance(names, str) else names)):
        expected = "benchmarks"
    elif backend not in ("hf", "vllm"):
        expected = "backend"
    elif device == "cuda" and not torch.cuda.is_available():
        expected = "device"
    else:
        expected = None
    run_check(fault_tally, "evaluate", "benchmarks × limit × bad_rows × backend", cfg, expected)


def test_evaluate_generic_benchmark_needs_metric_and_source(make, fault_tally, tmp_path: Path) -> None:
    base = {"benchmarks": ["generic"]}
    cases = [
        ({}, "metric None"),
        ({"benchmark.generic.metric": "vqa_open_closed"}, "set source"),
        ({"benchmark.generic.metric": "bleu", "benchmark.generic.source": str(tmp_path)}, "metric 'bleu'"),
        (
            {
                "benchmark.generic.metric": "vqa_open_closed",
                "benchmark.generic.source": str(tmp_path),
                "benchmark.generic.typo": 1,
            },
            "unknown key(s) ['typo']",
        ),
        ({"benchmark.generic.metric": "vqa_open_closed", "benchmark.generic.source": str(tmp_path)}, None),
    ]
    for values, message in cases:
        cfg = make("evaluate", (), {**base, **values})
        run_check(fault_tally, "evaluate", "generic benchmark definition", cfg, None if message is None else message)
