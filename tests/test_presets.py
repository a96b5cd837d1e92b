"""The paper's comparisons compose from ``experiment=paper/<comparison> domain=D model=M``.

They replace 30 stubs ``conf/experiment/<domain>/<model>/<comparison>.yaml`` (deleted in the issue-15 redesign):
the table below is what those stubs resolved to, taken from them by hand, so every value a stub set stays
reachable. The model's own YAML carries its strategy (``model.recipe.strategy``) and the experiment reads it.
"""

from __future__ import annotations

import pytest
from conftest import CONF
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

COMPARISONS = ("base_vs_post", "data_source", "stage_mode")
#: the (domain, model) pairs the paper ran (README "Sweeps and the paper's comparisons")
PAPER_PAIRS = {
    "biomed": ("qwen2_vl_2b", "llava_next_llama3_8b", "mllama_11b"),
    "food": ("qwen2_vl_2b", "llava_next_llama3_8b", "mllama_11b"),
    "remote_sensing": ("qwen2_vl_2b", "qwen2_5_vl_3b", "llava_next_llama3_8b", "mllama_11b"),
}
#: what every stub gave, per model: the strategy (ZeRO-3 stubs for the 8B/11B models, trainer=deepspeed's ZeRO-2
#: otherwise) and the model preset's recipe as the stub resolved it
STUB_MODEL_VALUES = {
    "qwen2_vl_2b": {
        "trainer.strategy": "deepspeed_stage_2",
        "model.backbone.source": "Qwen/Qwen2-VL-2B-Instruct",
        "optim.lr": 1e-5,
        "optim.weight_decay": 0.1,
        "optim.warmup_ratio": 0.1,
        "data.global_batch_size": 128,
        "data.micro_batch_size": 8,
        "data.cutoff_len": 6144,
    },
    "qwen2_5_vl_3b": {
        "trainer.strategy": "deepspeed_stage_2",
        "model.backbone.source": "Qwen/Qwen2.5-VL-3B-Instruct",
        "optim.lr": 1e-5,
        "optim.weight_decay": 0.1,
        "optim.warmup_ratio": 0.1,
        "data.global_batch_size": 128,
        "data.micro_batch_size": 8,
        "data.cutoff_len": 6144,
    },
    "llava_next_llama3_8b": {
        "trainer.strategy": "deepspeed_stage_3",
        "model.backbone.family": "llava_next",
        "optim.lr": 2e-5,
        "optim.weight_decay": 0.0,
        "optim.warmup_ratio": 0.03,
        "data.global_batch_size": 128,
        "data.micro_batch_size": 4,
        "data.cutoff_len": 6144,
    },
    "mllama_11b": {
        "trainer.strategy": "deepspeed_stage_3",
        "model.backbone.source": "meta-llama/Llama-3.2-11B-Vision-Instruct",
        "optim.lr": 1e-5,
        "optim.weight_decay": 0.1,
        "optim.warmup_ratio": 0.1,
        "data.global_batch_size": 128,
        "data.micro_batch_size": 4,
        "data.cutoff_len": 6144,
    },
}
#: what every stub gave, per comparison (inherited from conf/experiment/paper/<comparison>.yaml)
STUB_COMPARISON_VALUES = {
    "base_vs_post": {
        "tags": ["paper", "base_vs_post"],
        "data_mix.name": "synthetic",
        "stage_mode.name": "single_stage",
        "eval.untrained_baseline": True,
        "sweep": None,
    },
    "data_source": {
        "tags": ["paper", "data_source"],
        "data_mix.name": "synthetic",
        "stage_mode.name": "single_stage",
        "eval.enabled": True,
        "sweep": {"data_mix": "caption_only,synthetic_unfiltered,synthetic"},
    },
    "stage_mode": {
        "tags": ["paper", "stage_mode"],
        "data_mix.name": "synthetic",
        "stage_mode.name": "single_stage",
        "sweep": {"stage_mode": "single_stage,two_stage"},
    },
}
#: the same for every stub
STUB_COMMON_VALUES = {
    "trainer.accelerator": "gpu",
    "trainer.devices": -1,
    "trainer.precision": "bf16-mixed",
    "trainer.max_steps": -1,
    "trainer.max_epochs": None,
    "finetune.method": "full",
    "data_mix.synthesis.synthesizer": "adamllm",
    "data_mix.synthesis.filter": "llm",
    "data_mix.synthesis.overrides": ["formatting.inverse_tasks=true"],
}
PAPER_RUNS = [(d, m, c) for d, models in PAPER_PAIRS.items() for m in models for c in COMPARISONS]


def compose_with_hydra(overrides: list[str], work_root) -> OmegaConf:
    from hydra import compose

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={work_root}", *overrides], return_hydra_config=True)
    return cfg


def resolved(cfg, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize(("domain", "model", "comparison"), PAPER_RUNS, ids=["/".join(r) for r in PAPER_RUNS])
def test_paper_comparison_gives_what_its_stub_gave(work_root, domain: str, model: str, comparison: str):
    cfg = compose_with_hydra([f"experiment=paper/{comparison}", f"domain={domain}", f"model={model}"], work_root)
    params = cfg.hydra.sweeper.get("params")
    expected = {
        "task_name": f"{domain}-{model}-{comparison}",
        "domain.name": domain,
        **STUB_COMMON_VALUES,
        **STUB_MODEL_VALUES[model],
        **STUB_COMPARISON_VALUES[comparison],
    }
    assert (OmegaConf.to_container(params) if params else None) == expected.pop("sweep")
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(work_root / "run")
    OmegaConf.to_container(cfg, resolve=True)  # everything resolves
    assert {key: resolved(cfg, key) for key in expected} == expected


def test_the_paper_ran_every_comparison_of_these_pairs_only():
    """The README table and this test name the same pairs: 10 pairs × 3 comparisons = the 30 former stubs."""
    assert len(PAPER_RUNS) == 30
    readme = (CONF.parent / "README.md").read_text()
    for domain, models in PAPER_PAIRS.items():
        row = next(line for line in readme.splitlines() if line.strip().startswith(f"| `{domain}` |"))
        assert all(f"`{m}`" in row for m in models), row


def test_a_model_without_recipe_strategy_or_name_still_composes(work_root):
    """The tiny presets have no strategy: trainer=deepspeed's ZeRO-2 applies; a preset without a name still runs."""
    cfg = compose_with_hydra(["experiment=paper/data_source", "model=tiny_qwen2_vl", "~model.name"], work_root)
    assert "strategy" not in cfg.model.recipe
    assert cfg.trainer.strategy == "deepspeed_stage_2"
    assert cfg.task_name == "toy-model-data_source"


@pytest.mark.parametrize("model", ["mllama_11b", "tiny_qwen2_vl"])
def test_the_recipe_resolves_in_every_job_of_a_multirun(work_root, model: str):
    """Each job of ``-m experiment=paper/data_source`` (one per data_mix) reads the model's strategy."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        overrides = [
            f"paths.root_dir={work_root}",
            "experiment=paper/data_source",
            "domain=biomed",
            f"model={model}",
        ]
        master = hydra.compose_config("train", overrides, run_mode=RunMode.MULTIRUN)
        jobs = [
            # as Hydra's basic sweeper and launcher do: the command line's overrides plus the job's sweep value
            hydra.config_loader.load_sweep_config(master, [*overrides, f"data_mix={mix}"])
            for mix in master.hydra.sweeper.params.data_mix.split(",")
        ]
    strategy = "deepspeed_stage_3" if model == "mllama_11b" else "deepspeed_stage_2"
    assert [(job.data_mix.name, job.trainer.strategy, job.task_name) for job in jobs] == [
        (mix, strategy, f"biomed-{model}-data_source") for mix in ("caption_only", "synthetic_unfiltered", "synthetic")
    ]
