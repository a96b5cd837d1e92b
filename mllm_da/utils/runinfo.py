"""Run-folder bookkeeping shared by the entry points: config hash, summary.json, closing loggers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from mllm_da.utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved config minus paths and Hydra's own settings: equal hashes, equal experiments. Where
    things are cached is no part of an experiment: every ``cache_dir`` (the backbone's copies ``paths.cache_dir``)
    is left out too, so a cache moved elsewhere still holds the same runs and tuned synthesizers."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(data, dict)
    data = {k: v for k, v in data.items() if k not in ("paths", "hydra", "ckpt_path")}
    return hashlib.sha256(json.dumps(_without_cache_dirs(data), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _without_cache_dirs(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_dirs(v) for k, v in value.items() if k != "cache_dir"}
    if isinstance(value, list):
        return [_without_cache_dirs(v) for v in value]
    return value


def close_wandb() -> None:
    """Finish the wandb run so that the next multirun job gets its own (wandb keeps one per process)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def is_rank_zero() -> bool:
    """True in the process that owns the run folder (ranks > 0 of a DDP job share it and must not write it)."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


@contextmanager
def run_folder(cfg: DictConfig, entry: str) -> Iterator[dict[str, Any]]:
    """Print the run folder, time the run, and always write ``summary.json`` (status ok or failed with the
    error), closing wandb whatever happens. Only rank zero writes; other ranks get a summary that is dropped."""
    if not is_rank_zero():
        try:
            yield {"metrics": {}, "artifacts": {}}
        finally:
            close_wandb()
        return
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[mllm-da] {entry} run folder: {out.resolve()}", flush=True)
    summary: dict[str, Any] = {
        "entry": entry,
        "status": "running",
        "config_hash": config_hash(cfg),
        "output_dir": str(out.resolve()),
        "metrics": {},
        "artifacts": {},
    }
    start = time.time()
    try:
        yield summary
        summary["status"] = "ok"
    except BaseException as err:
        summary["status"] = "failed"
        summary["error"] = "\n".join([f"{type(err).__name__}: {err}", *getattr(err, "__notes__", [])])
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


def hydra_job() -> tuple[bool, str | None, list[str]]:
    """(in a multirun?, sweep folder name, this job's command-line overrides) — empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, None, []
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return multirun, Path(hc.sweep.dir).name if multirun else None, list(hc.overrides.task)


def instantiate_loggers(cfg: DictConfig) -> list[Any]:
    """The configured loggers; wandb runs are tagged with the entry (task name) and the job's axis values (its
    overrides) and named after them; in a multirun they are grouped by sweep, so a sweep reads as one group."""
    from hydra.utils import instantiate

    node = cfg.get("logger")
    if not node:
        return []
    multirun, sweep, overrides = hydra_job()
    loggers = []
    for value in node.values():
        if value is None or "_target_" not in value:
            continue
        if value._target_.endswith("WandbLogger"):
            # wandb tags hold at most 64 characters
            axes = [o.lstrip("+~")[:64] for o in overrides if not o.startswith(("hydra.", "paths."))]
            value = cast("dict[str, Any]", OmegaConf.to_container(value, resolve=True))  # a logger node: a mapping
            tags = list(dict.fromkeys([*(value.get("tags") or []), str(cfg.task_name), *axes]))
            value.update(tags=tags, name=",".join(axes) or None)
            if multirun:
                value.update(group=f"{cfg.task_name}/{sweep}")
        loggers.append(instantiate(value))
    return loggers


def finished_run(cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of a run that already finished in this run folder with the same config, if any: a rerun of
    a sweep into its folder (hydra.sweep.dir=...) skips the jobs that are done."""
    path = Path(cfg.paths.output_dir) / "summary.json"
    if not path.exists():
        return None
    try:
        summary = read_json(path, "run summary")
    except (OSError, ValueError) as err:
        # summary.json is written atomically, so this one was damaged outside the project: run the job again
        log.warning("%s; running this job again", err)
        return None
    if not isinstance(summary, dict):
        log.warning("%s: not a run summary (a JSON object); running this job again", path)
        return None
    if summary.get("status") == "ok" and summary.get("config_hash") == config_hash(cfg):
        return summary
    return None
