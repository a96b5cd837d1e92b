"""Post-train a multimodal LLM on a domain: `python train.py [group=option ...] [key=value ...]`."""

from __future__ import annotations

import logging
import math

import hydra
from omegaconf import DictConfig

from mllm_da.training.run import train
from mllm_da.utils.runinfo import hydra_job

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception:
        # in a sweep, a failed job (its summary.json says why) must not stop the others
        if hydra_job()[0] and cfg.get("sweep_continue_on_error", True):
            log.exception("job failed; the sweep goes on")
            return math.nan
        raise
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric=%s is not among this run's metrics; returning nan", name)
    return metrics.get(name, math.nan) if name else None


if __name__ == "__main__":
    main()
