"""The seed stage: build the seed set ``conf/synth.yaml``'s ``seed_data`` describes, from one of two sources.

* ``toy``: scenes drawn like the toy domain's (but a separate draw, as VisionFLAN is separate from a target
  domain), captioned and asked about by the toy rules, with rule-written informative answers
  (:func:`mllm_da.toy.toy_seed_images`).
* ``visionflan``: the three files of the reference, merged by image file name (:mod:`mllm_da.synthesis.visionflan`).

The seed data format and its train/dev split live in :mod:`mllm_da.synthesis.seed_format`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mllm_da.synthesis.parse import INFORMATIVE_HINT, PRECISE_HINT
from mllm_da.synthesis.seed_format import SeedExample, SeedFiles, SeedQA, SeedReport, write_seed
from mllm_da.synthesis.visionflan import visionflan_examples
from mllm_da.toy import REFERENCE_SIZE, toy_seed_images

__all__ = ["SeedFiles", "SeedReport", "build_seed", "toy_seed_examples"]


def toy_seed_examples(
    folder: Path,
    n_images: int,
    questions_per_image: int = 3,
    seed: int = 0,
    image_size: int = REFERENCE_SIZE,
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
    balanced_types: bool = False,
) -> list[SeedExample]:
    """Seed examples of ``n_images`` toy scenes drawn into ``folder/images``: each task once with its precise (rule)
    answer and once with its informative (rule-written explanation) answer; narrowing as
    :func:`~mllm_da.toy.toy_seed_images` describes."""
    drawn = toy_seed_images(
        folder, n_images, questions_per_image, seed, image_size, question_types, answer_types, balanced_types
    )
    examples = []
    for image in drawn:
        qa = []
        for task, informative in image.answered:
            qa.append(SeedQA(PRECISE_HINT, task.prompt, task.answer))
            qa.append(SeedQA(INFORMATIVE_HINT, task.prompt, informative))
        examples.append(SeedExample(image.id, image.image, image.caption, tuple(qa), image.task_name, image.index))
    return examples


def build_seed(folder: Path, settings: Mapping[str, Any], policy: str = "skip") -> tuple[SeedFiles, SeedReport]:
    """Build the seed set ``settings`` describes (the ``seed_data`` node of conf/synth.yaml) into ``folder``."""
    source = settings["source"]
    blank, dev = float(settings["blank_fraction"]), float(settings["dev_fraction"])
    if source == "toy":
        examples = toy_seed_examples(
            folder,
            int(settings["n_images"]),
            int(settings["questions_per_image"]),
            int(settings["seed"]),
            question_types=settings.get("question_types"),
            answer_types=settings.get("answer_types"),
            balanced_types=bool(settings.get("balanced_types", False)),
        )
        return write_seed(folder, examples, folder.resolve(), blank, dev)
    if source == "visionflan":
        vf = settings["visionflan"]
        rejects = folder / "seed_rejects.jsonl"
        examples, report = visionflan_examples(
            vf["caption_file"],
            vf["precise_file"],
            vf["informative_file"],
            vf["image_root"],
            policy,
            rejects_path=rejects,
            check_images=True,
        )
        if not examples:
            raise ValueError(
                f"seed_data.visionflan: no usable image in {vf['caption_file']} (refused: {report.dropped}, "
                f"left out: {report.unused}; see {rejects})"
            )
        # the blank image lives in the seed folder and the photos in the user's folder: one root above both
        root = Path(os.path.commonpath([folder.resolve(), Path(vf["image_root"]).resolve()]))
        return write_seed(folder, examples, root, blank, dev, report)
    raise ValueError(f"seed_data.source must be toy or visionflan, got {source!r}")
