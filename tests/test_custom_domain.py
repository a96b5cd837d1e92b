"""domain=custom: a user's folder in each accepted format, found, read and trained on as README's
"Adapt to your own domain" section says."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from mllm_da.data.custom import CustomDomainError, prepare_custom_domain
from mllm_da.data.custom_files import sniff_format
from mllm_da.data.records import BadRecordError, read_conversations
from tests.conftest import TEST_TINY

CAPTIONS = [
    "A red square on a white table.",
    "A green field under a blue sky.",
    "A blue car parked in front of a house.",
    "A yellow flower in a glass vase.",
    "Two black cats sleeping on a sofa.",
    "A white boat on a calm lake at dawn.",
]
COLOURS = [(200, 30, 30), (30, 160, 40), (30, 60, 200), (230, 210, 20), (20, 20, 20), (240, 240, 240)]


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_images(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, colour in enumerate(COLOURS):
        name = f"photo_{i}.png"
        (folder / name).write_bytes(_png(colour))
        names.append(name)
    return names


def _sharegpt(image: str, caption: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": "<image>Describe this photo."},
            {"role": "assistant", "content": caption},
        ],
        "images": [image],
    }


def _sharegpt_json(root: Path) -> None:
    names = _write_images(root / "images")  # paths relative to images/, as AdaMLLM's released files have them
    rows = [_sharegpt(n, c) for n, c in zip(names, CAPTIONS)]
    (root / "image_caption_pairs.json").write_text(json.dumps(rows, indent=1))


def _sharegpt_jsonl_in_json(root: Path) -> None:
    names = _write_images(root / "images")
    rows = [_sharegpt(f"images/{n}", c) for n, c in zip(names, CAPTIONS)]
    (root / "image_caption_pairs.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _llava_json(root: Path) -> None:
    names = _write_images(root)
    rows = [
        {
            "id": f"r{i}",
            "image": n,
            "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": c}],
        }
        for i, (n, c) in enumerate(zip(names, CAPTIONS))
    ]
    (root / "captions.json").write_text(json.dumps(rows))


def _flat_jsonl(root: Path) -> None:
    names = _write_images(root / "images")
    rows = [{"file_name": f"images/{n}", "text": c} for n, c in zip(names, CAPTIONS)]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _table(root: Path, delimiter: str, name: str) -> None:
    names = _write_images(root / "images")
    with open(root / name, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["image", "caption"])
        writer.writerows(zip(names, CAPTIONS))  # relative to images/: found there


def _csv(root: Path) -> None:
    _table(root, ",", "captions.csv")


def _tsv(root: Path) -> None:
    _table(root, "\t", "captions.txt")  # detected by content, whatever the suffix


def _parquet_paths(root: Path) -> None:
    import datasets

    names = _write_images(root / "images")
    datasets.Dataset.from_dict({"image": [f"images/{n}" for n in names], "caption": CAPTIONS}).to_parquet(
        str(root / "image_caption_pairs.parquet")
    )


def _dataset_embedded(root: Path) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    data = {"image": [{"bytes": _png(c), "path": None} for c in COLOURS], "caption": CAPTIONS}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(root / "image_caption_pairs"))


def _text_folder(root: Path) -> None:
    names = _write_images(root / "images")
    for name, caption in zip(names, CAPTIONS):
        (root / "images" / name).with_suffix(".txt").write_text(caption + "\n")


FORMATS: dict[str, Callable[[Path], None]] = {
    "sharegpt_json": _sharegpt_json,
    "sharegpt_jsonl_in_json": _sharegpt_jsonl_in_json,
    "llava_json": _llava_json,
    "flat_jsonl": _flat_jsonl,
    "csv": _csv,
    "tsv": _tsv,
    "parquet_paths": _parquet_paths,
    "dataset_embedded": _dataset_embedded,
    "text_folder": _text_folder,
}

BENCHMARK_ROWS = [
    {"image": "bench/a.png", "question": "What colour is the square?", "answer": "red", "answer_type": "open"},
    {"image": "bench/a.png", "question": "Is there a square?", "answer": "yes", "answer_type": "Closed"},
    {"image": "bench/b.png", "question": "Is it raining?", "answer": "no"},  # answer type inferred: closed
    {"image": "bench/b.png", "question": "What is under the sky?", "answer": "a field", "question_type": "scene"},
    {"image": "bench/a.png", "question": "Which shape?", "answer": "square", "options": ["circle", "square"]},
    {"image": "bench/b.png", "question": "Which colour?", "answer": "C", "options": ["red", "blue", "green"]},
]


def _benchmark(root: Path, rows: list[dict] = BENCHMARK_ROWS) -> None:
    (root / "bench").mkdir(exist_ok=True)
    (root / "bench" / "a.png").write_bytes(_png(COLOURS[0]))
    (root / "bench" / "b.png").write_bytes(_png(COLOURS[1]))
    (root / "benchmark.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_is_found_and_read_into_captioned_records(tmp_path: Path, fmt: str):
    root = tmp_path / "mine"
    FORMATS[fmt](root)
    found = prepare_custom_domain(root, tmp_path / "cache")
    records, report = read_conversations(found["image_caption_pairs"], image_root=found["image_root"])
    assert (report.read, report.kept, report.rejected) == (len(CAPTIONS), len(CAPTIONS), 0)
    assert sorted(r.turns[-1].content for r in records) == sorted(CAPTIONS)
    pixels = {}
    for record in records:  # each caption is paired with its own picture
        with Image.open(record.images[0]) as image:
            pixels[record.turns[-1].content] = image.convert("RGB").getpixel((0, 0))
    assert pixels == {caption: colour for caption, colour in zip(CAPTIONS, COLOURS)}
    assert found["benchmarks"] == []  # no benchmark file in the folder


def test_format_is_told_by_content_not_by_suffix(tmp_path: Path):
    cases = {
        "lines.json": '{"a": 1}\n{"a": 2}\n',
        "list.jsonl": '[{"a": 1}]',
        "table.json": "image,caption\nx,y\n",
        "tabs.csv": "image\tcaption\nx\ty\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    assert {name: sniff_format(tmp_path / name) for name in cases} == {
        "lines.json": "jsonl",
        "list.jsonl": "json",
        "table.json": "csv",
        "tabs.csv": "tsv",
    }


def test_benchmark_rows_are_split_by_kind_with_case_insensitive_answer_types(tmp_path: Path):
    root = tmp_path / "mine"
    _csv(root)
    _benchmark(root)
    found = prepare_custom_domain(root, tmp_path / "cache")
    assert found["benchmarks"] == ["custom_mc", "custom_vqa"]
    vqa = [json.loads(line) for line in Path(found["benchmark_files"]["custom_vqa"]).read_text().splitlines()]
    mc = [json.loads(line) for line in Path(found["benchmark_files"]["custom_mc"]).read_text().splitlines()]
    assert [r["answer_type"] for r in vqa] == ["OPEN", "CLOSED", "CLOSED", "OPEN"]
    assert vqa[3]["question_type"] == "scene"
    assert [r["label"] for r in mc] == ["B", "C"]  # an option's text or its letter
    assert mc[0]["A"] == "circle" and "A. circle\nB. square" in mc[0]["input"]
    assert found["found"]["benchmark_rows"] == {"custom_mc": 2, "custom_vqa": 4}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"image": "bench/a.png", "question": "Q?", "answer": "x", "answer_type": "numeric"}, "answer_type"),
        ({"image": "bench/a.png", "question": "Q?", "answer": "D", "options": ["a", "b"]}, "answer"),
        ({"image": "bench/a.png", "question": "Q?"}, "answer"),
        ({"image": "bench/missing.png", "question": "Q?", "answer": "x"}, "image"),
    ],
)
def test_a_bad_benchmark_row_names_the_file_and_its_line_counted_from_one(tmp_path: Path, row: dict, field: str):
    root = tmp_path / "mine"
    _csv(root)
    _benchmark(root, [BENCHMARK_ROWS[0], row])
    with pytest.raises(BadRecordError) as caught:
        prepare_custom_domain(root, tmp_path / "cache", policy="fail")
    assert f"benchmark.jsonl:2: field '{field}" in str(caught.value)
    found = prepare_custom_domain(root, tmp_path / "cache", policy="skip")  # skipped and counted instead
    assert found["found"]["benchmark"]["rejected"] == 1
    assert found["found"]["benchmark_rows"] == {"custom_vqa": 1}


def test_a_bad_caption_row_names_its_line_and_the_rest_is_kept(tmp_path: Path):
    root = tmp_path / "mine"
    _csv(root)
    with open(root / "captions.csv", "a", encoding="utf-8") as handle:
        handle.write("photo_0.png,\n")  # line 8: no caption
    with pytest.raises(BadRecordError, match=r"captions\.csv:8: field 'caption'"):
        prepare_custom_domain(root, tmp_path / "cache", policy="fail")
    found = prepare_custom_domain(root, tmp_path / "cache")
    assert found["found"]["captions"]["reasons"] == {"missing_caption": 1}
    assert found["found"]["captions"]["kept"] == len(CAPTIONS)


def test_prepared_files_are_reused_until_a_source_changes(tmp_path: Path):
    root = tmp_path / "mine"
    _csv(root)
    first = prepare_custom_domain(root, tmp_path / "cache")
    assert prepare_custom_domain(root, tmp_path / "cache") == first
    with open(root / "captions.csv", "a", encoding="utf-8") as handle:
        handle.write("photo_1.png,Another caption.\n")
    again = prepare_custom_domain(root, tmp_path / "cache")
    assert again["found"]["captions"]["kept"] == len(CAPTIONS) + 1


def test_an_unusable_folder_says_what_it_expected(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CustomDomainError, match="found no image-caption data"):
        prepare_custom_domain(tmp_path / "empty", tmp_path / "cache")
    with pytest.raises(CustomDomainError, match="needs domain.root"):
        prepare_custom_domain(None, tmp_path / "cache")  # type: ignore[arg-type]
    both = tmp_path / "both"
    _csv(both)
    (both / "captions.json").write_text("[]")
    with pytest.raises(CustomDomainError, match="several image-caption data candidates"):
        prepare_custom_domain(both, tmp_path / "cache")


def _own_domain_overrides(root: Path, steps: int) -> list[str]:
    """The README section's train command on a small tiny model: domain.root and the step budget only."""
    tiny = ",".join(f"{k}:{v}" for k, v in TEST_TINY.items())
    return [
        "domain=custom",
        f"domain.root={root}",
        f"model.backbone.tiny={{{tiny}}}",
        f"trainer.max_steps={steps}",
        "trainer.enable_progress_bar=false",
        "data.micro_batch_size=2",
        "data.global_batch_size=2",
    ]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_train_on_each_format_runs_its_whole_step_budget_and_evaluates(compose_cfg, tmp_path: Path, fmt: str):
    from mllm_da.orchestration.train import train

    root = tmp_path / "mine"
    FORMATS[fmt](root)
    _benchmark(root)
    steps = 5  # more than the 6 records give in one epoch at 2 per step
    cfg = compose_cfg([*_own_domain_overrides(root, steps), "data_mix=caption_only"], output_dir=tmp_path / "run")
    metrics = train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["global_step"] == steps
    assert summary["domain"]["captions"]["path"].startswith(str(root))
    assert summary["data"]["read"]["image_caption_pairs"]["kept"] == len(CAPTIONS)
    assert {"eval/custom_vqa/open_recall", "eval/custom_mc/accuracy"} <= set(metrics)


# ------------------------------------------------------------------------------- the README section, followed

README = Path(__file__).resolve().parents[1] / "README.md"
ENTRIES = {"synth.py": "synth", "train.py": "train", "evaluate.py": "evaluate", "predict.py": "predict"}


def readme_commands() -> list[list[str]]:
    """The ``python <entry>.py ...`` lines of the README's "Adapt to your own domain" commands, split as a shell
    would split them."""
    import shlex

    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Adapt to your own domain") :]
    section = section[section.index("**The four commands**") :]
    block = section[section.index("```bash") + len("```bash") :]
    block = block[: block.index("```")]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("python ")]


def _run_entry(compose_cfg, entry: str, overrides: list[str], out: Path) -> dict:
    """Run one entry point's plain function in this process, as its ``@hydra.main`` would, and read its summary."""
    cfg = compose_cfg(overrides, config_name=ENTRIES[entry], output_dir=out)
    if entry == "synth.py":
        from mllm_da.orchestration.synth import synthesize as run
    elif entry == "train.py":
        from mllm_da.orchestration.train import train as run
    elif entry == "evaluate.py":
        from mllm_da.orchestration.evaluate import evaluate as run
    else:
        from mllm_da.orchestration.evaluate import predict as run
    run(cfg)
    return json.loads((out / "summary.json").read_text())


def _follow_the_readme(compose_cfg, tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "mine"
    FORMATS[fmt](root)
    _benchmark(root)
    some_image = next(p for p in sorted(root.rglob("*.png")))
    commands = readme_commands()
    assert [c[1] for c in commands] == ["synth.py", "train.py", "evaluate.py", "evaluate.py", "predict.py"]
    tiny = ",".join(f"{k}:{v}" for k, v in TEST_TINY.items())
    steps = 5
    train_run = tmp_path / "train_run"
    summaries = []
    for number, command in enumerate(commands):
        entry = command[1]
        overrides = []
        for arg in command[2:]:
            arg = arg.replace("DIR/images/cat.jpg", str(some_image)).replace("DIR", str(root))
            arg = arg.replace("logs/train/runs/<time>", str(train_run))
            if arg.startswith("trainer.max_steps="):
                arg = f"trainer.max_steps={steps}"  # the section's budget, cut for the test
            overrides.append(arg)
        if entry == "train.py":  # a smaller tiny model than the preset's, same code path
            overrides += [
                f"model.backbone.tiny={{{tiny}}}",
                "trainer.enable_progress_bar=false",
                "data.micro_batch_size=2",
                "data.global_batch_size=2",
            ]
        out = train_run if entry == "train.py" else tmp_path / f"{number}_{ENTRIES[entry]}"
        summaries.append((entry, out, _run_entry(compose_cfg, entry, overrides, out)))

    (_, synth_out, synth), (_, _, trained), (_, eval_out, evaluated), (_, _, blind), (_, predict_out, _) = summaries
    assert synth["status"] == "ok" and synth["metrics"]["records"] == len(CAPTIONS)
    assert trained["status"] == "ok" and trained["global_step"] == steps
    assert trained["data"]["read"]["image_caption_pairs"]["kept"] == len(CAPTIONS)
    assert trained["data"]["read"]["mixed"]["with_tasks"] == len(CAPTIONS)  # rule tasks for every caption
    assert (train_run / "export" / "config.json").is_file()
    for summary in (evaluated, blind):
        assert summary["status"] == "ok" and summary["benchmarks"] == ["custom_mc", "custom_vqa"]
    predictions = (eval_out / "predictions" / "custom_vqa.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    answers = [json.loads(line) for line in (predict_out / "predictions.jsonl").read_text().splitlines()]
    assert len(answers) == 1 and isinstance(answers[0]["prediction"], str)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_readme_section_runs_as_printed_on_every_format(compose_cfg, tmp_path: Path, fmt: str):
    _follow_the_readme(compose_cfg, tmp_path, fmt)
