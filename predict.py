"""Ask a model about images: `python predict.py [model=<preset>] [checkpoint=<folder>] image=x.jpg question="..."`."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from mllm_da.orchestration.evaluate import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> list[dict[str, Any]]:
    return predict(cfg)


if __name__ == "__main__":
    main()
