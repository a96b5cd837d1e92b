"""Lightning callbacks of every fit: the loss history the summary reports, and the weights' fingerprint."""

from __future__ import annotations

import hashlib

import lightning.pytorch as pl
import torch


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the trainable weights: shows which weights a stage started from and ended with."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


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
