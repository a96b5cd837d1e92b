"""The rule-based synthesizer on real-looking captions: it honours ``questions`` and answers with whole phrases."""

from __future__ import annotations

import random
import re

import pytest

from mllm_da.synthesis.parse import INFORMATIVE_HINT, PRECISE_HINT, extract_triplet, parse_output
from mllm_da.synthesis.rules import caption_tasks, rule_output, rule_pairs

CAPTIONS = [
    "An astronaut in a white spacesuit poses in front of an American flag.",
    "A cup of coffee with latte art on a wooden table.",
    "Chelsea the cat lying on a rug, looking at the camera.",
    "Rocket on the launch pad at dawn.",
    "Two black cats sleeping on a sofa.",
    "A red motorcycle parked in a room seen from the left camera.",
]
#: a precise answer cut mid-phrase ends with one of these ("poses in", "in front of an")
DANGLING = {"a", "an", "the", "in", "on", "of", "at", "with", "to", "and", "front", "from", "by"}


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text.lower())


@pytest.mark.parametrize("caption", CAPTIONS)
def test_precise_answers_are_whole_phrases_of_the_caption(caption: str):
    tasks = caption_tasks(caption, random.Random(0), questions=10)
    assert len(tasks) >= 2
    for question, precise, informative in tasks:
        words = _words(precise)
        assert " ".join(words) in " ".join(_words(caption)), (question, precise)  # contiguous caption words
        assert words[-1] not in DANGLING, (question, precise)  # not cut mid-phrase
        assert precise.lower() in informative.lower() and question.endswith("?")


def test_the_known_cases_get_the_phrases_a_reader_would_give():
    tasks = {q: p for q, p, _ in caption_tasks(CAPTIONS[0], random.Random(0), questions=10)}
    assert tasks["What does the image show?"] == "An astronaut"
    assert tasks["Where is the astronaut?"] == "in front of an American flag"
    assert tasks["What colour is the spacesuit?"] == "white"
    counted = {q: p for q, p, _ in caption_tasks(CAPTIONS[4], random.Random(0), questions=10)}
    assert counted["How many black cats are there?"] == "two"


@pytest.mark.parametrize("questions", [1, 2, 3])
def test_questions_is_honoured_where_the_caption_supports_it(questions: int):
    for i, caption in enumerate(CAPTIONS):
        available = len(caption_tasks(caption, random.Random(0), questions=10))
        pairs = rule_pairs(f"r{i}", caption, questions)
        assert len(pairs) == 2 * min(questions, available)
        assert {hint for hint, _, _ in pairs} == {PRECISE_HINT, INFORMATIVE_HINT}


def test_rule_output_parses_into_its_triplets():
    for i, caption in enumerate(CAPTIONS):
        text = rule_output(f"r{i}", caption, questions=3)
        pairs = parse_output(text)
        assert len(pairs) == len(rule_pairs(f"r{i}", caption, 3))
        triplet = extract_triplet(pairs)
        assert triplet is not None and triplet.precise.lower() in triplet.informative.lower()
        assert text == rule_output(f"r{i}", caption, questions=3)  # deterministic per record
