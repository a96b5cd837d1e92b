"""The rule-based synthesizer (the paper's "manual rules" baseline), writing the synthesizer's own output format.

It reads only the caption, as the model synthesizer does, and writes hinted question/answer turns in the text
form a synthesizer generates (:func:`render_output`), so its output goes through the same parser, consistency
filter and formatting, and ``data_mix`` can switch between it and a model (``synthesizer=rules``).

* Toy captions (:func:`~mllm_da.data.toy.describe_scene`) are parsed back into their scene; the questions are the
  toy domain's rule tasks and the informative answers the seed builder's rule-written explanations.
* Any other caption gets up to ``questions`` tasks from :func:`caption_tasks`: templates keyed on the caption's
  structure (its subject, where it is, what it does, a colour, a count), each answered by a whole phrase of the
  caption (never cut mid-phrase), with the caption's first sentence as the informative answer. A caption that
  supports fewer templates gets fewer tasks. The templates are listed in docs/synthesis.md.
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
        for question, precise, informative in caption_tasks(caption, rng, questions):
            pairs.append((PRECISE_HINT, question, precise))
            pairs.append((INFORMATIVE_HINT, question, informative))
    rng.shuffle(pairs)
    return pairs


# ------------------------------------------------------------------------------------ any caption's templates

#: words that end a caption's subject and start a phrase about where it is (multi-word ones first)
LOCATIONS: tuple[str, ...] = ("in front of", "on top of", "next to", "close to", "on", "in", "at", "under",
                              "near", "beside", "behind", "over", "against", "inside", "above", "below",
                              "along", "across", "among", "between", "outside")
#: other words that end a subject without saying where (attributes, actions follow)
_SUBJECT_ENDS = frozenset({"with", "and", "while", "from", "by", "into", "onto", "through", "during", "for",
                           "is", "are", "was", "were", "has", "have", "that", "which", "who"})
_VERBS = frozenset({"is", "are", "poses", "stands", "sits", "lies", "rests", "hangs", "holds", "shows", "flies",
                    "floats", "grows", "runs", "walks", "looks", "waits", "leans", "covers", "fills", "swims"})
COLOUR_WORDS: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
                                 "white", "grey", "gray", "golden", "silver")
NUMBER_WORDS: tuple[str, ...] = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_DETERMINERS = frozenset({"a", "an", "the", "this", "that", "some", "one", *NUMBER_WORDS})
_MAX_SUBJECT_WORDS = 6


def _sentence(caption: str) -> str:
    return re.split(r"(?<=[.!?])\s+", caption.strip(), maxsplit=1)[0].strip()


#: irregular past participles that start a verb phrase ("coins laid out in rows")
_PARTICIPLES = frozenset({"laid", "seen", "taken", "shown", "drawn", "built", "made", "set", "held", "worn",
                          "hung", "spread", "left", "lit", "cut", "kept", "caught", "sold", "written"})


def _is_verb(word: str) -> bool:
    return word in _VERBS or word in _PARTICIPLES or (len(word) > 4 and word.endswith(("ing", "ed")))


def _doing_question(verb: str, named: str, plural: bool) -> str:
    """A question whose answer is the verb phrase as the caption words it."""
    if verb.endswith("ing"):
        return f"What {'are' if plural else 'is'} {named} doing?"
    if verb in _PARTICIPLES or verb.endswith("ed"):
        return f"How {'are' if plural else 'is'} {named} shown?"
    return f"What {'do' if plural else 'does'} {named} do?"


def _named(subject: str, words: list[str]) -> str:
    """The subject as a question names it: "An astronaut" → "the astronaut", "Rocket" → "the rocket";
    "Chelsea the cat" and "Two black cats" stay as they are."""
    first, _, rest = subject.partition(" ")
    if words[0] in ("a", "an", "the"):
        return f"the {rest}" if rest else subject.lower()
    if words[0] in _DETERMINERS or "the" in words[1:len(subject.split())]:
        return subject[0].lower() + subject[1:] if words[0] in _DETERMINERS else subject
    return "the " + subject[0].lower() + subject[1:]


def _location_at(words: list[str], i: int) -> str | None:
    for location in LOCATIONS:
        parts = location.split()
        if words[i : i + len(parts)] == parts:
            return location
    return None


def _phrase_end(words: list[str], start: int) -> int:
    """Where a phrase that starts at ``start`` ends: at a comma, a verb, or another location word."""
    end = start
    while end < len(words):
        word = words[end]
        if end > start and (_is_verb(word) or _location_at(words, end) or word in _SUBJECT_ENDS):
            break
        end += 1
        if word.endswith((",", ";", ":")):
            break
    return end


def _clean(tokens: Sequence[str]) -> str:
    return " ".join(tokens).strip(" ,;:.!?")


def caption_tasks(caption: str, rng: random.Random, questions: int = 3) -> list[tuple[str, str, str]]:
    """Up to ``questions`` (question, precise answer, informative answer) triples about any caption.

    Templates, each used when the caption has its phrase: the subject ("What does the image show?" → the
    caption's opening noun phrase), where it is ("Where is <subject>?" → the first location phrase, e.g. "on a
    wooden table"), what it does ("What is <subject> doing?" → the verb phrase up to a comma), a colour ("What
    colour is the <noun>?" → the colour word), a count ("How many <noun> are there?" → the number word). The
    precise answer is always a whole phrase of the caption; the informative answer is the caption's first
    sentence, which states it. Which templates are used, when more apply than asked for, is drawn by ``rng``.
    """
    sentence = _sentence(caption)
    raw = sentence.rstrip(".!?").split()
    words = [w.lower().strip(",;:") for w in raw]
    if not words:
        return []
    candidates: list[tuple[str, str]] = []
    cut = next((i for i in range(1, len(words)) if _location_at(words, i) or words[i] in _SUBJECT_ENDS
                or _is_verb(words[i]) or raw[i - 1].endswith(",")), len(words))
    subject = _clean(raw[:cut])
    if 0 < cut <= _MAX_SUBJECT_WORDS:
        candidates.append(("What does the image show?", subject))
        named = _named(subject, words)
        plural = words[cut - 1].endswith("s") and words[0] not in ("a", "an", "one")
        verb = next((i for i in range(cut, len(words)) if _is_verb(words[i]) and words[i] not in ("is", "are")),
                    None)
        # where it is: the first location phrase after the verb (before it, "in a white spacesuit" is clothing)
        after = verb if verb is not None else cut
        location = next(((i, loc) for i in range(after, len(words)) if (loc := _location_at(words, i))), None)
        if location is not None:
            start = location[0]
            end = _phrase_end(words, start + len(location[1].split()))
            candidates.append((f"Where {'are' if plural else 'is'} {named}?", _clean(raw[start:end])))
        if verb is not None:
            end = next((i + 1 for i in range(verb, len(raw)) if raw[i].endswith(",")), len(raw))
            candidates.append((_doing_question(words[verb], named, plural), _clean(raw[verb:end])))
    for i, word in enumerate(words[:-1]):
        noun = words[i + 1]
        if word in COLOUR_WORDS and noun.isalpha() and noun not in _DETERMINERS and not _location_at(words, i + 1):
            candidates.append((f"What colour {'are' if noun.endswith('s') else 'is'} the {noun}?", word))
            break
    for i, word in enumerate(words[:-1]):
        if word in NUMBER_WORDS:
            end = _phrase_end(words, i + 1)
            if end > i + 1:
                candidates.append((f"How many {_clean(words[i + 1 : end])} are there?", word))
                break
    chosen = rng.sample(candidates, min(questions, len(candidates)))
    return [(question, precise, sentence) for question, precise in chosen if precise]


def rule_output(record_id: str, caption: str, questions: int = 3, fmt: ParseFormat = LLAMA3) -> str:
    return render_output(rule_pairs(record_id, caption, questions), fmt)
