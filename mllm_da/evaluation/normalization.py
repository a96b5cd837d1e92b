"""The VQA answer normaliser of the reference (LLaVA-Med v1.0.0 / VQA-eval, ``docs/adamllm-reference.md`` §5.3).

Open and closed VQA answers are compared after :func:`normalize`; its quirks are part of the published numbers and
are reproduced on purpose (each is documented where it happens). Used by :mod:`mllm_da.evaluation.scorers`.
"""

from __future__ import annotations

import re
from collections import Counter

PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
"""Punctuation marks handled by step 1 of :func:`normalize`, in the reference's order."""

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(\,)(\d)")
# The reference's look-behind is mistyped: ``(?!<=\d)`` is a negative LOOK-AHEAD for the literal text "<=" plus a
# digit, so the pattern effectively means "a period not followed by a digit".
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The reference calls ``pattern.sub("", text, re.UNICODE)``: the flag lands in the ``count`` slot and equals 32.
_PERIOD_COUNT: int = int(re.UNICODE)

NUMBER_MAP: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The standard VQA-evaluation contractions table, as used by LLaVA-Med.  Its odd entries are kept verbatim:
# keys with capitals ("Im", "Ive", "Id've", "I'dve") can never match because words are lower-cased first, and
# "somebody'd" maps to "somebodyd" (the reverse direction of every other entry).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def normalize(text: str) -> str:
    """The VQA-eval normaliser used by the reference (callers lower-case first, as the reference does).

    1. Each mark of :data:`PUNCTUATION` is deleted if the ORIGINAL ``text`` (not the partly processed one)
       contains ``p + " "`` or ``" " + p``, or contains any digit-comma-digit sequence; otherwise it is replaced
       by a space.  So ``"a-b"`` -> ``"a b"`` but ``"a - b"`` -> ``"a  b"`` and, once the input holds e.g.
       ``"1,000"``, every mark is deleted.
    2. Periods not followed by a digit are deleted, but only the first 32 (``re.UNICODE`` passed as count).
    3. Words (whitespace split, lower-cased) go through :data:`NUMBER_MAP`; articles are dropped.
    4. Words go through :data:`CONTRACTIONS`; they are joined by single spaces and every ``,`` is deleted.
    """
    out = text
    digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        delete = p + " " in text or " " + p in text or digit_comma  # tested on the ORIGINAL text
        out = out.replace(p, "" if delete else " ")
    out = _PERIOD.sub("", out, count=_PERIOD_COUNT)
    words = [NUMBER_MAP.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words).replace(",", "")


def word_counts(text: str) -> Counter[str]:
    """Bag of words: lower-case, strip, split on whitespace, count each word."""
    return Counter(text.lower().strip().split())
