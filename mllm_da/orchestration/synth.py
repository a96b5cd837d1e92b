"""``synth.py``'s body: check the config, run the synthesis chain, write ``summary.json`` and log the metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mllm_da.config_checks import check_synth_config
from mllm_da.dashboards.wandb_run import log_run
from mllm_da.synthesis.pipeline import run_pipeline
from mllm_da.utils.io import atomic_write_text
from mllm_da.utils.runinfo import instantiate_loggers, run_folder

log = logging.getLogger(__name__)


def synthesize(cfg: DictConfig) -> dict[str, Any]:
    """``synth.py``: run the pipeline, write ``summary.json`` (metrics, stage keys, files) and log the metrics."""
    with run_folder(cfg, "synth") as summary:
        out = Path(cfg.paths.output_dir)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        check_synth_config(cfg)
        result = run_pipeline(cfg)
        # again, now that a custom domain has filled in the files it found: the dashboards read them from here
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        summary["metrics"] = result.metrics
        summary["stages"] = {name: outcome.describe() for name, outcome in result.stages.items()}
        summary["artifacts"] = result.files
        summary["complete"] = result.complete
        summary["data"] = {"image_caption_pairs": result.inputs}
        if cfg.domain.get("found"):  # a custom domain's conversion: rows refused before the records were read
            summary["domain"] = OmegaConf.to_container(cfg.domain.found)
        for key in ("parse_rate", "triplet_rate", "filter_yield", "records_per_s"):
            if key in result.metrics:
                log.info("%s: %s", key, result.metrics[key])
        log_to_loggers(cfg, result.metrics)
        log_run(cfg, summary)  # sample tables, final scores and the data's reference, with logger=wandb
        return result.metrics


def log_to_loggers(cfg: DictConfig, metrics: Mapping[str, Any]) -> None:
    """The numeric metrics (labels flattened) to the configured Lightning loggers, as ``synth/<name>``."""
    flat: dict[str, float] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                add(f"{prefix}/{key}", inner)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[prefix] = float(value)

    for key, value in metrics.items():
        add(f"synth/{key}", value)
    for logger in instantiate_loggers(cfg):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(flat, step=0)
        logger.finalize("success")
