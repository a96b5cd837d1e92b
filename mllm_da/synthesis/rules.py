"""The rule-based synthesizer (the paper's "manual rules" baseline), writing the synthesizer's own output format.

It reads only the caption, as the model synthesizer does, and writes hinted question/answer turns in the text
form a synthesizer generates (:func:`render_output`), so its output goes through the same parser, consistency
filter and formatting, and ``data_mix`` can switch between it and a model (``synthesizer=rules``).

* Toy captions (:func:`~mllm_da.data.toy.describe_scene`) are parsed back into their scene; the questions are the
  toy domain's rule tasks and the informative answers the seed builder's rule-written explanations.
* Any other caption gets up to ``questions`` tasks from :func:`caption_tasks`: templates keyed on the caption's
  structure (its subject, where it is, what it does or shows, a colour, a count), each answered by a whole phrase
  of the caption (never cut mid-phrase), with the caption's first sentence as the informative answer. A caption
  that supports fewer templates gets fewer tasks (the pipeline counts the shortfall in ``summary.json``). The
  templates are listed in docs/synthesis.md. They are word-list heuristics over English, not a parser: no model,
  nothing to download.
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
#: part of the synthesize stage's cache key: bump it when the rules write different tasks for the same caption
RULES_VERSION = 2


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
# Heuristics over English captions, not a parser: each word is classed by small word lists and its neighbours, so
# that every answer is a slice of the caption that starts and ends at a phrase boundary. No model, no download.

#: words that start a phrase about where something is (multi-word ones first, so "in front of" wins over "in")
LOCATIONS: tuple[str, ...] = ("in front of", "on top of", "next to", "close to", "in the middle of", "on", "in",
                              "at", "under", "near", "beside", "behind", "over", "against", "inside", "above",
                              "below", "along", "across", "among", "between", "outside", "around", "underneath",
                              "beneath", "atop")
COLOUR_WORDS: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
                                 "white", "grey", "gray", "golden", "silver", "beige", "turquoise")
NUMBER_WORDS: tuple[str, ...] = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
#: words that open a noun phrase: a word right after one is a noun or an adjective, never the verb
_DETERMINERS = frozenset({"a", "an", "the", "this", "that", "these", "those", "some", "many", "several", "one",
                          "its", "his", "her", "their", "each", "every", "both", "multiple", *NUMBER_WORDS})
#: words that end a noun phrase without saying where (what follows is an attribute, an action or a clause)
_PHRASE_ENDS = frozenset({"with", "and", "or", "but", "while", "from", "by", "into", "onto", "through", "during",
                          "for", "to", "as", "that", "which", "who", "whose", "where", "when", "than", "like",
                          "without"})
#: auxiliaries: they end a subject but are not the action ("is riding": the action is "riding")
_AUXILIARIES = frozenset({"is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "can", "could",
                          "will", "would", "may", "might"})
_VERBS = frozenset({"poses", "stands", "sits", "lies", "rests", "hangs", "holds", "shows", "flies", "floats",
                    "grows", "runs", "walks", "looks", "waits", "leans", "covers", "fills", "swims", "plays",
                    "eats", "drinks", "smiles", "carries", "wears", "rides", "jumps", "reads", "depicts",
                    "contains", "features", "displays", "reveals", "demonstrates", "illustrates"})
#: irregular past participles that start a verb phrase ("coins laid out in rows")
_PARTICIPLES = frozenset({"laid", "seen", "taken", "shown", "drawn", "built", "made", "set", "held", "worn",
                          "hung", "spread", "lit", "cut", "kept", "caught", "sold", "written"})
#: nouns (and adjectives) that end like verbs: "a tall building", "a speed boat", "a sacred site"
_NOT_VERBS = frozenset({"building", "painting", "drawing", "ceiling", "clothing", "morning", "evening", "wedding",
                        "thing", "string", "spring", "swing", "sling", "parking", "railing", "pudding", "dumpling",
                        "icing", "frosting", "filling", "topping", "stuffing", "dressing", "seasoning", "lighting",
                        "lightning", "landing", "crossing", "opening", "bedding", "housing", "siding", "awning",
                        "earring", "sibling", "seedling", "sapling", "duckling", "offering", "carving", "etching",
                        "engraving", "marking", "setting", "flooring", "roofing", "fencing", "plumbing", "wiring",
                        "hundred", "sacred", "naked", "wicked", "rugged", "crooked", "jagged", "ragged", "beloved",
                        "kindred"})
#: verbs whose object is what the image shows ("a CT scan showing a mass"): asked as "What does … show?"
_SHOW_VERBS = frozenset({"show", "shows", "showing", "depict", "depicts", "depicting", "demonstrate",
                         "demonstrates", "demonstrating", "reveal", "reveals", "revealing", "contain", "contains",
                         "containing", "feature", "features", "featuring", "display", "displays", "displaying",
                         "illustrate", "illustrates", "illustrating"})
#: words naming the picture itself: "A photo of a dog" is about the dog
_MEDIA = frozenset({"photo", "photograph", "picture", "image", "close-up", "closeup", "view", "shot", "snapshot"})
#: caption openings that introduce the subject without being it
_OPENINGS: tuple[tuple[str, ...], ...] = (("there", "is"), ("there", "are"), ("here", "is"), ("here", "are"),
                                          ("this", "is"), ("these", "are"), ("it", "is"))
#: phrases that start like a location but do not say where ("cut in half")
_NOT_LOCATIONS = frozenset({"in half", "in focus", "in color", "in colour", "in detail", "at once"})
#: words between a subject and a verb that hand the verb to another noun ("an area with houses arranged …")
_CLAUSE_WORDS = frozenset({"with", "and", "or", "while", "which", "that", "who", "whose", "from", "by", "for"})
_MAX_SUBJECT_WORDS = 6
#: words a whole phrase cannot end on: they need more after them ("in front of an", "A white", "poses in")
_DANGLING = frozenset({*_DETERMINERS, *_PHRASE_ENDS, *_AUXILIARIES, "of", *COLOUR_WORDS,
                       *(w for location in LOCATIONS for w in location.split())})
_MAX_NOUN_WORDS = 3


def _sentence(caption: str) -> str:
    return re.split(r"(?<=[.!?])\s+", caption.strip(), maxsplit=1)[0].strip()


class _Caption:
    """The first sentence of a caption as words: ``raw`` as written (for answers), ``low`` for matching."""

    def __init__(self, caption: str) -> None:
        self.sentence = _sentence(caption)
        self.raw = self.sentence.rstrip(".!?").split()
        self.low = [w.lower().strip(",;:\"'()[]") for w in self.raw]
        #: words inside parentheses or brackets ("a lesion (arrow)"): an aside, never part of a phrase
        self.aside: list[bool] = []
        depth = 0
        for word in self.raw:
            depth += word.count("(") + word.count("[")
            self.aside.append(depth > 0)
            depth = max(0, depth - word.count(")") - word.count("]"))

    def __len__(self) -> int:
        return len(self.low)

    def comma_after(self, i: int) -> bool:
        return self.raw[i].endswith((",", ";", ":"))

    def text(self, start: int, end: int) -> str:
        """Words ``start:end`` as written, without the punctuation around them."""
        return " ".join(self.raw[start:end]).strip(" ,;:.!?\"'()")

    def location_at(self, i: int) -> str | None:
        for location in LOCATIONS:
            parts = location.split()
            if self.low[i : i + len(parts)] == parts:
                return None if " ".join(self.low[i : i + 2]) in _NOT_LOCATIONS else location
        return None

    def is_verb(self, i: int) -> bool:
        """Whether word ``i`` starts an action: a known verb, a participle, an -ing or -ed word, unless it
        opens a noun phrase ("a building", "the painting", "for fishing", "a red-tailed hawk")."""
        word = self.low[i]
        if not word.isalpha() or word in _NOT_VERBS or word in _AUXILIARIES:
            return False
        before = self.low[i - 1] if i > 0 else ""
        if before in _DETERMINERS or before in COLOUR_WORDS or before in _PHRASE_ENDS or before == "of" \
                or (i > 0 and self.location_at(i - 1) is not None):
            return False
        if word in _VERBS or word in _PARTICIPLES:
            return True
        return len(word) > 4 and (word.endswith("ing") or (word.endswith("ed") and not word.endswith("eed")))

    def breaks_noun_phrase(self, i: int, start: int) -> bool:
        """Whether word ``i`` ends a noun phrase that began at ``start`` (it is not part of it)."""
        if self.aside[i]:
            return True
        if i == start:
            return False
        word = self.low[i]
        if word in ("and", "or") and self.low[i - 1] in COLOUR_WORDS and i + 1 < len(self) \
                and self.low[i + 1] in COLOUR_WORDS:  # "a white and blue boat"
            return False
        return (word in _PHRASE_ENDS or word in _AUXILIARIES or self.location_at(i) is not None
                or self.is_verb(i) or self.comma_after(i - 1))

    def noun_phrase_end(self, start: int, limit: int | None = None) -> int:
        end = start
        stop = len(self) if limit is None else min(limit, len(self))
        while end < stop and not self.breaks_noun_phrase(end, start):
            end += 1
        return end

    def is_whole(self, start: int, end: int) -> bool:
        """A phrase that does not end on a word that needs more after it ("in front of an", "A white")."""
        if end <= start:
            return False
        last = self.low[end - 1]
        return last not in _DANGLING and any(c.isalnum() for c in last)


def _opening_length(words: _Caption) -> int:
    """How many leading words introduce the subject ("There is", "The image shows", "A close-up photo of")."""
    low = words.low
    start = 0
    if tuple(low[:2]) in _OPENINGS:
        start = 2
    elif len(low) > 3 and low[0] in ("the", "this") and low[1] in _MEDIA and low[2] in _SHOW_VERBS:
        start = 3
    elif len(low) > 3 and low[0] == "in" and low[1] in ("this", "the") and words.comma_after(2):
        start = 3  # "In this image, ..."
    for i in range(start, min(start + 5, len(low) - 2)):  # "[a/an] [close-up] photo of", "Aerial view of"
        if low[i] in _MEDIA and low[i + 1] == "of":
            if all(w in _DETERMINERS or w.isalpha() or "-" in w for w in low[start:i]) and not any(
                    words.is_verb(j) or words.location_at(j) for j in range(start, i)):
                return i + 2
            break
    return start


def _lower_first(text: str) -> str:
    """Lower-case a sentence-initial word ("An" → "an"), not an acronym ("CT", "X-ray" stays)."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and first[1:2].isupper():
        return text
    return text[:1].lower() + text[1:]


def _named(words: _Caption, start: int, end: int) -> tuple[str, bool]:
    """How a question names the noun phrase ``start:end``, and whether it is plural: "An astronaut" → "the
    astronaut", "Rocket" → "the rocket", "Many buildings" → "the buildings"; "Chelsea the cat" stays."""
    low, phrase = words.low[start:end], words.text(start, end)
    head = low[: low.index("of")] if "of" in low else low
    plural = (head[0] in NUMBER_WORDS or head[0] in ("many", "several", "these", "those", "both", "multiple")
              or (head[0] not in ("a", "an", "one", "this", "that") and head[-1].endswith("s")
                  and not head[-1].endswith(("ss", "us", "is"))))
    rest = phrase.split(" ", 1)[1] if " " in phrase else ""
    if low[0] in ("a", "an", "the", "this", "that", "these", "those", "many", "several", "some", "multiple"):
        return (f"the {rest}" if rest else phrase.lower()), plural
    if low[0] in NUMBER_WORDS and "of" not in low[1:2]:  # "Two black cats" → "the two black cats"
        return f"the {_lower_first(phrase)}", plural
    if (len(low) > 1 and low[1] in _DETERMINERS) or low[0] in _DETERMINERS:  # "Chelsea the cat", "two of the dogs"
        return (_lower_first(phrase) if low[0] in _DETERMINERS else phrase), plural
    return f"the {_lower_first(phrase)}", plural


def _verb_phrase_end(words: _Caption, verb: int) -> int:
    """A verb phrase runs to a comma, the next action ("wearing a dress stands …") or a clause word."""
    end = verb + 1
    while end < len(words):
        if words.comma_after(end - 1) or words.aside[end] or words.low[end] in ("while", "which", "that", "who",
                                                                                  "whose"):
            break
        # the word right after the verb is its object even when it looks like a verb ("showing swelling");
        # after "and" a verb continues this phrase ("riding a horse and holding a flag": is_verb says no there)
        if end > verb + 1 and words.is_verb(end):
            break
        end += 1
    return end


def _doing_question(verb: str, named: str, plural: bool) -> str:
    """A question whose answer is the verb phrase as the caption words it."""
    if verb.endswith("ing"):
        return f"What {'are' if plural else 'is'} {named} doing?"
    if verb in _PARTICIPLES or verb.endswith("ed"):
        return f"How {'are' if plural else 'is'} {named} shown?"
    return f"What {'do' if plural else 'does'} {named} do?"


def _location(words: _Caption, start: int, end: int) -> tuple[int, int] | None:
    """The first location phrase in ``start:end`` that is whole: the location words and their noun phrase."""
    for i in range(start, end):
        location = words.location_at(i)
        if location is None:
            continue
        after = i + len(location.split())
        phrase_end = words.noun_phrase_end(after, end)
        if words.is_whole(after, phrase_end):
            return i, phrase_end
    return None


def caption_tasks(caption: str, rng: random.Random, questions: int = 3) -> list[tuple[str, str, str]]:
    """Up to ``questions`` (question, precise answer, informative answer) triples about any caption.

    One task per template the caption supports (docs/synthesis.md lists them): its subject, where it is, what it
    does (or, for "showing"-like verbs, what it shows), a colour, a count. The precise answer is always a
    contiguous, whole phrase of the caption's first sentence (a noun phrase, a location phrase, a verb phrase, a
    colour, a number word), never cut by a word count; the informative answer is that sentence, which states it.
    Which templates are used, when the caption supports more than ``questions``, is drawn by ``rng``; a caption
    that supports fewer gets fewer (the pipeline counts the shortfall).
    """
    words = _Caption(caption)
    if not len(words):
        return []
    candidates: list[tuple[str, str]] = []
    start = _opening_length(words)
    cut = words.noun_phrase_end(start)
    if start < cut <= start + _MAX_SUBJECT_WORDS and words.is_whole(start, cut):
        candidates.append(("What does the image show?", words.text(start, cut)))
        named, plural = _named(words, start, cut)
        # its action: the first verb after it, unless a clause word hands that verb to another noun first
        verb = next((i for i in range(cut, len(words)) if words.is_verb(i) or words.low[i] in _CLAUSE_WORDS
                     or words.aside[i]), None)
        if verb is not None and not words.is_verb(verb):
            verb = None
        if verb is not None:
            verb_end = _verb_phrase_end(words, verb)
            if words.low[verb] in _SHOW_VERBS:
                if words.is_whole(verb + 1, verb_end):
                    candidates.append((f"What {'do' if plural else 'does'} {named} show?",
                                       words.text(verb + 1, verb_end)))
                    # where is what it shows: "a small nodule in the right lung"
                    shown_end = words.noun_phrase_end(verb + 1, verb_end)
                    where = _location(words, shown_end, verb_end)
                    if where is not None and where[0] == shown_end and words.is_whole(verb + 1, shown_end) \
                            and shown_end - verb - 1 <= _MAX_SUBJECT_WORDS:
                        shown, shown_plural = _named(words, verb + 1, shown_end)
                        candidates.append((f"Where {'are' if shown_plural else 'is'} {shown}?", words.text(*where)))
            else:
                if words.is_whole(verb, verb_end):
                    candidates.append((_doing_question(words.low[verb], named, plural), words.text(verb, verb_end)))
                # where it is: a location after the verb (before it, "in a white spacesuit" is what it wears)
                where = _location(words, verb, len(words))
                if where is not None:
                    candidates.append((f"Where {'are' if plural else 'is'} {named}?", words.text(*where)))
        else:
            where = _location(words, cut, len(words))
            if where is not None:
                candidates.append((f"Where {'are' if plural else 'is'} {named}?", words.text(*where)))
    for i, word in enumerate(words.low):
        if word not in COLOUR_WORDS:
            continue
        colour_end = i + 1
        while colour_end + 1 < len(words) and words.low[colour_end] in ("and", "or") \
                and words.low[colour_end + 1] in COLOUR_WORDS:
            colour_end += 2
        noun_end = words.noun_phrase_end(colour_end)
        noun = words.low[colour_end:noun_end]
        if (noun and len(noun) <= _MAX_NOUN_WORDS and not words.comma_after(i) and words.is_whole(colour_end, noun_end)
                and all(w.isalpha() or "-" in w for w in noun) and "of" not in noun):
            plural_noun = noun[-1].endswith("s") and not noun[-1].endswith(("ss", "us"))
            candidates.append((f"What colour {'are' if plural_noun else 'is'} the {' '.join(noun)}?",
                               words.text(i, colour_end)))
            break
    for i, word in enumerate(words.low[:-1]):
        if word in NUMBER_WORDS and words.low[i + 1] != "of" and not words.comma_after(i):
            end = words.noun_phrase_end(i + 1)
            if words.is_whole(i + 1, end) and end - i - 1 <= _MAX_SUBJECT_WORDS:
                candidates.append((f"How many {' '.join(words.low[i + 1:end])} are there?", words.low[i]))  # "two", as an answer is written
                break
    chosen = rng.sample(candidates, min(questions, len(candidates)))
    return [(question, precise, words.sentence) for question, precise in chosen]


def rule_output(record_id: str, caption: str, questions: int = 3, fmt: ParseFormat = LLAMA3) -> str:
    return render_output(rule_pairs(record_id, caption, questions), fmt)
