"""Toy seed images for tuning a synthesizer: scenes drawn apart from the domain's own (as VisionFLAN is apart from
a target domain), each with its caption and rule tasks answered both precisely and with an explanation.

The seed data format (hints, conversations, blank images, splits) is the synthesis layer's
(:mod:`mllm_da.synthesis.seed`); this module only draws what a toy seed example holds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mllm_da.toy.images import render_scene, write_png
from mllm_da.toy.scene import REFERENCE_SIZE, describe_scene, sample_scene
from mllm_da.toy.tasks import ToyTask, informative_answer, rule_tasks
from mllm_da.toy.vocabulary import ANSWER_TYPES, QUESTION_TYPES


@dataclass(frozen=True)
class ToySeedImage:
    """One drawn seed image: its caption, and each rule task with its rule-written informative answer."""

    id: str
    image: Path
    caption: str
    answered: tuple[tuple[ToyTask, str], ...]
    task_name: str
    index: int


def toy_seed_images(
    folder: Path,
    n_images: int,
    questions_per_image: int = 3,
    seed: int = 0,
    image_size: int = REFERENCE_SIZE,
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
    balanced_types: bool = False,
) -> list[ToySeedImage]:
    """Draw ``n_images`` toy scenes into ``folder/images`` (an image already there is kept) with their tasks.

    ``question_types`` / ``answer_types`` (None: all) narrow the kinds of question asked. A tiny synthesizer decodes
    greedily, so it writes the seed set's most common question shape for every image; narrowing the seed set picks
    which shape that is (the toy demo asks for counts, what a tiny model learns from pixels first).
    ``balanced_types`` draws every question type equally often (:func:`~mllm_da.toy.tasks.rule_tasks`). The task name
    (for the per-task split) is the first task's kind, e.g. ``count_open``.
    """
    if n_images < 1 or questions_per_image < 1:
        raise ValueError(f"need n_images >= 1 and questions_per_image >= 1, got {n_images}, {questions_per_image}")
    scene_rng = random.Random(f"mllm-da-seed/{seed}/scenes")
    text_rng = random.Random(f"mllm-da-seed/{seed}/texts")
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    drawn = []
    for i in range(n_images):
        scene = sample_scene(scene_rng, image_size)
        path = images / f"seed_{i:06d}.png"
        if not path.exists():
            write_png(path, render_scene(scene))
        tasks = rule_tasks(
            scene,
            text_rng,
            questions_per_image,
            answer_types or ANSWER_TYPES,
            question_types or QUESTION_TYPES,
            balanced_types,
        )
        answered = tuple((task, informative_answer(scene, task, text_rng)) for task in tasks)
        task_name = f"{tasks[0].question_type}_{tasks[0].answer_type}".lower()
        drawn.append(ToySeedImage(f"seed-{i:06d}", path, describe_scene(scene), answered, task_name, i))
    return drawn
