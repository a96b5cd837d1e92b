"""Fitting a model on given conversations: the model to train, one Lightning fit per stage, and what the run's
``summary.json`` records of each (data, start and end weights, loss curve, warnings). Knows nothing of synthesis
or evaluation: the orchestration (``train.py``) and synthesizer tuning both call it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mllm_da.backbones.base import Backbone
from mllm_da.data.datamodule import ConversationDataModule
from mllm_da.training.callbacks import LossHistory, weights_fingerprint
from mllm_da.training.checkpoints import remove_stale_temporaries, resume_point, use_atomic_checkpoints
from mllm_da.training.finetune import FinetuneConfig
from mllm_da.training.module import MLLMModule, OptimConfig
from mllm_da.training.stages import (
    Stage,
    StageData,
    epoch_limit,
    shortfall_cause,
    stage_steps,
    stage_warnings,
)
from mllm_da.utils.progress import show_progress
from mllm_da.utils.runinfo import instantiate_dict, instantiate_loggers

log = logging.getLogger(__name__)

#: the headline numbers of a run, taken from its last stage
HEADLINE_METRICS = ("train/loss_first", "train/loss_last", "train/loss_drop", "train/loss", "val/loss")


def seed_run(seed: int) -> None:
    """Seed every generator (workers too) and allow TF32 matmuls: the first step of every training run."""
    pl.seed_everything(seed, workers=True)
    torch.set_float32_matmul_precision("high")


@dataclass
class Model:
    """The backbone, how it is fine-tuned, and the LightningModule that trains it."""

    backbone: Backbone
    finetune: FinetuneConfig
    module: MLLMModule

    def parameter_counts(self) -> dict[str, dict[str, int]]:
        counts = self.backbone.group_counts(self.module.model)
        return {g: {"trainable": c.trainable, "total": c.total} for g, c in counts.items()}


@dataclass
class Fitted:
    """What the stages' fits left: the last stage's trainer and the run's metrics."""

    trainer: pl.Trainer
    metrics: dict[str, float]


def build_model(cfg: DictConfig) -> Model:
    """Load ``model.backbone`` (quantized for QLoRA) and wrap it for ``finetune`` and ``optim``."""
    finetune = FinetuneConfig.from_config(cfg.finetune, cfg.model.get("groups"))
    backbone = instantiate(cfg.model.backbone, quantization_bits=finetune.load_bits, _convert_="all")
    optim = OptimConfig(**cast("dict[str, Any]", OmegaConf.to_container(cfg.optim, resolve=True)))  # a mapping node
    save_trainable_only = cfg.checkpoint.save_trainable_only
    if save_trainable_only == "auto":
        save_trainable_only = finetune.method != "full"
    module = MLLMModule(
        backbone,
        finetune,
        optim,
        save_trainable_only=bool(save_trainable_only),
        compile=bool(cfg.get("compile", False)),
    )
    return Model(backbone, finetune, module)


def make_datamodule(cfg: DictConfig, backbone: Any, train_convs: list, val_convs: list) -> ConversationDataModule:
    datamodule = ConversationDataModule(
        backbone,
        train_convs,
        val_convs,
        micro_batch_size=cfg.data.micro_batch_size,
        eval_batch_size=cfg.data.get("eval_batch_size"),
        mode=cfg.data.mask_mode,
        cutoff_len=cfg.data.cutoff_len,
        truncation=cfg.data.truncation,
        group_by_length=cfg.data.group_by_length,
        packing=bool(cfg.data.get("packing", False)),
        num_workers=cfg.data.num_workers,
        pin_memory=cfg.data.pin_memory,
        seed=cfg.seed,
    )
    datamodule.setup("fit")
    return datamodule


def fit_stage(
    cfg: DictConfig,
    stage: Stage,
    module: MLLMModule,
    datamodule: ConversationDataModule,
    loggers: list[Any],
    out: Path,
    prefix: str,
    ckpt_path: str | None,
    accumulate_grad_batches: int,
) -> tuple[pl.Trainer, LossHistory]:
    """One Lightning fit with its own optimiser and schedule (configure_optimizers runs per fit)."""
    module.log_prefix = prefix
    history = LossHistory(f"{prefix}train/loss")
    callbacks: list[pl.Callback] = [history]
    if loggers:  # the learning-rate monitor refuses a trainer without a logger (debug=fdr has none)
        callbacks.append(pl.callbacks.LearningRateMonitor(logging_interval="step"))
    ckpt_dir = out / "checkpoints" / (stage.name if prefix else "")
    if cfg.checkpoint.every_n_steps:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=ckpt_dir,
                every_n_train_steps=cfg.checkpoint.every_n_steps,
                save_last=True,
                save_top_k=cfg.checkpoint.keep,
                monitor="step",
                mode="max",
                filename="step_{step}",
                auto_insert_metric_name=False,
            )
        )
    callbacks += instantiate_dict(cfg.get("callbacks"), instantiate)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        max_steps=stage_steps(cfg, stage),
        max_epochs=epoch_limit(cfg),
        enable_progress_bar=show_progress(cfg.trainer.get("enable_progress_bar", "auto")),
        accumulate_grad_batches=accumulate_grad_batches,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(out),
        enable_checkpointing=bool(cfg.checkpoint.every_n_steps),
    )
    use_atomic_checkpoints(trainer)
    if trainer.is_global_zero:
        remove_stale_temporaries(ckpt_dir)
    # weights_only: a checkpoint holds tensors and plain containers only; unpickling anything else (code) is refused
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    val_key = f"{prefix}val/loss"
    if datamodule.val_set and val_key not in trainer.callback_metrics and trainer.limit_val_batches:
        # a budget in steps ends mid-epoch, before Lightning's own validation: the final val/loss is still wanted
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return trainer, history


def _log_hyperparameters(cfg: DictConfig, loggers: list[Any], parameters: dict[str, Any]) -> None:
    for lg in loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "trainable_parameters": parameters})  # type: ignore[dict-item]


def fit_stages(
    cfg: DictConfig,
    model: Model,
    data: list[StageData],
    summary: dict[str, Any],
    accumulate_grad_batches: int,
) -> Fitted:
    """Fit the stages in turn, each from the weights the one before left (or from ``ckpt_path``), and record
    each in ``summary["stages"]``; the last stage's data, loss curve and step count are the run's."""
    out = Path(cfg.paths.output_dir)
    stages = [d.stage for d in data]
    two_or_more = len(stages) > 1
    loggers = instantiate_loggers(cfg)
    _log_hyperparameters(cfg, loggers, summary.get("trainable_parameters", {}))
    first_stage, ckpt_path = resume_point(cfg, stages)
    summary["stage_mode"] = cfg.stage_mode.name
    summary["stages"] = []
    metrics: dict[str, float] = {}
    trainer: pl.Trainer | None = None
    previous: dict[str, Any] | None = None
    for index, part in enumerate(data):
        stage, mix = part.stage, part.mix
        record: dict[str, Any] = {
            "name": stage.name,
            "data": {
                "mix": mix.name,
                "captions": mix.captions,
                "tasks": mix.tasks,
                "read": mix.reports,
                "train": len(part.train),
                "val": len(part.val),
            },
        }
        summary["stages"].append(record)
        if index < first_stage:
            record["skipped"] = f"done before the checkpoint {ckpt_path}"
            continue
        datamodule = make_datamodule(cfg, model.backbone, part.train, part.val)
        assert datamodule.train_set is not None  # make_datamodule sets it up
        report = datamodule.train_set.report
        record["data"]["plan"] = vars(report) | {"reasons": dict(report.reasons)}
        record["started_from"] = (
            {"checkpoint": ckpt_path}
            if index == first_stage and ckpt_path
            else {"stage": previous["name"], "weights_sha256": previous["final_weights_sha256"]}
            if previous
            else {"model": cfg.model.backbone.get("source") or cfg.model.backbone.variant}
        )
        prefix = f"{stage.name}/" if two_or_more else ""
        resume = ckpt_path if index == first_stage else None
        trainer, history = fit_stage(
            cfg, stage, model.module, datamodule, loggers, out, prefix, resume, accumulate_grad_batches
        )
        _record_fit(cfg, record, part, trainer, history, model, summary)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        if history.losses:
            first, last = history.losses[0], history.losses[-1]
            metrics.update(
                {
                    f"{prefix}train/loss_first": first,
                    f"{prefix}train/loss_last": last,
                    f"{prefix}train/loss_drop": (first - last) / first if first else 0.0,
                }
            )
        previous = record
    assert trainer is not None and previous is not None
    last_prefix = f"{stages[-1].name}/" if two_or_more else ""
    for key in HEADLINE_METRICS:
        if f"{last_prefix}{key}" in metrics:
            metrics[key] = metrics[f"{last_prefix}{key}"]
    for key in ("data", "loss_curve", "global_step", "step_budget"):
        summary[key] = previous[key]
    summary["world_size"] = trainer.world_size
    summary["metrics"] = metrics
    if (out / "checkpoints").exists():
        summary["artifacts"]["checkpoints"] = str(out / "checkpoints")
    return Fitted(trainer, metrics)


def _record_fit(
    cfg: DictConfig,
    record: dict[str, Any],
    part: StageData,
    trainer: pl.Trainer,
    history: LossHistory,
    model: Model,
    summary: dict[str, Any],
) -> None:
    """A stage's weights, steps, loss curve, checkpoints and warnings into its summary record."""
    record["start_weights_sha256"] = history.start_fingerprint
    record["final_weights_sha256"] = weights_fingerprint(model.module.model)
    record["global_step"] = trainer.global_step
    budget = stage_steps(cfg, part.stage)
    record["step_budget"] = budget if budget > 0 else None  # None: trained by epochs, not steps
    record["loss_curve"] = {"step": history.steps, "loss": history.losses}
    # a stage's trainer counts its own steps (a resumed one from its checkpoint's), so it meets its budget
    cause = shortfall_cause(cfg, trainer)
    records = len(part.train) + len(part.val)
    for warning in stage_warnings(
        part.stage, budget, trainer.global_step, cause, records, len(part.val), float(cfg.data.val_fraction)
    ):
        log.warning(warning)
        summary.setdefault("warnings", []).append(warning)
    # the trainer's checkpoint callback is a ModelCheckpoint (fit_stage's, or Lightning's default one)
    checkpoint = cast("pl.callbacks.ModelCheckpoint | None", trainer.checkpoint_callback)
    if checkpoint is not None and checkpoint.dirpath:
        record["checkpoints"] = checkpoint.dirpath
