"""Tests for the built-in toy domain: scenes, captions, rule tasks, benchmark rows, the writer and its CLI.

Task answers are checked against an independent oracle that parses each question and recomputes the answer
from the scene, and the written files are checked against the pixels of the written PNGs, so a mismatch
between an image and its text cannot pass silently.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from mllm_da.toy import (
    BASE_RGB,
    CAPTION_INSTRUCTIONS,
    COLOURS,
    COUNT_WORDS,
    MC_INSTRUCTION,
    QUADRANTS,
    SHAPES,
    SIZES,
    ToyDomainFiles,
    ToyObject,
    ToyScene,
    ToyTask,
    build_toy_domain,
    caption_instruction,
    describe_scene,
    quadrant_box,
    render_scene,
    rule_tasks,
    sample_scene,
)
from mllm_da.toy.build import main

WORD_TO_COUNT = {w: k for k, w in COUNT_WORDS.items()}
N_TRAIN, N_TEST = 40, 12


def scenes(n: int, seed: int = 0, image_size: int = 112) -> list[ToyScene]:
    rng = random.Random(seed)
    return [sample_scene(rng, image_size) for _ in range(n)]


def oracle(scene: ToyScene, task: ToyTask) -> tuple[str, str]:
    """Recompute (answer in words, question_type) from the scene by parsing the bare question."""
    q = task.question
    by_pair = {(o.colour, o.shape): o for o in scene.objects}
    by_quadrant = {o.quadrant: o for o in scene.objects}

    def yes_no(flag: bool) -> str:
        return "yes" if flag else "no"

    if q == "How many shapes are there?":
        return (str(scene.count) if task.answer_type == "MC" else COUNT_WORDS[scene.count]), "count"
    if m := re.fullmatch(r"(?:Is|Are) there (\w+) shapes?\?", q):
        return yes_no(WORD_TO_COUNT[m[1]] == scene.count), "count"
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", q):
        colour, shape = m[1], m[2]
        if (colour, shape) not in by_pair:  # negatives must be hard: share colour or shape with an object
            assert any(o.colour == colour or o.shape == shape for o in scene.objects), q
        return yes_no((colour, shape) in by_pair), "exist"
    if m := re.fullmatch(r"Is the (\w+) (\w+) (small|large)\?", q):
        return yes_no(by_pair[m[1], m[2]].size == m[3]), "size"
    if m := re.fullmatch(r"Is the (\w+) (\w+) at the (.+)\?", q):
        assert m[3] in QUADRANTS
        return yes_no(by_pair[m[1], m[2]].quadrant == m[3]), "position"
    if m := re.fullmatch(r"What colour is the shape at the (.+)\?", q):
        return by_quadrant[m[1]].colour, "colour"
    if m := re.fullmatch(r"What colour is the (\w+)\?", q):
        matches = [o for o in scene.objects if o.shape == m[1]]
        assert len(matches) == 1, f"ambiguous: {q}"
        return matches[0].colour, "colour"
    if m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        matches = [o for o in scene.objects if o.colour == m[1]]
        assert len(matches) == 1, f"ambiguous: {q}"
        return matches[0].shape, "shape"
    if m := re.fullmatch(r"What shape is at the (.+)\?", q):
        return by_quadrant[m[1]].shape, "shape"
    if m := re.fullmatch(r"Where is the (\w+) (\w+)\?", q):
        return by_pair[m[1], m[2]].quadrant, "position"
    if m := re.fullmatch(r"What size is the (\w+) (\w+)\?", q):
        return by_pair[m[1], m[2]].size, "size"
    raise AssertionError(f"unrecognised question: {q!r}")


def pixel_count(path: Path) -> int:
    """Count objects straight from a PNG: a quadrant holds an object iff it has a non-background pixel."""
    image = Image.open(path).convert("RGB")
    bg = image.getpixel((0, 0))  # objects keep a margin inside their quadrant, so the corner is background
    count = 0
    for quadrant in QUADRANTS:
        crop = image.crop(quadrant_box(quadrant, image.width))
        colours = crop.getcolors(maxcolors=crop.width * crop.height)
        count += any(c != bg for _, c in colours)
    return count


# --------------------------------------------------------------------------------------------------- scenes


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), image_size=st.sampled_from([32, 64, 112, 224]))
def test_scene_invariants(seed: int, image_size: int) -> None:
    scene = sample_scene(random.Random(seed), image_size)
    assert 1 <= scene.count <= 4
    assert abs(scene.background - 245) <= 6
    quadrants = [o.quadrant for o in scene.objects]
    assert quadrants == sorted(set(quadrants), key=QUADRANTS.index)  # distinct, canonical order
    assert len({(o.colour, o.shape) for o in scene.objects}) == scene.count
    for obj in scene.objects:
        assert obj.shape in SHAPES and obj.colour in COLOURS and obj.size in SIZES
        assert all(abs(v - b) <= 15 for v, b in zip(obj.rgb, BASE_RGB[obj.colour]))
        left, top, right, bottom = quadrant_box(obj.quadrant, image_size)
        x0, y0, x1, y1 = obj.box
        assert left <= x0 < x1 <= right and top <= y0 < y1 <= bottom
        assert x1 - x0 == y1 - y0
        if image_size == 112:
            assert (x1 - x0) in (range(14, 19) if obj.size == "small" else range(34, 39))


def test_render_draws_only_inside_boxes() -> None:
    for scene in scenes(60, seed=1):
        image = render_scene(scene)
        assert image.size == (112, 112) and image.mode == "RGB"
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == obj.rgb
        masked = image.copy()
        draw = ImageDraw.Draw(masked)
        bg = scene.background
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(bg, bg, bg))
        assert masked.getextrema() == ((bg, bg),) * 3


def test_counts_are_uniform() -> None:
    counts = Counter(s.count for s in scenes(2000, seed=2))
    assert set(counts) == {1, 2, 3, 4}
    assert all(0.2 <= counts[k] / 2000 <= 0.3 for k in counts), counts


def test_same_rng_same_scene_and_different_seed_differs() -> None:
    assert scenes(20, seed=3) == scenes(20, seed=3)
    assert scenes(20, seed=3) != scenes(20, seed=4)


def test_too_small_image_is_rejected() -> None:
    with pytest.raises(ValueError):
        sample_scene(random.Random(0), 16)


# --------------------------------------------------------------------------------------------------- captions


def test_captions_name_count_and_every_object_in_order() -> None:
    for scene in scenes(300, seed=5):
        caption = describe_scene(scene)
        words = re.findall(r"[a-z]+", caption.lower())
        assert [w for w in words if w in WORD_TO_COUNT] == [COUNT_WORDS[scene.count]]
        lead = "There is one shape: " if scene.count == 1 else f"There are {COUNT_WORDS[scene.count]} shapes: "
        assert caption.startswith(lead) and caption.endswith(".")
        positions = [caption.index(f"a {o.size} {o.colour} {o.shape} at the {o.quadrant}") for o in scene.objects]
        assert positions == sorted(positions)


def test_caption_example_format() -> None:
    scene = ToyScene(
        112,
        245,
        (
            _obj("square", "purple", "large", "top left"),
            _obj("circle", "blue", "small", "bottom right"),
        ),
    )
    assert describe_scene(scene) == (
        "There are two shapes: a large purple square at the top left and a small blue circle at the bottom right."
    )


def _obj(shape: str, colour: str, size: str, quadrant: str) -> ToyObject:
    left, top, _, _ = quadrant_box(quadrant, 112)
    d = 16 if size == "small" else 36
    return ToyObject(shape, colour, size, quadrant, (left + 4, top + 4, left + 4 + d, top + 4 + d), BASE_RGB[colour])


def test_caption_instructions_vary_with_rng() -> None:
    rng = random.Random(0)
    seen = {caption_instruction(rng) for _ in range(200)}
    assert seen == set(CAPTION_INSTRUCTIONS) and len(seen) >= 3


# --------------------------------------------------------------------------------------------------- rule tasks


@pytest.fixture(scope="module")
def task_sample() -> list[tuple[ToyScene, list[ToyTask]]]:
    rng = random.Random(7)
    return [(scene, rule_tasks(scene, rng, 4)) for scene in scenes(500, seed=6)]


def test_rule_task_answers_match_scene(task_sample) -> None:
    for scene, tasks in task_sample:
        assert len(tasks) == 4
        assert len({t.prompt for t in tasks}) == 4  # distinct questions per image
        for task in tasks:
            truth, qtype = oracle(scene, task)
            assert task.question_type == qtype, task
            assert task.answer_text == truth, (describe_scene(scene), task)


def test_balanced_types_draw_every_question_type_about_equally_often() -> None:
    from collections import Counter

    from mllm_da.toy.vocabulary import QUESTION_TYPES

    def shares(balanced: bool) -> dict[str, float]:
        rng = random.Random(3)
        kinds = Counter(
            t.question_type for s in scenes(600, seed=4) for t in rule_tasks(s, rng, 1, balanced_types=balanced)
        )
        return {kind: kinds[kind] / sum(kinds.values()) for kind in QUESTION_TYPES}

    by_rules, balanced = shares(False), shares(True)
    assert by_rules["count"] > 0.3  # the rules favour counting
    assert all(abs(share - 1 / len(QUESTION_TYPES)) < 0.05 for share in balanced.values()), balanced


def test_rule_task_formats(task_sample) -> None:
    for _, tasks in task_sample:
        for task in tasks:
            if task.answer_type == "CLOSED":
                assert task.answer in ("yes", "no")
            elif task.answer_type == "OPEN":
                assert 1 <= len(task.answer.split()) <= 2 and task.prompt == task.question
            else:
                assert task.options is not None and list(task.options) == ["A", "B", "C", "D"]
                assert task.answer in task.options and len(set(task.options.values())) == 4
                lines = task.prompt.split("\n")
                assert lines[0] == task.question and lines[-1] == MC_INSTRUCTION
                assert lines[1:5] == [f"{k}. {v}" for k, v in task.options.items()]


def test_kinds_and_mc_example(task_sample) -> None:
    tasks = [t for _, ts in task_sample for t in ts]
    assert {t.answer_type for t in tasks} == {"OPEN", "CLOSED", "MC"}
    assert {t.question_type for t in tasks} == {"count", "colour", "shape", "size", "position", "exist"}
    count_mc = next(t for t in tasks if t.answer_type == "MC" and t.question_type == "count")
    assert count_mc.prompt == (
        "How many shapes are there?\nA. 1\nB. 2\nC. 3\nD. 4\n"
        "Answer with the option's letter from the given choices directly."
    )
    # Colour and position options are shuffled: the right letter is not always the same.
    for qtype in ("colour", "position"):
        letters = Counter(t.answer for t in tasks if t.answer_type == "MC" and t.question_type == qtype)
        assert len(letters) == 4 and min(letters.values()) > 0.1 * sum(letters.values()), (qtype, letters)


def test_yes_no_balance(task_sample) -> None:
    closed = [t for _, ts in task_sample for t in ts if t.answer_type == "CLOSED"]
    assert len(closed) > 300
    assert 0.4 <= sum(t.answer == "yes" for t in closed) / len(closed) <= 0.6
    exist = [t for t in closed if t.question_type == "exist"]
    assert 0.35 <= sum(t.answer == "yes" for t in exist) / len(exist) <= 0.65


def test_count_share_and_uniform_answers(task_sample) -> None:
    tasks = [t for _, ts in task_sample for t in ts]
    count_tasks = [t for t in tasks if t.question_type == "count"]
    assert len(count_tasks) / len(tasks) >= 0.25
    opened = Counter(t.answer for t in count_tasks if t.answer_type == "OPEN")
    lettered = Counter(t.answer for t in count_tasks if t.answer_type == "MC")
    for counter, keys in ((opened, ["one", "two", "three", "four"]), (lettered, ["A", "B", "C", "D"])):
        total = sum(counter.values())
        assert sorted(counter) == sorted(keys)
        assert all(0.15 <= counter[k] / total <= 0.35 for k in keys), counter


def test_answer_type_filter_and_validation() -> None:
    scene = scenes(1, seed=8)[0]
    assert {t.answer_type for t in rule_tasks(scene, random.Random(0), 6, {"MC"})} == {"MC"}
    assert rule_tasks(scene, random.Random(0), 0) == []
    with pytest.raises(ValueError):
        rule_tasks(scene, random.Random(0), 2, {"NOPE"})
    counts = rule_tasks(scene, random.Random(0), 6, {"OPEN", "CLOSED"}, {"count"})
    assert counts and {(t.question_type, t.answer_type) for t in counts} <= {("count", "OPEN"), ("count", "CLOSED")}
    with pytest.raises(ValueError, match="question_types"):
        rule_tasks(scene, random.Random(0), 2, question_types={"weight"})
    with pytest.raises(ValueError):
        ToyTask("Is there a red circle?", "maybe", "exist", "CLOSED")
    with pytest.raises(ValueError):
        ToyTask("q", "E", "count", "MC", {"A": "1", "B": "2", "C": "3", "D": "4"})


# --------------------------------------------------------------------------------------------------- writer


def _build(root: Path, **overrides) -> ToyDomainFiles:
    params = {"n_train": N_TRAIN, "n_test": N_TEST, "tasks_per_image": 3, "seed": 0, "image_size": 112}
    params.update(overrides)
    return build_toy_domain(root, **params)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> ToyDomainFiles:
    return _build(tmp_path_factory.mktemp("toy"))


def _load(files: ToyDomainFiles) -> dict[str, list[dict]]:
    def jsonl(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    return {
        "captions": json.loads(files.caption_pairs.read_text()),
        "tasks": json.loads(files.rule_tasks.read_text()),
        "vqa": jsonl(files.vqa_benchmark),
        "mc": jsonl(files.mc_benchmark),
    }


def test_layout_and_manifest(built: ToyDomainFiles) -> None:
    root = built.root
    assert sorted(p.name for p in built.images_dir.iterdir()) == [f"train_{i:06d}.png" for i in range(N_TRAIN)]
    assert sorted(p.name for p in built.benchmark_images_dir.iterdir()) == [f"test_{i:06d}.png" for i in range(N_TEST)]
    assert built.vqa_benchmark == root / "benchmark" / "toy_vqa.jsonl"
    assert built.mc_benchmark == root / "benchmark" / "toy_mc.jsonl"
    manifest = json.loads(built.manifest.read_text())
    assert manifest["params"] == {
        "n_train": N_TRAIN,
        "n_test": N_TEST,
        "tasks_per_image": 3,
        "seed": 0,
        "image_size": 112,
    }
    assert manifest["counts"]["train_images"] == N_TRAIN and manifest["counts"]["test_images"] == N_TEST
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["content_sha256"])
    with Image.open(built.images_dir / "train_000000.png") as image:
        assert image.size == (112, 112) and image.mode == "RGB"


def test_training_records(built: ToyDomainFiles) -> None:
    data = _load(built)
    assert len(data["captions"]) == len(data["tasks"]) == N_TRAIN
    for i, (cap, rec) in enumerate(zip(data["captions"], data["tasks"])):
        assert cap["id"] == rec["id"] == f"toy-{i:06d}"
        assert cap["images"] == rec["images"] == [f"images/train_{i:06d}.png"]
        assert (built.root / cap["images"][0]).is_file()
        user, assistant = cap["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"].removeprefix("<image>") in CAPTION_INSTRUCTIONS
        # The caption's count word agrees with the pixels of its image.
        count_word = re.match(r"There (?:is|are) (\w+) shape", assistant["content"])[1]
        assert WORD_TO_COUNT[count_word] == pixel_count(built.root / cap["images"][0])
        for record in (cap, rec):
            contents = [m["content"] for m in record["messages"]]
            assert sum(c.count("<image>") for c in contents) == 1 and contents[0].startswith("<image>")
            assert [m["role"] for m in record["messages"]] == ["user", "assistant"] * (len(contents) // 2)
        assert len(rec["messages"]) == 6 and len(rec["question_types"]) == 3


def test_benchmark_rows(built: ToyDomainFiles) -> None:
    data = _load(built)
    assert len(data["vqa"]) == len(data["mc"]) == 3 * N_TEST
    for name in ("vqa", "mc"):
        ids = [row["id"] for row in data[name]]
        assert len(set(ids)) == len(ids) and all(isinstance(i, str) for i in ids)
    for row in data["vqa"]:
        assert {"id", "image", "input", "label", "answer_type", "question_type"} <= set(row)
        assert row["answer_type"] in ("OPEN", "CLOSED")
        if row["answer_type"] == "CLOSED":
            assert row["label"] in ("yes", "no")
    for row in data["mc"]:
        assert {"id", "image", "input", "label", "question_type", "A", "B", "C", "D"} <= set(row)
        assert row["label"] in "ABCD" and len(row["label"]) == 1
        assert row["input"].endswith(MC_INSTRUCTION) and f"\n{row['label']}. {row[row['label']]}\n" in row["input"]
    # Count labels agree with the pixels of the held-out image.
    for row in data["vqa"] + data["mc"]:
        assert row["image"].startswith("benchmark/images/test_") and (built.root / row["image"]).is_file()
        if row["input"].startswith("How many shapes are there?"):
            truth = pixel_count(built.root / row["image"])
            answer = row[row["label"]] if row["answer_type"] == "MC" else str(WORD_TO_COUNT[row["label"]])
            assert answer == str(truth)


def test_no_image_shared_between_train_and_test(built: ToyDomainFiles) -> None:
    def digests(folder: Path) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}

    train, test = digests(built.images_dir), digests(built.benchmark_images_dir)
    assert len(train) == N_TRAIN and len(test) == N_TEST and not train & test


def test_build_is_deterministic(built: ToyDomainFiles, tmp_path: Path) -> None:
    again = _build(tmp_path / "same")
    other = _build(tmp_path / "other", seed=1)
    names = [
        "image_caption_pairs.json",
        "rule_tasks.json",
        "benchmark/toy_vqa.jsonl",
        "benchmark/toy_mc.jsonl",
    ]
    names += ["manifest.json", "images/train_000007.png", "benchmark/images/test_000003.png"]
    for name in names:
        assert (built.root / name).read_bytes() == (again.root / name).read_bytes(), name
    for name in names[:4] + names[5:]:
        assert (built.root / name).read_bytes() != (other.root / name).read_bytes(), name


def test_cache_hit_and_rebuild(tmp_path: Path) -> None:
    files = _build(tmp_path, n_train=10, n_test=4)
    watched = [files.manifest, files.caption_pairs, files.images_dir / "train_000003.png"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert _build(tmp_path, n_train=10, n_test=4) == files
    assert [p.stat().st_mtime_ns for p in watched] == before

    # A missing file invalidates the cache.
    (files.images_dir / "train_000009.png").unlink()
    _build(tmp_path, n_train=10, n_test=4)
    assert (files.images_dir / "train_000009.png").is_file()

    # Different parameters rebuild, and a smaller build leaves no stale images behind.
    _build(tmp_path, n_train=6, n_test=4, tasks_per_image=2)
    manifest = json.loads(files.manifest.read_text())
    assert manifest["params"]["n_train"] == 6 and manifest["params"]["tasks_per_image"] == 2
    assert len(list(files.images_dir.glob("*.png"))) == 6
    assert all(len(r["question_types"]) == 2 for r in json.loads(files.rule_tasks.read_text()))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main([str(out), "--n-train", "5", "--n-test", "3", "--tasks-per-image", "2", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "image_caption_pairs.json") in printed and str(out / "benchmark" / "toy_mc.jsonl") in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"] == {
        "n_train": 5,
        "n_test": 3,
        "tasks_per_image": 2,
        "seed": 4,
        "image_size": 112,
    }
