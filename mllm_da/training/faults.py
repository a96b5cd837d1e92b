"""Fault injection and step records for the reliability tests (``callbacks=fault``, ``callbacks=batch_log``).

:class:`FaultInjection` makes a training run fail at a chosen optimiser step, the way real runs fail: a plain
``RuntimeError`` (a bug, a bad batch) or ``torch.OutOfMemoryError`` (the GPU ran out of memory). With ``times``
set it fails only in the first ``times`` attempts in its run folder (a transient fault: a rerun of the sweep
succeeds), counted in ``<run>/faults.jsonl``.

:class:`BatchRecorder` appends one line per micro batch to a JSONL file: optimiser step, epoch, the sample ids of
the batch and its loss, and the process id. A run that is killed and resumed can then be compared step by step
(same data order, same losses) with one that was not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from mllm_da.utils.io import append_jsonl, read_jsonl_tolerant

log = logging.getLogger(__name__)

FAULTS = ("raise", "oom")


class InjectedFault(RuntimeError):
    """The error :class:`FaultInjection` raises for ``fault=raise``."""


class FaultInjection(pl.Callback):
    """Raise at the end of optimiser step ``at_step`` (``fault``: raise, oom, or none/null for no fault)."""

    def __init__(
        self,
        fault: str | None = None,
        at_step: int = 1,
        times: int | None = None,
        record: str | os.PathLike | None = None,
    ) -> None:
        if fault in ("none", ""):
            fault = None
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"callbacks.fault.fault must be one of {FAULTS} or none, got {fault!r}")
        if at_step < 1:
            raise ValueError(f"callbacks.fault.at_step must be >= 1, got {at_step}")
        self.fault = fault
        self.at_step = int(at_step)
        self.times = times
        self.record = Path(record) if record else None

    def _fired_before(self) -> int:
        if self.record is None:
            return 0
        return sum(1 for row in read_jsonl_tolerant(self.record) if row.get("fault") == self.fault)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.fault is None or trainer.global_step != self.at_step:
            return
        if self.times is not None and self._fired_before() >= self.times:
            return
        if self.record is not None:
            append_jsonl(self.record, [{"fault": self.fault, "step": self.at_step, "pid": os.getpid()}])
        message = f"injected fault at step {self.at_step} (callbacks.fault)"
        if self.fault == "oom":
            raise torch.OutOfMemoryError(f"CUDA out of memory: {message}")
        raise InjectedFault(message)


class BatchRecorder(pl.Callback):
    """Append ``{step, epoch, batch_idx, sample_ids, loss, pid}`` per micro batch to ``path`` (fsynced)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank != 0:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        append_jsonl(
            self.path,
            [
                {
                    "step": int(trainer.global_step),
                    "epoch": int(trainer.current_epoch),
                    "batch_idx": int(batch_idx),
                    "sample_ids": list(batch.get("sample_ids", [])),
                    "loss": float(loss.detach()) if isinstance(loss, torch.Tensor) else None,
                    "pid": os.getpid(),
                }
            ],
        )
