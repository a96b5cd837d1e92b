"""Synthesize domain visual instruction tasks: `python synth.py [domain=...] [synthesizer=...] [stage=...]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mllm_da.orchestration.synth import synthesize


@hydra.main(version_base="1.3", config_path="conf", config_name="synth")
def main(cfg: DictConfig) -> float | None:
    metrics = synthesize(cfg)
    return metrics.get("kept_rate")


if __name__ == "__main__":
    main()
