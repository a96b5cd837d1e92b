"""``train.py``'s body: one training run, the pipeline end to end, and its value for a sweep."""

from __future__ import annotations

import gc
import logging
import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mllm_da.config_checks import accumulation_steps, check_train_config
from mllm_da.dashboards.samples import write_training_sample
from mllm_da.dashboards.wandb_run import log_run, sample_sizes
from mllm_da.data.domain import prepare_domain
from mllm_da.orchestration.after_training import evaluate_after_training, load_eval_benchmarks
from mllm_da.orchestration.tasks import provide_synthetic_tasks
from mllm_da.training.export import export_merged
from mllm_da.training.fit import build_model, fit_stages, seed_run
from mllm_da.training.stages import build_stage_data, stages_of
from mllm_da.utils.io import atomic_write_text
from mllm_da.utils.runinfo import finished_run, hydra_job, is_rank_zero, run_folder

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one run (one or more stages) and return its metrics; ``summary.json`` in the run folder records them,
    the data counts, each stage's start and end weights, and the artifacts."""
    done = finished_run(cfg) if cfg.get("skip_finished", True) else None
    if done is not None:
        print(
            f"[mllm-da] train: {cfg.paths.output_dir} already finished with this config; skipped "
            "(skip_finished=false reruns it)",
            flush=True,
        )
        return done["metrics"]
    with run_folder(cfg, "train") as summary:
        check_train_config(cfg)
        seed_run(cfg.seed)
        out = Path(cfg.paths.output_dir)
        domain = prepare_domain(cfg.domain)  # before config.yaml: a custom domain fills in the files it found
        if cfg.domain.get("found"):
            summary["domain"] = OmegaConf.to_container(cfg.domain.found)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

        # data: each stage's part of the mix, its synthesized tasks made (or reused from the cache) first
        stages = stages_of(cfg)
        mix = instantiate(cfg.data_mix, _convert_="all")
        mixes = [stage.data_mix(mix) for stage in stages]
        for stage_mix in mixes:
            provide_synthetic_tasks(stage_mix, domain, policy=cfg.data.bad_records)
        data = build_stage_data(cfg, stages, mixes, domain, out)
        benchmarks = load_eval_benchmarks(cfg)

        # model, then one fit per stage, each from the weights the one before left
        model = build_model(cfg)
        summary["trainable_parameters"] = model.parameter_counts()
        # a few training conversations as the model sees them (chat template applied), for wandb and the gallery
        staged = [(d.stage.name, d.train) for d in data]
        if is_rank_zero():
            write_training_sample(out, staged, model.backbone.render, sample_sizes(cfg).train_rows)
        fitted = fit_stages(cfg, model, data, summary, accumulation_steps(cfg))
        trainer, metrics = fitted.trainer, fitted.metrics

        if cfg.export and trainer.is_global_zero:
            summary["artifacts"]["export"] = str(export_merged(model.backbone, model.finetune, out / "export"))
        if benchmarks and trainer.is_global_zero:
            step = trainer.global_step
            columns = evaluate_after_training(cfg, model.backbone, benchmarks, out, trainer.loggers, step)
            metrics.update(columns["trained"])
            summary["eval"] = columns
            summary["artifacts"]["eval"] = str(out / "eval" / f"step_{step}")
        summary["metrics"] = metrics
        log_run(cfg, summary)  # sample tables, final scores and the data's reference, with logger=wandb
        return metrics


def release_memory() -> None:
    """Collect what a failed job left behind (its model, optimiser and batches, held in reference cycles) and give
    cached GPU memory back: after an out-of-memory error the sweep's next job starts as a fresh one would."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_job(cfg: DictConfig) -> dict[str, Any] | None:
    """:func:`train` as one job of ``train.py``: in a sweep, a failed job (its summary.json says why) returns
    None instead of raising, so that the others go on (``sweep_continue_on_error``)."""
    try:
        metrics = train(cfg)
    except Exception:
        if not (hydra_job()[0] and cfg.get("sweep_continue_on_error", True)):
            raise
        log.exception("job failed; the sweep goes on")
        metrics = None
    if metrics is None:
        release_memory()  # outside the except block, where the error (and the frames it holds) is gone
    return metrics


def optimized_value(cfg: DictConfig, metrics: dict[str, Any] | None) -> float | None:
    """What a sweeper optimizes: ``optimized_metric`` of the job's metrics (nan for a failed job or a metric the
    run did not report), or None when no metric is named."""
    if metrics is None:
        return math.nan
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric=%s is not among this run's metrics; returning nan", name)
    return metrics.get(name, math.nan) if name else None
