"""Benchmarks are discovered from ``conf/benchmark/``: adding one is adding its YAML.

Every YAML there is composed into the ``benchmark`` node (``benchmark: all``), a domain runs those whose
``domains`` name it in their ``order``, and a label space is named by its builder, not by an if-chain.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir

from mllm_da.evaluation.spec import BenchmarkSpec
from mllm_da.report import markdown_table as report_markdown_table
from mllm_da.utils.conf import register_conf_catalog
from mllm_da.utils.tables import markdown_table

#: what the domains listed before discovery (conf/domain/*.yaml `benchmarks:` at the issue-15 redesign)
DOMAIN_BENCHMARKS = {
    "biomed": ["vqa_rad", "slake", "pathvqa", "pmc_vqa"],
    "food": ["recipe1m", "nutrition5k", "food101", "foodseg103"],
    "toy": ["toy_vqa", "toy_mc"],
    "remote_sensing": ["generic"],
    "custom": [],  # filled in by the custom domain's prepare from the files it finds
}


@pytest.mark.parametrize("domain", sorted(DOMAIN_BENCHMARKS))
def test_each_domain_runs_the_benchmarks_it_listed(compose_cfg, domain: str):
    train = compose_cfg([f"domain={domain}"])
    evaluate = compose_cfg([f"domain={domain}"], config_name="evaluate")
    assert list(train.eval.benchmarks) == list(evaluate.benchmarks) == DOMAIN_BENCHMARKS[domain]


@pytest.mark.parametrize("config_name", ["train", "evaluate"])
def test_every_benchmark_yaml_is_composed(compose_cfg, config_name: str):
    files = {p.stem for p in (CONF / "benchmark").glob("*.yaml")}
    cfg = compose_cfg(config_name=config_name)
    assert set(cfg.benchmark) == files
    assert all(cfg.benchmark[name].name == name for name in files)


def test_the_command_line_still_selects_and_sets_benchmarks(compose_cfg):
    cfg = compose_cfg(
        [
            "domain=food",
            "benchmarks=[generic]",
            "benchmark.generic.source=rows.jsonl",
            "benchmark.food101.split=dev",
        ],
        config_name="evaluate",
    )
    assert list(cfg.benchmarks) == ["generic"] and cfg.benchmark.generic.source == "rows.jsonl"
    assert cfg.benchmark.food101.split == "dev"
    moved = compose_cfg(["domain=biomed", "benchmark.slake.order=9"])
    assert list(moved.eval.benchmarks) == ["vqa_rad", "pathvqa", "pmc_vqa", "slake"]


def test_adding_a_benchmark_is_adding_one_yaml(tmp_path: Path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "benchmark" / "derm_vqa.yaml").write_text(
        "derm_vqa:\n  name: derm_vqa\n  domains: [biomed]\n  order: 5\n  metric: vqa_open_closed\n"
        "  source: /data/derm/test.jsonl\n  max_new_tokens: 32\n"
    )
    register_conf_catalog(conf)
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("evaluate", overrides=["domain=biomed", f"paths.root_dir={tmp_path}"])
        assert list(cfg.benchmarks) == [*DOMAIN_BENCHMARKS["biomed"], "derm_vqa"]
        spec = BenchmarkSpec.from_config(cfg.benchmark.derm_vqa)
        assert spec.domains == ("biomed",) and spec.order == 5
    finally:
        register_conf_catalog()


def test_the_label_space_is_a_builder_that_fits_the_metric():
    food = "mllm_da.evaluation.labels.food101_labels"
    BenchmarkSpec(name="x", metric="multiple_choice", source="a.jsonl", label_space=food, label_file="l.json")
    with pytest.raises(ValueError, match="goes with metric multiple_choice"):
        BenchmarkSpec(name="x", metric="rouge_l", source="a.jsonl", label_space=food, label_file="l.json")
    with pytest.raises(ValueError, match="MultiLabelSpace"):
        BenchmarkSpec(name="x", metric="multi_label_f1", source="a.jsonl", label_space=food, label_file="l.json")
    for name, message in (
        ("foodseg103", "name one as package.module.function"),
        ("mllm_da.evaluation.labels.nope", "names no importable function"),
    ):
        with pytest.raises(ValueError, match=message):
            BenchmarkSpec(name="x", metric="multi_label_f1", source="a.jsonl", label_space=name, label_file="l")
    with pytest.raises(ValueError, match="needs label_file"):
        BenchmarkSpec(
            name="x",
            metric="multi_label_f1",
            source="a.jsonl",
            label_space="mllm_da.evaluation.labels.foodseg103_labels",
        )


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        (
            ["metric", "a", "b"],
            [["toy_vqa/open_recall", "57.80", "–"], ["toy_mc/accuracy", "n/a", "-3.10"]],
            "| metric              |     a |     b |\n|---------------------|------:|------:|\n"
            "| toy_vqa/open_recall | 57.80 |     – |\n| toy_mc/accuracy     |   n/a | -3.10 |",
        ),
        (
            ["job", "data_mix", "loss"],
            [["0", "synthetic", "0.47"], ["1", "rule_based", "0.43"]],
            "| job | data_mix   | loss |\n|-----|------------|-----:|\n| 0   | synthetic  | 0.47 |\n"
            "| 1   | rule_based | 0.43 |",
        ),
        (["condition", "value"], [], "| condition | value |\n|-----------|------:|"),
    ],
)
def test_one_table_writer_writes_what_the_report_wrote(header, body, expected):
    """mllm_da/utils/tables.py is the one writer of the report's and the score table's tables: numbers (and the
    missing marks) right-aligned, the first column and text left-aligned, as the report wrote them."""
    assert markdown_table(header, body) == expected
    assert report_markdown_table is markdown_table
