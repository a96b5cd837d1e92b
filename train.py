"""Post-train a multimodal LLM on a domain: `python train.py [group=option ...] [key=value ...]`."""

from __future__ import annotations

import gc
import logging
import math

import hydra
from omegaconf import DictConfig

from mllm_da.training.run import train
from mllm_da.utils.runinfo import hydra_job

log = logging.getLogger(__name__)


def release_memory() -> None:
    """Collect what a failed job left behind (its model, optimiser and batches, held in reference cycles) and give
    cached GPU memory back: after an out-of-memory error the sweep's next job starts as a fresh one would."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception:
        # in a sweep, a failed job (its summary.json says why) must not stop the others
        if not (hydra_job()[0] and cfg.get("sweep_continue_on_error", True)):
            raise
        log.exception("job failed; the sweep goes on")
        metrics = None
    if metrics is None:
        release_memory()  # outside the except block, where the error (and the frames it holds) is gone
        return math.nan
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric=%s is not among this run's metrics; returning nan", name)
    return metrics.get(name, math.nan) if name else None


if __name__ == "__main__":
    main()
