"""A realistic training workload for the benchmarks: image-caption conversations with synthetic tasks, images on
disk as JPEG at real sizes, lengths spread as in domain post-training data.

The AdaMLLM mixes (reference §4.1) hold one caption and a variable number of synthetic tasks per image, on
images from a few hundred to over a thousand pixels a side. What matters for throughput is reproduced here: the
spread of text lengths (1 to 8 tasks of 5 to 80 words), image sizes (long side uniform in ``min_side`` to
``max_side``, common aspect ratios) and JPEG decoding. The files are written once per parameter set under
``.cache/mllm_da/benchmarks/`` and reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from benchmarks.common import ROOT
from mllm_da.data.records import IMAGE_PLACEHOLDER, Conversation, Turn

CACHE = ROOT / ".cache" / "mllm_da" / "benchmarks"
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9)
_WORD_LIST = (
    "the a an of in on with and to for by from at near over under between left right top bottom center image "
    "figure panel shows showing scan slice tissue cell cells nucleus stained section arrow lesion region area "
    "plate dish food bowl sauce rice soup salad bread meat fish vegetable fruit served fried baked grilled "
    "field road river building roof tree forest farmland parking lot harbour ship runway aircraft residential "
    "red green blue yellow white black dark bright small large round square thin thick visible several two "
    "three many most which what where how why does is are was were can could shown describe explain answer "
    "question option correct because therefore likely indicates suggests consistent normal abnormal"
)
WORDS = tuple(_WORD_LIST.split())


@dataclass(frozen=True)
class WorkloadSpec:
    """What the generated data depends on (its hash names the cache folder)."""

    n: int = 64
    seed: int = 0
    min_side: int = 448
    max_side: int = 1280
    min_tasks: int = 1
    max_tasks: int = 8
    jpeg_quality: int = 90

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + "."


def _image(seed: int, width: int, height: int) -> Image.Image:
    """A smooth random picture (JPEG-compressible like a photo, unlike white noise)."""
    gen = np.random.default_rng(seed)
    coarse = gen.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR)


@dataclass(frozen=True)
class Drawn:
    """One generated conversation before its image is written: what length planning needs."""

    id: str
    turns: tuple[Turn, ...]
    size: tuple[int, int]
    image_seed: int


def draw(spec: WorkloadSpec = WorkloadSpec()) -> list[Drawn]:
    """``spec.n`` conversations, each one image (a caption round, then ``min_tasks``..``max_tasks`` task rounds)."""
    rng = random.Random(spec.seed)
    out = []
    for i in range(spec.n):
        long_side = rng.randint(spec.min_side, spec.max_side)
        aspect = rng.choice(ASPECTS)
        width, height = (
            (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
        )
        image_seed = rng.randrange(2**32)
        turns = [
            Turn("user", IMAGE_PLACEHOLDER + "Describe the image in detail."),
            Turn("assistant", " ".join(_sentence(rng, 8, 30) for _ in range(rng.randint(2, 6)))),
        ]
        for _ in range(rng.randint(spec.min_tasks, spec.max_tasks)):
            turns.append(Turn("user", _sentence(rng, 5, 30) + " " + _sentence(rng, 1, 12)))
            turns.append(Turn("assistant", " ".join(_sentence(rng, 3, 25) for _ in range(rng.randint(1, 3)))))
        out.append(Drawn(f"bench{i:05d}", tuple(turns), (width, height), image_seed))
    return out


def conversations(spec: WorkloadSpec = WorkloadSpec()) -> list[Conversation]:
    """:func:`draw`'s conversations with their images written as JPEG (once) under the benchmark cache."""
    folder = CACHE / f"workload-{spec.key()}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, drawn in enumerate(draw(spec)):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            buffer = io.BytesIO()
            _image(drawn.image_seed, *drawn.size).save(buffer, "JPEG", quality=spec.jpeg_quality)
            path.write_bytes(buffer.getvalue())
        out.append(Conversation(drawn.id, drawn.turns, (path,)))
    return out


def toy_conversations(n: int = 256, seed: int = 0, image_size: int = 112, max_tasks: int = 6) -> list[Conversation]:
    """``n`` toy-domain conversations (caption round + 1..``max_tasks`` rule tasks, as the demo trains on), the
    scenes rendered once to PNG under the benchmark cache."""
    from mllm_da import toy

    folder = CACHE / f"toy-{n}-{seed}-{image_size}-{max_tasks}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene = toy.sample_scene(rng, image_size)
        path = folder / f"{i:05d}.png"
        if not path.exists():
            toy.render_scene(scene).save(path)
        turns = [
            Turn("user", IMAGE_PLACEHOLDER + toy.caption_instruction(rng)),
            Turn("assistant", toy.describe_scene(scene)),
        ]
        for task in toy.rule_tasks(scene, rng, rng.randint(1, max_tasks)):
            turns += [Turn("user", task.prompt), Turn("assistant", task.answer)]
        out.append(Conversation(f"toy{i:05d}", turns, (path,)))
    return out
