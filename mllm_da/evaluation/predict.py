"""Answer questions about images: ``predict.py``'s body.

A question goes through exactly what :mod:`mllm_da.evaluation.runner` does with a benchmark row: the user turn of
:func:`~mllm_da.evaluation.generation.question_turns` (image first, then the question), the backbone's own chat
format and image tensors, and the same generator (batched, left-padded, greedy, cut at the format's stop tokens).
So a question asked here gets the answer ``evaluate.py`` writes for a benchmark row with that image and prompt
(with the same ``batch_size``, the batches hold the same prompts).

``predict(cfg)`` loads the ``model=`` preset (or a ``checkpoint=`` folder, as ``evaluate.py`` takes it), reads the
questions from ``image``/``images`` + ``question``/``questions`` or an ``input`` JSONL file, writes
``<run>/predictions.jsonl`` and ``summary.json`` and prints the answers.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig
from PIL import Image

from mllm_da.backbones.base import Backbone
from mllm_da.data.records import BadImageError, load_image
from mllm_da.evaluation.generation import (
    GenerationRequest,
    GenerationStats,
    GeneratorOptions,
    make_generator,
    question_turns,
)
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """One image and the question asked about it; ``size`` is (width, height), read from the file's header."""

    image: Path
    question: str
    id: str
    size: tuple[int, int]


# -------------------------------------------------------------------------------------------------- reading


def _image_size(path: Path, where: str) -> tuple[int, int]:
    """(width, height) from the header, so a missing or unreadable image stops the run before a model loads."""
    if not path.is_file():
        raise BadImageError(f"{where}: {path}: no such image file")
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as err:
        raise BadImageError(f"{where}: {path}: cannot read image ({type(err).__name__}: {err})") from err


def _question_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: the question must be a string, got {value!r} (on the command line, quote it: "
            f"'question=\"{value}\"')"
        )
    if IMAGE_PLACEHOLDER in value:
        raise ValueError(
            f"{where}: the question contains {IMAGE_PLACEHOLDER!r}; the image is put before the question by itself"
        )
    return value


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, (ListConfig, list, tuple)):
        return list(value)
    return [value]


def questions_from_file(path: str | Path) -> list[Question]:
    """Rows of a JSONL file (or a JSON list) with ``image`` and ``question`` (``id`` optional). A relative image
    path is looked up beside the file first, then in the current folder."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input={path}: no such file")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = list(enumerate(json.loads(stripped), start=1))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON list ({err})") from err
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
    out: list[Question] = []
    for number, row in rows:
        where = f"{path}:{number}"
        if not isinstance(row, Mapping) or "image" not in row or "question" not in row:
            raise ValueError(f"{where}: a row needs the fields image and question, got {row!r}")
        image = Path(str(row["image"])).expanduser()
        if not image.is_absolute():
            beside = path.parent / image
            image = beside if beside.is_file() or not image.is_file() else image
        out.append(
            Question(
                image,
                _question_text(row["question"], where),
                str(row.get("id", len(out))),
                _image_size(image, where),
            )
        )
    if not out:
        raise ValueError(f"input={path}: no rows")
    return out


def questions_from_config(cfg: DictConfig) -> list[Question]:
    """The questions that ``image``/``images``, ``question``/``questions`` or ``input`` name (see predict.yaml)."""
    if cfg.get("image") is not None and cfg.get("images") is not None:
        raise ValueError("set image= or images=, not both")
    if cfg.get("question") is not None and cfg.get("questions") is not None:
        raise ValueError("set question= or questions=, not both")
    images = _as_list(cfg.get("images") if cfg.get("images") is not None else cfg.get("image"))
    texts = _as_list(cfg.get("questions") if cfg.get("questions") is not None else cfg.get("question"))
    if cfg.get("input"):
        if images is not None or texts is not None:
            raise ValueError("input= reads images and questions from its file; drop image(s)= and question(s)=")
        return questions_from_file(cfg.input)
    if not images:
        raise ValueError('nothing to ask: set image=<file> question="..." (or images=[...], or input=<jsonl>)')
    if not texts:
        raise ValueError('no question: set question="..." (or questions=[...])')
    if len(images) != len(texts) and 1 not in (len(images), len(texts)):
        raise ValueError(
            f"{len(images)} images and {len(texts)} questions: give one question per image, one question for all "
            "images, or one image for all questions"
        )
    n = max(len(images), len(texts))
    images, texts = images * (n if len(images) == 1 else 1), texts * (n if len(texts) == 1 else 1)
    out = []
    for i, (image, text) in enumerate(zip(images, texts, strict=True)):
        where = f"question {i}"
        path = Path(str(image)).expanduser()
        out.append(Question(path, _question_text(text, where), str(i), _image_size(path, where)))
    return out


# -------------------------------------------------------------------------------------------------- answers


def predict_backbone(
    backbone: Backbone,
    questions: Sequence[Question],
    *,
    max_new_tokens: int = 32,
    image_separator: str = "",
    generation: GeneratorOptions | None = None,
) -> tuple[list[str], GenerationStats]:
    """The answers to ``questions`` in their order, generated as :func:`~mllm_da.evaluation.runner.run_benchmark`
    generates a benchmark's rows, and the generator's statistics."""
    generator = make_generator(backbone, generation or GeneratorOptions())

    def read(path: Path) -> list[Image.Image]:
        return [load_image(path)]

    requests = [
        GenerationRequest(
            key=i,
            turns=question_turns(q.question, 1, image_separator),
            images=functools.partial(read, q.image),
            image_sizes=(q.size,),
        )
        for i, q in enumerate(questions)
    ]
    answers = generator.generate(requests, max_new_tokens=max_new_tokens, desc="predict")
    return [answers[i] for i in range(len(questions))], generator.stats
