"""The seed data format for tuning a visual instruction synthesizer (reference §1.3–§1.4).

Every seed sample is one conversation on one image: the caption round (user: the fixed hint
``Describe the image.``, assistant: the caption), then every precise and every informative question-answer pair
of the image, shuffled together (``random.Random(sample index)``), each user turn being ``<hint>\\n<question>``.
Tuned with synthesizer masking (the caption round is masked, every later token trained), the model learns to
write hinted questions and both kinds of answers from an image and its caption.

Blank images (modality balancing): samples are grouped by task, each group is shuffled (seed 42), and each sample
is replaced by a blank image with probability ``blank_fraction`` (``random.Random(index in its group)``). The
project draws its own blank image (a plain white 240×160 PNG). Each group, in the order the tasks first appear,
is split into ``int((1 - dev_fraction) * n)`` train samples and the rest dev (so dev gets the rounding: a task of
under ten samples still gives one to dev at 0.1), and both lists are shuffled (seed 12345). The blank image is
used in tuning only.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mllm_da.data.records import write_sharegpt
from mllm_da.synthesis.parse import CAPTION_HINT
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER, Conversation, Turn
from mllm_da.utils.io import atomic_write_json

BLANK_SIZE = (240, 160)
BLANK_NAME = "blank.png"
#: the reference's seeds for the per-task shuffle and the train/dev shuffle (§8.3)
TASK_SHUFFLE_SEED = 42
SPLIT_SHUFFLE_SEED = 12345


@dataclass(frozen=True)
class SeedQA:
    """One question-answer pair with its hint (precise or informative)."""

    hint: str
    question: str
    answer: str


@dataclass(frozen=True)
class SeedExample:
    """An image, its caption and all its hinted QA pairs; ``index`` seeds the QA shuffle."""

    id: str
    image: Path
    caption: str
    qa: tuple[SeedQA, ...]
    task_name: str
    index: int


@dataclass
class SeedReport:
    """Counts of what the seed builder read, kept, dropped (by reason) and blanked."""

    examples: int = 0
    train: int = 0
    dev: int = 0
    blank_train: int = 0
    blank_dev: int = 0
    qa_pairs: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    #: VisionFLAN: records read in the three files, refused as bad, merged into examples, and left out by the merge
    #: (by reason); read == rejected + merged + sum(unused)
    read: int = 0
    rejected: int = 0
    merged: int = 0
    unused: dict[str, int] = field(default_factory=dict)
    rejects_path: str | None = None


@dataclass(frozen=True)
class SeedFiles:
    """The written seed set: ShareGPT files with image paths relative to ``image_root``."""

    train: Path
    dev: Path
    image_root: Path
    blank_image: Path


def seed_turns(example: SeedExample, image: str = IMAGE_PLACEHOLDER) -> list[Turn]:
    """The §1.3 conversation: caption round, then the shuffled hinted QA pairs."""
    pairs = list(example.qa)
    random.Random(example.index).shuffle(pairs)
    turns = [Turn("user", f"{image}\n{CAPTION_HINT}"), Turn("assistant", example.caption)]
    for qa in pairs:
        turns += [Turn("user", f"{qa.hint}\n{qa.question}"), Turn("assistant", qa.answer)]
    return turns


def draw_blank_image(path: Path) -> Path:
    """The project's own blank image: plain white, so it carries no visual information at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.new("RGB", BLANK_SIZE, (255, 255, 255)).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def split_and_blank(
    examples: Sequence[SeedExample], blank_fraction: float, dev_fraction: float
) -> tuple[list[tuple[SeedExample, bool]], list[tuple[SeedExample, bool]]]:
    """Group by task, shuffle each group, draw blanks and split; returns (train, dev) of (example, is_blank)."""
    if not 0.0 <= blank_fraction <= 1.0 or not 0.0 <= dev_fraction < 1.0:
        raise ValueError(
            f"need 0 <= blank_fraction <= 1 and 0 <= dev_fraction < 1, got {blank_fraction}, {dev_fraction}"
        )
    groups: dict[str, list[SeedExample]] = defaultdict(list)
    for example in examples:
        groups[example.task_name].append(example)
    train: list[tuple[SeedExample, bool]] = []
    dev: list[tuple[SeedExample, bool]] = []
    for group in groups.values():  # tasks in the order they first appear in the file, as the reference walks them
        random.Random(TASK_SHUFFLE_SEED).shuffle(group)
        marked = [
            (ex, random.Random(i).choices([True, False], weights=(blank_fraction, 1.0 - blank_fraction))[0])
            for i, ex in enumerate(group)
        ]
        n_train = int(len(marked) * (1.0 - dev_fraction))  # the reference rounds the train share down
        train.extend(marked[:n_train])
        dev.extend(marked[n_train:])
    random.Random(SPLIT_SHUFFLE_SEED).shuffle(train)
    random.Random(SPLIT_SHUFFLE_SEED).shuffle(dev)
    return train, dev


def write_seed(
    folder: Path,
    examples: Sequence[SeedExample],
    image_root: Path,
    blank_fraction: float = 0.1,
    dev_fraction: float = 0.1,
    report: SeedReport | None = None,
) -> tuple[SeedFiles, SeedReport]:
    """Write ``seed_train.json`` / ``seed_dev.json`` (and the blank image) into ``folder``."""
    report = report or SeedReport()
    blank = draw_blank_image(folder / BLANK_NAME)
    train, dev = split_and_blank(examples, blank_fraction, dev_fraction)

    def conversations(items: list[tuple[SeedExample, bool]]) -> list[Conversation]:
        return [
            Conversation(id=ex.id, turns=tuple(seed_turns(ex)), images=(blank if is_blank else ex.image,))
            for ex, is_blank in items
        ]

    files = SeedFiles(folder / "seed_train.json", folder / "seed_dev.json", image_root, blank)
    write_sharegpt(files.train, conversations(train), image_root)
    write_sharegpt(files.dev, conversations(dev), image_root)
    report.examples = len(examples)
    report.train, report.dev = len(train), len(dev)
    report.blank_train = sum(b for _, b in train)
    report.blank_dev = sum(b for _, b in dev)
    report.qa_pairs = sum(len(ex.qa) for ex in examples)
    atomic_write_json(folder / "seed_report.json", vars(report))
    return files, report
