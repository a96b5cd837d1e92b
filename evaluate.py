"""Evaluate a model on its domain's benchmarks: `python evaluate.py [group=option ...] [key=value ...]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mllm_da.orchestration.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, float]:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
