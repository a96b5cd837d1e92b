"""The rule-based synthesizer (the paper's "manual rules" baseline), writing the synthesizer's own output format.

It reads only the caption, as the model synthesizer does, and writes hinted question/answer turns in the text
form a synthesizer generates (:func:`render_output`), so its output goes through the same parser, consistency
filter and formatting, and ``data_mix`` can switch between it and a model (``synthesizer=rules``).

* Toy captions (:func:`~mllm_da.toy.describe_scene`) are parsed back into their scene
  (:func:`~mllm_da.toy.scene_from_caption`); the questions are the toy domain's rule tasks and the informative
  answers its rule-written explanations (:func:`~mllm_da.toy.informative_answer`).
* Any other caption gets up to ``questions`` tasks from :func:`caption_tasks`: templates keyed on the caption's
  structure (its subject, where it is, what it does or shows, a colour, a count), each answered by a whole phrase
  of the caption (never cut mid-phrase), with the caption's first sentence as the informative answer. A caption
  that supports fewer templates gets fewer tasks (the pipeline counts the shortfall in ``summary.json``). The
  templates are listed in docs/synthesis.md. They are word-list heuristics over English, not a parser: no model,
  nothing to download.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mllm_da.synthesis.caption_templates import caption_tasks
from mllm_da.synthesis.parse import INFORMATIVE_HINT, LLAMA3, PRECISE_HINT, ParseFormat
from mllm_da.toy import informative_answer, rule_tasks, scene_from_caption

#: part of the synthesize stage's cache key: bump it when the rules write different tasks for the same caption
RULES_VERSION = 2


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
        for task in rule_tasks(scene, rng, questions):
            pairs.append((PRECISE_HINT, task.prompt, task.answer))
            pairs.append((INFORMATIVE_HINT, task.prompt, informative_answer(scene, task, rng)))
    else:
        for question, precise, informative in caption_tasks(caption, rng, questions):
            pairs.append((PRECISE_HINT, question, precise))
            pairs.append((INFORMATIVE_HINT, question, informative))
    rng.shuffle(pairs)
    return pairs


def rule_output(record_id: str, caption: str, questions: int = 3, fmt: ParseFormat = LLAMA3) -> str:
    return render_output(rule_pairs(record_id, caption, questions), fmt)
