"""Every option of every config group composes and resolves; impossible combinations are refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import CONF
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mllm_da.config_checks import ConfigError, accumulation_steps, check_train_config
from mllm_da.utils.runinfo import close_wandb, instantiate_dict

ENTRY_CONFIGS = ("train", "evaluate", "synth")


def groups_of(config_name: str) -> set[str]:
    """Group names in an entry config's defaults list."""
    path = CONF / f"{config_name}.yaml"
    if not path.exists():
        return set()
    defaults = yaml.safe_load(path.read_text()).get("defaults", [])
    return {next(iter(d)).split("@")[0].split(" ")[-1] for d in defaults if isinstance(d, dict)}


def entry_config(group: str) -> str:
    """The first entry config that composes ``group`` (every group must belong to one)."""
    return next(name for name in ENTRY_CONFIGS if group in groups_of(name))


GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "local", "experiment"))
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(
    str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml")
)
#: options that need a value only the user can give
REQUIRED = {("data_mix", "external"): ["data_mix.external_file=/x/tasks.json"]}


def resolve(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(compose_cfg, group: str, option: str):
    cfg = compose_cfg([f"{group}={option}", *REQUIRED.get((group, option), [])], config_name=entry_config(group))
    resolve(cfg)
    assert cfg.model.backbone._target_ == "mllm_da.backbones.loading.load_backbone"
    if group == "model":
        assert set(cfg.model.groups) == {"vision", "projector", "llm"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(compose_cfg, experiment: str):
    cfg = compose_cfg([f"experiment={experiment}"])
    resolve(cfg)
    if cfg.trainer.accelerator == "cpu":
        check_train_config(cfg)
    else:  # the paper presets need GPUs: refused here, with a message that says so
        with pytest.raises(ConfigError, match="GPU|deepspeed"):
            check_train_config(cfg)


def test_the_default_config_passes_the_checks(compose_cfg):
    cfg = compose_cfg()
    check_train_config(cfg)
    assert accumulation_steps(cfg) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer=gpu"], "needs a CUDA GPU"),
        (["trainer=ddp"], "needs a CUDA GPU"),
        (["trainer=fsdp", "trainer.accelerator=cpu"], "fsdp needs GPUs"),
        (["trainer=deepspeed", "trainer.accelerator=cpu"], "deepspeed"),
        (["domain=biomed", "~data_mix.synthesis"], "has no rule_tasks file"),
        (["data_mix=external"], "external_file"),
        (["data.global_batch_size=10", "data.micro_batch_size=4"], "not a multiple"),
        (["data.truncation=middle"], "truncation"),
        (["data.bad_records=ignore"], "bad_records"),
        (["data.mask_mode=all"], "mask_mode"),
        (["finetune=qlora", "model=qwen2_vl_2b", "model.backbone.variant=random"], "qlora needs a saved checkpoint"),
    ],
)
def test_invalid_combinations_are_refused_with_a_fix(compose_cfg, overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=message):
        check_train_config(compose_cfg(overrides))


def test_accumulation_follows_the_device_count(compose_cfg):
    cfg = compose_cfg(["data.global_batch_size=32", "data.micro_batch_size=4", "trainer.devices=2"])
    assert accumulation_steps(cfg) == 4


def test_all_loggers_instantiate_offline_and_wandb_closes(compose_cfg, tmp_path: Path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg(["logger=many"], output_dir=tmp_path)
    loggers = instantiate_dict(cfg.logger, instantiate)
    assert {type(lg).__name__ for lg in loggers} == {"CSVLogger", "SweepWandbLogger", "TensorBoardLogger"}
    for lg in loggers:
        lg.log_hyperparams({"lr": 1e-3})
        lg.log_metrics({"train/loss": 1.0}, step=0)
        lg.finalize("success")
    assert wandb.run is not None
    close_wandb()
    assert wandb.run is None
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")))
def test_launchers_compose_with_the_hydra_config(launcher: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}", "trainer.devices=2"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher")
    assert cfg.hydra.launcher.tasks_per_node in (1, 2)


def test_optuna_search_space_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=toy/hparam_search"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert set(cfg.hydra.sweeper.params) == {"optim.lr", "optim.warmup_ratio"}
    assert cfg.optimized_metric == "val/loss"


def test_config_hash_ignores_where_things_are_cached(compose_cfg):
    """A cache moved elsewhere (``paths.cache_dir``, which the backbone's cache_dir copies) is the same experiment:
    the same hash, so the same tuned synthesizer and the same finished sweep jobs; the seed still changes it."""
    from mllm_da.utils.runinfo import config_hash

    here, there = compose_cfg(["paths.cache_dir=/a/cache"]), compose_cfg(["paths.cache_dir=/b/cache"])
    assert here.model.backbone.cache_dir != there.model.backbone.cache_dir
    assert config_hash(here) == config_hash(there)
    assert config_hash(compose_cfg(["paths.cache_dir=/a/cache", "seed=1"])) != config_hash(here)
