"""Evaluation defaults a user meets first: short answers get a short generation budget, rows count from 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mllm_da.evaluation.benchmarks import (
    DEFAULT_MAX_NEW_TOKENS,
    BenchmarkRowError,
    BenchmarkSpec,
    benchmark_specs,
    load_benchmark,
)


@pytest.mark.parametrize(("metric", "tokens"), [("vqa_open_closed", 32), ("multiple_choice", 32), ("rouge_l", 1024)])
def test_the_generic_benchmark_budget_follows_its_metric(compose_cfg, metric: str, tokens: int):
    cfg = compose_cfg([f"benchmark.generic.metric={metric}", "benchmark.generic.source=rows.jsonl"],
                      config_name="evaluate")
    (spec,) = benchmark_specs(cfg.benchmark, ["generic"])
    assert spec.max_new_tokens == tokens == DEFAULT_MAX_NEW_TOKENS[metric]
    (own,) = benchmark_specs(cfg.benchmark, ["generic"], max_new_tokens=7)
    assert own.max_new_tokens == 7  # an explicit value still wins


def test_the_paper_benchmarks_keep_the_reference_budgets(compose_cfg):
    cfg = compose_cfg([], config_name="evaluate")
    budgets = {s.name: s.max_new_tokens for s in benchmark_specs(cfg.benchmark, ["vqa_rad", "food101", "recipe1m"])}
    assert budgets == {"vqa_rad": 1024, "food101": 256, "recipe1m": 1024}


def test_benchmark_row_messages_count_rows_from_one(tmp_path: Path):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    rows = [{"image": "ok.png", "input": "Q?", "label": "yes", "answer_type": "CLOSED"},
            {"image": "ok.png", "input": "Q?", "label": "yes", "answer_type": "sometimes"}]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkRowError, match=r"rows\.json row 2: field 'answer_type'") as caught:
        load_benchmark(BenchmarkSpec(name="b", metric="vqa_open_closed", source=str(path)))
    assert caught.value.index == 1  # the row's index in the split stays 0-based
    skipped = load_benchmark(BenchmarkSpec(name="b", metric="vqa_open_closed", source=str(path), bad_rows="skip"))
    assert skipped.rejects[0]["source"].endswith("rows.json row 2")
