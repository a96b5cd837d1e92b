"""``data_mix=synthetic`` (and ``rule_based`` on a domain without a rule_tasks file): the synthetic-only task file
of a domain, synthesized once into the shared cache and reused by every later run and sweep job."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from mllm_da.config_checks import check_synth_config
from mllm_da.synthesis.pipeline import run_pipeline
from mllm_da.synthesis.tuning import compose_config, point_domain


def synthetic_task_file(domain: Any, spec: Mapping[str, Any], policy: str = "skip") -> tuple[Path, dict[str, Any]]:
    """For ``data_mix=synthetic``: the synthetic-only file of ``domain`` (a DomainFiles), synthesizing it once.

    ``spec`` is the data_mix's ``synthesis`` node: ``synthesizer`` and ``filter`` preset names, extra ``overrides``
    of conf/synth.yaml, and the training run's ``paths`` (so the cache is shared).
    """
    overrides = [f"synthesizer={spec['synthesizer']}", f"filter={spec['filter']}", *spec.get("overrides", [])]
    cfg = compose_config("synth", overrides)
    with open_dict(cfg):
        for key, value in (spec.get("paths") or {}).items():
            cfg.paths[key] = value
        cfg.paths.output_dir = str(Path(cfg.paths.cache_dir) / "synthesis")
        point_domain(cfg, domain.name, domain.image_root, domain.image_caption_pairs)
        cfg.bad_records = policy
        cfg.stage = "all"
    check_synth_config(cfg)
    result = run_pipeline(cfg)
    if not result.complete:
        raise RuntimeError(
            "data_mix synthesis is waiting for other shards (synthesis.shard_index or filter.shard_index is set); "
            "run the other shards with synth.py first, or drop shard_index from data_mix.synthesis.overrides"
        )
    return Path(result.files["synthetic_only"]), result.metrics
