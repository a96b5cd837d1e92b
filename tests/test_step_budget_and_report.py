"""A user's first run on their own small domain: the step budget it was given is trained (also in two stages and
in synthesizer tuning), a run that falls short of it or has no validation data says so in summary.json, short
answers get a short generation budget, benchmark rows are counted from 1, and the sweep report's chart and loss
labels say what they show."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from mllm_da.evaluation.benchmarks import BadImageError, BenchmarkSpec, benchmark_specs, load_benchmark
from mllm_da.orchestration.train import train
from mllm_da.training.stages import Stage, epoch_limit, shortfall_cause, stage_steps, stage_warnings
from tests.conftest import TEST_TINY

#: the issue's domain: 19 records, fewer than one default batch (32), so one epoch is one optimiser step
RECORDS = 19
BUDGET = 20
COLOURS = {
    "red": (200, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 200),
    "yellow": (230, 210, 20),
    "black": (20, 20, 20),
}
THINGS = ["square", "circle", "boat", "flower"]


def _small_domain(root: Path, records: int = RECORDS) -> Path:
    """A custom-domain folder with ``records`` captioned pictures (images/ and metadata.csv). Record ids are
    file:line, and these ids all fall outside the default 2 % validation share."""
    (root / "images").mkdir(parents=True)
    lines = ["image,caption"]
    for i in range(records):
        colour = list(COLOURS)[i % len(COLOURS)]
        thing = THINGS[i % len(THINGS)]
        buffer = io.BytesIO()
        Image.new("RGB", (40 + i, 32), COLOURS[colour]).save(buffer, format="PNG")
        (root / "images" / f"photo_{i}.png").write_bytes(buffer.getvalue())
        lines.append(f"photo_{i}.png,A {colour} {thing} on a white table number {i}.")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def _run(compose_cfg, root: Path, out: Path, extra: list[str]) -> dict:
    """train.py on the small domain with a small tiny model and the preset's batch size; no eval, no export."""
    tiny = ",".join(f"{k}:{v}" for k, v in TEST_TINY.items())
    overrides = [
        "domain=custom",
        f"domain.root={root}",
        f"model.backbone.tiny={{{tiny}}}",
        f"trainer.max_steps={BUDGET}",
        "trainer.enable_progress_bar=false",
        "checkpoint.every_n_steps=0",
        "eval.enabled=false",
        "export=false",
        *extra,
    ]
    cfg = compose_cfg(overrides, output_dir=out)
    train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok", summary.get("error")
    return summary


@pytest.fixture(scope="module")
def small_domain(tmp_path_factory) -> Path:
    return _small_domain(tmp_path_factory.mktemp("own") / "mine")


# ------------------------------------------------------------------------------------------------ step budget


def test_a_step_budget_on_19_records_trains_every_step_and_an_empty_val_split_is_reported(
    compose_cfg, small_domain: Path, tmp_path: Path
):
    summary = _run(compose_cfg, small_domain, tmp_path / "run", ["data_mix=caption_only"])
    (stage,) = summary["stages"]
    assert stage["data"]["train"] + stage["data"]["val"] == RECORDS
    assert stage["data"]["val"] == 0  # data.val_fraction's default (0.02) holds out none of these 19 records
    assert summary["global_step"] == summary["step_budget"] == stage["step_budget"] == BUDGET
    assert len(summary["loss_curve"]["step"]) > 1
    (warning,) = summary["warnings"]  # the empty split only: the budget was met
    assert "the validation split is empty" in warning and f"of {RECORDS} records held out none" in warning
    assert "val/loss" not in summary["metrics"]


def test_two_stages_share_the_budget_and_each_trains_its_share(compose_cfg, small_domain: Path, tmp_path: Path):
    summary = _run(
        compose_cfg,
        small_domain,
        tmp_path / "run",
        ["data_mix=rule_based", "stage_mode=two_stage", "data.val_fraction=0.3"],
    )
    steps = [(s["name"], s["global_step"], s["step_budget"]) for s in summary["stages"]]
    assert steps == [("stage1_captions", BUDGET // 2, BUDGET // 2), ("stage2_tasks", BUDGET // 2, BUDGET // 2)]
    assert "warnings" not in summary  # both budgets met, both stages with a validation split


def test_an_explicit_epoch_limit_still_applies_and_its_shortfall_is_named(
    compose_cfg, small_domain: Path, tmp_path: Path
):
    summary = _run(
        compose_cfg,
        small_domain,
        tmp_path / "run",
        ["data_mix=caption_only", "trainer.max_epochs=1", "data.val_fraction=0"],
    )
    assert (summary["global_step"], summary["step_budget"]) == (1, BUDGET)
    assert summary["warnings"] == [
        f"single: trained 1 optimiser steps of the {BUDGET} budgeted (the epoch limit trainer.max_epochs=1 ended "
        "it first)",
        "single: the validation split is empty (data.val_fraction=0.0), so there is no val/loss",
    ]


@pytest.mark.parametrize(
    ("overrides", "epochs"),
    [
        ([], 1),  # no budget: the paper's one epoch
        (["trainer.max_steps=20"], -1),  # a budget: it alone decides
        (["trainer.max_steps=20", "trainer.max_epochs=3"], 3),  # an explicit epoch limit is kept
        (["trainer=gpu", "trainer.max_steps=20"], -1),  # every trainer preset inherits the rule
    ],
)
def test_the_epoch_limit_rule(compose_cfg, overrides: list[str], epochs: int):
    assert epoch_limit(compose_cfg(overrides)) == epochs


def test_synthesizer_tuning_trains_its_steps_whatever_the_seed_sets_size(compose_cfg, tmp_path: Path):
    from mllm_da.synthesis.seed import SeedFiles
    from mllm_da.synthesis.tuning import tune_config

    seed = SeedFiles(
        train=tmp_path / "train.json",
        dev=tmp_path / "dev.json",
        image_root=tmp_path,
        blank_image=tmp_path / "blank.png",
    )
    cfg = compose_cfg(["synthesizer=tiny_llava_next"], config_name="synth")
    tuned = tune_config(cfg, seed)
    assert epoch_limit(tuned) == -1 and stage_steps(tuned, Stage("single")) == int(cfg.tune.steps)


def test_the_cause_of_a_shortfall_is_what_the_trainer_shows(compose_cfg):
    cfg = compose_cfg(["trainer.max_steps=20"])
    stopped = SimpleNamespace(current_epoch=4, num_training_batches=1)  # no epoch limit: something stopped it
    assert "early stopping" in shortfall_cause(cfg, stopped)
    assert shortfall_cause(cfg, SimpleNamespace(current_epoch=0, num_training_batches=0)) == (
        "there was no training batch"
    )
    limited = compose_cfg(["trainer.max_steps=20", "trainer.max_epochs=2"])
    assert "trainer.max_epochs=2" in shortfall_cause(limited, SimpleNamespace(current_epoch=2, num_training_batches=1))
    met = stage_warnings(Stage("single"), 20, 20, "unused", records=100, val_records=2, val_fraction=0.02)
    assert met == []
    assert stage_warnings(Stage("s"), -1, 3, "unused", records=9, val_records=1, val_fraction=0.1) == []


# ------------------------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize(("metric", "tokens"), [("vqa_open_closed", 32), ("multiple_choice", 32), ("rouge_l", 1024)])
def test_the_generic_benchmark_generates_short_answers_briefly(compose_cfg, metric: str, tokens: int):
    cfg = compose_cfg([f"benchmark.generic.metric={metric}", "benchmark.generic.source=rows.jsonl"])
    assert cfg.benchmark.generic.max_new_tokens is None  # by metric, as its YAML comment says
    (spec,) = benchmark_specs(cfg.benchmark, ["generic"])
    assert spec.max_new_tokens == tokens


def test_the_paper_benchmarks_keep_the_references_generation_budgets(compose_cfg):
    # reference §5.2: 1024 by default, 256 for Food101, FoodSeg103 and Nutrition5K
    reference = {
        "vqa_rad": 1024,
        "slake": 1024,
        "pathvqa": 1024,
        "pmc_vqa": 1024,
        "recipe1m": 1024,
        "food101": 256,
        "foodseg103": 256,
        "nutrition5k": 256,
    }
    cfg = compose_cfg([], config_name="evaluate")
    assert {s.name: s.max_new_tokens for s in benchmark_specs(cfg.benchmark, list(reference))} == reference


def test_benchmark_messages_count_rows_from_one(tmp_path: Path, caplog):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    rows = [
        {"image": "ok.png", "input": "Q?", "label": "yes", "answer_type": "CLOSED"},
        {"image": "broken.png", "input": "Q?", "label": "yes", "answer_type": "CLOSED"},
        {"image": "ok.png", "input": "Q?", "answer_type": "OPEN"},
    ]  # the third row has no label
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = BenchmarkSpec(name="b", metric="vqa_open_closed", source=str(path), bad_rows="skip", check_images=False)
    with caplog.at_level(logging.WARNING):
        bench = load_benchmark(spec)
    (reject,) = bench.rejects
    assert reject["source"].endswith("rows.jsonl row 3") and reject["row"] == 2  # shown from 1, kept from 0
    assert "rows.jsonl row 3: field 'label'" in caplog.text
    with pytest.raises(BadImageError, match=r"rows\.jsonl row 2: field 'image'"):
        bench.image(1)


# ------------------------------------------------------------------------------------------------ report


def _job(root: Path, n: int, overrides: list[str], metrics: dict, stages: list[str] = ()) -> None:
    folder = root / str(n)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    summary = {"status": "ok", "metrics": metrics, "stages": [{"name": s} for s in stages]}
    (folder / "summary.json").write_text(json.dumps(summary))


def _capture_panels(monkeypatch) -> dict[str, list]:
    """The titles, value-axis limits and value labels the chart draws."""
    import matplotlib.axes

    drawn: dict[str, list] = {"titles": [], "limits": [], "labels": []}
    title, xlim, text = matplotlib.axes.Axes.set_title, matplotlib.axes.Axes.set_xlim, matplotlib.axes.Axes.text

    def set_title(ax, label, *args, **kwargs):
        drawn["titles"].append(label)
        return title(ax, label, *args, **kwargs)

    def set_xlim(ax, *args, **kwargs):
        if len(args) == 2:
            drawn["limits"].append(args)
        return xlim(ax, *args, **kwargs)

    def put_text(ax, x, y, s, *args, **kwargs):
        drawn["labels"].append(s.strip())
        return text(ax, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", set_title)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlim", set_xlim)
    monkeypatch.setattr(matplotlib.axes.Axes, "text", put_text)
    return drawn


def test_an_all_zero_percentage_panel_is_drawn_readably(tmp_path: Path, monkeypatch):
    from mllm_da.report import write_report

    _job(tmp_path, 0, ["data_mix=a"], {"eval/toy_vqa/closed_accuracy": 0.0, "eval/toy_vqa/open_recall": 12.5})
    _job(tmp_path, 1, ["data_mix=b"], {"eval/toy_vqa/closed_accuracy": 0.0, "eval/toy_vqa/open_recall": 30.0})
    drawn = _capture_panels(monkeypatch)
    result = write_report(tmp_path)
    assert Path(result["png"]).stat().st_size
    assert drawn["titles"] == ["toy_vqa/closed_accuracy (all 0)", "toy_vqa/open_recall"]
    assert drawn["limits"][0] == (0.0, 1.0)  # not 0-100 with nothing on it
    assert 30.0 < drawn["limits"][1][1] < 100.0  # fits the largest value
    assert drawn["labels"][:2] == ["0.0", "0.0"]  # each zero bar still carries its value


def test_two_stage_losses_are_labelled_with_their_last_stage(tmp_path: Path, monkeypatch):
    from mllm_da.report import write_report

    # stages named so that sorting by name would pick the wrong one: the summary's order decides
    for seed in (0, 1):
        _job(
            tmp_path,
            seed,
            [f"seed={seed}", "stage_mode=two_stage"],
            {
                "train/loss_last": 0.2 + seed,
                "val/loss": 0.3,
                "warmup/train/loss_last": 0.9,
                "warmup/val/loss": 0.8,
                "adapt/train/loss_last": 0.2 + seed,
                "adapt/val/loss": 0.3,
            },
            stages=["warmup", "adapt"],
        )
    drawn = _capture_panels(monkeypatch)
    table = write_report(tmp_path)["table"]
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    assert header[-2:] == ["adapt/train/loss_last", "adapt/val/loss"]
    assert drawn["titles"] == ["adapt/train/loss_last", "adapt/val/loss"]
    over_seeds = (tmp_path / "report.md").read_text().split("## Over seeds")[1]
    assert "| adapt/train/loss_last" in over_seeds and "| train/loss_last" not in over_seeds
