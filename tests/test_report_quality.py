"""The report's table of synthetic task sets, on a hand-made sweep: one row per distinct set, of its kept tasks."""

from __future__ import annotations

import json
from pathlib import Path

from mllm_da.report import write_report
from mllm_da.report_quality import quality_table


def quality(kept_tasks: int, accuracy: float, types: dict[str, int]) -> dict:
    part = {
        "diversity": {
            "tasks": kept_tasks,
            "distinct_questions": len(types),
            "type_counts": types,
            "type_entropy_bits": 1.0,
            "largest_type_share": max(types.values()) / kept_tasks,
        },
        "copied": {"precise_share": 0.0},
        "toy_truth": {"precise_accuracy": accuracy, "informative_consistency": 0.5},
    }
    all_part = {**part, "toy_truth": {**part["toy_truth"], "filter": {"keep_precision": 0.9, "keep_recall": 0.6}}}
    return {"all": all_part, "kept": part, "grounding": {"changed_share": 0.25}}


def job(root: Path, n: int, overrides: list[str], mix: str, synthesis: dict | None) -> None:
    folder = root / str(n)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    read = {"synthesis": synthesis} if synthesis else {}
    stages = [{"name": "single", "data": {"mix": mix, "read": read}}]
    summary = {"status": "ok", "metrics": {"eval/toy_vqa/open_recall": 40.0 + n}, "stages": stages}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_one_row_per_distinct_set_naming_its_jobs(tmp_path: Path):
    filtered = {"triplets": 100, "kept": 40, "quality": quality(40, 0.75, {"count": 20, "colour": 20})}
    unfiltered = {"triplets": 100, "kept": 100, "quality": quality(100, 0.5, {"count": 70, "colour": 30})}
    job(tmp_path, 0, ["seed=0", "data_mix=synthetic"], "synthetic", filtered)
    job(tmp_path, 1, ["seed=0", "data_mix=rule_based"], "rule_based", None)
    job(tmp_path, 2, ["seed=1", "data_mix=synthetic"], "synthetic", filtered)
    job(tmp_path, 3, ["seed=1", "data_mix=synthetic_unfiltered"], "synthetic_unfiltered", unfiltered)
    table = quality_table(sorted(tmp_path.iterdir()))
    rows = table.splitlines()[2:]
    assert len(rows) == 2
    assert rows[0].split("|")[1:4] == [" synthetic            ", " 0, 2 ", "      100 "]
    assert "colour 20, count 20" in rows[0] and "count 50%" in rows[0] and "0.75" in rows[0]
    assert "0.90 / 0.60" in rows[0] and "0.25" in rows[0]
    assert "count 70%" in rows[1] and " 3 " in rows[1]
    report = (tmp_path / "report.md").read_text() if write_report(tmp_path) else ""
    assert "## Synthetic task sets" in report and table in report


def test_no_synthetic_job_no_table(tmp_path: Path):
    job(tmp_path, 0, ["data_mix=rule_based"], "rule_based", None)
    job(tmp_path, 1, ["data_mix=caption_only"], "caption_only", None)
    assert quality_table(sorted(tmp_path.iterdir())) == ""
    write_report(tmp_path)
    assert "Synthetic task sets" not in (tmp_path / "report.md").read_text()
