"""``train.py``'s body: compose data, backbone, module and trainer from the config, fit, export, summarise."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from mllm_da.config_checks import ConfigError, accumulation_steps, check_train_config
from mllm_da.data.datamodule import ConversationDataModule, split_train_val
from mllm_da.data.domain import prepare_domain
from mllm_da.data.mixing import DataMix
from mllm_da.evaluation.benchmarks import Benchmark, benchmark_specs, load_benchmark
from mllm_da.evaluation.runner import evaluate_backbone, format_score_table
from mllm_da.training.export import export_merged
from mllm_da.training.finetune import FinetuneConfig
from mllm_da.training.module import MLLMModule, OptimConfig
from mllm_da.utils.io import atomic_open, atomic_write_text
from mllm_da.utils.progress import show_progress
from mllm_da.utils.runinfo import (
    finished_run,
    instantiate_dict,
    instantiate_loggers,
    is_rank_zero,
    run_folder,
)

log = logging.getLogger(__name__)


class LossHistory(pl.Callback):
    """Keeps every logged training loss, so the summary can say how far it fell, and the fingerprint of the
    weights the fit started from (after a checkpoint is restored)."""

    def __init__(self, key: str = "train/loss") -> None:
        self.key = key
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.start_fingerprint: str | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_fingerprint = weights_fingerprint(pl_module.model)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0 or not self.losses:
            loss = trainer.callback_metrics.get(self.key)
            if loss is not None and (not self.steps or self.steps[-1] != trainer.global_step):
                self.steps.append(trainer.global_step)
                self.losses.append(float(loss))


def load_eval_benchmarks(cfg: DictConfig) -> list[Benchmark]:
    """The domain's benchmarks, read before training so that a missing download fails at once."""
    if not cfg.eval.enabled or not cfg.eval.benchmarks:
        return []
    definitions = OmegaConf.to_container(cfg.benchmark, resolve=True)
    names = [cfg.eval.benchmarks] if isinstance(cfg.eval.benchmarks, str) else list(cfg.eval.benchmarks)
    specs = benchmark_specs(definitions, names, limit=cfg.eval.limit, max_new_tokens=cfg.eval.max_new_tokens)
    try:
        rejects = Path(cfg.paths.output_dir) / "eval" / "rejects"
        return [
            load_benchmark(spec, cache_dir=Path(cfg.paths.cache_dir) / "datasets", rejects_path=rejects / f"{spec.name}.jsonl")
            for spec in specs
        ]
    except Exception as err:
        err.add_note("evaluation after training needs these benchmarks; set eval.enabled=false to train without it")
        raise


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
    folder = out / "eval" / f"step_{step}"  # a run continued later evaluates a different model
    columns = {"trained": evaluate_backbone(backbone, benchmarks, folder / "trained", model_id=trained_id,
                                            logger_fn=log_metrics(""), **settings)}
    if cfg.eval.shuffled_control:
        columns["trained, shuffled images"] = evaluate_backbone(
            backbone, benchmarks, folder / "trained_shuffled", shuffle_images=True,
            model_id=trained_id | {"images": "shuffled"}, logger_fn=log_metrics("shuffled/"), **settings)
    if cfg.eval.untrained_baseline:
        untrained = instantiate(cfg.model.backbone, _convert_="all")
        columns["untrained"] = evaluate_backbone(
            untrained, benchmarks, folder / "untrained", model_id={"run": str(out), "model": "untrained"},
            logger_fn=log_metrics("untrained/"), **settings)
    table = format_score_table(columns)
    atomic_write_text(folder / "scores.md", table + "\n")
    print(f"\nScores (step {step}):\n{table}", flush=True)
    return columns


@dataclass(frozen=True)
class Stage:
    """One fit of a run: which part of the data mix it trains on and its share of ``trainer.max_steps``."""

    name: str
    captions: bool = True
    tasks: bool = True
    steps_fraction: float = 1.0

    def data_mix(self, mix: DataMix) -> DataMix:
        """The run's data mix restricted to this stage's part (captions, tasks or both)."""
        return mix.restricted(self.captions, self.tasks)


def stages_of(cfg: DictConfig) -> list[Stage]:
    stages = [Stage(**dict(s)) for s in cfg.stage_mode.stages]
    if not stages:
        raise ConfigError(f"stage_mode={cfg.stage_mode.name} lists no stages")
    if any(not s.captions for s in stages) and cfg.data_mix.tasks == "none":
        raise ConfigError(f"stage_mode={cfg.stage_mode.name} has a task-only stage but data_mix={cfg.data_mix.name} "
                          "has no tasks; pick a data_mix with tasks (e.g. rule_based, synthetic)")
    return stages


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the trainable weights: shows which weights a stage started from and ended with."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic on a local disk: ``torch.save`` into a temporary file beside the
    target, fsync, then ``os.replace``. Lightning 2.6's own ``_atomic_save`` writes through an fsspec transaction
    whose temporary file is made by ``tempfile.mkstemp()`` in the system temp folder and moved with ``shutil.move``:
    when that folder is on another filesystem than the run (a tmpfs /tmp, a node-local disk) the move is a copy
    into the target, which a kill can leave half-written, and nothing is fsynced. Remote (``scheme://``) paths
    keep Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_open(path) as handle:
            torch.save(checkpoint, handle)


def use_atomic_checkpoints(trainer: pl.Trainer) -> None:
    """Swap the strategy's default checkpoint writer for :class:`AtomicCheckpointIO` (strategies with a writer
    of their own, DeepSpeed's or a user's plugin, are left alone)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole torch checkpoint file (None if it looks whole). A torch checkpoint is a zip
    archive whose directory is written last, so a truncated file has none. Folders (sharded DeepSpeed or FSDP
    checkpoints) are not checked here."""
    if path.is_dir():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return "a zip archive without a torch checkpoint in it"
    except (zipfile.BadZipFile, OSError) as err:
        return f"truncated or not a torch checkpoint ({err})"
    return None


def checkpoint_step(path: str | Path) -> int:
    """The global step stored in a Lightning checkpoint (loaded with ``weights_only=True``)."""
    return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step", 0))


def _newest_whole_checkpoint(folder: Path) -> Path | None:
    """``last.ckpt`` if it is whole, else the highest-step whole ``step_*.ckpt``. A damaged ``last.ckpt`` is
    moved aside to ``last.ckpt.damaged``, with a warning."""
    last = folder / "last.ckpt"
    if last.exists():
        problem = checkpoint_problem(last)
        if problem is None:
            return last
        aside = last.with_name("last.ckpt.damaged")
        log.warning("ckpt_path=auto: %s is %s; moved to %s", last, problem, aside.name)
        if is_rank_zero():
            # out of the way: the resumed run writes a new last.ckpt (Lightning would otherwise write last-v1.ckpt)
            with contextlib.suppress(FileNotFoundError):
                last.replace(aside)

    def step_of(p: Path) -> int:
        try:
            return int(p.stem.split("_", 1)[1])
        except (IndexError, ValueError):
            return -1

    others = sorted(folder.glob("step_*.ckpt"), key=step_of, reverse=True)
    fallback = next((p for p in others if checkpoint_problem(p) is None), None)
    if fallback is not None:
        log.warning("ckpt_path=auto: no whole last.ckpt in %s; resuming from %s", folder, fallback.name)
    elif others or last.with_name("last.ckpt.damaged").exists():
        log.warning("ckpt_path=auto: no whole checkpoint in %s; starting over", folder)
    return fallback


def resume_point(cfg: DictConfig, stages: list[Stage]) -> tuple[int, str | None]:
    """(index of the stage to start with, checkpoint) for ``ckpt_path``.

    A two-stage checkpoint lives in ``checkpoints/<stage name>/``, so the stages before it are done and their
    weights are in it. ``ckpt_path=auto`` takes the newest ``last.ckpt`` in this run folder, if any (a job
    resubmitted after a crash or a time limit goes on where it stopped); a damaged one is passed over for the
    newest whole ``step_*.ckpt``, with a warning. An explicit checkpoint that is not whole is an error naming it.
    Checkpoints are always loaded with ``weights_only=True`` (see :func:`fit_stage`), so one from elsewhere
    cannot run code."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return 0, None
    if ckpt == "auto":
        root = Path(cfg.paths.output_dir) / "checkpoints"
        folders = [root / s.name for s in stages] if len(stages) > 1 else [root]
        found = [(i, c) for i, f in enumerate(folders) if (c := _newest_whole_checkpoint(f)) is not None]
        if not found:
            return 0, None
        index, path = found[-1]
        log.info("ckpt_path=auto: resuming from %s", path)
        return index, str(path)
    if not Path(ckpt).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint")
    problem = checkpoint_problem(Path(ckpt))
    if problem is not None:
        raise ValueError(f"ckpt_path={ckpt}: {problem}; point ckpt_path at a whole checkpoint")
    folder = Path(ckpt).parent.name
    for index, stage in enumerate(stages):
        if len(stages) > 1 and folder == stage.name:
            return index, str(ckpt)
    return 0, str(ckpt)


def stage_steps(cfg: DictConfig, stage: Stage) -> int:
    total = int(cfg.trainer.get("max_steps", -1))
    return max(1, round(total * stage.steps_fraction)) if total > 0 else -1


def epoch_limit(cfg: DictConfig) -> int:
    """``trainer.max_epochs``, where null means one epoch (the paper's) unless a step budget is given: then the
    budget alone decides, as in the HF Trainer, so a small data set is passed over as often as it takes."""
    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None:
        return int(epochs)
    return -1 if int(cfg.trainer.get("max_steps", -1)) > 0 else 1


def shortfall_cause(cfg: DictConfig, trainer: pl.Trainer) -> str:
    """Why a fit stopped before its step budget, as far as its trainer can tell: the epoch limit, no training
    batch at all, or something that asked it to stop (a callback such as early stopping, an interruption)."""
    epochs = epoch_limit(cfg)
    if epochs > 0 and trainer.current_epoch >= epochs:
        return f"the epoch limit trainer.max_epochs={epochs} ended it first"
    if not trainer.num_training_batches:
        return "there was no training batch"
    return "a callback such as early stopping, or an interruption, ended it first"


def stage_warnings(
    stage: Stage, budget: int, steps_done: int, cause: str, records: int, val_records: int, val_fraction: float
) -> list[str]:
    """Plain sentences for what a run's summary must not hide: a fit that stopped short of its step budget
    (``cause`` says why), and a validation split with no record (so no val/loss) out of ``records``."""
    warnings = []
    if budget > 0 and steps_done < budget:
        warnings.append(f"{stage.name}: trained {steps_done} optimiser steps of the {budget} budgeted ({cause})")
    if val_records == 0 and val_fraction > 0:
        warnings.append(f"{stage.name}: the validation split is empty (data.val_fraction={val_fraction} of "
                        f"{records} records held out none), so there is no val/loss; raise data.val_fraction")
    elif val_records == 0:
        warnings.append(f"{stage.name}: the validation split is empty (data.val_fraction={val_fraction}), so there "
                        "is no val/loss")
    return warnings


def fit_stage(
    cfg: DictConfig,
    stage: Stage,
    module: MLLMModule,
    datamodule: ConversationDataModule,
    loggers: list[Any],
    out: Path,
    prefix: str,
    ckpt_path: str | None,
) -> tuple[pl.Trainer, LossHistory]:
    """One Lightning fit with its own optimiser and schedule (configure_optimizers runs per fit)."""
    module.log_prefix = prefix
    history = LossHistory(f"{prefix}train/loss")
    callbacks: list[pl.Callback] = [history, pl.callbacks.LearningRateMonitor(logging_interval="step")]
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
        accumulate_grad_batches=accumulation_steps(cfg),
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(out),
        enable_checkpointing=bool(cfg.checkpoint.every_n_steps),
    )
    use_atomic_checkpoints(trainer)
    if trainer.is_global_zero and ckpt_dir.is_dir():
        for stale in ckpt_dir.glob(".*.ckpt.*.tmp"):  # a writer killed mid-save; never read, only in the way
            stale.unlink(missing_ok=True)
    # weights_only: a checkpoint holds tensors and plain containers only; unpickling anything else (code) is refused
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    val_key = f"{prefix}val/loss"
    if datamodule.val_set and val_key not in trainer.callback_metrics and trainer.limit_val_batches:
        # a budget in steps ends mid-epoch, before Lightning's own validation: the final val/loss is still wanted
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return trainer, history


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one run (one or more stages) and return its metrics; ``summary.json`` in the run folder records them,
    the data counts, each stage's start and end weights, and the artifacts."""
    done = finished_run(cfg) if cfg.get("skip_finished", True) else None
    if done is not None:
        print(f"[mllm-da] train: {cfg.paths.output_dir} already finished with this config; skipped "
              "(skip_finished=false reruns it)", flush=True)
        return done["metrics"]
    with run_folder(cfg, "train") as summary:
        check_train_config(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        torch.set_float32_matmul_precision("high")
        out = Path(cfg.paths.output_dir)
        domain = prepare_domain(cfg.domain)  # before config.yaml: a custom domain fills in the files it found
        if cfg.domain.get("found"):
            summary["domain"] = OmegaConf.to_container(cfg.domain.found)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

        stages = stages_of(cfg)
        mix: DataMix = instantiate(cfg.data_mix, _convert_="all")
        two_or_more = len(stages) > 1
        stage_data = []
        for stage in stages:
            stage_mix = stage.data_mix(mix)
            rejects = out / "rejects" / (stage.name if two_or_more else "")
            conversations = stage_mix.build(domain, policy=cfg.data.bad_records, rejects_dir=rejects)
            stage_data.append((stage_mix, *split_train_val(conversations, cfg.data.val_fraction)))
        benchmarks = load_eval_benchmarks(cfg)

        finetune = FinetuneConfig.from_config(cfg.finetune, cfg.model.get("groups"))
        backbone = instantiate(cfg.model.backbone, quantization_bits=finetune.load_bits, _convert_="all")
        optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
        save_trainable_only = cfg.checkpoint.save_trainable_only
        if save_trainable_only == "auto":
            save_trainable_only = finetune.method != "full"
        module = MLLMModule(backbone, finetune, optim, save_trainable_only=bool(save_trainable_only),
                            compile=bool(cfg.get("compile", False)))
        counts = backbone.group_counts(module.model)
        summary["trainable_parameters"] = {g: {"trainable": c.trainable, "total": c.total} for g, c in counts.items()}

        loggers = instantiate_loggers(cfg)
        for lg in loggers:
            lg.log_hyperparams(
                {
                    **OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
                    "trainable_parameters": summary["trainable_parameters"],
                }
            )
        first_stage, ckpt_path = resume_point(cfg, stages)
        summary["stage_mode"] = cfg.stage_mode.name
        summary["stages"] = []
        metrics: dict[str, float] = {}
        trainer: pl.Trainer | None = None
        previous: dict[str, Any] | None = None
        for index, (stage, (stage_mix, train_convs, val_convs)) in enumerate(zip(stages, stage_data)):
            record: dict[str, Any] = {"name": stage.name, "data": {"mix": stage_mix.name, "captions": stage_mix.captions,
                                      "tasks": stage_mix.tasks, "read": stage_mix.reports,
                                      "train": len(train_convs), "val": len(val_convs)}}
            summary["stages"].append(record)
            if index < first_stage:
                record["skipped"] = f"done before the checkpoint {ckpt_path}"
                continue
            datamodule = make_datamodule(cfg, backbone, train_convs, val_convs)
            report = datamodule.train_set.report
            record["data"]["plan"] = vars(report) | {"reasons": dict(report.reasons)}
            record["started_from"] = (
                {"checkpoint": ckpt_path} if index == first_stage and ckpt_path
                else {"stage": previous["name"], "weights_sha256": previous["final_weights_sha256"]} if previous
                else {"model": cfg.model.backbone.get("source") or cfg.model.backbone.variant}
            )
            prefix = f"{stage.name}/" if two_or_more else ""
            trainer, history = fit_stage(cfg, stage, module, datamodule, loggers, out, prefix,
                                         ckpt_path if index == first_stage else None)
            record["start_weights_sha256"] = history.start_fingerprint
            record["final_weights_sha256"] = weights_fingerprint(module.model)
            record["global_step"] = trainer.global_step
            budget = stage_steps(cfg, stage)
            record["step_budget"] = budget if budget > 0 else None  # None: trained by epochs, not steps
            record["loss_curve"] = {"step": history.steps, "loss": history.losses}
            # a stage's trainer counts its own steps (a resumed one from its checkpoint's), so it meets its budget
            cause = shortfall_cause(cfg, trainer)
            for warning in stage_warnings(stage, budget, trainer.global_step, cause,
                                          len(train_convs) + len(val_convs), len(val_convs),
                                          float(cfg.data.val_fraction)):
                log.warning(warning)
                summary.setdefault("warnings", []).append(warning)
            if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
                record["checkpoints"] = trainer.checkpoint_callback.dirpath
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
            if history.losses:
                first, last = history.losses[0], history.losses[-1]
                metrics.update({f"{prefix}train/loss_first": first, f"{prefix}train/loss_last": last,
                                f"{prefix}train/loss_drop": (first - last) / first if first else 0.0})
            previous = record
        assert trainer is not None and previous is not None
        # the run's headline numbers are its last stage's
        last_prefix = f"{stages[-1].name}/" if two_or_more else ""
        for key in ("train/loss_first", "train/loss_last", "train/loss_drop", "train/loss", "val/loss"):
            if f"{last_prefix}{key}" in metrics:
                metrics[key] = metrics[f"{last_prefix}{key}"]
        summary["data"] = previous["data"]
        summary["loss_curve"] = previous["loss_curve"]
        summary["global_step"] = previous["global_step"]
        summary["step_budget"] = previous["step_budget"]
        summary["world_size"] = trainer.world_size
        summary["metrics"] = metrics
        if (out / "checkpoints").exists():
            summary["artifacts"]["checkpoints"] = str(out / "checkpoints")
        if cfg.export and trainer.is_global_zero:
            summary["artifacts"]["export"] = str(export_merged(backbone, finetune, out / "export"))
        if benchmarks and trainer.is_global_zero:
            columns = evaluate_after_training(cfg, backbone, benchmarks, out, trainer.loggers, trainer.global_step)
            metrics.update(columns["trained"])
            summary["eval"] = columns
            summary["artifacts"]["eval"] = str(out / "eval" / f"step_{trainer.global_step}")
        summary["metrics"] = metrics
        return metrics
