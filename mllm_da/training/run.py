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
from mllm_da.evaluation.benchmarks import Benchmark, benchmark_specs, load_benchmark
from mllm_da.evaluation.runner import evaluate_backbone, format_score_table
from mllm_da.training.export import export_merged
from mllm_da.training.finetune import FinetuneConfig
from mllm_da.training.module import MLLMModule, OptimConfig
from mllm_da.utils.io import atomic_write_text
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


def load_eval_benchmarks(cfg: DictConfig) -> list[Benchmark]:
    """The domain's benchmarks, read before training so that a missing download fails at once."""
    if not cfg.eval.enabled or not cfg.eval.benchmarks:
        return []
    definitions = OmegaConf.to_container(cfg.benchmark, resolve=True)
    names = [cfg.eval.benchmarks] if isinstance(cfg.eval.benchmarks, str) else list(cfg.eval.benchmarks)
    specs = benchmark_specs(definitions, names, limit=cfg.eval.limit, max_new_tokens=cfg.eval.max_new_tokens)
    try:
        return [load_benchmark(spec, cache_dir=Path(cfg.paths.cache_dir) / "datasets") for spec in specs]
    except Exception as err:
        raise type(err)(f"{err}\n(evaluation after training needs these benchmarks; set eval.enabled=false to "
                        "train without it)") from err


def evaluate_after_training(
    cfg: DictConfig, backbone: Any, benchmarks: list[Benchmark], out: Path, loggers: list[Any], step: int
) -> dict[str, dict[str, float]]:
    """Score the trained model (and, when asked, the blind control and the untrained model) into <run>/eval/."""
    settings = dict(batch_size=int(cfg.eval.batch_size), seed=int(cfg.seed),
                    image_separator=str(cfg.eval.image_separator), cache_dir=Path(cfg.paths.cache_dir) / "datasets")
    trained_id = {"run": str(out), "model": "trained", "step": step}

    def log_metrics(prefix: str) -> Any:
        def _log(metrics: dict[str, float]) -> None:
            finite = {f"{prefix}{k}": v for k, v in metrics.items() if v == v}
            for lg in loggers:
                lg.log_metrics(finite, step=step)
                lg.save()
        return _log

    backbone.model.eval()
    columns = {"trained": evaluate_backbone(backbone, benchmarks, out / "eval" / "trained", model_id=trained_id,
                                            logger_fn=log_metrics(""), **settings)}
    if cfg.eval.shuffled_control:
        columns["trained, shuffled images"] = evaluate_backbone(
            backbone, benchmarks, out / "eval" / "trained_shuffled", shuffle_images=True,
            model_id=trained_id | {"images": "shuffled"}, logger_fn=log_metrics("shuffled/"), **settings)
    if cfg.eval.untrained_baseline:
        untrained = instantiate(cfg.model.backbone, _convert_="all")
        columns["untrained"] = evaluate_backbone(
            untrained, benchmarks, out / "eval" / "untrained", model_id={"run": str(out), "model": "untrained"},
            logger_fn=log_metrics("untrained/"), **settings)
    table = format_score_table(columns)
    atomic_write_text(out / "eval" / "scores.md", table + "\n")
    print(f"\nScores (step {step}):\n{table}", flush=True)
    return columns


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
        benchmarks = load_eval_benchmarks(cfg)
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
        if benchmarks and trainer.is_global_zero:
            columns = evaluate_after_training(cfg, backbone, benchmarks, out, trainer.loggers, trainer.global_step)
            metrics.update(columns["trained"])
            summary["eval"] = columns
            summary["artifacts"]["eval"] = str(out / "eval")
        summary["metrics"] = metrics
        return metrics
