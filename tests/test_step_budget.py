"""A step budget wins over the epoch default, and a run that falls short of it or has no validation data says so."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import small_run_overrides

from mllm_da.training.run import train


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_a_step_budget_on_a_small_domain_trains_every_step(compose_cfg, tmp_path: Path):
    # 48 toy records at 4 per step are 12 steps an epoch: a 20-step budget needs two passes
    overrides = [o for o in small_run_overrides(steps=20) if not o.startswith("trainer.max_epochs")]
    cfg = compose_cfg([*overrides, "eval.enabled=false", "export=false"], output_dir=tmp_path / "run")
    assert cfg.trainer.max_epochs is None  # the default: one epoch unless a step budget is given
    train(cfg)
    summary = _summary(tmp_path / "run")
    assert summary["status"] == "ok" and summary["global_step"] == 20
    assert "warnings" not in summary


def test_an_epoch_limit_that_stops_short_and_an_empty_val_split_are_reported(compose_cfg, tmp_path: Path):
    overrides = [o for o in small_run_overrides(steps=20) if not o.startswith(("trainer.max_epochs", "data.val"))]
    cfg = compose_cfg([*overrides, "trainer.max_epochs=1", "data.val_fraction=0.0", "eval.enabled=false",
                       "export=false"], output_dir=tmp_path / "run")
    train(cfg)
    summary = _summary(tmp_path / "run")
    assert summary["status"] == "ok" and summary["global_step"] < 20
    warnings = " ".join(summary["warnings"])
    assert f"trained {summary['global_step']} optimiser steps of the 20 budgeted" in warnings
    assert "validation split is empty" in warnings
