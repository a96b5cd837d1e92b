"""Post-train a multimodal LLM on a domain: `python train.py [group=option ...] [key=value ...]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mllm_da.training.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
