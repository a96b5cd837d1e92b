"""Refuse option combinations that cannot work, at start, with a message that says what to change.

Every check raises :class:`ConfigError` naming the offending key(s) before anything runs: a value of the wrong
type (``data.micro_batch_size=abc``), out of range (a zero batch, a negative step budget, a fraction above 1), an
unknown preset or name (a model family, a benchmark), or options that do not fit together (QLoRA with sharding,
a two-stage run whose data mix lacks one stage's data, a GPU trainer without a GPU, ...).
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A composed config that cannot run; the message names the option(s) and a fix."""


# --------------------------------------------------------------------------------------------- typed values

_INTEGER = re.compile(r"[+-]?\d+")


def _value(cfg: Any, key: str) -> Any:
    """``cfg``'s value at the dotted ``key`` (None when absent); an unresolvable one is a ConfigError."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as err:  # an interpolation that does not resolve, a mandatory ??? value
        raise ConfigError(f"{key} cannot be read: {type(err).__name__}: {err}") from None


def _int(cfg: Any, key: str, minimum: int | None = None, *, special: Iterable[int] = (),
         null: bool = False) -> int | None:
    """An integer option: ``minimum`` or more, or one of ``special``; None only when ``null`` allows it."""
    value = _value(cfg, key)
    if value is None:
        if null:
            return None
        raise ConfigError(f"{key} must be an integer, got null")
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    special = tuple(special)
    if value in special:
        return value
    if minimum is not None and value < minimum:
        also = "".join(f" or {s}" for s in special)
        raise ConfigError(f"{key} must be >= {minimum}{also}" + (" or null" if null else "") + f", got {value}")
    return value


def _float(cfg: Any, key: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, null: bool = False) -> float | None:
    """A finite number in [low, high] (an end excluded when ``low_open`` / ``high_open``)."""
    value = _value(cfg, key)
    if value is None:
        if null:
            return None
        raise ConfigError(f"{key} must be a number, got null")
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(f"{key} must lie in {span}, got {value!r}")
    return number


def _choice(cfg: Any, key: str, choices: Iterable[Any]) -> Any:
    value = _value(cfg, key)
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- train.py


def device_count(trainer: DictConfig) -> int:
    devices: Any = trainer.get("devices", 1)
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(f"trainer.num_nodes must be an integer >= 1, got {nodes!r}")
    if isinstance(devices, str) and _INTEGER.fullmatch(devices.strip()):
        devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices == 0 or devices < -1:
            raise ConfigError(f"trainer.devices must be >= 1, -1 (all) or 'auto', got {devices}")
        per_node = devices
        if devices == -1:
            if trainer.get("accelerator") not in ("gpu", "cuda", "auto"):
                raise ConfigError(f"trainer.devices=-1 (all GPUs) needs a GPU accelerator, got "
                                  f"trainer.accelerator={trainer.get('accelerator')}; give a count")
            per_node = max(1, torch.cuda.device_count())
    elif isinstance(devices, str) and devices == "auto":
        per_node = max(1, torch.cuda.device_count()) if trainer.get("accelerator") in ("gpu", "cuda") else 1
    elif OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        ids = list(devices)
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(f"trainer.devices as a list must hold device indices >= 0, got {ids}")
        per_node = len(ids)
    else:
        raise ConfigError(
            f"trainer.devices must be a count, -1, 'auto' or a list of device indices, got {devices!r}"
        )
    return max(1, per_node) * nodes


def accumulation_steps(cfg: DictConfig) -> int:
    """Gradient accumulation that turns micro batches on every device into the configured global batch."""
    world = device_count(cfg.trainer)
    micro = _int(cfg, "data.micro_batch_size", 1)
    global_batch = _int(cfg, "data.global_batch_size", 1)
    assert micro is not None and global_batch is not None
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
    if mix.tasks == "rule_based" and not cfg.domain.get("rule_tasks") and not mix.get("synthesis"):
        raise ConfigError(
            f"data_mix={mix.name} needs rule-based tasks but domain={cfg.domain.name} has no rule_tasks file and "
            "the mix has no synthesis node for the rule-based synthesizer; use data_mix=rule_based, "
            "data_mix=caption_only or data_mix=external"
        )
    external = None if OmegaConf.is_missing(mix, "external_file") else mix.get("external_file")
    if mix.tasks == "external" and not (external or cfg.domain.get("external_tasks")):
        raise ConfigError("data_mix=external needs data_mix.external_file=<your instruction file>")
    if mix.tasks == "external" and external and not Path(str(external)).is_file():
        raise ConfigError(f"data_mix.external_file={external} does not exist")
    if cfg.data.truncation not in ("drop", "cut_text"):
        raise ConfigError(f"data.truncation must be drop or cut_text, got {cfg.data.truncation!r}")
    if cfg.data.bad_records not in ("skip", "fail"):
        raise ConfigError(f"data.bad_records must be skip or fail, got {cfg.data.bad_records!r}")
    if cfg.data.mask_mode not in ("assistant", "synthesizer"):
        raise ConfigError(f"data.mask_mode must be assistant or synthesizer, got {cfg.data.mask_mode!r}")
    if mix.tasks == "synthetic":
        check_synthesis_spec(mix)
    accumulation_steps(cfg)
    _check_numbers(cfg)
    _check_model(cfg, "model.backbone")
    _check_finetune(cfg)
    _check_stages(cfg)
    if cfg.get("eval") is not None and cfg.eval.get("enabled"):
        names = cfg.eval.benchmarks
        _check_benchmarks(cfg, "eval.benchmarks", names, limit_key="eval.limit",
                          tokens_key="eval.max_new_tokens", batch_key="eval.batch_size")


def _check_numbers(cfg: DictConfig) -> None:
    """Ranges of train.py's plain numbers."""
    _int(cfg, "seed", 0)
    _int(cfg, "data.cutoff_len", 1)
    _int(cfg, "data.eval_batch_size", 1, null=True)
    _int(cfg, "data.num_workers", 0)
    _float(cfg, "data.val_fraction", 0.0, 1.0, high_open=True)
    _float(cfg, "optim.lr", 0.0, low_open=True)
    _float(cfg, "optim.weight_decay", 0.0)
    _float(cfg, "optim.warmup_ratio", 0.0, 1.0)
    _float(cfg, "optim.min_lr_ratio", 0.0, 1.0, null=True)
    steps = _int(cfg, "trainer.max_steps", 1, special=(-1,))
    epochs = _int(cfg, "trainer.max_epochs", 1, special=(-1,), null=True)
    if steps == -1 and epochs == -1:
        raise ConfigError(
            f"trainer.max_steps={steps} and trainer.max_epochs=-1: training would never stop; "
            "set trainer.max_steps or trainer.max_epochs"
        )
    _int(cfg, "checkpoint.every_n_steps", 0)
    _int(cfg, "checkpoint.keep", 0, special=(-1,))
    if cfg.data_mix.get("max_tasks_per_image") is not None:
        _int(cfg, "data_mix.max_tasks_per_image", 0)


def _check_model(cfg: DictConfig, key: str) -> None:
    """A backbone node names a family, variant, dtype and image backend that exist."""
    from mllm_da.backbones.fast_image import BACKENDS
    from mllm_da.backbones.loading import DTYPES, FAMILIES

    node = _value(cfg, key)
    if node is None:
        raise ConfigError(f"{key} is missing; pick a model= preset")
    family = node.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"{key}.family={family!r} is not supported; choose one of {sorted(FAMILIES)}")
    variant = node.get("variant")
    if variant not in ("pretrained", "tiny", "random"):
        raise ConfigError(f"{key}.variant must be pretrained, tiny or random, got {variant!r}")
    if variant == "random" and not node.get("random_config"):
        raise ConfigError(f"{key}.random_config must name an architecture JSON for variant=random")
    if variant == "pretrained" and not node.get("source"):
        raise ConfigError(f"{key}.source must name a hub id or a local folder for variant=pretrained")
    if node.get("dtype", "float32") not in DTYPES:
        raise ConfigError(f"{key}.dtype must be one of {sorted(DTYPES)}, got {node.get('dtype')!r}")
    if node.get("image_backend", "torchvision") not in BACKENDS:
        raise ConfigError(f"{key}.image_backend must be one of {list(BACKENDS)}, got {node.get('image_backend')!r}")


def _check_finetune(cfg: DictConfig) -> None:
    from mllm_da.training.finetune import FinetuneConfig

    try:
        groups = OmegaConf.to_container(cfg.model.groups, resolve=True) if cfg.model.get("groups") else None
        finetune = FinetuneConfig.from_config(OmegaConf.to_container(cfg.finetune, resolve=True), groups)
    except (ValueError, TypeError) as err:  # an unknown field, a method or bit width that does not exist
        raise ConfigError(f"finetune / model.groups: {err}") from None
    if finetune.method in ("lora", "qlora"):
        _int(cfg, "finetune.lora_r", 1)
        _float(cfg, "finetune.lora_alpha", 0.0, low_open=True)
        _float(cfg, "finetune.lora_dropout", 0.0, 1.0, high_open=True)


#: the keys a stage_mode stage may have (mllm_da.training.run.Stage)
_STAGE_KEYS = ("name", "captions", "tasks", "steps_fraction")


def _check_stages(cfg: DictConfig) -> None:
    """stage_mode: well-formed stages, each with data in the data mix."""
    stages = _value(cfg, "stage_mode.stages")
    name = cfg.stage_mode.get("name")
    if not stages or not OmegaConf.is_list(stages):
        raise ConfigError(f"stage_mode={name} lists no stages (stage_mode.stages)")
    mix = cfg.data_mix
    if not mix.get("captions", True) and mix.tasks == "none":
        raise ConfigError(f"data_mix={mix.name} has neither captions (data_mix.captions=false) nor tasks: no data")
    seen = set()
    for i, stage in enumerate(stages):
        key = f"stage_mode.stages[{i}]"
        if not OmegaConf.is_dict(stage):
            raise ConfigError(f"{key} must be a mapping with keys {list(_STAGE_KEYS)}, got {stage!r}")
        unknown = sorted(set(stage) - set(_STAGE_KEYS))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; a stage has {list(_STAGE_KEYS)}")
        stage_name = stage.get("name")
        if not isinstance(stage_name, str) or not stage_name or "/" in stage_name or stage_name in seen:
            raise ConfigError(f"{key}.name must be a unique non-empty name without '/', got {stage_name!r}")
        seen.add(stage_name)
        captions, tasks = stage.get("captions", True), stage.get("tasks", True)
        if not isinstance(captions, bool) or not isinstance(tasks, bool):
            raise ConfigError(f"{key}.captions and {key}.tasks must be true or false, got {captions!r}, {tasks!r}")
        if "steps_fraction" in stage:
            _float(cfg, f"stage_mode.stages.{i}.steps_fraction", 0.0, 1.0, low_open=True)
        if not captions and not tasks:
            raise ConfigError(f"{key} ({stage_name}) trains on neither captions nor tasks")
        if tasks and not captions and mix.tasks == "none":
            raise ConfigError(
                f"stage_mode={name} has a task-only stage but data_mix={mix.name} has no tasks; "
                "pick a data_mix with tasks (e.g. rule_based, synthetic)"
            )
        if captions and not tasks and not mix.get("captions", True):
            raise ConfigError(
                f"stage_mode={name} has a caption-only stage ({stage_name}) but data_mix.captions=false; "
                "keep the captions in the mix or use stage_mode=single_stage"
            )


def _check_benchmarks(cfg: DictConfig, key: str, names: Any, *, limit_key: str, tokens_key: str,
                      batch_key: str, bad_rows_key: str | None = None) -> None:
    """The selected benchmark names exist in the ``benchmark`` node and their definitions are valid."""
    from mllm_da.evaluation.benchmarks import benchmark_specs

    names = [names] if isinstance(names, str) else list(names or [])
    limit = _int(cfg, limit_key, 0, null=True)
    tokens = _int(cfg, tokens_key, 1, null=True)
    _int(cfg, batch_key, 1)
    bad_rows = _choice(cfg, bad_rows_key, (None, "fail", "skip")) if bad_rows_key else None
    defined = cfg.get("benchmark") or {}
    definitions: dict[str, Any] = {}
    for name in names:
        if not isinstance(name, str) or name not in defined:
            raise ConfigError(f"{key}: {name!r} is not a benchmark; defined: {sorted(defined)} (conf/benchmark/)")
        try:  # only the selected ones: another's unset environment variable does not matter here
            definitions[name] = OmegaConf.to_container(defined[name], resolve=True)
        except Exception as err:
            raise ConfigError(f"benchmark.{name} cannot be read: {type(err).__name__}: {err}") from None
    try:
        benchmark_specs(definitions, names, limit=limit, max_new_tokens=tokens, bad_rows=bad_rows)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{key}: {err} (set it with benchmark.<name>.<key>=...)") from None


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


# --------------------------------------------------------------------------------------------- synth.py

SYNTH_STAGES = ("tune_synthesizer", "synthesize", "filter", "all")


def _check_toy_seed_domain(cfg: DictConfig) -> None:
    """A synthesizer tuned on the toy seed set asks about coloured shapes: refused on any other domain (synth.py
    and train.py data_mix=synthetic both come here) unless the user says they mean it."""
    tuned_here = bool(cfg.tune.enabled) and not cfg.synthesizer.get("checkpoint")
    seed = cfg.seed_data
    if not tuned_here or seed.source != "toy" or cfg.domain.name == "toy" or seed.get("allow_on_other_domains"):
        return
    raise ConfigError(
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
    if kind == "rules":
        if cfg.stage == "tune_synthesizer":
            raise ConfigError("stage=tune_synthesizer needs a model synthesizer; synthesizer=rules is not tuned")
        _int(cfg, "synthesizer.questions", 1, null=True)
    else:
        _check_model(cfg, "model.backbone")
        _check_toy_seed_domain(cfg)
    _int(cfg, "seed", 0)
    for key in ("batch_size", "max_new_tokens", "num_shards", "processes"):
        _int(cfg, f"synthesis.{key}", 1)
    _int(cfg, "synthesis.limit", 1, null=True)
    _int(cfg, "synthesis.threads", 1, null=True)
    syn = cfg.synthesis
    shard = _int(cfg, "synthesis.shard_index", 0, null=True)
    if shard is not None and not shard < int(syn.num_shards):
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
        _int(cfg, "filter.max_new_tokens", 1)
        _int(cfg, "filter.batch_size", 1)
    templates = cfg.formatting.get("templates_file")
    if templates and not Path(templates).is_file():
        raise ConfigError(f"formatting.templates_file={templates} does not exist")
    seed = cfg.seed_data
    if seed.source not in ("toy", "visionflan"):
        raise ConfigError(f"seed_data.source must be toy or visionflan, got {seed.source!r}")
    _float(cfg, "seed_data.blank_fraction", 0.0, 1.0)
    _float(cfg, "seed_data.dev_fraction", 0.0, 1.0, high_open=True)
    tune = cfg.tune
    tuning = kind == "model" and bool(tune.enabled) and not checkpoint
    if tuning or cfg.stage == "tune_synthesizer":
        steps = _int(cfg, "tune.steps", 1, null=True)
        epochs = _int(cfg, "tune.epochs", 1, null=True)
        if steps is None and epochs is None:
            raise ConfigError("tune needs tune.steps or tune.epochs")
        micro = _int(cfg, "tune.micro_batch_size", 1, null=True)
        global_batch = _int(cfg, "tune.global_batch_size", 1, null=True)
        if micro and global_batch and global_batch % micro:
            raise ConfigError(f"tune.global_batch_size={global_batch} is not a multiple of "
                              f"tune.micro_batch_size={micro}")
        _float(cfg, "tune.lr", 0.0, low_open=True, null=True)
        if seed.source == "toy":
            _int(cfg, "seed_data.n_images", 1)
            _int(cfg, "seed_data.questions_per_image", 1)
            _int(cfg, "seed_data.seed", 0)
        else:
            for key in ("caption_file", "precise_file", "informative_file"):
                path = _value(cfg, f"seed_data.visionflan.{key}")
                if not path or not Path(str(path)).is_file():
                    raise ConfigError(f"seed_data.visionflan.{key}={path} does not exist (set MLLM_DA_VISIONFLAN_DIR)")
            root = _value(cfg, "seed_data.visionflan.image_root")
            if not root or not Path(str(root)).is_dir():
                raise ConfigError(f"seed_data.visionflan.image_root={root} is not a folder")


# --------------------------------------------------------------------------------------------- evaluate.py


def check_eval_config(cfg: DictConfig) -> None:
    """evaluate.py's options, checked before any model is loaded or any row generated."""
    names = cfg.get("benchmarks")
    if not names:
        raise ConfigError("benchmarks: no benchmark selected; set benchmarks=[...] (names of conf/benchmark/*.yaml)")
    _check_benchmarks(cfg, "benchmarks", names, limit_key="limit", tokens_key="max_new_tokens",
                      batch_key="batch_size", bad_rows_key="bad_rows")
    _check_generation(cfg)


def check_predict_config(cfg: DictConfig) -> None:
    """predict.py's options, checked before any model is loaded."""
    _int(cfg, "batch_size", 1)
    _int(cfg, "max_new_tokens", 1)
    _check_generation(cfg)


def _check_generation(cfg: DictConfig) -> None:
    """What evaluate.py and predict.py share: the generation backend, seed, device and model."""
    _choice(cfg, "backend", ("hf", "vllm", "auto"))
    _int(cfg, "seed", 0)
    device = cfg.get("device")
    if device not in (None, "auto") and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} needs a CUDA GPU and none is visible; use device=cpu or device=auto")
    _check_model(cfg, "model.backbone")
