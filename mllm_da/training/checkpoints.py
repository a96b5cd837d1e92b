"""Checkpoints a kill cannot tear, and where a resumed run starts: ``ckpt_path=auto`` or an explicit checkpoint."""

from __future__ import annotations

import contextlib
import logging
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig

from mllm_da.training.stages import Stage
from mllm_da.utils.io import atomic_open
from mllm_da.utils.runinfo import is_rank_zero

log = logging.getLogger(__name__)


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


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of a writer killed mid-save: never read, only in the way."""
    if folder.is_dir():
        for stale in folder.glob(".*.ckpt.*.tmp"):
            stale.unlink(missing_ok=True)


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


def newest_whole_checkpoint(folder: Path) -> Path | None:
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
    Checkpoints are always loaded with ``weights_only=True`` (see :func:`mllm_da.training.fit.fit_stage`), so one
    from elsewhere cannot run code."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return 0, None
    if ckpt == "auto":
        root = Path(cfg.paths.output_dir) / "checkpoints"
        folders = [root / s.name for s in stages] if len(stages) > 1 else [root]
        found = [(i, c) for i, f in enumerate(folders) if (c := newest_whole_checkpoint(f)) is not None]
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
