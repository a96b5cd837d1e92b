"""Stage planning: which part of the data mix each fit of a run trains on, its step budget, and its data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig

from mllm_da.data.datamodule import split_train_val
from mllm_da.data.domain import DomainFiles
from mllm_da.data.records import Conversation
from mllm_da.data.weighted import AnyMix


@dataclass(frozen=True)
class Stage:
    """One fit of a run: which part of the data mix it trains on and its share of ``trainer.max_steps``."""

    name: str
    captions: bool = True
    tasks: bool = True
    steps_fraction: float = 1.0

    def data_mix(self, mix: AnyMix) -> AnyMix:
        """The run's data mix restricted to this stage's part (captions, tasks or both)."""
        return mix.restricted(self.captions, self.tasks)


@dataclass
class StageData:
    """A stage with its (built) data mix and the conversations it trains and validates on."""

    stage: Stage
    mix: AnyMix
    train: list[Conversation]
    val: list[Conversation]


def stages_of(cfg: DictConfig) -> list[Stage]:
    """``stage_mode.stages`` as :class:`Stage` objects (checked by ``check_train_config``)."""
    return [Stage(**dict(s)) for s in cfg.stage_mode.stages]


def build_stage_data(
    cfg: DictConfig, stages: list[Stage], mixes: list[AnyMix], domain: DomainFiles, out: Path
) -> list[StageData]:
    """Each stage's conversations from its data mix, split into train and validation; refused records go to
    ``<out>/rejects/[<stage>/]``. A mix whose tasks are synthesized must have been given its task file."""
    two_or_more = len(stages) > 1
    data = []
    for stage, mix in zip(stages, mixes):
        rejects = out / "rejects" / (stage.name if two_or_more else "")
        conversations = mix.build(domain, policy=cfg.data.bad_records, rejects_dir=rejects)
        if not conversations:
            raise ValueError(empty_stage_message(stage, mix))
        data.append(StageData(stage, mix, *split_train_val(conversations, cfg.data.val_fraction)))
    return data


def empty_stage_message(stage: Stage, mix: AnyMix) -> str:
    """Why a stage has nothing to train on, named before any stage trains (a two-stage run's task stage over a
    synthesis that kept no triplet, say), with what the mix read."""
    part = " and ".join(p for p, on in (("captions", stage.captions), ("tasks", stage.tasks)) if on) or "nothing"
    mixed = mix.reports.get("mixed", {})
    synthesis = mix.reports.get("synthesis") or {}
    kept = f"; its synthesis kept {synthesis['kept']} triplet(s)" if "kept" in synthesis else ""
    return (
        f"stage {stage.name} ({part} of data_mix={mix.name}) has no training conversation: the mix gave "
        f"{mixed.get('conversations', 0)} conversation(s), {mixed.get('with_tasks', 0)} with tasks{kept}. "
        "Use stage_mode=single_stage, or a task source that yields tasks for these images"
    )


def stage_steps(cfg: DictConfig, stage: Stage) -> int:
    """The stage's share of ``trainer.max_steps`` (-1: no step budget)."""
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
    stage: Stage,
    budget: int,
    steps_done: int,
    cause: str,
    records: int,
    val_records: int,
    val_fraction: float,
) -> list[str]:
    """Plain sentences for what a run's summary must not hide: a fit that stopped short of its step budget
    (``cause`` says why), and a validation split with no record (so no val/loss) out of ``records``."""
    warnings = []
    if budget > 0 and steps_done < budget:
        warnings.append(f"{stage.name}: trained {steps_done} optimiser steps of the {budget} budgeted ({cause})")
    if val_records == 0 and val_fraction > 0:
        warnings.append(
            f"{stage.name}: the validation split is empty (data.val_fraction={val_fraction} of "
            f"{records} records held out none), so there is no val/loss; raise data.val_fraction"
        )
    elif val_records == 0:
        warnings.append(
            f"{stage.name}: the validation split is empty (data.val_fraction={val_fraction}), so there is no val/loss"
        )
    return warnings
