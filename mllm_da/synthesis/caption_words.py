"""The word lists behind the rule synthesizer's caption templates (:mod:`mllm_da.synthesis.caption_templates`).

Heuristics over English captions, not a parser: each word is classed by these small lists and its neighbours, so
that every answer is a slice of the caption that starts and ends at a phrase boundary. No model, no download.
Adding a word changes what the rules write: bump :data:`mllm_da.synthesis.rules.RULES_VERSION` with it.
"""

from __future__ import annotations

#: words that start a phrase about where something is (multi-word ones first, so "in front of" wins over "in")
LOCATIONS: tuple[str, ...] = (
    "in front of",
    "on top of",
    "next to",
    "close to",
    "in the middle of",
    "on",
    "in",
    "at",
    "under",
    "near",
    "beside",
    "behind",
    "over",
    "against",
    "inside",
    "above",
    "below",
    "along",
    "across",
    "among",
    "between",
    "outside",
    "around",
    "underneath",
    "beneath",
    "atop",
)
COLOUR_WORDS: tuple[str, ...] = (
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "grey",
    "gray",
    "golden",
    "silver",
    "beige",
    "turquoise",
)
NUMBER_WORDS: tuple[str, ...] = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
#: words that open a noun phrase: a word right after one is a noun or an adjective, never the verb
DETERMINERS = frozenset(
    {
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "some",
        "many",
        "several",
        "one",
        "its",
        "his",
        "her",
        "their",
        "each",
        "every",
        "both",
        "multiple",
        *NUMBER_WORDS,
    }
)
#: words that end a noun phrase without saying where (what follows is an attribute, an action or a clause)
PHRASE_ENDS = frozenset(
    {
        "with",
        "and",
        "or",
        "but",
        "while",
        "from",
        "by",
        "into",
        "onto",
        "through",
        "during",
        "for",
        "to",
        "as",
        "that",
        "which",
        "who",
        "whose",
        "where",
        "when",
        "than",
        "like",
        "without",
    }
)
#: auxiliaries: they end a subject but are not the action ("is riding": the action is "riding")
AUXILIARIES = frozenset(
    {
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "can",
        "could",
        "will",
        "would",
        "may",
        "might",
    }
)
VERBS = frozenset(
    {
        "poses",
        "stands",
        "sits",
        "lies",
        "rests",
        "hangs",
        "holds",
        "shows",
        "flies",
        "floats",
        "grows",
        "runs",
        "walks",
        "looks",
        "waits",
        "leans",
        "covers",
        "fills",
        "swims",
        "plays",
        "eats",
        "drinks",
        "smiles",
        "carries",
        "wears",
        "rides",
        "jumps",
        "reads",
        "depicts",
        "contains",
        "features",
        "displays",
        "reveals",
        "demonstrates",
        "illustrates",
    }
)
#: irregular past participles that start a verb phrase ("coins laid out in rows")
PARTICIPLES = frozenset(
    {
        "laid",
        "seen",
        "taken",
        "shown",
        "drawn",
        "built",
        "made",
        "set",
        "held",
        "worn",
        "hung",
        "spread",
        "lit",
        "cut",
        "kept",
        "caught",
        "sold",
        "written",
    }
)
#: nouns (and adjectives) that end like verbs: "a tall building", "a speed boat", "a sacred site"
NOT_VERBS = frozenset(
    {
        "building",
        "painting",
        "drawing",
        "ceiling",
        "clothing",
        "morning",
        "evening",
        "wedding",
        "thing",
        "string",
        "spring",
        "swing",
        "sling",
        "parking",
        "railing",
        "pudding",
        "dumpling",
        "icing",
        "frosting",
        "filling",
        "topping",
        "stuffing",
        "dressing",
        "seasoning",
        "lighting",
        "lightning",
        "landing",
        "crossing",
        "opening",
        "bedding",
        "housing",
        "siding",
        "awning",
        "earring",
        "sibling",
        "seedling",
        "sapling",
        "duckling",
        "offering",
        "carving",
        "etching",
        "engraving",
        "marking",
        "setting",
        "flooring",
        "roofing",
        "fencing",
        "plumbing",
        "wiring",
        "hundred",
        "sacred",
        "naked",
        "wicked",
        "rugged",
        "crooked",
        "jagged",
        "ragged",
        "beloved",
        "kindred",
    }
)
#: verbs whose object is what the image shows ("a CT scan showing a mass"): asked as "What does … show?"
SHOW_VERBS = frozenset(
    {
        "show",
        "shows",
        "showing",
        "depict",
        "depicts",
        "depicting",
        "demonstrate",
        "demonstrates",
        "demonstrating",
        "reveal",
        "reveals",
        "revealing",
        "contain",
        "contains",
        "containing",
        "feature",
        "features",
        "featuring",
        "display",
        "displays",
        "displaying",
        "illustrate",
        "illustrates",
        "illustrating",
    }
)
#: words naming the picture itself: "A photo of a dog" is about the dog
MEDIA = frozenset({"photo", "photograph", "picture", "image", "close-up", "closeup", "view", "shot", "snapshot"})
#: caption openings that introduce the subject without being it
OPENINGS: tuple[tuple[str, ...], ...] = (
    ("there", "is"),
    ("there", "are"),
    ("here", "is"),
    ("here", "are"),
    ("this", "is"),
    ("these", "are"),
    ("it", "is"),
)
#: phrases that start like a location but do not say where ("cut in half")
NOT_LOCATIONS = frozenset({"in half", "in focus", "in color", "in colour", "in detail", "at once"})
#: words between a subject and a verb that hand the verb to another noun ("an area with houses arranged …")
CLAUSE_WORDS = frozenset({"with", "and", "or", "while", "which", "that", "who", "whose", "from", "by", "for"})
MAX_SUBJECT_WORDS = 6
#: words a whole phrase cannot end on: they need more after them ("in front of an", "A white", "poses in")
DANGLING = frozenset(
    {
        *DETERMINERS,
        *PHRASE_ENDS,
        *AUXILIARIES,
        "of",
        *COLOUR_WORDS,
        *(w for location in LOCATIONS for w in location.split()),
    }
)
MAX_NOUN_WORDS = 3
