"""Toy scenes: 1-4 coloured shapes on a light grey canvas, drawn from a seeded stream, and their captions.

Design (docs/toy-domain.md): the background is light grey (245 +- 5), so a processor normalising with mean 0.96 maps
it to about 0 and only the shapes carry signal; 1-4 objects, one per quadrant, with the count uniform, because
counting is the image property a tiny model picks up first; sizes differ by more than 2x (16 vs 36 px at 112 px) so
that size is visible in 14 px patches. Everything is deterministic given the random stream.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import cast

from mllm_da.toy.vocabulary import (
    BASE_RGB,
    CAPTION_INSTRUCTIONS,
    COLOURS,
    COUNT_WORDS,
    MAX_OBJECTS,
    QUADRANTS,
    SHAPES,
    SIZES,
)

BACKGROUND = 245
BACKGROUND_JITTER = 5
RGB_JITTER = 15
MIN_IMAGE_SIZE = 32  # below this a small shape is 3-4 px and no longer has a recognisable form
#: side lengths at the reference size of 112 px (scaled with the image), and their +- jitter
REFERENCE_SIZE = 112
SIDE = {"small": 16, "large": 36}
SIDE_JITTER = 2
MARGIN = 3  # px kept free inside each quadrant, so shapes never touch and the corners stay background


@dataclass(frozen=True)
class ToyObject:
    """One filled shape; ``box`` is (x0, y0, x1, y1) with x1, y1 exclusive, and lies inside its quadrant."""

    shape: str
    colour: str
    size: str
    quadrant: str
    box: tuple[int, int, int, int]
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class ToyScene:
    """A square canvas with a uniform grey background and objects in canonical quadrant order."""

    image_size: int
    background: int
    objects: tuple[ToyObject, ...]

    @property
    def count(self) -> int:
        return len(self.objects)


def quadrant_box(quadrant: str, image_size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a quadrant, right/bottom exclusive (PIL crop convention)."""
    if quadrant not in QUADRANTS:
        raise ValueError(f"unknown quadrant {quadrant!r}; expected one of {QUADRANTS}")
    half = image_size // 2
    vertical, horizontal = quadrant.split()
    left, right = (0, half) if horizontal == "left" else (half, image_size)
    top, bottom = (0, half) if vertical == "top" else (half, image_size)
    return left, top, right, bottom


def _scaled(value: int, image_size: int, minimum: int) -> int:
    return max(minimum, round(value * image_size / REFERENCE_SIZE))


def sample_scene(rng: random.Random, image_size: int = REFERENCE_SIZE) -> ToyScene:
    """Draw a scene: count uniform in 1-4, distinct quadrants, distinct (colour, shape) pairs."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    background = BACKGROUND + rng.randint(-BACKGROUND_JITTER, BACKGROUND_JITTER)
    count = rng.randint(1, MAX_OBJECTS)
    quadrants = sorted(rng.sample(QUADRANTS, count), key=QUADRANTS.index)
    pairs = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
    margin = _scaled(MARGIN, image_size, 1)
    jitter = _scaled(SIDE_JITTER, image_size, 0)
    objects = []
    for quadrant, (colour, shape) in zip(quadrants, pairs):
        size = rng.choice(SIZES)
        side = _scaled(SIDE[size], image_size, 2) + rng.randint(-jitter, jitter)
        left, top, right, bottom = quadrant_box(quadrant, image_size)
        x0 = rng.randint(left + margin, right - margin - side)
        y0 = rng.randint(top + margin, bottom - margin - side)
        jittered = (min(255, max(0, v + rng.randint(-RGB_JITTER, RGB_JITTER))) for v in BASE_RGB[colour])
        rgb = cast("tuple[int, int, int]", tuple(jittered))  # BASE_RGB colours are (r, g, b) triples
        objects.append(ToyObject(shape, colour, size, quadrant, (x0, y0, x0 + side, y0 + side), rgb))
    return ToyScene(image_size, background, tuple(objects))


def describe_scene(scene: ToyScene) -> str:
    """The caption: the count, then every object as size-colour-shape-position in canonical quadrant order."""
    phrases = [f"a {o.size} {o.colour} {o.shape} at the {o.quadrant}" for o in scene.objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    lead = "There is one shape" if scene.count == 1 else f"There are {COUNT_WORDS[scene.count]} shapes"
    return f"{lead}: {listed}."


def caption_instruction(rng: random.Random) -> str:
    """One of the captioning prompts, varied so that the model does not key on a single wording."""
    return rng.choice(CAPTION_INSTRUCTIONS)


_OBJECT = re.compile(
    r"a (small|large) (" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r") at the (" + "|".join(QUADRANTS) + r")"
)
_LEAD = re.compile(r"^There (?:is one shape|are (one|two|three|four) shapes): ")


def scene_from_caption(caption: str) -> ToyScene | None:
    """The toy scene a :func:`describe_scene` caption describes (boxes unknown), else None."""
    lead = _LEAD.match(caption)
    if lead is None:
        return None
    objects = tuple(
        ToyObject(shape, colour, size, quadrant, (0, 0, 0, 0), BASE_RGB[colour])
        for size, colour, shape, quadrant in _OBJECT.findall(caption[lead.end() :])
    )
    expected = 1 if lead.group(1) is None else list(COUNT_WORDS.values()).index(lead.group(1)) + 1
    if not objects or len(objects) != expected:
        return None
    return ToyScene(REFERENCE_SIZE, BACKGROUND, objects)
