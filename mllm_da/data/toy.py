"""The built-in toy domain: coloured shapes on a light grey canvas, with captions, rule tasks and a benchmark.

It lets the whole pipeline (mixing, training, evaluation) run offline on CPU with a tiny random model, so its
design follows what such a model can learn (docs/toy-learnability.md):

- the background is light grey (245 +- 5), so a processor normalising with mean 0.96 maps it to about 0 and only
  the shapes carry signal; shapes are saturated colours, drawn without anti-aliasing;
- 1-4 objects, one per quadrant, with the count uniform: counting is the image property a tiny model picks up
  first, so count questions are at least a quarter of the tasks;
- sizes differ by more than 2x (16 vs 36 px at 112 px) so that size is visible in 14 px patches.

Everything is deterministic given the seed. :func:`build_toy_domain` writes ShareGPT training files, the rule-task
baseline and AdaptLLM-style benchmark rows, and is a no-op while its manifest still matches its parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mllm_da.utils.io import atomic_write_json, atomic_write_jsonl

try:  # serialises concurrent builds (one per DDP rank) of the same folder; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BASE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 20),
}
COLOURS: tuple[str, ...] = tuple(BASE_RGB)
SIZES: tuple[str, ...] = ("small", "large")
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
MAX_OBJECTS = len(QUADRANTS)

BACKGROUND = 245
BACKGROUND_JITTER = 5
RGB_JITTER = 15
MIN_IMAGE_SIZE = 32  # below this a small shape is 3-4 px and no longer has a recognisable form
#: side lengths at the reference size of 112 px (scaled with the image), and their +- jitter
REFERENCE_SIZE = 112
SIDE = {"small": 16, "large": 36}
SIDE_JITTER = 2
MARGIN = 3  # px kept free inside each quadrant, so shapes never touch and the corners stay background

CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image.",
    "What is in the picture?",
    "Describe the shapes in the image.",
)
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
ANSWER_TYPES: tuple[str, ...] = ("OPEN", "CLOSED", "MC")
QUESTION_TYPES: tuple[str, ...] = ("count", "colour", "shape", "size", "position", "exist")
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
YES_NO: tuple[str, ...] = ("yes", "no")

#: bump when the generator's output changes, so that existing folders are rebuilt
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class ToyObject:
    """One filled shape; ``box`` is (x0, y0, x1, y1) with x1, y1 exclusive, and lies inside its quadrant."""

    shape: str
    colour: str
    size: str
    quadrant: str
    box: tuple[int, int, int, int]
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class ToyScene:
    """A square canvas with a uniform grey background and objects in canonical quadrant order."""

    image_size: int
    background: int
    objects: tuple[ToyObject, ...]

    @property
    def count(self) -> int:
        return len(self.objects)


def quadrant_box(quadrant: str, image_size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a quadrant, right/bottom exclusive (PIL crop convention)."""
    if quadrant not in QUADRANTS:
        raise ValueError(f"unknown quadrant {quadrant!r}; expected one of {QUADRANTS}")
    half = image_size // 2
    vertical, horizontal = quadrant.split()
    left, right = (0, half) if horizontal == "left" else (half, image_size)
    top, bottom = (0, half) if vertical == "top" else (half, image_size)
    return left, top, right, bottom


def _scaled(value: int, image_size: int, minimum: int) -> int:
    return max(minimum, round(value * image_size / REFERENCE_SIZE))


def sample_scene(rng: random.Random, image_size: int = REFERENCE_SIZE) -> ToyScene:
    """Draw a scene: count uniform in 1-4, distinct quadrants, distinct (colour, shape) pairs."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    background = BACKGROUND + rng.randint(-BACKGROUND_JITTER, BACKGROUND_JITTER)
    count = rng.randint(1, MAX_OBJECTS)
    quadrants = sorted(rng.sample(QUADRANTS, count), key=QUADRANTS.index)
    pairs = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
    margin = _scaled(MARGIN, image_size, 1)
    jitter = _scaled(SIDE_JITTER, image_size, 0)
    objects = []
    for quadrant, (colour, shape) in zip(quadrants, pairs):
        size = rng.choice(SIZES)
        side = _scaled(SIDE[size], image_size, 2) + rng.randint(-jitter, jitter)
        left, top, right, bottom = quadrant_box(quadrant, image_size)
        x0 = rng.randint(left + margin, right - margin - side)
        y0 = rng.randint(top + margin, bottom - margin - side)
        rgb = tuple(min(255, max(0, v + rng.randint(-RGB_JITTER, RGB_JITTER))) for v in BASE_RGB[colour])
        objects.append(ToyObject(shape, colour, size, quadrant, (x0, y0, x0 + side, y0 + side), rgb))
    return ToyScene(image_size, background, tuple(objects))


def render_scene(scene: ToyScene) -> Image.Image:
    """Draw the scene without anti-aliasing: every pixel is the background or exactly one object's colour."""
    bg = scene.background
    image = Image.new("RGB", (scene.image_size, scene.image_size), (bg, bg, bg))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        right, bottom = x1 - 1, y1 - 1  # PIL's shape coordinates are inclusive
        if obj.shape == "circle":
            draw.ellipse((x0, y0, right, bottom), fill=obj.rgb)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, right, bottom), fill=obj.rgb)
        elif obj.shape == "triangle":
            draw.polygon([(x0, bottom), (right, bottom), ((x0 + right) // 2, y0)], fill=obj.rgb)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return image


# --------------------------------------------------------------------------------------------------- captions


def describe_scene(scene: ToyScene) -> str:
    """The caption: the count, then every object as size-colour-shape-position in canonical quadrant order."""
    phrases = [f"a {o.size} {o.colour} {o.shape} at the {o.quadrant}" for o in scene.objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    lead = "There is one shape" if scene.count == 1 else f"There are {COUNT_WORDS[scene.count]} shapes"
    return f"{lead}: {listed}."


def caption_instruction(rng: random.Random) -> str:
    """One of the captioning prompts, varied so that the model does not key on a single wording."""
    return rng.choice(CAPTION_INSTRUCTIONS)


# --------------------------------------------------------------------------------------------------- rule tasks


@dataclass(frozen=True)
class ToyTask:
    """One question about a scene. ``answer`` is a word or two (OPEN), yes/no (CLOSED) or a letter (MC)."""

    question: str
    answer: str
    question_type: str
    answer_type: str
    options: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {self.answer_type!r}")
        if self.question_type not in QUESTION_TYPES:
            raise ValueError(f"question_type must be one of {QUESTION_TYPES}, got {self.question_type!r}")
        if self.answer_type == "CLOSED" and self.answer not in YES_NO:
            raise ValueError(f"a CLOSED answer must be yes or no, got {self.answer!r}")
        if self.answer_type == "MC":
            if self.options is None or tuple(self.options) != LETTERS:
                raise ValueError(f"an MC task needs options keyed {LETTERS}, got {self.options!r}")
            if len(set(self.options.values())) != len(LETTERS):
                raise ValueError(f"MC options must be distinct, got {self.options!r}")
            if self.answer not in self.options:
                raise ValueError(f"an MC answer must be one of {LETTERS}, got {self.answer!r}")
        elif self.options is not None:
            raise ValueError(f"only MC tasks have options ({self.answer_type} task given {self.options!r})")

    @property
    def prompt(self) -> str:
        """What the user turn says: the question, plus the lettered options and instruction for MC."""
        if self.options is None:
            return self.question
        lines = [f"{letter}. {value}" for letter, value in self.options.items()]
        return "\n".join([self.question, *lines, MC_INSTRUCTION])

    @property
    def answer_text(self) -> str:
        """The answer in words (the option's value for MC), for checks that do not care about letters."""
        return self.options[self.answer] if self.options is not None else self.answer


Candidates = list[tuple[str, str]]  # (question, true answer in words)


def _count_open(scene: ToyScene) -> Candidates:
    return [("How many shapes are there?", COUNT_WORDS[scene.count])]


def _count_mc(scene: ToyScene) -> Candidates:
    return [("How many shapes are there?", str(scene.count))]


def _count_closed(scene: ToyScene) -> Candidates:
    out = []
    for k, word in COUNT_WORDS.items():
        question = "Is there one shape?" if k == 1 else f"Are there {word} shapes?"
        out.append((question, _yes_no(k == scene.count)))
    return out


def _exist_closed(scene: ToyScene) -> Candidates:
    """Positives are the objects; negatives are hard: they share a colour or a shape with some object."""
    pairs = {(o.colour, o.shape) for o in scene.objects}
    colours = {o.colour for o in scene.objects}
    shapes = {o.shape for o in scene.objects}
    out = [(f"Is there a {o.colour} {o.shape}?", "yes") for o in scene.objects]
    for colour in COLOURS:
        for shape in SHAPES:
            if (colour, shape) not in pairs and (colour in colours or shape in shapes):
                out.append((f"Is there a {colour} {shape}?", "no"))
    return out


def _size_closed(scene: ToyScene) -> Candidates:
    return [
        (f"Is the {o.colour} {o.shape} {size}?", _yes_no(o.size == size))
        for o in scene.objects
        for size in SIZES
    ]


def _position_closed(scene: ToyScene) -> Candidates:
    return [
        (f"Is the {o.colour} {o.shape} at the {quadrant}?", _yes_no(o.quadrant == quadrant))
        for o in scene.objects
        for quadrant in QUADRANTS
    ]


def _unique(scene: ToyScene, attribute: str) -> list[ToyObject]:
    """Objects whose ``attribute`` value no other object shares, so that naming it picks one object."""
    counts = Counter(getattr(o, attribute) for o in scene.objects)
    return [o for o in scene.objects if counts[getattr(o, attribute)] == 1]


def _colour_questions(scene: ToyScene) -> Candidates:
    out = [(f"What colour is the shape at the {o.quadrant}?", o.colour) for o in scene.objects]
    return out + [(f"What colour is the {o.shape}?", o.colour) for o in _unique(scene, "shape")]


def _shape_questions(scene: ToyScene) -> Candidates:
    out = [(f"What shape is at the {o.quadrant}?", o.shape) for o in scene.objects]
    return out + [(f"What shape is the {o.colour} object?", o.shape) for o in _unique(scene, "colour")]


def _position_questions(scene: ToyScene) -> Candidates:
    return [(f"Where is the {o.colour} {o.shape}?", o.quadrant) for o in scene.objects]


def _size_questions(scene: ToyScene) -> Candidates:
    return [(f"What size is the {o.colour} {o.shape}?", o.size) for o in scene.objects]


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _count_options(truth: str, rng: random.Random) -> list[str]:
    return [str(k) for k in COUNT_WORDS]  # in order: the answer letter then follows the (uniform) count


def _colour_options(truth: str, rng: random.Random) -> list[str]:
    values = [truth, *rng.sample([c for c in COLOURS if c != truth], len(LETTERS) - 1)]
    rng.shuffle(values)
    return values


def _position_options(truth: str, rng: random.Random) -> list[str]:
    values = list(QUADRANTS)
    rng.shuffle(values)
    return values


@dataclass(frozen=True)
class _Family:
    """A kind of question: how often it is drawn, its candidates for a scene, and (MC) how to make options."""

    question_type: str
    answer_type: str
    weight: float
    candidates: Callable[[ToyScene], Candidates]
    options: Callable[[str, random.Random], list[str]] | None = None


# Count is weighted up (about a third of the tasks): it is what a tiny model learns from the pixels first.
_FAMILIES: tuple[_Family, ...] = (
    _Family("count", "OPEN", 0.12, _count_open),
    _Family("count", "MC", 0.12, _count_mc, _count_options),
    _Family("count", "CLOSED", 0.14, _count_closed),
    _Family("exist", "CLOSED", 0.12, _exist_closed),
    _Family("size", "CLOSED", 0.06, _size_closed),
    _Family("position", "CLOSED", 0.06, _position_closed),
    _Family("colour", "OPEN", 0.06, _colour_questions),
    _Family("colour", "MC", 0.07, _colour_questions, _colour_options),
    _Family("shape", "OPEN", 0.06, _shape_questions),
    _Family("position", "OPEN", 0.05, _position_questions),
    _Family("position", "MC", 0.08, _position_questions, _position_options),
    _Family("size", "OPEN", 0.06, _size_questions),
)


def scene_questions(scene: ToyScene) -> list[tuple[str, str, str]]:
    """``(question, question type, truth in words)`` of every question the rules can ask of ``scene`` (an MC
    count's truth as its word), for judging synthesized questions against the scene."""
    out = []
    for family in _FAMILIES:
        for question, truth in family.candidates(scene):
            out.append((question, family.question_type, COUNT_WORDS[int(truth)] if truth.isdigit() else truth))
    return out


def rule_tasks(
    scene: ToyScene,
    rng: random.Random,
    n: int,
    answer_types: Collection[str] = ANSWER_TYPES,
    question_types: Collection[str] = QUESTION_TYPES,
) -> list[ToyTask]:
    """Up to ``n`` tasks with distinct questions, answered from the scene by rule (the "manual rules" baseline).

    A kind of question is drawn by weight; a yes/no kind flips a fair coin for the answer first, and is drawn
    only while it has questions with either answer left, so CLOSED answers are balanced. Fewer than ``n`` come
    back only when the scene runs out of such questions (e.g. MC only on a one-object scene).
    """
    unknown = set(answer_types) - set(ANSWER_TYPES)
    if unknown or not answer_types:
        raise ValueError(
            f"answer_types must be a non-empty subset of {ANSWER_TYPES}, got {sorted(answer_types)}"
        )
    unknown = set(question_types) - set(QUESTION_TYPES)
    if unknown or not question_types:
        raise ValueError(
            f"question_types must be a non-empty subset of {QUESTION_TYPES}, got {sorted(question_types)}"
        )
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    families = [f for f in _FAMILIES if f.answer_type in answer_types and f.question_type in question_types]
    pools = {f: f.candidates(scene) for f in families}
    used: set[str] = set()
    tasks: list[ToyTask] = []
    while len(tasks) < n:
        live = {f: [c for c in pools[f] if c[0] not in used] for f in families}
        live = {f: cands for f, cands in live.items() if _drawable(f, cands)}
        if not live:
            break
        family = rng.choices(list(live), weights=[f.weight for f in live])[0]
        candidates = live[family]
        if family.answer_type == "CLOSED":
            want = "yes" if rng.random() < 0.5 else "no"
            candidates = [c for c in candidates if c[1] == want]
        question, truth = rng.choice(candidates)
        used.add(question)
        tasks.append(_make_task(family, question, truth, rng))
    return tasks


def _drawable(family: _Family, candidates: Candidates) -> bool:
    """A yes/no kind stays in play only while both answers are left, so every CLOSED answer is a fair coin."""
    if family.answer_type == "CLOSED":
        return {truth for _, truth in candidates} == set(YES_NO)
    return bool(candidates)


def _make_task(family: _Family, question: str, truth: str, rng: random.Random) -> ToyTask:
    if family.options is None:
        return ToyTask(question, truth, family.question_type, family.answer_type)
    options = dict(zip(LETTERS, family.options(truth, rng)))
    answer = next(letter for letter, value in options.items() if value == truth)
    return ToyTask(question, answer, family.question_type, family.answer_type, options)


# --------------------------------------------------------------------------------------------------- writer


@dataclass(frozen=True)
class ToyDomainFiles:
    """Where a built toy domain lives; image paths inside the files are relative to ``root``."""

    root: Path
    images_dir: Path
    benchmark_images_dir: Path
    caption_pairs: Path
    rule_tasks: Path
    vqa_benchmark: Path
    mc_benchmark: Path
    manifest: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> ToyDomainFiles:
        root = Path(root)
        return cls(
            root=root,
            images_dir=root / "images",
            benchmark_images_dir=root / "benchmark" / "images",
            caption_pairs=root / "image_caption_pairs.json",
            rule_tasks=root / "rule_tasks.json",
            vqa_benchmark=root / "benchmark" / "toy_vqa.jsonl",
            mc_benchmark=root / "benchmark" / "toy_mc.jsonl",
            manifest=root / "manifest.json",
        )


def build_toy_domain(
    out_dir: str | os.PathLike,
    n_train: int = 4000,
    n_test: int = 200,
    tasks_per_image: int = 3,
    seed: int = 0,
    image_size: int = REFERENCE_SIZE,
) -> ToyDomainFiles:
    """Write the toy domain into ``out_dir``, or reuse it if its manifest matches these parameters.

    Files: ``images/train_*.png``, ``image_caption_pairs.json`` and ``rule_tasks.json`` (ShareGPT), and
    ``benchmark/images/test_*.png`` with ``benchmark/toy_vqa.jsonl`` (OPEN/CLOSED rows) and
    ``benchmark/toy_mc.jsonl`` (A-D rows). The manifest is written last, so an interrupted build is redone.
    """
    if n_train < 1 or n_test < 0 or tasks_per_image < 1:
        raise ValueError(
            f"need n_train >= 1, n_test >= 0, tasks_per_image >= 1 ({n_train}, {n_test}, {tasks_per_image})"
        )
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    params = {
        "n_train": n_train,
        "n_test": n_test,
        "tasks_per_image": tasks_per_image,
        "seed": seed,
        "image_size": image_size,
    }
    files = ToyDomainFiles.at(out_dir)
    with _locked(files.root):
        if _is_current(files, params):
            log.info("toy domain at %s is up to date", files.root)
            return files
        log.info("building toy domain at %s with %s", files.root, params)
        _write_domain(files, params)
    return files


def _expected_files(params: dict[str, int]) -> list[str]:
    """Every file the manifest vouches for, relative to the root, sorted."""
    names = [
        "image_caption_pairs.json",
        "rule_tasks.json",
        "benchmark/toy_vqa.jsonl",
        "benchmark/toy_mc.jsonl",
    ]
    names += [_train_image(i) for i in range(params["n_train"])]
    names += [_test_image(i) for i in range(params["n_test"])]
    return sorted(names)


def _train_image(i: int) -> str:
    return f"images/train_{i:06d}.png"


def _test_image(i: int) -> str:
    return f"benchmark/images/test_{i:06d}.png"


def _content_sha256(root: Path, names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + hashlib.sha256((root / name).read_bytes()).digest())
    return digest.hexdigest()


def _is_current(files: ToyDomainFiles, params: dict[str, int]) -> bool:
    """True when the manifest matches the parameters and every file it vouches for is there, unchanged."""
    try:
        manifest = json.loads(files.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("version") != FORMAT_VERSION or manifest.get("params") != params:
        return False
    names = _expected_files(params)
    if not all((files.root / name).is_file() for name in names):
        return False
    return manifest.get("content_sha256") == _content_sha256(files.root, names)


def _write_domain(files: ToyDomainFiles, params: dict[str, int]) -> None:
    files.manifest.unlink(missing_ok=True)
    for folder, pattern in ((files.images_dir, "train_*.png"), (files.benchmark_images_dir, "test_*.png")):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob(pattern), *folder.glob(".*.tmp")]:
            stale.unlink()

    seed, size, k = params["seed"], params["image_size"], params["tasks_per_image"]
    seen: set[ToyScene] = set()  # no image repeats, within or across splits

    scene_rng, text_rng = _rngs(seed, "train")
    captions: list[dict[str, Any]] = []
    task_records: list[dict[str, Any]] = []
    for i in range(params["n_train"]):
        scene = _fresh_scene(scene_rng, size, seen)
        image = _train_image(i)
        _write_png(files.root / image, render_scene(scene))
        record_id = f"toy-{i:06d}"
        instruction = caption_instruction(text_rng)
        captions.append(
            {
                "id": record_id,
                "messages": [
                    {"role": "user", "content": IMAGE_PLACEHOLDER + instruction},
                    {"role": "assistant", "content": describe_scene(scene)},
                ],
                "images": [image],
            }
        )
        tasks = rule_tasks(scene, text_rng, k)
        messages = []
        for j, task in enumerate(tasks):
            prompt = IMAGE_PLACEHOLDER + task.prompt if j == 0 else task.prompt
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": task.answer}]
        task_records.append(
            {
                "id": record_id,
                "messages": messages,
                "images": [image],
                "question_types": [t.question_type for t in tasks],
                "answer_types": [t.answer_type for t in tasks],
            }
        )

    scene_rng, text_rng = _rngs(seed, "test")
    vqa_rows: list[dict[str, Any]] = []
    mc_rows: list[dict[str, Any]] = []
    for i in range(params["n_test"]):
        scene = _fresh_scene(scene_rng, size, seen)
        image = _test_image(i)
        _write_png(files.root / image, render_scene(scene))
        for j, task in enumerate(rule_tasks(scene, text_rng, k, ("OPEN", "CLOSED"))):
            vqa_rows.append({"id": f"toy-vqa-{i:06d}-{j}", "image": image, **_row(task)})
        for j, task in enumerate(rule_tasks(scene, text_rng, k, ("MC",))):
            mc_rows.append(
                {"id": f"toy-mc-{i:06d}-{j}", "image": image, **_row(task), **(task.options or {})}
            )

    atomic_write_json(files.caption_pairs, captions)
    atomic_write_json(files.rule_tasks, task_records)
    atomic_write_jsonl(files.vqa_benchmark, vqa_rows)
    atomic_write_jsonl(files.mc_benchmark, mc_rows)

    def types(rows: list[dict[str, Any]]) -> dict[str, int]:
        return dict(sorted(Counter(r["question_type"] for r in rows).items()))

    manifest = {
        "version": FORMAT_VERSION,
        "params": params,
        "counts": {
            "train_images": params["n_train"],
            "test_images": params["n_test"],
            "caption_pairs": len(captions),
            "rule_tasks": sum(len(r["question_types"]) for r in task_records),
            "vqa_rows": len(vqa_rows),
            "mc_rows": len(mc_rows),
            "vqa_question_types": types(vqa_rows),
            "mc_question_types": types(mc_rows),
        },
        "content_sha256": _content_sha256(files.root, _expected_files(params)),
    }
    atomic_write_json(files.manifest, manifest)


def _rngs(seed: int, split: str) -> tuple[random.Random, random.Random]:
    """Separate streams for scenes and texts, so changing tasks_per_image leaves the images as they were."""
    prefix = f"mllm-da-toy/{seed}/{split}"
    return random.Random(f"{prefix}/scenes"), random.Random(f"{prefix}/texts")


def _fresh_scene(rng: random.Random, image_size: int, seen: set[ToyScene]) -> ToyScene:
    while True:
        scene = sample_scene(rng, image_size)
        if scene not in seen:
            seen.add(scene)
            return scene


def _row(task: ToyTask) -> dict[str, Any]:
    """The AdaptLLM benchmark fields of a task: full prompt as ``input``, gold answer (or letter) as ``label``."""
    return {
        "input": task.prompt,
        "label": task.answer,
        "answer_type": task.answer_type,
        "question_type": task.question_type,
    }


def _write_png(path: Path, image: Image.Image) -> None:
    """Encode in memory and rename into place, so a crash never leaves a truncated PNG behind."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root`` so that concurrent builders (DDP ranks) build it once."""
    root.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - non-POSIX
        yield
        return
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mllm_da.data.toy OUT_DIR [--n-train N ...]``: build (or reuse) a toy domain, print its files."""
    parser = argparse.ArgumentParser(prog="python -m mllm_da.data.toy", description=main.__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to write the toy domain into")
    parser.add_argument("--n-train", type=int, default=4000, help="training images")
    parser.add_argument("--n-test", type=int, default=200, help="held-out benchmark images")
    parser.add_argument(
        "--tasks-per-image", type=int, default=3, help="rule tasks and benchmark rows per image"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=REFERENCE_SIZE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = build_toy_domain(
        args.out_dir,
        n_train=args.n_train,
        n_test=args.n_test,
        tasks_per_image=args.tasks_per_image,
        seed=args.seed,
        image_size=args.image_size,
    )
    for field in fields(files):
        print(f"{field.name}: {getattr(files, field.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
