"""The sweep report on a hand-made multirun folder: axes, table, CSV, chart, failed jobs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mllm_da.report import main, read_jobs, write_report


def job(root: Path, n: int, overrides: list[str], metrics: dict, status: str = "ok", error: str = "") -> None:
    folder = root / str(n)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "summary.json").write_text(json.dumps({"status": status, "metrics": metrics, "error": error}))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    common = ["experiment=toy/ablation"]
    job(tmp_path, 0, [*common, "stage_mode=single_stage", "data_mix=rule_based"],
        {"eval/toy_vqa/open_recall": 44.75, "eval/toy_vqa/count/open_recall": 55.9, "train/loss_last": 0.38})
    job(tmp_path, 1, [*common, "stage_mode=two_stage", "data_mix=rule_based"],
        {"eval/toy_vqa/open_recall": 40.0, "train/loss_last": 0.41})
    job(tmp_path, 10, [*common, "stage_mode=two_stage", "data_mix=caption_only"], {}, "failed", "ConfigError: x")
    return tmp_path


def test_axes_are_the_overrides_that_vary(sweep: Path):
    jobs = read_jobs(sweep)
    assert [j.folder.name for j in jobs] == ["0", "1", "10"]
    assert jobs[0].axes == {"data_mix": "rule_based", "stage_mode": "single_stage"}


def test_report_files(sweep: Path, capsys):
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    lines = text.splitlines()
    assert lines[2].startswith("| job ") and "eval/toy_vqa/open_recall" in lines[2]
    assert "eval/toy_vqa/count/open_recall" not in lines[2], "per-type metrics only with --all-metrics"
    assert "44.75" in text and "–" in text and "job 10 (data_mix=caption_only, stage_mode=two_stage): ConfigError" in text
    rows = list(csv.reader((sweep / "report.csv").open()))
    assert rows[0] == ["job", "data_mix", "stage_mode", "status", "eval/toy_vqa/open_recall", "train/loss_last"]
    assert rows[1][4] == "44.75" and rows[3][3] == "failed"
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "written:" in capsys.readouterr().out


def test_all_metrics_and_errors(sweep: Path, tmp_path_factory):
    result = write_report(sweep, sweep / "out", all_metrics=True)
    assert "eval/toy_vqa/count/open_recall" in result["table"]
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        write_report(tmp_path_factory.mktemp("empty"))
