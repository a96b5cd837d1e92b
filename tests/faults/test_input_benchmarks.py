"""Bad input in user benchmark files: a JSONL file, a JSON list, a folder with a split subfolder, and a folder
of parquet files with embedded images (the AdaptLLM layout).

Each case writes valid rows mixed with rows carrying one fault and loads them with :func:`load_benchmark` under
the drawn ``bad_rows`` policy: a valid row (odd image modes and sizes included) is kept and its image decodes to
RGB; a bad row is skipped, counted under its reason in ``Benchmark.skipped`` and written to the rejects file
(``skip``) or stops the load with :class:`BenchmarkRowError` naming source, row and field (a JSONL line that does
not parse: :class:`BenchmarkError` naming ``file:line``) (``fail``). Rows are never dropped silently.
"""

from __future__ import annotations

import io
import itertools
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from mllm_da.evaluation.benchmarks import (
    ROW_REASONS,
    BenchmarkError,
    BenchmarkRowError,
    BenchmarkSpec,
    load_benchmark,
)

from ._input_helpers import (
    IMAGE_CASE_NAMES,
    LINE_CASES,
    TEXT_CASES,
    ImageCase,
    assert_names,
    bomb_png_header,
    make_image_pool,
    outcome,
)

KIND = "benchmark file"
METRICS = ("vqa_open_closed", "multiple_choice")
_names = itertools.count()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ImageCase]]:
    return make_image_pool(tmp_path_factory.mktemp("bench"))


def valid_row(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "id": f"q{i}",
        "image": rng.choice(["rgb.png", "cmyk.jpg", "sixteen_bit.png", "animated.gif"]),
        "input": rng.choice(["Which colour is the square?", "Is there a circle?"]),
        "label": "A",
        "answer_type": "CLOSED",
        "A": "red",
        "B": "blue",
        "question_type": "colour",
    }


#: fault -> (row change or a raw JSONL line, {metric: None or (reason, field)}); ``*`` stands for every metric
Expect = dict[str, tuple[str, str] | None]
FAULTS: dict[str, tuple[Any, Expect]] = {"valid row": (lambda row, cases: row, {"*": None})}
LINE_ONLY: set[str] = set()


def _image(name: str):
    return lambda row, cases: {**row, "image": cases[name].path}


def _set(key: str, value: Any):
    return lambda row, cases: {**row, key: value}


def _drop(key: str):
    return lambda row, cases: {k: v for k, v in row.items() if k != key}


def expected(fault: str, metric: str, cases: dict[str, ImageCase]) -> tuple[str, str] | None:
    if fault.startswith("image ") and fault in cases:
        reason = cases[fault].bench
        return None if reason is None else (reason, "image")
    table = FAULTS[fault][1]
    return table.get(metric, table.get("*"))


for _name in IMAGE_CASE_NAMES:
    FAULTS[_name] = (_image(_name), {})
for _name, (_text, _valid) in TEXT_CASES.items():
    _reason = None if _valid else ("not_utf8" if "\ud800" in _text else "empty_prompt")
    FAULTS[f"prompt {_name}"] = (_set("input", _text), {"*": None if _reason is None else (_reason, "input")})
for _name, (_line, _reason) in LINE_CASES.items():
    FAULTS[_name] = (_line, {"*": (_reason, "$")})
    if _reason != "not_object":
        LINE_ONLY.add(_name)
FAULTS.update(
    {
        "image null": (_set("image", None), {"*": ("missing_image", "image")}),
        "image a number": (_set("image", 5), {"*": ("missing_image", "image")}),
        "image list of two": (_set("image", ["rgb.png", "cmyk.jpg"]), {"*": ("missing_image", "image")}),
        "image as {path: ...}": (_set("image", {"bytes": None, "path": "rgb.png"}), {"*": None}),
        "image as empty {bytes, path}": (
            _set("image", {"bytes": None, "path": None}),
            {"*": ("missing_image", "image")},
        ),
        "image path lone surrogate": (_set("image", "a\ud800.png"), {"*": ("not_utf8", "image")}),
        "prompt missing": (_drop("input"), {"*": ("missing_field", "input")}),
        "prompt a number": (_set("input", 3), {"*": ("wrong_type", "input")}),
        "prompt a list": (_set("input", ["Q?"]), {"*": ("wrong_type", "input")}),
        "label missing": (_drop("label"), {"*": ("missing_field", "label")}),
        "label an object": (_set("label", {"a": 1}), {"*": ("wrong_type", "label")}),
        "label a float": (_set("label", 0.5), {"*": ("wrong_type", "label")}),
        "label a boolean": (_set("label", True), {"*": ("wrong_type", "label")}),
        "label lone surrogate": (_set("label", "\udcff"), {"*": ("not_utf8", "label")}),
        "label not an option": (_set("label", "E"), {"*": None, "multiple_choice": ("unknown_label", "label")}),
        "answer_type missing": (_drop("answer_type"), {"*": None, "vqa_open_closed": ("missing_field", "answer_type")}),
        "answer_type lower case": (
            _set("answer_type", "closed"),
            {"*": None, "vqa_open_closed": ("bad_answer_type", "answer_type")},
        ),
        "answer_type a list": (
            _set("answer_type", ["OPEN"]),
            {"*": None, "vqa_open_closed": ("bad_answer_type", "answer_type")},
        ),
        "option A missing": (_drop("A"), {"*": None, "multiple_choice": ("missing_field", "A")}),
        "option A an object": (_set("A", {"text": "red"}), {"*": None, "multiple_choice": ("wrong_type", "A")}),
        "group field lone surrogate": (_set("question_type", "col\ud800our"), {"*": ("not_utf8", "question_type")}),
        "row not an object": (lambda row, cases: ["not", "a", "row"], {"*": ("not_object", "$")}),
        "extra unknown fields": (lambda row, cases: {**row, "extra": {"deep": [1, 2]}, "ünïcode key": 1}, {"*": None}),
    }
)


def _write(path: Path, rows: list[Any], as_jsonl: bool) -> None:
    if as_jsonl:
        path.write_bytes(
            b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)
        )
    else:
        path.write_text(json.dumps([json.loads(row) if isinstance(row, bytes) else row for row in rows]))


def run_case(
    pool: tuple[Path, dict[str, ImageCase]],
    tally: Any,
    fault: str,
    rng: random.Random,
    n_valid: int,
    n_bad: int,
    layout: str,
    metric: str,
    policy: str,
) -> None:
    root, cases = pool
    if fault in LINE_ONLY and layout == "json":
        layout = "jsonl"
    kinds = [True] * n_valid + [False] * n_bad
    rng.shuffle(kinds)
    change = FAULTS[fault][0]
    rows = [
        valid_row(i, rng) if valid else (change if isinstance(change, bytes) else change(valid_row(i, rng), cases))
        for i, valid in enumerate(kinds)
    ]
    expect = [None if valid else expected(fault, metric, cases) for valid in kinds]
    folder = root.parent / f"case{next(_names)}"
    if layout == "folder":  # <folder>/test/rows.jsonl: the split's folder holds the data file
        (folder / "test").mkdir(parents=True)
        path, source = folder / "test" / "rows.jsonl", folder
    else:
        folder.mkdir()
        path = source = folder / f"rows.{layout}"
    _write(path, rows, layout != "json")
    spec = BenchmarkSpec(name="user", metric=metric, source=str(source), image_root=str(root), bad_rows=policy)
    rejects = folder / "rejects.jsonl"
    bad = [(i, b) for i, b in enumerate(expect) if b is not None]
    if policy == "fail" and bad:
        index, (key, field) = bad[0]
        if fault in LINE_ONLY:
            with pytest.raises(BenchmarkError, match=key) as info:
                load_benchmark(spec, rejects_path=rejects)
            assert f"{path}:{index + 1}: " in str(info.value)
        else:
            with pytest.raises(BenchmarkRowError) as info:
                load_benchmark(spec, rejects_path=rejects)
            assert (info.value.reason, info.value.field, info.value.index) == (key, field, index), str(info.value)
            assert_names(info.value, path, f"row {index + 1}:", field)  # rows counted from 1
        assert [json.loads(r)["reason_key"] for r in rejects.read_text().splitlines()] == [key]
    else:
        bench = load_benchmark(spec, rejects_path=rejects)
        assert bench.read == len(rows) == len(bench.rows) + sum(bench.skipped.values())
        assert bench.skipped == dict(Counter(b[0] for _, b in bad))
        assert set(bench.skipped) <= set(ROW_REASONS)
        assert [r.index for r in bench.rows] == [i for i, b in enumerate(expect) if b is None]
        lines = [json.loads(r) for r in rejects.read_text().splitlines()]
        assert [(r["row"], r["reason_key"], r["field"]) for r in lines] == [(i, *b) for i, b in bad]
        for row in bench.rows:
            image = bench.image(row.index)
            assert image.mode == "RGB" and bench.image_size(row.index) == image.size
    tally.record(KIND, fault, outcome(bool(bad), policy))


@given(
    fault=st.sampled_from(sorted(FAULTS)),
    rng=st.randoms(use_true_random=False),
    n_valid=st.integers(1, 3),
    n_bad=st.integers(1, 3),
    layout=st.sampled_from(["jsonl", "json", "folder"]),
    metric=st.sampled_from(METRICS),
    policy=st.sampled_from(["skip", "fail"]),
)
def test_benchmark_file_faults(pool, fault_tally, fault, rng, n_valid, n_bad, layout, metric, policy) -> None:
    run_case(pool, fault_tally, fault, rng, n_valid, n_bad, layout, metric, policy)


@pytest.mark.parametrize("policy", ["skip", "fail"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_benchmark_file_each_fault(pool, fault_tally, fault: str, policy: str) -> None:
    metric = "multiple_choice" if fault.startswith(("option", "label not")) else "vqa_open_closed"
    run_case(pool, fault_tally, fault, random.Random(fault), 1, 1, "jsonl", metric, policy)


def test_fault_catalogue_covers_every_image_case(pool) -> None:
    _, cases = pool
    assert set(cases) <= set(FAULTS)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("malformed", b'[{"input": ', r"malformed JSON \(.* at line 1\)"),
        ("not_utf8", b'[{"input": "\xff"}]', "not valid UTF-8"),
        ("deep", b"[" * 100_000, "malformed JSON"),
        ("huge_int", b"[" + b"1" * 5000 + b"]", "malformed JSON"),
        ("object", b'{"input": "Q"}', "must be a list of row objects, got dict"),
    ],
)
def test_json_benchmark_that_does_not_parse_names_the_file(
    tmp_path: Path, fault_tally, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    for policy in ("skip", "fail"):
        with pytest.raises(BenchmarkError, match=message) as info:
            load_benchmark(BenchmarkSpec(name="user", metric="rouge_l", source=str(path), bad_rows=policy))
        assert str(path) in str(info.value)
    fault_tally.record(KIND, f"file .json {name}", "error names file/line/field")


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_parquet_folder_with_embedded_images(tmp_path: Path, fault_tally) -> None:
    """The AdaptLLM layout: ``<folder>/<split>/*.parquet`` with images embedded as bytes."""
    import datasets

    good = _png(Image.new("RGB", (6, 4), (10, 20, 30)))
    rng = random.Random(0)
    noise = _png(Image.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3))))
    images = {
        "embedded RGB": (good, None),
        "embedded CMYK JPEG": (_png(Image.new("CMYK", (3, 3), (0, 80, 0, 0)), "JPEG"), None),
        "embedded 16-bit PNG": (_png(Image.new("I;16", (3, 3), 1000)), None),
        "embedded palette with transparency": (None, None),
        "embedded truncated": (noise[: len(noise) // 2], "bad_image"),
        "embedded decompression bomb header": (bomb_png_header(50_000, 50_000), "bad_image"),
        "embedded not an image": (b"GIF89a but not really", "bad_image"),
        "embedded empty bytes": (b"", "missing_image"),
        "embedded null": (None, "missing_image"),
    }
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    images["embedded palette with transparency"] = (buffer.getvalue(), None)
    names = list(images)
    column = [{"bytes": images[n][0], "path": None} if images[n][0] is not None else None for n in names]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "input": datasets.Value("string"),
            "label": datasets.Value("string"),
            "answer_type": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": column,
            "input": ["What is it?"] * len(names),
            "label": ["x"] * len(names),
            "answer_type": ["OPEN"] * len(names),
        },
        features=features,
    )
    (tmp_path / "bench" / "test").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "bench" / "test" / "0000.parquet"))
    spec = dict(name="parquet", metric="vqa_open_closed", source=str(tmp_path / "bench"))
    bench = load_benchmark(
        BenchmarkSpec(**spec, bad_rows="skip"), cache_dir=tmp_path / "cache", rejects_path=tmp_path / "rejects.jsonl"
    )
    kept = [i for i, n in enumerate(names) if images[n][1] is None]
    assert [r.index for r in bench.rows] == kept
    assert bench.skipped == dict(Counter(images[n][1] for n in names if images[n][1]))
    assert all(bench.image(i).mode == "RGB" for i in kept)
    rows = [json.loads(r) for r in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason_key"]) for r in rows] == [
        (i, images[n][1]) for i, n in enumerate(names) if images[n][1]
    ]
    first_bad = next(i for i, n in enumerate(names) if images[n][1])
    with pytest.raises(BenchmarkRowError) as info:
        load_benchmark(BenchmarkSpec(**spec, bad_rows="fail"), cache_dir=tmp_path / "cache")
    assert_names(info.value, tmp_path / "bench" / "test", f"row {first_bad + 1}:", "image")
    for n in names:
        fault_tally.record(KIND, f"parquet {n}", outcome(images[n][1] is not None, "skip"))
        if images[n][1] is not None and n == names[first_bad]:
            fault_tally.record(KIND, f"parquet {n}", outcome(True, "fail"))
