"""The sweep report on a hand-made multirun folder: axes, table, CSV, chart, failed jobs."""

from __future__ import annotations

import csv
import json
import shutil
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
    job(
        tmp_path,
        0,
        [*common, "stage_mode=single_stage", "data_mix=rule_based"],
        {"eval/toy_vqa/open_recall": 44.75, "eval/toy_vqa/count/open_recall": 55.9, "train/loss_last": 0.38},
    )
    job(
        tmp_path,
        1,
        [*common, "stage_mode=two_stage", "data_mix=rule_based"],
        {"eval/toy_vqa/open_recall": 40.0, "train/loss_last": 0.41},
    )
    job(tmp_path, 10, [*common, "stage_mode=two_stage", "data_mix=caption_only"], {}, "failed", "ConfigError: x")
    return tmp_path


def test_axes_are_the_overrides_that_vary(sweep: Path):
    jobs = read_jobs(sweep)
    assert [j.folder.name for j in jobs] == ["0", "1", "10"]
    assert jobs[0].axes == {"data_mix": "rule_based", "stage_mode": "single_stage"}


def test_a_sweep_run_in_parts_under_one_folder_names_each_job_by_its_part(sweep: Path, tmp_path_factory):
    """Two multiruns sent to sub-folders of one sweep folder (e.g. synthetic mixes on one core, the others on the
    other) are one report whose job column tells apart the two job 0s."""
    parent = tmp_path_factory.mktemp("parts")
    for part in ("synthetic", "other"):
        shutil.copytree(sweep, parent / part)
    jobs = read_jobs(parent)
    assert [j.name for j in jobs] == [f"{p}/{n}" for p in ("other", "synthetic") for n in ("0", "1", "10")]
    assert main([str(parent)]) == 0
    table = (parent / "report.md").read_text()
    assert "| other/0 " in table and "| synthetic/0 " in table and "- job other/10 (" in table


def test_report_files(sweep: Path, capsys):
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    lines = text.splitlines()
    assert lines[2].startswith("| job ") and "eval/toy_vqa/open_recall" in lines[2]
    assert "eval/toy_vqa/count/open_recall" not in lines[2], "per-type metrics only with --all-metrics"
    assert (
        "44.75" in text and "–" in text and "job 10 (data_mix=caption_only, stage_mode=two_stage): ConfigError" in text
    )
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


def test_a_two_stage_jobs_headline_loss_is_labelled_as_its_last_stages(tmp_path: Path):
    job(tmp_path, 0, ["stage_mode=single_stage"], {"eval/toy_vqa/open_recall": 50.0, "train/loss_last": 0.4})
    job(
        tmp_path,
        1,
        ["stage_mode=two_stage"],
        {
            "eval/toy_vqa/open_recall": 30.0,
            "train/loss_last": 0.2,
            "stage1_captions/train/loss_last": 0.9,
            "stage2_tasks/train/loss_last": 0.2,
        },
    )
    result = write_report(tmp_path)
    assert "train/loss_last (last stage)" in result["table"]
    text = (tmp_path / "report.md").read_text()
    assert "job 1 (stage_mode=two_stage): train/loss_last of its last stage, stage2_tasks" in text


def test_panel_axes_fit_the_values_and_an_all_zero_panel_says_so():
    from mllm_da.report import axis_range

    assert axis_range([0.0, 0.0, float("nan")]) == (0.0, 1.0)
    low, high = axis_range([12.0, 60.0])
    assert low == 0.0 and 60.0 < high < 75.0  # fits the data, not a fixed 0-100
    low, high = axis_range([-2.0, 4.0])
    assert low < -2.0 and high > 4.0


def test_chart_titles_mark_all_zero_panels(tmp_path: Path, monkeypatch):
    import matplotlib.axes

    from mllm_da.report import chart, read_jobs

    job(tmp_path, 0, ["data_mix=a"], {"eval/x/accuracy": 0.0, "eval/y/accuracy": 20.0})
    job(tmp_path, 1, ["data_mix=b"], {"eval/x/accuracy": 0.0, "eval/y/accuracy": 40.0})
    titles, limits = [], []
    original_title, original_xlim = matplotlib.axes.Axes.set_title, matplotlib.axes.Axes.set_xlim
    monkeypatch.setattr(
        matplotlib.axes.Axes, "set_title", lambda ax, t, **k: (titles.append(t), original_title(ax, t, **k))[1]
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "set_xlim",
        lambda ax, *a, **k: (len(a) == 2 and limits.append(a), original_xlim(ax, *a, **k))[1],
    )
    jobs = read_jobs(tmp_path)
    chart(jobs, ["eval/x/accuracy", "eval/y/accuracy"], tmp_path / "c.png")
    assert titles == ["x/accuracy (all 0)", "y/accuracy"]
    assert limits[0] == (0.0, 1.0) and limits[1][1] < 60


def _seeded_job(root: Path, n: int, data_mix: str, seed: int, right: list[int], rows: int = 120) -> None:
    """A finished job whose toy_mc predictions are right on the rows listed in ``right``."""
    job(root, n, [f"data_mix={data_mix}", f"seed={seed}"], {"eval/toy_mc/accuracy": 100 * len(right) / rows})
    folder = root / str(n) / "eval" / "step_10" / "trained" / "predictions"
    folder.mkdir(parents=True)
    hits = set(right)
    (folder / "toy_mc.jsonl").write_text(
        "".join(json.dumps({"index": i, "id": f"r{i}", "score": float(i in hits)}) + "\n" for i in range(rows))
    )


def test_seeds_are_aggregated_with_intervals_and_a_real_paired_difference_is_found(tmp_path: Path):
    import random

    rng = random.Random(0)
    base_right = [i for i in range(120) if rng.random() < 0.4]
    n = 0
    for seed in range(3):
        _seeded_job(tmp_path, n, "caption_only", seed, base_right)
        fixed = [i for i in range(120) if i not in base_right and rng.random() < 0.5]
        _seeded_job(tmp_path, n + 1, "synthetic", seed, base_right + fixed)  # better on the same rows
        noisy = rng.sample(range(120), len(base_right))
        _seeded_job(tmp_path, n + 2, "rule_based", seed, noisy)  # as many right, on other rows: no difference
        n += 3
    write_report(tmp_path, baseline="data_mix=caption_only")
    text = (tmp_path / "report.md").read_text()
    over = text[text.index("## Over seeds") : text.index("## Paired")]
    assert [
        line.split("|")[2].strip() for line in over.splitlines() if line.startswith("| ") and "seeds" not in line
    ] == ["3", "3", "3"]
    assert "[" in over  # means with their intervals
    paired = text[text.index("## Paired") :]
    synthetic = next(line for line in paired.splitlines() if line.startswith("| data_mix=synthetic"))
    rule = next(line for line in paired.splitlines() if line.startswith("| data_mix=rule_based"))
    low = float(synthetic.split("[")[1].split(",")[0])
    assert low > 0, synthetic  # the interval of a real improvement excludes 0
    p_value = float(synthetic.split("|")[5])
    assert p_value < 0.01
    rule_low, rule_high = (float(x) for x in rule.split("[")[1].split("]")[0].split(","))
    assert rule_low < 0 < rule_high, rule  # no true difference: the interval spans 0
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_the_baseline_is_named_by_its_pairs_in_any_order_and_a_wrong_name_is_refused():
    from mllm_da.report import baseline_condition

    conditions = [
        {"data_mix": "synthetic", "stage_mode": "single_stage"},
        {"data_mix": "synthetic_unfiltered", "stage_mode": "single_stage"},
        {"data_mix": "synthetic", "stage_mode": "two_stage"},
    ]
    picked = baseline_condition(conditions, "stage_mode=single_stage, data_mix=synthetic")
    assert picked == "data_mix=synthetic, stage_mode=single_stage"  # not the unfiltered one, whose label contains it
    assert baseline_condition(conditions, "unfiltered") == "data_mix=synthetic_unfiltered, stage_mode=single_stage"
    with pytest.raises(ValueError, match="names 2 of the sweep's conditions"):
        baseline_condition(conditions, "data_mix=synthetic")
    with pytest.raises(ValueError, match="names 0 .*data_mix=synthetic, stage_mode=two_stage"):
        baseline_condition(conditions, "data_mix=rule_based")


def test_a_baseline_that_names_no_condition_is_one_line_not_a_traceback(sweep: Path, capsys):
    assert main([str(sweep), "--baseline", "data_mix=synthetic"]) == 2
    assert "report: --baseline 'data_mix=synthetic' names 0" in capsys.readouterr().err
