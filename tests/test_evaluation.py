"""Evaluation: the eight AdaMLLM benchmarks load from their real layouts, generate on a tiny model and score;
the toy benchmark runs end to end through evaluate.py's function; a crashed run resumes; the blind control.

The benchmark fixtures are a few rows per task in the AdaptLLM schema (reference §5.1) with images drawn here,
written as the hub repositories hold them: one ``save_to_disk`` folder per task (``vqa_rad/``, ``pmc_vqa/``,
``food_eval_multitask_v2/``, ...) beside a ``dataset_dict.json`` that lists only one of them (as the biomed
repository's does), plus the hub's parquet conversion (``VQA_RAD/test/0000.parquet``) and plain JSON files.
Food label lists come from ``$ADAMLLM_LABELS_DIR`` (default ``/work/shared/data/adamllm-labels``).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TEST_TINY
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from mllm_da.backbones.loading import load_backbone
from mllm_da.evaluation.benchmarks import (
    Benchmark,
    BenchmarkError,
    BenchmarkRowError,
    BenchmarkSpec,
    benchmark_specs,
    load_benchmark,
)
from mllm_da.evaluation.generation import (
    GenerationRequest,
    GenerationStats,
    GeneratorOptions,
    HFGenerator,
    cut_at_stop,
    question_turns,
    vllm_available,
)
from mllm_da.evaluation.runner import (
    backbone_config,
    derangement,
    evaluate_backbone,
    format_score_table,
    image_pairing,
    run_benchmark,
)
from mllm_da.orchestration.evaluate import evaluate

datasets = pytest.importorskip("datasets")

LABELS_DIR = Path(os.environ.get("ADAMLLM_LABELS_DIR", "/work/shared/data/adamllm-labels"))
ADAPTLLM = ("vqa_rad", "slake", "pathvqa", "pmc_vqa", "recipe1m", "nutrition5k", "food101", "foodseg103")
FOOD_LABELLED = {"nutrition5k", "food101", "foodseg103"}
TINY_IMAGE = {"min_pixels": 12544, "max_pixels": 12544}
SMALL_TOY = ["domain.prepare.n_train=8", "domain.prepare.n_test=6", "domain.root=${paths.data_dir}/toy_eval"]


# ------------------------------------------------------------------------------------------------ fixtures


def drawn(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A picture with a few coloured shapes, different for each seed."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.randrange(size[0] - 20), rng.randrange(size[1] - 20)
        colour = tuple(rng.randrange(256) for _ in range(3))
        box = (x, y, x + rng.randrange(8, 20), y + rng.randrange(8, 20))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def vqa_rows(seed: int) -> dict[str, list]:
    # two questions share the first image, as VQA-RAD's questions share radiographs
    images = [drawn(seed), drawn(seed), drawn(seed + 1), drawn(seed + 2)]
    return {
        "image": images,
        "input": [
            "Is there a fracture?",
            "What organ is shown?",
            "Is the lesion on the left?",
            "Where is the mass?",
        ],
        "label": ["yes", "the liver", "no", "right upper lobe"],
        "answer_type": ["CLOSED", "OPEN", "CLOSED", "OPEN"],
    }


def pmc_rows() -> dict[str, list]:
    return {
        "image": [drawn(40 + i) for i in range(3)],
        "input": [f"Question {i}: which finding is shown?\nA. cyst\nB. tumour\nC. oedema\nD. normal" for i in range(3)],
        "label": ["A", "B", "D"],
        "A": ["cyst"] * 3,
        "B": ["tumour"] * 3,
        "C": ["oedema"] * 3,
        "D": ["normal"] * 3,
    }


def food_rows(task: str) -> dict[str, list]:
    images = [drawn(60 + i) for i in range(3)]
    if task == "recipe1m":
        labels = [
            "Boil the pasta. Add the sauce.",
            "Whisk eggs, fry them in butter.",
            "Slice bread and toast it.",
        ]
        return {"image": images, "input": ["Write the recipe of this dish."] * 3, "label": labels}
    if task == "food101":
        return {
            "image": images,
            "input": ["Which dish is this?"] * 3,
            "label": ["apple_pie", "baklava", "ramen"],
        }
    if task == "foodseg103":
        labels = [["french fries", "tomato"], ["rice"], ["egg tart", "ice cream", "coffee"]]
        return {"image": images, "input": ["List the ingredients."] * 3, "label": labels}
    labels = [["bacon", "potatoes"], ["steak"], ["cottage cheese", "strawberries", "olives"]]
    return {"image": images, "input": ["List the ingredients."] * 3, "label": labels}


def as_dataset(rows: dict[str, list]):
    features = {"image": datasets.Image(), "input": datasets.Value("string")}
    for key, values in rows.items():
        if key in features:
            continue
        is_list = isinstance(values[0], list)
        features[key] = datasets.Sequence(datasets.Value("string")) if is_list else datasets.Value("string")
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features))


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory) -> Path:
    """Local copies of AdaptLLM/biomed-VQA-benchmark and AdaptLLM/food-VQA-benchmark, a few rows per task."""
    root = tmp_path_factory.mktemp("benchmarks")
    biomed = root / "biomed-VQA-benchmark"
    for i, folder in enumerate(("vqa_rad", "SLAKE", "pathvqa")):
        as_dataset(vqa_rows(10 * i)).save_to_disk(str(biomed / folder))
    as_dataset(pmc_rows()).save_to_disk(str(biomed / "pmc_vqa"))
    (biomed / "dataset_dict.json").write_text(json.dumps({"splits": ["pmc_vqa"]}))  # as the hub repo's
    food = root / "food-VQA-benchmark"
    for task, folder in (
        ("recipe1m", "food_eval_multitask_v2"),
        ("nutrition5k", "nutrition50k"),
        ("food101", "food101"),
        ("foodseg103", "foodseg103"),
    ):
        as_dataset(food_rows(task)).save_to_disk(str(food / folder))
    (food / "dataset_dict.json").write_text(
        json.dumps({"splits": ["food101", "food_eval_multitask_v2", "foodseg103", "nutrition50k"]})
    )
    return root


@pytest.fixture(scope="module")
def backbone(work_root: Path):
    torch.manual_seed(0)
    return load_backbone(
        family="qwen2_vl",
        variant="tiny",
        tiny=TEST_TINY,
        image=TINY_IMAGE,
        cache_dir=str(work_root / "cache"),
    )


@pytest.fixture()
def eval_cfg(compose_cfg, bench_dir: Path, monkeypatch, tmp_path: Path):
    """The composed evaluate.yaml pointing at the fixture benchmarks, a small toy domain and a tiny model."""
    monkeypatch.setenv("MLLM_DA_BENCH_DIR", str(bench_dir))
    monkeypatch.setenv("ADAMLLM_LABELS_DIR", str(LABELS_DIR))
    tiny = ",".join(f"{k}:{v}" for k, v in TEST_TINY.items())

    def _cfg(*overrides: str):
        return compose_cfg(
            [f"model.backbone.tiny={{{tiny}}}", *SMALL_TOY, "max_new_tokens=4", "progress=false", *overrides],
            config_name="evaluate",
            output_dir=tmp_path / "run",
        )

    return _cfg


def specs_from(cfg, names, **kw) -> list[BenchmarkSpec]:
    return benchmark_specs(OmegaConf.to_container(cfg.benchmark, resolve=True), names, **kw)


class Scripted:
    """A generator that answers from a table: scores then have known values, independent of any model."""

    def __init__(self, answers: dict[int, str]) -> None:
        self.answers = answers
        self.stats = GenerationStats()
        self.asked: list[int] = []

    def generate(self, requests, *, max_new_tokens, on_batch=None, desc="", done=()):
        out = {}
        requests = [r for r in requests if r.key not in done]
        for r in requests:
            r.images()  # the image must be readable
            self.asked.append(r.key)
            out[r.key] = self.answers[r.key]
            if on_batch is not None:
                on_batch([(r.key, out[r.key])])
        self.stats = GenerationStats(samples=len(requests), seconds=1.0)
        return out


def gold_answer(bench: Benchmark, index: int) -> str:
    """An answer that scores 100 on every metric: the label in words."""
    row = next(r for r in bench.rows if r.index == index)
    label = row.label
    if isinstance(label, list):
        return ", ".join(label)
    if bench.spec.metric == "multiple_choice" and bench.labels is None:
        return f"({label})"
    if bench.spec.name == "food101":
        return f"It is {str(label).replace('_', ' ')}."
    return str(label) if row.fields.get("answer_type") != "CLOSED" else f"{label}, it is {label}"


def read_predictions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------ the 8 benchmarks


@pytest.mark.parametrize("name", ADAPTLLM)
def test_adaptllm_benchmark_loads_from_its_config_and_scores_gold_answers(eval_cfg, name: str, tmp_path: Path):
    if name in FOOD_LABELLED and not LABELS_DIR.is_dir():
        pytest.skip(f"label files not found at {LABELS_DIR} (set ADAMLLM_LABELS_DIR)")
    (spec,) = specs_from(eval_cfg(), [name])
    bench = load_benchmark(spec)
    assert len(bench) == bench.read == (4 if spec.metric == "vqa_open_closed" else 3)
    assert bench.image(bench.rows[0].index).mode == "RGB"
    expected_tokens = 256 if name in ("food101", "foodseg103", "nutrition5k") else 1024  # reference §5.2
    assert spec.max_new_tokens == expected_tokens

    answers = {r.index: gold_answer(bench, r.index) for r in bench.rows}
    result = run_benchmark(bench, Scripted(answers), tmp_path)
    scores = result.scores
    expected = {
        "vqa_open_closed": {"open_recall": 100.0, "closed_accuracy": 100.0},
        "multiple_choice": {"accuracy": 100.0, "random_selected_pct": 0.0},
        "rouge_l": {"rouge_l_f": pytest.approx(100.0)},
        "multi_label_f1": {"f1": 100.0},
        "multi_label_recall": {"recall": 100.0},
    }[spec.metric]
    assert scores == expected
    lines = read_predictions(Path(result.predictions))
    assert [line["index"] for line in lines] == [r.index for r in bench.rows]
    assert all(line["score"] == 1.0 or spec.metric == "rouge_l" for line in lines)


def test_all_eight_generate_on_a_tiny_model(eval_cfg, backbone, tmp_path: Path):
    names = [n for n in ADAPTLLM if n not in FOOD_LABELLED or LABELS_DIR.is_dir()]
    specs = specs_from(eval_cfg(), names, max_new_tokens=4)
    logged: list[dict[str, float]] = []
    metrics = evaluate_backbone(
        backbone,
        specs,
        tmp_path,
        batch_size=4,
        logger_fn=logged.append,
        generation=GeneratorOptions(progress=False),
    )
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert list(scores) == names
    for name in names:
        lines = read_predictions(tmp_path / "predictions" / f"{name}.jsonl")
        assert len(lines) == scores[name]["rows"] and scores[name]["generated"] == len(lines)
        assert all(isinstance(line["prediction"], str) for line in lines)
        assert any(k.startswith(f"eval/{name}/") for k in metrics)
    assert "eval/vqa_rad/open_recall" in metrics and "eval/pmc_vqa/accuracy" in metrics
    assert {k for m in logged for k in m} == set(metrics)
    # MC rows carry the random-fallback flag (a random tiny model rarely names a letter)
    assert all("random_selected" in line for line in read_predictions(tmp_path / "predictions" / "pmc_vqa.jsonl"))


def test_hub_parquet_conversion_and_plain_files_load(bench_dir: Path, tmp_path: Path, work_root: Path):
    # refs/convert/parquet layout: <config>/<split>/0000.parquet
    place = tmp_path / "hub" / "VQA_RAD" / "test"
    place.mkdir(parents=True)
    as_dataset(vqa_rows(0)).to_parquet(str(place / "0000.parquet"))
    spec = BenchmarkSpec(name="vqa_rad", metric="vqa_open_closed", source=str(tmp_path / "hub"), config="VQA_RAD")
    bench = load_benchmark(spec, cache_dir=work_root / "hf_datasets")
    assert [r.label for r in bench.rows] == ["yes", "the liver", "no", "right upper lobe"]
    assert bench.image_key(0) == bench.image_key(1) != bench.image_key(2)  # same picture, same key
    # a single parquet file (the generic benchmark)
    single = BenchmarkSpec(name="generic", metric="vqa_open_closed", source=str(place / "0000.parquet"))
    assert len(load_benchmark(single, cache_dir=work_root / "hf_datasets")) == 4
    # a JSON list with image paths relative to image_root
    drawn(1).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "input": "Caption?", "label": "shapes", "id": "r0"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    bench = load_benchmark(BenchmarkSpec(name="g", metric="rouge_l", source=str(tmp_path / "rows.json")))
    assert bench.rows[0].id == "r0" and bench.image(0).size == (96, 80)


# --------------------------------------------------------------------------------------------- bad rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_rows_fail_naming_the_row_and_field_or_are_skipped_and_counted(tmp_path: Path):
    drawn(0).save(tmp_path / "ok.png")
    rows = [
        {"image": "ok.png", "input": "Q?", "label": "yes", "answer_type": "CLOSED"},
        {"image": "ok.png", "input": "Q?", "label": "yes"},  # no answer_type
        {"image": "missing.png", "input": "Q?", "label": "no", "answer_type": "CLOSED"},
        {"image": "../escape.png", "input": "Q?", "label": "no", "answer_type": "CLOSED"},
        {"image": "ok.png", "input": "  ", "label": "no", "answer_type": "OPEN"},
        {"image": "ok.png", "input": "Q?", "label": "no", "answer_type": "open"},
    ]
    path = write_jsonl(tmp_path / "b.jsonl", rows)
    spec = BenchmarkSpec(name="b", metric="vqa_open_closed", source=str(path))
    with pytest.raises(BenchmarkRowError, match=r"b\.jsonl row 2: field 'answer_type'"):
        load_benchmark(spec)
    bench = load_benchmark(BenchmarkSpec(name="b", metric="vqa_open_closed", source=str(path), bad_rows="skip"))
    assert [r.index for r in bench.rows] == [0]
    assert bench.skipped == {
        "missing_field": 1,
        "missing_image": 1,
        "path_escape": 1,
        "empty_prompt": 1,
        "bad_answer_type": 1,
    }
    (tmp_path / "torn.jsonl").write_text(json.dumps(rows[0]) + '\n{"image": \n' + json.dumps(rows[0]) + "\n")
    with pytest.raises(BenchmarkError, match=r"torn\.jsonl:2: malformed JSON line"):
        load_benchmark(BenchmarkSpec(name="t", metric="vqa_open_closed", source=str(tmp_path / "torn.jsonl")))
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"image": "ok.png", "input": "Q", "label": "E", "A": "x", "B": "y"}])
    with pytest.raises(BenchmarkRowError, match=r"row 1: field 'label'.*not one of the options \['A', 'B'\]"):
        load_benchmark(BenchmarkSpec(name="mc", metric="multiple_choice", source=str(mc)))
    with pytest.raises(BenchmarkError, match="has no field 'question'"):
        load_benchmark(BenchmarkSpec(name="b", metric="vqa_open_closed", source=str(path), prompt_field="question"))


@pytest.mark.skipif(not LABELS_DIR.is_dir(), reason="label files not found (set ADAMLLM_LABELS_DIR)")
def test_unknown_ingredient_is_a_bad_row(tmp_path: Path):
    drawn(0).save(tmp_path / "ok.png")
    path = write_jsonl(tmp_path / "n.jsonl", [{"image": "ok.png", "input": "Q", "label": ["bacon", "unobtainium"]}])
    spec = BenchmarkSpec(
        name="n",
        metric="multi_label_recall",
        source=str(path),
        label_space="mllm_da.evaluation.labels.nutrition5k_labels",
        label_file=str(LABELS_DIR / "nutrition5k_ingredients.json"),
    )
    with pytest.raises(BenchmarkRowError, match=r"row 1: field 'label'.*unobtainium"):
        load_benchmark(spec)


def test_missing_local_copy_offline_says_how_to_get_it(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = BenchmarkSpec(
        name="vqa_rad",
        metric="vqa_open_closed",
        source=str(tmp_path / "absent"),
        hub_id="AdaptLLM/biomed-VQA-benchmark",
        config="VQA_RAD",
    )
    with pytest.raises(BenchmarkError, match="huggingface-cli download --repo-type dataset AdaptLLM/biomed"):
        load_benchmark(spec)
    dd = datasets.DatasetDict({"train": as_dataset(vqa_rows(0))})
    dd.save_to_disk(str(tmp_path / "dd"))
    spec = BenchmarkSpec(name="x", metric="vqa_open_closed", source=str(tmp_path / "dd"), disk_subset="vqa_rad")
    with pytest.raises(BenchmarkError, match=r"has splits \['train'\], none named \['vqa_rad', 'test'\]"):
        load_benchmark(spec)


def test_spec_refuses_unknown_keys_and_metrics():
    with pytest.raises(ValueError, match="unknown key"):
        BenchmarkSpec.from_config({"name": "x", "metric": "rouge_l", "source": "a.jsonl", "promt_field": "q"})
    with pytest.raises(ValueError, match="is not one of"):
        BenchmarkSpec(name="x", metric="bleu", source="a.jsonl")
    with pytest.raises(ValueError, match="needs label_space"):
        BenchmarkSpec(name="x", metric="multi_label_f1", source="a.jsonl")


# ------------------------------------------------------------------------------------- toy, end to end


def test_toy_benchmark_end_to_end_through_evaluate(eval_cfg, tmp_path: Path):
    cfg = eval_cfg()
    metrics = evaluate(cfg)
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["benchmarks"] == ["toy_vqa", "toy_mc"]
    for key in ("eval/toy_vqa/open_recall", "eval/toy_vqa/closed_accuracy", "eval/toy_mc/accuracy"):
        assert key in metrics and 0.0 <= metrics[key] <= 100.0
    # a per-question-type breakdown, e.g. eval/toy_vqa/count/open_recall
    types = {k.split("/")[2] for k in metrics if k.count("/") == 3}
    assert {"count", "colour", "position"} <= types
    rows = read_predictions(run / "predictions" / "toy_vqa.jsonl")
    written = (Path(cfg.domain.root) / "benchmark" / "toy_vqa.jsonl").read_text().splitlines()
    assert [r["index"] for r in rows] == list(range(len(written)))
    assert {"index", "id", "prompt", "prediction", "label", "score", "random_selected"} <= set(rows[0])
    assert "eval/toy_vqa/open_recall" in (run / "csv" / "metrics.csv").read_text()
    assert "| toy_vqa/open_recall" in (run / "scores.md").read_text()
    assert (run / "rejects" / "toy_vqa.jsonl").read_text() == ""  # every row of the toy benchmark is valid


def test_evaluate_refuses_options_that_do_not_fit_before_loading_a_model(eval_cfg, tmp_path: Path):
    from mllm_da.config_checks import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        evaluate(eval_cfg("batch_size=0"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "batch_size" in summary["error"]
    assert not (tmp_path / "run" / "predictions").exists()


def test_checkpoint_key_points_the_preset_at_a_saved_folder(eval_cfg, backbone, tmp_path: Path):
    folder = backbone.save(tmp_path / "train_run" / "export")
    node = backbone_config(eval_cfg(f"checkpoint={tmp_path / 'train_run'}"))
    assert node.variant == "pretrained" and node.source == str(folder)
    with pytest.raises(ValueError, match="is a qwen2_vl model but model.backbone.family is mllama"):
        backbone_config(eval_cfg("model=tiny_mllama", f"checkpoint={folder}"))
    (tmp_path / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="Lightning training checkpoint"):
        backbone_config(eval_cfg(f"checkpoint={tmp_path / 'last.ckpt'}"))


# ------------------------------------------------------------------------------------------------ resume


@pytest.fixture()
def toy_vqa(eval_cfg) -> Benchmark:
    from mllm_da.toy import build_toy_domain

    cfg = eval_cfg()
    build_toy_domain(cfg.domain.root, n_train=8, n_test=6, tasks_per_image=3, seed=0)
    (spec,) = specs_from(cfg, ["toy_vqa"], max_new_tokens=4)
    return load_benchmark(spec)


def test_a_crashed_run_resumes_with_every_row_once_and_the_same_scores(toy_vqa: Benchmark, backbone, tmp_path: Path):
    options = GeneratorOptions(progress=False)
    first = evaluate_backbone(backbone, [toy_vqa], tmp_path / "a", batch_size=1, generation=options)
    path = tmp_path / "a" / "predictions" / "toy_vqa.jsonl"
    complete = path.read_text()
    lines = complete.splitlines(keepends=True)
    n = len(lines)
    # crash mid-append: 7 whole lines, half of the 8th, and one duplicated line
    path.write_text("".join(lines[:7]) + lines[3] + lines[7][: len(lines[7]) // 2])
    second = evaluate_backbone(backbone, [toy_vqa], tmp_path / "a", batch_size=1, generation=options)
    assert second == first
    again = read_predictions(path)
    assert [r["index"] for r in again] == list(range(n))
    assert path.read_text() == complete  # the same rows, predictions and scores, in row order
    report = json.loads((tmp_path / "a" / "scores.json").read_text())["toy_vqa"]
    assert (report["resumed"], report["generated"]) == (7, n - 7)
    # a finished task is not generated again
    evaluate_backbone(backbone, [toy_vqa], tmp_path / "a", batch_size=1, generation=options)
    assert json.loads((tmp_path / "a" / "scores.json").read_text())["toy_vqa"]["generated"] == 0
    # other settings refuse to mix with these predictions
    with pytest.raises(ValueError, match="different settings"):
        evaluate_backbone(backbone, [toy_vqa], tmp_path / "a", shuffle_images=True, generation=options)


def test_batched_generation_equals_one_at_a_time(toy_vqa: Benchmark, backbone):
    requests = [
        GenerationRequest(
            r.index,
            question_turns(r.prompt),
            lambda i=r.index: [toy_vqa.image(i)],
            (toy_vqa.image_size(r.index),),
        )
        for r in toy_vqa.rows[:6]
    ]
    batched = HFGenerator(backbone, batch_size=6, progress=False).generate(requests, max_new_tokens=6)
    single = HFGenerator(backbone, batch_size=1, progress=False).generate(requests, max_new_tokens=6)
    assert batched == single
    stop = backbone.chat_format.stop_strings[0]
    assert not any(stop in text for text in batched.values())


def test_qwen_prompt_is_the_reference_one(backbone, compose_cfg):
    # reference §5.2: explicit system message, user content = image then text, open assistant header
    text, _ = backbone.render(question_turns("Is it red?"), add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is it red?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    for preset in ("qwen2_vl_2b", "qwen2_5_vl_3b"):  # pixel limits 224·224 .. 1280·28·28
        image = compose_cfg([f"model={preset}"], config_name="evaluate").model.backbone.image
        assert (image.min_pixels, image.max_pixels) == (224 * 224, 1280 * 28 * 28)


def test_stop_strings_and_the_image_before_the_question():
    assert cut_at_stop("yes<|im_end|>more", ["<|eot_id|>", "<|im_end|>"]) == "yes"
    assert cut_at_stop("no stop here", ["<|im_end|>"]) == "no stop here"
    (turn,) = question_turns("Is it red?", 1, "\n")
    assert turn.role == "user" and turn.content == "<image>\nIs it red?"


# ------------------------------------------------------------------------------------------- blind control


def test_derangement_never_leaves_a_row_in_place():
    for n in range(2, 40):
        for seed in range(5):
            perm = derangement(n, random.Random(seed))
            assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))


def test_shuffled_images_never_show_a_question_its_own_picture(toy_vqa: Benchmark, backbone, tmp_path: Path):
    pairing = image_pairing(toy_vqa, seed=0)
    assert pairing == image_pairing(toy_vqa, seed=0) != image_pairing(toy_vqa, seed=1)
    for row in toy_vqa.rows:
        assert toy_vqa.image_key(pairing[row.index]) != toy_vqa.image_key(row.index)
    evaluate_backbone(backbone, [toy_vqa], tmp_path, shuffle_images=True, generation=GeneratorOptions(progress=False))
    rows = read_predictions(tmp_path / "predictions" / "toy_vqa.jsonl")
    assert [r["image_index"] for r in rows] == [pairing[r["index"]] for r in rows]
    assert json.loads((tmp_path / "scores.json").read_text())["toy_vqa"]["shuffle_images"] is True


# --------------------------------------------------------------------------------------------------- table


def test_score_table_puts_named_results_side_by_side():
    table = format_score_table(
        {
            "trained": {"eval/toy_vqa/open_recall": 61.234, "eval/toy_vqa/count/open_recall": 90.0},
            "trained + shuffled images": {
                "eval/toy_vqa/open_recall": 20.0,
                "eval/toy_vqa/count/open_recall": 25.5,
            },
            "untrained": {"eval/toy_vqa/open_recall": float("nan")},
        }
    )
    assert table.splitlines() == [
        "| metric                    | trained | trained + shuffled images | untrained |",
        "|---------------------------|--------:|--------------------------:|----------:|",
        "| toy_vqa/open_recall       |   61.23 |                     20.00 |       n/a |",
        "| toy_vqa/count/open_recall |   90.00 |                     25.50 |         – |",
    ]
    with pytest.raises(ValueError, match="at least one"):
        format_score_table({})


# ---------------------------------------------------------------------------------------------------- vLLM


@pytest.mark.skipif(not (vllm_available() and torch.cuda.is_available()), reason="needs the vllm package and a GPU")
def test_vllm_backend_gives_the_same_predictions_as_transformers(toy_vqa: Benchmark, backbone, tmp_path: Path):
    backbone.model.to("cuda")
    hf = evaluate_backbone(backbone, [toy_vqa], tmp_path / "hf", generation=GeneratorOptions(progress=False))
    vllm_options = GeneratorOptions(
        backend="vllm", progress=False, vllm={"enforce_eager": True, "gpu_memory_utilization": 0.3}
    )
    vl = evaluate_backbone(backbone, [toy_vqa], tmp_path / "vllm", generation=vllm_options)
    a = read_predictions(tmp_path / "hf" / "predictions" / "toy_vqa.jsonl")
    b = read_predictions(tmp_path / "vllm" / "predictions" / "toy_vqa.jsonl")
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
    agree = sum(x["prediction"] == y["prediction"] for x, y in zip(a, b)) / len(a)
    assert agree >= 0.9, f"vLLM and transformers agree on only {agree:.0%} of greedy answers"
    assert set(hf) == set(vl)
