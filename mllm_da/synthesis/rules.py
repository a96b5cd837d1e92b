"""The rule-based synthesizer (the paper's "manual rules" baseline), writing the synthesizer's own output format.

It reads only the caption, as the model synthesizer does, and writes hinted question/answer turns in the text
form a synthesizer generates (:func:`render_output`), so its output goes through the same parser, consistency
filter and formatting, and ``data_mix`` can switch between it and a model (``synthesizer=rules``).

* Toy captions (:func:`~mllm_da.data.toy.describe_scene`) are parsed back into their scene; the questions are the
  toy domain's rule tasks and the informative answers the seed builder's rule-written explanations.
* Any other caption gets one crude task: "What does the image show?" with the caption's first sentence as the
  informative answer and that sentence's first clause (at most 8 words) as the precise answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from mllm_da.data import toy
from mllm_da.synthesis.parse import INFORMATIVE_HINT, LLAMA3, PRECISE_HINT, ParseFormat
from mllm_da.synthesis.seed import informative_answer

_OBJECT = re.compile(
    r"a (small|large) (" + "|".join(toy.COLOURS) + r") (" + "|".join(toy.SHAPES) + r") at the ("
    + "|".join(toy.QUADRANTS) + r")"
)
_LEAD = re.compile(r"^There (?:is one shape|are (one|two|three|four) shapes): ")
GENERIC_QUESTION = "What does the image show?"


def scene_from_caption(caption: str) -> toy.ToyScene | None:
    """The toy scene a :func:`~mllm_da.data.toy.describe_scene` caption describes (boxes unknown), else None."""
    lead = _LEAD.match(caption)
    if lead is None:
        return None
    objects = tuple(
        toy.ToyObject(shape, colour, size, quadrant, (0, 0, 0, 0), toy.BASE_RGB[colour])
        for size, colour, shape, quadrant in _OBJECT.findall(caption[lead.end():])
    )
    expected = 1 if lead.group(1) is None else list(toy.COUNT_WORDS.values()).index(lead.group(1)) + 1
    if not objects or len(objects) != expected:
        return None
    return toy.ToyScene(toy.REFERENCE_SIZE, toy.BACKGROUND, objects)


def render_output(pairs: Sequence[tuple[str, str, str]], fmt: ParseFormat = LLAMA3) -> str:
    """Text in the form a synthesizer generates after the open user header, for (hint, question, answer)."""
    turns = [f"{hint}\n{question}{fmt.qa_separator}{answer}{fmt.turn_close}" for hint, question, answer in pairs]
    return fmt.user_header.join(turns)


def rule_pairs(record_id: str, caption: str, questions: int = 3) -> list[tuple[str, str, str]]:
    """(hint, question, answer) triples for one caption, shuffled by ``random.Random(record id)``."""
    rng = random.Random(record_id)
    scene = scene_from_caption(caption)
    pairs: list[tuple[str, str, str]] = []
    if scene is not None:
        for task in toy.rule_tasks(scene, rng, questions):
            pairs.append((PRECISE_HINT, task.prompt, task.answer))
            pairs.append((INFORMATIVE_HINT, task.prompt, informative_answer(scene, task, rng)))
    else:
        sentence = re.split(r"(?<=[.!?])\s+", caption.strip(), maxsplit=1)[0].strip()
        clause = re.split(r",|;|:| with | and ", sentence.rstrip(".!?"), maxsplit=1)[0].split()[:8]
        if sentence and clause:
            pairs.append((PRECISE_HINT, GENERIC_QUESTION, " ".join(clause)))
            pairs.append((INFORMATIVE_HINT, GENERIC_QUESTION, sentence))
    rng.shuffle(pairs)
    return pairs


def rule_output(record_id: str, caption: str, questions: int = 3, fmt: ParseFormat = LLAMA3) -> str:
    return render_output(rule_pairs(record_id, caption, questions), fmt)
