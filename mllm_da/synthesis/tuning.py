"""Tuning the synthesizer: the seed set, and a training run on it whose merged export is the synthesizer.

Only for a synthesizer preset that needs tuning (``tune.enabled`` and no ``synthesizer.checkpoint``). Tuning is
a training run composed from ``conf/train.yaml`` with ``data_mix=caption_only`` over the seed file (each seed
conversation is one "caption" record) and ``data.mask_mode=synthesizer``; it calls the training functions
(:mod:`mllm_da.training`), never the orchestration, so synthesis does not loop back through ``train.py``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mllm_da.config_checks import accumulation_steps, check_train_config
from mllm_da.data.domain import prepare_domain
from mllm_da.synthesis.cache import StageDir, file_digest
from mllm_da.synthesis.seed import SeedFiles, build_seed
from mllm_da.synthesis.stage import VERSIONS, StageOutcome, config_container, run_stage
from mllm_da.training.export import export_merged
from mllm_da.training.fit import build_model, fit_stages, seed_run
from mllm_da.training.stages import build_stage_data, stages_of
from mllm_da.utils.io import atomic_write_text, read_json
from mllm_da.utils.runinfo import config_hash, run_folder

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<name>.yaml``: inside a running Hydra app with its search path, else from the repo's conf/."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def needs_tuning(cfg: DictConfig) -> bool:
    return cfg.synthesizer.kind == "model" and not cfg.synthesizer.get("checkpoint") and bool(cfg.tune.enabled)


def seed_stage(cfg: DictConfig) -> tuple[StageOutcome, SeedFiles]:
    settings = config_container(cfg.seed_data)
    # what decides the seed set (not where VisionFLAN lives, nor whether it may be used on other domains)
    ignored = ("visionflan", "allow_on_other_domains")
    payload: dict[str, Any] = {
        "version": VERSIONS["seed"],
        **{k: v for k, v in settings.items() if k not in ignored},
    }
    if not payload.get("balanced_types"):  # added later: the default keeps the keys of seed sets built before
        payload.pop("balanced_types", None)
    if settings["source"] == "visionflan":
        vf = settings["visionflan"]
        files = {k: vf[k] for k in ("caption_file", "precise_file", "informative_file")}
        payload["visionflan"] = {k: file_digest(v) for k, v in files.items()}
        payload["image_root"] = str(Path(vf["image_root"]).resolve())
        payload["policy"] = cfg.bad_records
    stage = StageDir.for_stage(cfg.paths.cache_dir, "seed", payload)

    def compute() -> dict[str, Any]:
        seed_files, report = build_seed(stage.path, settings, policy=cfg.bad_records)
        return {
            "files": {k: str(v) for k, v in dataclasses.asdict(seed_files).items()},
            "report": vars(report),
        }

    outcome = run_stage("seed", stage, compute)
    return outcome, SeedFiles(**{k: Path(v) for k, v in outcome.meta["files"].items()})


def point_domain(cfg: DictConfig, name: str, image_root: Any, caption_pairs: Any) -> None:
    """Make ``cfg.domain`` read ``caption_pairs`` (already prepared): its other keys stay as they are."""
    cfg.domain.name = name
    cfg.domain.root = str(image_root)
    cfg.domain.image_root = str(image_root)
    cfg.domain.image_caption_pairs = str(caption_pairs)
    cfg.domain.rule_tasks = None
    cfg.domain.external_tasks = None
    cfg.domain.prepare = None


def tune_config(cfg: DictConfig, seed: SeedFiles) -> DictConfig:
    """The train.py config that tunes the synthesizer on the seed set (tune.overrides are train.py overrides)."""
    tune = cfg.tune
    overrides = [
        "data_mix=caption_only",
        "data.mask_mode=synthesizer",
        "task_name=tune_synthesizer",
        "export=true",
    ]
    if tune.get("steps"):
        overrides += [f"trainer.max_steps={int(tune.steps)}", "trainer.max_epochs=-1"]
    elif tune.get("epochs"):
        overrides += [f"trainer.max_epochs={int(tune.epochs)}"]
    for key, target in (
        ("micro_batch_size", "data.micro_batch_size"),
        ("global_batch_size", "data.global_batch_size"),
        ("lr", "optim.lr"),
    ):
        if tune.get(key) is not None:
            overrides.append(f"{target}={tune[key]}")
    overrides.append(f"seed={cfg.seed}")
    train_cfg = compose_config("train", [*overrides, *tune.get("overrides", [])])
    with open_dict(train_cfg):
        for key, value in config_container(cfg.paths).items():
            if key != "output_dir":
                train_cfg.paths[key] = value
        train_cfg.paths.output_dir = ""  # set by tune_stage once the key (which must not depend on it) is known
        train_cfg.model = config_container(cfg.model)
        point_domain(train_cfg, "synthesizer_seed", seed.image_root, seed.train)
        train_cfg.data.bad_records = cfg.bad_records
        if "eval" in train_cfg:  # a synthesizer is not a domain model: no benchmark evaluation after tuning
            train_cfg.eval.enabled = False
    return train_cfg


def tune_payload(seed_key: str, train_cfg: DictConfig) -> dict[str, Any]:
    """The tune stage's key: the seed set's key and the tuning config without the seed set's location (a folder
    in the cache, which the seed key already identifies), so a cache moved or copied elsewhere keeps its tuned
    synthesizers."""
    keyed = copy.deepcopy(train_cfg)
    with open_dict(keyed):
        point_domain(keyed, "synthesizer_seed", "<seed set>", "<seed set>/train")
    return {"version": VERSIONS["tune"], "seed": seed_key, "train": config_hash(keyed)}


def tune_stage(cfg: DictConfig, seed_outcome: StageOutcome, seed: SeedFiles) -> StageOutcome:
    train_cfg = tune_config(cfg, seed)
    stage = StageDir.for_stage(cfg.paths.cache_dir, "tune", tune_payload(seed_outcome.dir.key, train_cfg))
    run_dir = stage.path / "run"
    with open_dict(train_cfg):
        train_cfg.paths.output_dir = str(run_dir)
        progress = cfg.synthesis.get("progress", "auto")
        if str(progress).lower() != "auto":  # synth.py's one switch covers tuning's bar too (not in the key)
            train_cfg.trainer.enable_progress_bar = progress
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():  # a killed tuning run continues from its last checkpoint
            train_cfg.ckpt_path = str(last)

    outcome = run_stage("tune", stage, lambda: train_synthesizer(train_cfg))
    # the export is always the run folder's: found where the cache is now, not where it was when tuned
    outcome.meta["export"] = str(run_dir / "export")
    return outcome


def train_synthesizer(train_cfg: DictConfig) -> dict[str, Any]:
    """Fit the synthesizer on the seed set with the training functions (:mod:`mllm_da.training.fit`): checked,
    seeded, one run folder with config.yaml and summary.json, no synthesis and no evaluation; the merged export
    is the synthesizer."""
    out = Path(train_cfg.paths.output_dir)
    with run_folder(train_cfg, "train") as summary:
        check_train_config(train_cfg)
        seed_run(train_cfg.seed)
        domain = prepare_domain(train_cfg.domain)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(train_cfg, resolve=True))
        stages = stages_of(train_cfg)
        mix = instantiate(train_cfg.data_mix, _convert_="all")
        data = build_stage_data(train_cfg, stages, [stage.data_mix(mix) for stage in stages], domain, out)
        model = build_model(train_cfg)
        summary["trainable_parameters"] = model.parameter_counts()
        fitted = fit_stages(train_cfg, model, data, summary, accumulation_steps(train_cfg))
        if train_cfg.export and fitted.trainer.is_global_zero:
            summary["artifacts"]["export"] = str(export_merged(model.backbone, model.finetune, out / "export"))
    summary = read_json(out / "summary.json", "tuning summary")
    return {
        "export": summary["artifacts"]["export"],
        "metrics": fitted.metrics,
        "global_step": summary.get("global_step"),
        "wall_time_s": summary.get("wall_time_s"),
        "data": summary.get("data", {}).get("plan"),
    }
