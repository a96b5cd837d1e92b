"""``experiment=toy/ablation`` runs three seeds of stage mode × task source, and every seed shares one synthesis:
the seed varies the training run (the tiny model's initial weights, the batch order), not the synthesizer."""

from __future__ import annotations

import pytest
from conftest import CONF
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from mllm_da.config_checks import check_train_config
from mllm_da.synthesis.tuning import compose_config
from mllm_da.utils.typed_config import ConfigError


def sweep_jobs(work_root, experiment: str, mixes: tuple[str, ...] = ("synthetic", "synthetic_unfiltered")):
    """The sweep's axes and the config of each seed's job with each of ``mixes``, composed as Hydra's basic sweeper
    and launcher do."""
    overrides = [f"paths.root_dir={work_root}", f"experiment={experiment}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        master = hydra.compose_config("train", overrides, run_mode=RunMode.MULTIRUN)
        axes = {key: str(value).split(",") for key, value in master.hydra.sweeper.params.items()}
        jobs = [
            hydra.config_loader.load_sweep_config(master, [*overrides, f"seed={seed}", f"data_mix={mix}"])
            for seed in axes["seed"]
            for mix in mixes
        ]
    return axes, jobs


def synth_config(job) -> dict:
    """The synth.py config a job's data mix synthesizes with (as ``synthesis.task_file`` composes it)."""
    spec = job.data_mix.synthesis
    overrides = [f"synthesizer={spec.synthesizer}", f"filter={spec.filter}", *spec.overrides]
    cfg = OmegaConf.to_container(compose_config("synth", overrides), resolve=False)
    cfg.pop("filter")  # the unfiltered mix differs only in its filter, after the shared tuning and synthesis
    return cfg


def test_the_ablation_sweeps_three_seeds_of_stage_mode_by_task_source(work_root):
    axes, jobs = sweep_jobs(work_root, "toy/ablation")
    assert axes == {
        "seed": ["0", "1", "2"],
        "stage_mode": ["single_stage", "two_stage"],
        "data_mix": ["synthetic", "synthetic_unfiltered", "rule_based", "caption_only"],
    }
    assert [job.model.backbone.seed for job in jobs] == [0, 0, 1, 1, 2, 2]
    synth = [synth_config(job) for job in jobs]
    assert all(s == synth[0] for s in synth), "the synthesizer must not depend on the training seed"
    assert synth[0]["seed"] == 0 and synth[0]["seed_data"]["questions_per_image"] == 1
    assert synth[0]["seed_data"]["balanced_types"] is True and synth[0]["tune"]["steps"] == 9000
    assert synth[0]["synthesis"]["sampling"]["temperature"] == 0.7
    assert synth[0]["synthesis"]["first_hint"] == "informative" and synth[0]["synthesis"]["self_check"]["enabled"]


@pytest.mark.parametrize("experiment", ["toy/data_source", "toy/stage_mode"])
def test_the_presets_built_on_the_ablation_keep_its_seeds_and_synthesizer(work_root, experiment: str):
    axes, jobs = sweep_jobs(work_root, experiment, mixes=("synthetic",))
    assert axes["seed"] == ["0", "1", "2"]
    _, ablation = sweep_jobs(work_root, "toy/ablation", mixes=("synthetic",))
    assert synth_config(jobs[0]) == synth_config(ablation[0])


def test_every_ablation_job_passes_the_config_check_but_captions_only_in_two_stages(compose_cfg, tmp_path):
    """The synthesizer overrides the preset sets for every mix must not break the mixes that do not synthesize."""
    refused = {}
    for stage_mode in ("single_stage", "two_stage"):
        for mix in ("synthetic", "synthetic_unfiltered", "rule_based", "caption_only"):
            cfg = compose_cfg(
                ["experiment=toy/ablation", f"stage_mode={stage_mode}", f"data_mix={mix}"], output_dir=tmp_path
            )
            try:
                check_train_config(cfg)
            except ConfigError as err:
                refused[(stage_mode, mix)] = str(err)
    assert list(refused) == [("two_stage", "caption_only")], refused
    assert "(stage2_tasks)" in refused[("two_stage", "caption_only")]


def test_a_synthetic_mix_without_its_synthesizer_is_refused(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=toy/ablation", "data_mix.synthesis.synthesizer=null"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"tasks=synthetic but data_mix.synthesis.synthesizer is not set"):
        check_train_config(cfg)
