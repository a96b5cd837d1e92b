"""Question templates for any caption (the rule synthesizer's non-toy branch): each answered by a whole phrase.

Templates are keyed on the caption's structure: its subject, where it is, what it does or shows, a colour, a
count. Each precise answer is a phrase of the caption (never cut mid-phrase), the informative answer the caption's
first sentence. A caption that supports fewer templates gets fewer tasks. The templates are listed in
docs/synthesis.md; the word lists they use are in :mod:`mllm_da.synthesis.caption_words`.
"""

from __future__ import annotations

import random
import re

from mllm_da.synthesis.caption_words import (
    AUXILIARIES,
    CLAUSE_WORDS,
    COLOUR_WORDS,
    DANGLING,
    DETERMINERS,
    LOCATIONS,
    MAX_NOUN_WORDS,
    MAX_SUBJECT_WORDS,
    MEDIA,
    NOT_LOCATIONS,
    NOT_VERBS,
    NUMBER_WORDS,
    OPENINGS,
    PARTICIPLES,
    PHRASE_ENDS,
    SHOW_VERBS,
    VERBS,
)


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
                return None if " ".join(self.low[i : i + 2]) in NOT_LOCATIONS else location
        return None

    def is_verb(self, i: int) -> bool:
        """Whether word ``i`` starts an action: a known verb, a participle, an -ing or -ed word, unless it
        opens a noun phrase ("a building", "the painting", "for fishing", "a red-tailed hawk")."""
        word = self.low[i]
        if not word.isalpha() or word in NOT_VERBS or word in AUXILIARIES:
            return False
        before = self.low[i - 1] if i > 0 else ""
        if (
            before in DETERMINERS
            or before in COLOUR_WORDS
            or before in PHRASE_ENDS
            or before == "of"
            or (i > 0 and self.location_at(i - 1) is not None)
        ):
            return False
        if word in VERBS or word in PARTICIPLES:
            return True
        return len(word) > 4 and (word.endswith("ing") or (word.endswith("ed") and not word.endswith("eed")))

    def breaks_noun_phrase(self, i: int, start: int) -> bool:
        """Whether word ``i`` ends a noun phrase that began at ``start`` (it is not part of it)."""
        if self.aside[i]:
            return True
        if i == start:
            return False
        word = self.low[i]
        if (
            word in ("and", "or")
            and self.low[i - 1] in COLOUR_WORDS
            and i + 1 < len(self)
            and self.low[i + 1] in COLOUR_WORDS
        ):  # "a white and blue boat"
            return False
        return (
            word in PHRASE_ENDS
            or word in AUXILIARIES
            or self.location_at(i) is not None
            or self.is_verb(i)
            or self.comma_after(i - 1)
        )

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
        return last not in DANGLING and any(c.isalnum() for c in last)


def _opening_length(words: _Caption) -> int:
    """How many leading words introduce the subject ("There is", "The image shows", "A close-up photo of")."""
    low = words.low
    start = 0
    if tuple(low[:2]) in OPENINGS:
        start = 2
    elif len(low) > 3 and low[0] in ("the", "this") and low[1] in MEDIA and low[2] in SHOW_VERBS:
        start = 3
    elif len(low) > 3 and low[0] == "in" and low[1] in ("this", "the") and words.comma_after(2):
        start = 3  # "In this image, ..."
    for i in range(start, min(start + 5, len(low) - 2)):  # "[a/an] [close-up] photo of", "Aerial view of"
        if low[i] in MEDIA and low[i + 1] == "of":
            if all(w in DETERMINERS or w.isalpha() or "-" in w for w in low[start:i]) and not any(
                words.is_verb(j) or words.location_at(j) for j in range(start, i)
            ):
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
    plural = (
        head[0] in NUMBER_WORDS
        or head[0] in ("many", "several", "these", "those", "both", "multiple")
        or (
            head[0] not in ("a", "an", "one", "this", "that")
            and head[-1].endswith("s")
            and not head[-1].endswith(("ss", "us", "is"))
        )
    )
    rest = phrase.split(" ", 1)[1] if " " in phrase else ""
    if low[0] in ("a", "an", "the", "this", "that", "these", "those", "many", "several", "some", "multiple"):
        return (f"the {rest}" if rest else phrase.lower()), plural
    if low[0] in NUMBER_WORDS and "of" not in low[1:2]:  # "Two black cats" → "the two black cats"
        return f"the {_lower_first(phrase)}", plural
    if (len(low) > 1 and low[1] in DETERMINERS) or low[0] in DETERMINERS:  # "Chelsea the cat", "two of the dogs"
        return (_lower_first(phrase) if low[0] in DETERMINERS else phrase), plural
    return f"the {_lower_first(phrase)}", plural


def _verb_phrase_end(words: _Caption, verb: int) -> int:
    """A verb phrase runs to a comma, the next action ("wearing a dress stands …") or a clause word."""
    end = verb + 1
    while end < len(words):
        if (
            words.comma_after(end - 1)
            or words.aside[end]
            or words.low[end] in ("while", "which", "that", "who", "whose")
        ):
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
    if verb in PARTICIPLES or verb.endswith("ed"):
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
    if start < cut <= start + MAX_SUBJECT_WORDS and words.is_whole(start, cut):
        candidates.append(("What does the image show?", words.text(start, cut)))
        named, plural = _named(words, start, cut)
        # its action: the first verb after it, unless a clause word hands that verb to another noun first
        verb = next(
            (i for i in range(cut, len(words)) if words.is_verb(i) or words.low[i] in CLAUSE_WORDS or words.aside[i]),
            None,
        )
        if verb is not None and not words.is_verb(verb):
            verb = None
        if verb is not None:
            verb_end = _verb_phrase_end(words, verb)
            if words.low[verb] in SHOW_VERBS:
                if words.is_whole(verb + 1, verb_end):
                    candidates.append(
                        (f"What {'do' if plural else 'does'} {named} show?", words.text(verb + 1, verb_end))
                    )
                    # where is what it shows: "a small nodule in the right lung"
                    shown_end = words.noun_phrase_end(verb + 1, verb_end)
                    where = _location(words, shown_end, verb_end)
                    if (
                        where is not None
                        and where[0] == shown_end
                        and words.is_whole(verb + 1, shown_end)
                        and shown_end - verb - 1 <= MAX_SUBJECT_WORDS
                    ):
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
        while (
            colour_end + 1 < len(words)
            and words.low[colour_end] in ("and", "or")
            and words.low[colour_end + 1] in COLOUR_WORDS
        ):
            colour_end += 2
        noun_end = words.noun_phrase_end(colour_end)
        noun = words.low[colour_end:noun_end]
        if (
            noun
            and len(noun) <= MAX_NOUN_WORDS
            and not words.comma_after(i)
            and words.is_whole(colour_end, noun_end)
            and all(w.isalpha() or "-" in w for w in noun)
            and "of" not in noun
        ):
            plural_noun = noun[-1].endswith("s") and not noun[-1].endswith(("ss", "us"))
            candidates.append(
                (
                    f"What colour {'are' if plural_noun else 'is'} the {' '.join(noun)}?",
                    words.text(i, colour_end),
                )
            )
            break
    for i, word in enumerate(words.low[:-1]):
        if word in NUMBER_WORDS and words.low[i + 1] != "of" and not words.comma_after(i):
            end = words.noun_phrase_end(i + 1)
            if words.is_whole(i + 1, end) and end - i - 1 <= MAX_SUBJECT_WORDS:
                candidates.append(
                    (f"How many {' '.join(words.low[i + 1 : end])} are there?", words.low[i])
                )  # "two", as an answer is written
                break
    chosen = rng.sample(candidates, min(questions, len(candidates)))
    return [(question, precise, words.sentence) for question, precise in chosen]
