"""A two-stage run whose task source yields no task for the domain's images stops before training, naming the
stage that would have had nothing to train on (not a length-plan error from inside the data module)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import small_run_overrides

from mllm_da.config_checks import check_train_config
from mllm_da.orchestration.train import train


def test_a_task_stage_without_tasks_fails_naming_the_stage(compose_cfg, tmp_path: Path):
    # one task record on an image no caption record has: the task-only stage gets no conversation
    external = tmp_path / "tasks.json"
    external.write_text(
        json.dumps(
            [
                {
                    "id": "elsewhere-0",
                    "messages": [
                        {"role": "user", "content": "<image>\nHow many shapes are there?"},
                        {"role": "assistant", "content": "two"},
                    ],
                    "images": ["images/not_in_this_domain.png"],
                }
            ]
        )
    )
    overrides = [
        *small_run_overrides("qwen2_vl"),
        "stage_mode=two_stage",
        "data_mix=external",
        f"data_mix.external_file={external}",
        "data.bad_records=skip",
        "export=false",
        "eval.enabled=false",
    ]
    cfg = compose_cfg(overrides, output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"stage stage2_tasks \(tasks of data_mix=external\) has no training") as err:
        train(cfg)
    assert "stage_mode=single_stage" in str(err.value)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "stage2_tasks" in summary["error"]
    assert "stages" not in summary, "it fails before any stage trains"


def test_captions_only_in_two_stages_is_refused_naming_the_task_stage(compose_cfg, tmp_path: Path):
    """The toy ablation's caption_only × two_stage jobs: refused by the config check, before any data is read."""
    cfg = compose_cfg(["experiment=toy/ablation", "stage_mode=two_stage", "data_mix=caption_only"], output_dir=tmp_path)
    with pytest.raises(Exception, match=r"task-only stage \(stage2_tasks\) but data_mix=caption_only has no tasks"):
        check_train_config(cfg)
