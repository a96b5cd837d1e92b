"""Toy tasks: questions about a scene answered by rule, as training tasks, benchmark rows and seed examples.

The rules are the paper's "manual rules" baseline on the toy domain. Count questions are weighted up (about a third
of the tasks): counting is what a tiny model learns from the pixels first (docs/toy-domain.md). Yes/no answers are
drawn by a fair coin, and multiple-choice options are shuffled, so no answer can be guessed from the text alone.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from mllm_da.toy.scene import ToyObject, ToyScene, describe_scene, sample_scene
from mllm_da.toy.vocabulary import (
    ANSWER_TYPES,
    COLOURS,
    COUNT_WORDS,
    LETTERS,
    MC_INSTRUCTION,
    QUADRANTS,
    QUESTION_TYPES,
    SHAPES,
    SIZES,
    YES_NO,
)


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
    return [(f"Is the {o.colour} {o.shape} {size}?", _yes_no(o.size == size)) for o in scene.objects for size in SIZES]


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
    balanced_types: bool = False,
) -> list[ToyTask]:
    """Up to ``n`` tasks with distinct questions, answered from the scene by rule (the "manual rules" baseline).

    A kind of question is drawn by weight (``balanced_types``: every question type equally often, its weight shared
    by its answer forms, instead of the rules' weights that favour counting); a yes/no kind flips a fair coin for the
    answer first, and is drawn only while it has questions with either answer left, so CLOSED answers are balanced.
    Fewer than ``n`` come back only when the scene runs out of such questions (e.g. MC only on a one-object scene).
    """
    unknown = set(answer_types) - set(ANSWER_TYPES)
    if unknown or not answer_types:
        raise ValueError(f"answer_types must be a non-empty subset of {ANSWER_TYPES}, got {sorted(answer_types)}")
    unknown = set(question_types) - set(QUESTION_TYPES)
    if unknown or not question_types:
        raise ValueError(f"question_types must be a non-empty subset of {QUESTION_TYPES}, got {sorted(question_types)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    families = [f for f in _FAMILIES if f.answer_type in answer_types and f.question_type in question_types]
    forms = Counter(f.question_type for f in families)
    weight = {f: 1.0 / forms[f.question_type] if balanced_types else f.weight for f in families}
    pools = {f: f.candidates(scene) for f in families}
    used: set[str] = set()
    tasks: list[ToyTask] = []
    while len(tasks) < n:
        live = {f: [c for c in pools[f] if c[0] not in used] for f in families}
        live = {f: cands for f, cands in live.items() if _drawable(f, cands)}
        if not live:
            break
        family = rng.choices(list(live), weights=[weight[f] for f in live])[0]
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


def task_row(task: ToyTask) -> dict[str, Any]:
    """The AdaptLLM benchmark fields of a task: full prompt as ``input``, gold answer (or letter) as ``label``."""
    return {
        "input": task.prompt,
        "label": task.answer,
        "answer_type": task.answer_type,
        "question_type": task.question_type,
    }


def _listing(objects: Sequence[ToyObject]) -> str:
    names = [f"a {o.colour} {o.shape}" for o in objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _subject(scene: ToyScene, question: str) -> ToyObject | None:
    """The object a rule question is about: named by colour and shape, else by quadrant, else by one attribute."""
    q = question.lower()
    for test in (
        lambda o: f"{o.colour} {o.shape}" in q,
        lambda o: o.quadrant in q,
        lambda o: f"the {o.shape}" in q,
        lambda o: f"the {o.colour} object" in q,
    ):
        hits = [o for o in scene.objects if test(o)]
        if len(hits) == 1:
            return hits[0]
    return None


def informative_answer(scene: ToyScene, task: ToyTask, rng: random.Random) -> str:
    """A rule-written explanation of a toy task's answer: the relevant facts, then (usually) a conclusion.

    Conclusions vary on purpose: some end with an indicator ("so", "the answer"), some do not, so that every
    branch of the informative-as-chain-of-thought rules (reference §3.3) occurs in toy data.
    """
    subject = _subject(scene, task.question)
    if task.question_type == "count" or subject is None:
        lead = "There is one shape" if scene.count == 1 else f"There are {COUNT_WORDS[scene.count]} shapes"
        fact = f"{lead} in the image: {_listing(scene.objects)}."
    elif task.question_type == "exist" and task.answer == "no":
        fact = f"The image shows {_listing(scene.objects)}, and none of them matches."
    else:
        o = subject
        fact = f"The {o.colour} {o.shape} at the {o.quadrant} is {o.size}."
    answer = task.answer_text if task.options is None else f"{task.answer}, {task.answer_text}"
    conclusions = (
        f"So the answer is {answer}.",
        f"Thus the answer is {answer}.",
        f"This gives {answer}.",
        "",
    )
    conclusion = rng.choice(conclusions)
    return f"{fact} {conclusion}".strip()


def sample_texts(rng: random.Random, n_scenes: int, tasks_per_scene: int = 3) -> list[str]:
    """Captions, questions and answers of ``n_scenes`` fresh scenes: the domain's words, for training a tokenizer."""
    texts = []
    for _ in range(n_scenes):
        scene = sample_scene(rng)
        texts.append(describe_scene(scene))
        for task in rule_tasks(scene, rng, tasks_per_scene):
            texts.append(task.question)
            texts.append(task.answer)
    return texts
