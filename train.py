"""Post-train a multimodal LLM on a domain: `python train.py [group=option ...] [key=value ...]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mllm_da.orchestration.train import optimized_value, train_job


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return optimized_value(cfg, train_job(cfg))


if __name__ == "__main__":
    main()
