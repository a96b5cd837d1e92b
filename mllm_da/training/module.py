"""The LightningModule: any backbone, any finetune method, AdamW with per-group rates and a cosine schedule."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch

from mllm_da.backbones.base import Backbone
from mllm_da.training.finetune import FinetuneConfig, apply_finetune, parameter_groups
from mllm_da.utils.typed_config import option


@dataclass
class OptimConfig:
    """The ``optim`` node of conf/train.yaml. The rate, decay and warm-up have no default here: the YAML takes them
    from the model preset's recipe (``model.recipe``), the one place they are set."""

    lr: float = option(gt=0.0)
    weight_decay: float = option(ge=0.0)
    warmup_ratio: float = option(ge=0.0, le=1.0)
    #: the cosine ends at ``min_lr_ratio * lr`` rather than 0
    min_lr_ratio: float | None = option(0.0, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = option(1e-8, gt=0.0)
    #: torch's fused AdamW kernel where every trainable parameter is on one CUDA or CPU device (else the
    #: per-tensor loop); on CPU one optimiser step of the tiny Qwen2-VL takes a fifth of the loop's time
    fused: bool = True


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` (a multiplier of the base rate)."""
    import math

    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


#: device types whose parameters torch's fused AdamW kernel takes (torch 2.4+ has a CPU kernel)
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` takes these parameters: floating point, on one device of a type
    it has a kernel for (a model spread over devices, e.g. some layers offloaded, gets the per-tensor loop)."""
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in FUSED_ADAMW_DEVICES
        and all(p.is_floating_point() for p in params)
    )


def batch_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens of a padded (``attention_mask``) or packed (``_real_tokens``) batch."""
    if "_real_tokens" in batch:
        return int(batch["_real_tokens"])
    return int(batch["attention_mask"].sum())


class MLLMModule(pl.LightningModule):
    """Trains ``backbone.model``; checkpoints keep only trainable weights when ``save_trainable_only``."""

    def __init__(
        self,
        backbone: Backbone,
        finetune: FinetuneConfig,
        optim: OptimConfig,
        *,
        save_trainable_only: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.finetune = finetune
        self.optim = optim
        self.model = apply_finetune(backbone, finetune)
        self.model.train()  # from_pretrained returns eval mode
        if compile:
            # in place (nn.Module.compile): parameter names, checkpoints and the export stay as they are;
            # dynamic shapes because every length-grouped batch has its own width
            self.model.compile(dynamic=True)
        self.save_trainable_only = save_trainable_only
        #: put before every logged key ("stage1_captions/" in two-stage runs, so both stages stay apart)
        self.log_prefix = ""
        # a trainable-only checkpoint lacks the frozen weights, which the freshly loaded model already has
        self.strict_loading = not save_trainable_only
        self._tokens = 0
        self._samples = 0
        self._window_start: float | None = None

    # ---------------------------------------------------------------------------------------------- steps
    def forward(self, batch: dict[str, Any]) -> Any:
        # the loader's batches are compact (Backbone.model_inputs); a KV cache is never useful in training
        inputs = self.backbone.model_inputs(batch)
        inputs.setdefault("use_cache", False)
        return self.model(**inputs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        n = len(batch["sample_ids"]) if "sample_ids" in batch else batch["input_ids"].shape[0]  # packed: rows < samples
        self.log(f"{self.log_prefix}train/loss", out.loss, prog_bar=True, batch_size=n)
        self._tokens += batch_tokens(batch)
        self._samples += n
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        n = batch["input_ids"].shape[0]
        self.log(f"{self.log_prefix}val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=n)
        return out.loss

    def on_train_epoch_start(self) -> None:
        # Lightning calls set_epoch on a DataLoader's sampler (and batch_sampler.sampler), never on the batch sampler
        # itself: without this the length-grouped batch sampler would replay epoch 0's order in every epoch, and a
        # run resumed in a later epoch (the datamodule sets the epoch it resumes in) would see other batches than
        # an uninterrupted one
        loaders = self.trainer.train_dataloader
        if isinstance(loaders, dict):
            loaders = list(loaders.values())
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            set_epoch = getattr(getattr(loader, "batch_sampler", None), "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.trainer.current_epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        interval = self.trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by Lightning's logger connector
        if self._window_start is None or (batch_idx + 1) % max(1, interval) != 0:
            return
        elapsed = time.perf_counter() - self._window_start
        if elapsed > 0:
            self.log(f"{self.log_prefix}train/tokens_per_s", self._tokens / elapsed, batch_size=1)
            self.log(f"{self.log_prefix}train/samples_per_s", self._samples / elapsed, batch_size=1)
        self._tokens = self._samples = 0
        self._window_start = time.perf_counter()

    # ------------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        groups = parameter_groups(self.backbone, self.model, self.optim.lr, self.optim.weight_decay, self.finetune)
        fused = self.optim.fused and fused_adamw_supported([p for g in groups for p in g["params"]])
        optimizer = torch.optim.AdamW(groups, betas=tuple(self.optim.betas), eps=self.optim.eps, fused=fused or None)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(self.optim.warmup_ratio * total))
        min_ratio = self.optim.min_lr_ratio or 0.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, total, warmup, min_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.save_trainable_only:
            return
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
