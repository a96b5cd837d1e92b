"""The built-in toy domain: coloured shapes on a light grey canvas, with captions, rule tasks and a benchmark.

It lets the whole pipeline (mixing, synthesis, training, evaluation) run offline on CPU with a tiny random model,
so its design follows what such a model can learn (docs/toy-domain.md). It sits at the bottom of the package, with
:mod:`mllm_da.utils`: the tiny tokenizers, the synthesizer's rules and the readers use it, never the reverse.

Modules, one job each: :mod:`~mllm_da.toy.vocabulary` (the words), :mod:`~mllm_da.toy.scene` (drawing a scene and
its caption), :mod:`~mllm_da.toy.images` (pixels and PNG files), :mod:`~mllm_da.toy.tasks` (rule questions,
benchmark rows, explanations), :mod:`~mllm_da.toy.seed` (seed images for a synthesizer) and
:mod:`~mllm_da.toy.build` (the domain's files on disk).
"""

from mllm_da.toy.build import FORMAT_VERSION, ToyDomainFiles, build_toy_domain
from mllm_da.toy.images import png_bytes, render_scene, write_png
from mllm_da.toy.scene import (
    BACKGROUND,
    MIN_IMAGE_SIZE,
    REFERENCE_SIZE,
    ToyObject,
    ToyScene,
    caption_instruction,
    describe_scene,
    quadrant_box,
    sample_scene,
    scene_from_caption,
)
from mllm_da.toy.seed import ToySeedImage, toy_seed_images
from mllm_da.toy.tasks import (
    ToyTask,
    informative_answer,
    rule_tasks,
    sample_texts,
    scene_questions,
    task_row,
)
from mllm_da.toy.vocabulary import (
    ANSWER_TYPES,
    BASE_RGB,
    CAPTION_INSTRUCTIONS,
    COLOURS,
    COUNT_WORDS,
    LETTERS,
    MAX_OBJECTS,
    MC_INSTRUCTION,
    QUADRANTS,
    QUESTION_TYPES,
    SHAPES,
    SIZES,
    YES_NO,
)

__all__ = [
    "ANSWER_TYPES",
    "BACKGROUND",
    "BASE_RGB",
    "CAPTION_INSTRUCTIONS",
    "COLOURS",
    "COUNT_WORDS",
    "FORMAT_VERSION",
    "LETTERS",
    "MAX_OBJECTS",
    "MC_INSTRUCTION",
    "MIN_IMAGE_SIZE",
    "QUADRANTS",
    "QUESTION_TYPES",
    "REFERENCE_SIZE",
    "SHAPES",
    "SIZES",
    "YES_NO",
    "ToyDomainFiles",
    "ToyObject",
    "ToyScene",
    "ToySeedImage",
    "ToyTask",
    "build_toy_domain",
    "caption_instruction",
    "describe_scene",
    "informative_answer",
    "png_bytes",
    "quadrant_box",
    "render_scene",
    "rule_tasks",
    "sample_scene",
    "sample_texts",
    "scene_from_caption",
    "scene_questions",
    "task_row",
    "toy_seed_images",
    "write_png",
]
