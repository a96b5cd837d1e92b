"""The toy domain's words: what a scene can hold, how it is asked about, and how answers are written.

The vocabulary is small on purpose: a tiny model's tokenizer is trained on these texts
(:func:`mllm_da.backbones.tiny.tokenizer_corpus`), so every domain word is a single token, and a model of a few
million parameters can learn the answer format in a few dozen steps (docs/toy-domain.md).
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: saturated base colours, far from the grey background and from one another
BASE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 20),
}
COLOURS: tuple[str, ...] = tuple(BASE_RGB)
SIZES: tuple[str, ...] = ("small", "large")
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
MAX_OBJECTS = len(QUADRANTS)

CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image.",
    "What is in the picture?",
    "Describe the shapes in the image.",
)
#: closes a multiple-choice prompt (the custom domain's benchmark uses it too, so its MC rows read alike)
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
ANSWER_TYPES: tuple[str, ...] = ("OPEN", "CLOSED", "MC")
QUESTION_TYPES: tuple[str, ...] = ("count", "colour", "shape", "size", "position", "exist")
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
YES_NO: tuple[str, ...] = ("yes", "no")
