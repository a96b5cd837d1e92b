"""``train.py``'s body: compose data, backbone, module and trainer from the config, fit, export, summarise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mllm_da.config_checks import accumulation_steps, check_train_config
from mllm_da.data.datamodule import ConversationDataModule, split_train_val
from mllm_da.data.mixing import DataMix, DomainFiles
from mllm_da.training.export import export_merged
from mllm_da.training.finetune import FinetuneConfig
from mllm_da.training.module import MLLMModule, OptimConfig
from mllm_da.utils.runinfo import instantiate_dict, run_folder

log = logging.getLogger(__name__)


class LossHistory(pl.Callback):
    """Keeps every logged training loss, so the summary can say how far it fell."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0 or not self.losses:
            loss = trainer.callback_metrics.get("train/loss")
            if loss is not None and (not self.steps or self.steps[-1] != trainer.global_step):
                self.steps.append(trainer.global_step)
                self.losses.append(float(loss))


def prepare_domain(cfg: DictConfig) -> DomainFiles:
    """Run the domain's generator if it has one (the toy domain), then return where its files are."""
    domain = cfg.domain
    if domain.get("prepare"):
        instantiate(domain.prepare)
    return DomainFiles(
        name=domain.name,
        image_root=domain.image_root,
        image_caption_pairs=domain.image_caption_pairs,
        rule_tasks=domain.get("rule_tasks"),
        external_tasks=domain.get("external_tasks"),
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one run and return its metrics; ``summary.json`` in the run folder records them and the artifacts."""
    with run_folder(cfg, "train") as summary:
        check_train_config(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        torch.set_float32_matmul_precision("high")
        out = Path(cfg.paths.output_dir)
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)

        domain = prepare_domain(cfg)
        mix: DataMix = instantiate(cfg.data_mix, _convert_="all")
        conversations = mix.build(domain, policy=cfg.data.bad_records, rejects_dir=out / "rejects")
        train_convs, val_convs = split_train_val(conversations, cfg.data.val_fraction)
        summary["data"] = {"mix": mix.name, "read": mix.reports, "train": len(train_convs), "val": len(val_convs)}

        finetune = FinetuneConfig.from_config(cfg.finetune, cfg.model.get("groups"))
        backbone = instantiate(cfg.model.backbone, quantization_bits=finetune.load_bits, _convert_="all")
        optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
        save_trainable_only = cfg.checkpoint.save_trainable_only
        if save_trainable_only == "auto":
            save_trainable_only = finetune.method != "full"
        module = MLLMModule(backbone, finetune, optim, save_trainable_only=bool(save_trainable_only))
        counts = backbone.group_counts(module.model)
        summary["trainable_parameters"] = {g: {"trainable": c.trainable, "total": c.total} for g, c in counts.items()}

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
            num_workers=cfg.data.num_workers,
            pin_memory=cfg.data.pin_memory,
            seed=cfg.seed,
        )
        datamodule.setup("fit")
        summary["data"]["plan"] = vars(datamodule.train_set.report) | {"reasons": dict(datamodule.train_set.report.reasons)}

        loggers = instantiate_dict(cfg.get("logger"), instantiate)
        history = LossHistory()
        callbacks: list[pl.Callback] = [history, pl.callbacks.LearningRateMonitor(logging_interval="step")]
        ckpt_dir = out / "checkpoints"
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
            accumulate_grad_batches=accumulation_steps(cfg),
            logger=loggers or False,
            callbacks=callbacks,
            default_root_dir=str(out),
            enable_checkpointing=bool(cfg.checkpoint.every_n_steps),
        )
        for lg in trainer.loggers:
            lg.log_hyperparams(
                {
                    **OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
                    "trainable_parameters": summary["trainable_parameters"],
                }
            )
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if history.losses:
            first, last = history.losses[0], history.losses[-1]
            metrics.update({"train/loss_first": first, "train/loss_last": last,
                            "train/loss_drop": (first - last) / first if first else 0.0})
        summary["metrics"] = metrics
        summary["loss_curve"] = {"step": history.steps, "loss": history.losses}
        summary["global_step"] = trainer.global_step
        if trainer.checkpoint_callback is not None and ckpt_dir.exists():
            summary["artifacts"]["checkpoints"] = str(ckpt_dir)
        if cfg.export and trainer.is_global_zero:
            summary["artifacts"]["export"] = str(export_merged(backbone, finetune, out / "export"))
        return metrics
