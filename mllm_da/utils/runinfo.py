"""Run-folder bookkeeping shared by the entry points: config hash, summary.json, closing loggers."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mllm_da.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved config minus paths and Hydra's own settings: equal hashes, equal experiments."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(data, dict)
    data = {k: v for k, v in data.items() if k not in ("paths", "hydra", "ckpt_path")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def close_wandb() -> None:
    """Finish the wandb run so that the next multirun job gets its own (wandb keeps one per process)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


@contextmanager
def run_folder(cfg: DictConfig, entry: str) -> Iterator[dict[str, Any]]:
    """Print the run folder, time the run, and always write ``summary.json`` (status ok or failed with the
    error), closing wandb whatever happens."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[mllm-da] {entry} run folder: {out.resolve()}", flush=True)
    summary: dict[str, Any] = {"entry": entry, "status": "running", "config_hash": config_hash(cfg),
                               "output_dir": str(out.resolve()), "metrics": {}, "artifacts": {}}
    start = time.time()
    try:
        yield summary
        summary["status"] = "ok"
    except BaseException as err:
        summary["status"] = "failed"
        summary["error"] = f"{type(err).__name__}: {err}"
        summary["traceback"] = traceback.format_exc(limit=20)
        raise
    finally:
        summary["wall_time_s"] = round(time.time() - start, 2)
        atomic_write_json(out / "summary.json", summary)
        close_wandb()
        print(f"[mllm-da] {entry} {summary['status']}; summary: {out.resolve() / 'summary.json'}", flush=True)


def instantiate_dict(cfg: DictConfig | None, fn: Callable[[DictConfig], Any]) -> list[Any]:
    """Instantiate each ``_target_`` entry of a name → config mapping (loggers, callbacks)."""
    if not cfg:
        return []
    return [fn(value) for value in cfg.values() if value is not None and "_target_" in value]
