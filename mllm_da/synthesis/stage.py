"""What every synthesis stage shares: its cache version, how a stage folder is reused or computed, and what
it reports (:class:`StageOutcome`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from mllm_da.synthesis.cache import StageDir

log = logging.getLogger(__name__)

#: bump a stage's version when its code changes what it writes, so old cache folders are not reused
VERSIONS = {"seed": 1, "tune": 1, "synthesize": 1, "filter": 1, "format": 1}


@dataclass
class StageOutcome:
    """A stage's folder and what it recorded; ``reused`` when it was already complete."""

    name: str
    dir: StageDir
    meta: dict[str, Any]
    reused: bool

    def describe(self) -> dict[str, Any]:
        return {"key": self.dir.key, "dir": str(self.dir.path), "reused": self.reused}


def config_container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def run_stage(name: str, stage: StageDir, compute: Callable[[], dict[str, Any]], lock: bool = True) -> StageOutcome:
    """Reuse a complete stage folder or compute it (under the folder's lock unless ``lock`` is False)."""
    if stage.is_complete():
        log.info("%s: reusing %s", name, stage.path)
        return StageOutcome(name, stage, stage.meta(), True)
    if not lock:
        return StageOutcome(name, stage, compute(), False)
    with stage.lock():
        if stage.is_complete():
            return StageOutcome(name, stage, stage.meta(), True)
        log.info("%s: computing into %s", name, stage.path)
        return StageOutcome(name, stage, stage.complete(compute()), False)
