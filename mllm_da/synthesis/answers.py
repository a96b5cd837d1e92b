"""Short answers read as statements, so that two of them, or an answer and a known truth, can be compared: a
multiple-choice letter stands for its option's text, digits for number words, case and punctuation aside.

One reading for every comparison of short answers in synthesis: the toy truth's correctness measures
(:mod:`mllm_da.synthesis.quality`) and the synthesizer's self-check (:func:`answers_agree`, applied by the filter).
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")
_OPTION_LINE = re.compile(r"^([A-Z])[.)]\s*(.+?)\s*$")
#: digits read as words, so "3" and "three" are the same answer
NUMBER_WORDS: dict[int, str] = dict(
    enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
)
YES_NO = ("yes", "no")
#: words that do not change what a short answer states
ARTICLES = frozenset({"a", "an", "the"})


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words."""
    return _WORD.findall(text.lower())


def question_options(question: str) -> tuple[str, dict[str, str]]:
    """A question's first line and its lettered option lines (``A. red``), if any."""
    lines = [line.strip() for line in question.strip().splitlines() if line.strip()]
    options = {m.group(1): m.group(2) for m in map(_OPTION_LINE.match, lines[1:]) if m}
    return (lines[0] if lines else ""), options


def answer_words(answer: str, question: str = "") -> list[str]:
    """What a short answer states, as words: an option letter of ``question`` replaced by the option's text,
    lower case, punctuation dropped, digits written as number words."""
    _, options = question_options(question)
    text = answer.strip().rstrip(".").strip()
    if text.upper() in options:
        text = options[text.upper()]
    return [NUMBER_WORDS.get(int(w), w) if w.isdigit() and int(w) in NUMBER_WORDS else w for w in words(text)]


def answers_agree(first: str, second: str, question: str = "") -> bool:
    """Whether two short answers to ``question`` state the same thing: the same leading yes/no when either leads
    with one, else the same words once articles are dropped. An empty answer agrees with nothing."""
    a, b = answer_words(first, question), answer_words(second, question)
    if not a or not b:
        return False
    if a[0] in YES_NO or b[0] in YES_NO:
        return a[0] == b[0]
    return [w for w in a if w not in ARTICLES] == [w for w in b if w not in ARTICLES]
