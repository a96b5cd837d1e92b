"""Seed data for tuning a visual instruction synthesizer (reference §1.2–§1.4).

Every seed sample is one conversation on one image: the caption round (user: the fixed hint
``Describe the image.``, assistant: the caption), then every precise and every informative question-answer pair
of the image, shuffled together (``random.Random(sample index)``), each user turn being ``<hint>\\n<question>``.
Tuned with synthesizer masking (the caption round is masked, every later token trained), the model learns to
write hinted questions and both kinds of answers from an image and its caption.

Blank images (modality balancing): samples are grouped by task, each group is shuffled (seed 42), and each sample
is replaced by a blank image with probability ``blank_fraction`` (``random.Random(index in its group)``). The
project draws its own blank image (a plain white 240×160 PNG). Each group is split into train and dev
(``dev_fraction``), and both lists are shuffled (seed 12345). The blank image is used in tuning only.

Two sources:

* ``toy``: scenes drawn like the toy domain's (but a separate draw, as VisionFLAN is separate from a target
  domain), captioned by :func:`~mllm_da.data.toy.describe_scene`, with rule-made questions whose precise answer is
  the rule answer and whose informative answer is a rule-written explanation (:func:`informative_answer`).
* ``visionflan``: the three files of the reference (ALLaVA captions of Vision-FLAN images, Vision-FLAN precise
  QA, ALLaVA informative QA), merged by image file name as §1.2 describes.
"""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mllm_da.data import toy
from mllm_da.data.records import IMAGE_PLACEHOLDER, BadRecordError, Conversation, Turn, write_sharegpt
from mllm_da.synthesis.parse import CAPTION_HINT, INFORMATIVE_HINT, PRECISE_HINT
from mllm_da.utils.io import atomic_write_json

log = logging.getLogger(__name__)

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
        raise ValueError(f"need 0 <= blank_fraction <= 1 and 0 <= dev_fraction < 1, got {blank_fraction}, {dev_fraction}")
    groups: dict[str, list[SeedExample]] = defaultdict(list)
    for example in examples:
        groups[example.task_name].append(example)
    train: list[tuple[SeedExample, bool]] = []
    dev: list[tuple[SeedExample, bool]] = []
    for task in sorted(groups):
        group = groups[task]
        random.Random(TASK_SHUFFLE_SEED).shuffle(group)
        marked = [
            (ex, random.Random(i).choices([True, False], weights=(blank_fraction, 1.0 - blank_fraction))[0])
            for i, ex in enumerate(group)
        ]
        n_dev = int(len(marked) * dev_fraction)
        train.extend(marked[: len(marked) - n_dev])
        dev.extend(marked[len(marked) - n_dev:])
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


# --------------------------------------------------------------------------------------------------- toy


def _listing(objects: Sequence[toy.ToyObject]) -> str:
    names = [f"a {o.colour} {o.shape}" for o in objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _subject(scene: toy.ToyScene, question: str) -> toy.ToyObject | None:
    """The object a rule question is about: named by colour and shape, else by quadrant, else by one attribute."""
    q = question.lower()
    for test in (
        lambda o: f"{o.colour} {o.shape}" in q,
        lambda o: o.quadrant in q,
        lambda o: f"the {o.shape}" in q,
        lambda o: f"the {o.colour} object" in q,
    ):
        hits = [o for o in scene.objects if test(o)]
        if len(hits) == 1:
            return hits[0]
    return None


def informative_answer(scene: toy.ToyScene, task: toy.ToyTask, rng: random.Random) -> str:
    """A rule-written explanation of a toy task's answer: the relevant facts, then (usually) a conclusion.

    Conclusions vary on purpose: some end with an indicator ("so", "the answer"), some do not, so that every
    branch of the informative-as-chain-of-thought rules (reference §3.3) occurs in toy data.
    """
    subject = _subject(scene, task.question)
    if task.question_type == "count" or subject is None:
        lead = "There is one shape" if scene.count == 1 else f"There are {toy.COUNT_WORDS[scene.count]} shapes"
        fact = f"{lead} in the image: {_listing(scene.objects)}."
    elif task.question_type == "exist" and task.answer == "no":
        fact = f"The image shows {_listing(scene.objects)}, and none of them matches."
    else:
        o = subject
        fact = f"The {o.colour} {o.shape} at the {o.quadrant} is {o.size}."
    answer = task.answer_text if task.options is None else f"{task.answer}, {task.answer_text}"
    conclusions = (
        f"So the answer is {answer}.",
        f"Thus the answer is {answer}.",
        f"This gives {answer}.",
        "",
    )
    conclusion = rng.choice(conclusions)
    return f"{fact} {conclusion}".strip()


def toy_seed_examples(
    folder: Path, n_images: int, questions_per_image: int = 3, seed: int = 0, image_size: int = toy.REFERENCE_SIZE
) -> list[SeedExample]:
    """Draw ``n_images`` toy scenes into ``folder/images`` with a caption and rule-made precise/informative QA."""
    if n_images < 1 or questions_per_image < 1:
        raise ValueError(f"need n_images >= 1 and questions_per_image >= 1, got {n_images}, {questions_per_image}")
    scene_rng, text_rng = random.Random(f"mllm-da-seed/{seed}/scenes"), random.Random(f"mllm-da-seed/{seed}/texts")
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    examples = []
    for i in range(n_images):
        scene = toy.sample_scene(scene_rng, image_size)
        path = images / f"seed_{i:06d}.png"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            toy.render_scene(scene).save(tmp, format="PNG")
            os.replace(tmp, path)
        tasks = toy.rule_tasks(scene, text_rng, questions_per_image)
        qa = []
        for task in tasks:
            qa.append(SeedQA(PRECISE_HINT, task.prompt, task.answer))
            qa.append(SeedQA(INFORMATIVE_HINT, task.prompt, informative_answer(scene, task, text_rng)))
        task_name = f"{tasks[0].question_type}_{tasks[0].answer_type}".lower()
        examples.append(SeedExample(f"seed-{i:06d}", path, toy.describe_scene(scene), tuple(qa), task_name, i))
    return examples


# --------------------------------------------------------------------------------------------------- VisionFLAN


def strip_image_marker(text: str) -> str | None:
    """A question without its ``<image>`` marker, which must be a leading ``<image>\\n`` or a trailing
    ``\\n<image>`` (or absent); ``None`` when it sits anywhere else."""
    if text.startswith(IMAGE_PLACEHOLDER + "\n"):
        text = text[len(IMAGE_PLACEHOLDER) + 1:]
    elif text.endswith("\n" + IMAGE_PLACEHOLDER):
        text = text[: -len(IMAGE_PLACEHOLDER) - 1]
    return None if IMAGE_PLACEHOLDER in text else text


class _SeedReader:
    """Reads one LLaVA-form JSON list; a bad record is skipped and counted, or raises naming file#index and field."""

    def __init__(self, policy: str, report: SeedReport) -> None:
        self.policy = policy
        self.report = report

    def records(self, path: Path) -> list[tuple[str, dict[str, Any]]]:
        import json

        if not path.is_file():
            raise FileNotFoundError(f"seed file {path} does not exist")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        return [(f"{path}#{i + 1}", record) for i, record in enumerate(data)]

    def bad(self, path: Path, source: str, where: str, key: str, reason: str) -> None:
        self.report.dropped[key] = self.report.dropped.get(key, 0) + 1
        if self.policy == "fail":
            raise BadRecordError(path, source.rsplit("#", 1)[-1], source, where, key, reason)
        log.debug("%s: field '%s': %s [%s]", source, where, reason, key)

    def qa(self, path: Path, source: str, record: Any) -> tuple[str, list[tuple[str, str]]] | None:
        """(image basename, [(question, answer)]) of one record, or None when it is bad (and counted)."""
        if not isinstance(record, dict):
            self.bad(path, source, "$", "not_object", "a record must be a JSON object")
            return None
        image = record.get("image")
        if not isinstance(image, str) or not image:
            self.bad(path, source, "image", "missing_field", "needs an 'image' path")
            return None
        turns = record.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
            self.bad(path, source, "conversations", "wrong_type", "needs an even, non-empty list of turns")
            return None
        pairs = []
        for i in range(0, len(turns), 2):
            human, gpt = turns[i], turns[i + 1]
            ok = isinstance(human, dict) and isinstance(gpt, dict)
            if not ok or not isinstance(human.get("value"), str) or not isinstance(gpt.get("value"), str):
                self.bad(path, source, f"conversations[{i}]", "wrong_type", "turns need string 'value's")
                return None
            question = strip_image_marker(human["value"])
            if question is None:
                self.bad(path, source, f"conversations[{i}].value", "bad_marker",
                         "the <image> marker must be a leading '<image>\\n' or a trailing '\\n<image>'")
                return None
            pairs.append((question.strip(), gpt["value"].strip()))
        return Path(image).name, pairs


def visionflan_examples(
    caption_file: str | os.PathLike,
    precise_file: str | os.PathLike,
    informative_file: str | os.PathLike,
    image_root: str | os.PathLike,
    policy: str = "skip",
    report: SeedReport | None = None,
) -> tuple[list[SeedExample], SeedReport]:
    """Merge the three reference files by image file name (first caption wins; every QA pair appended; images
    without both precise and informative QA dropped; task name from the last precise record)."""
    report = report or SeedReport()
    reader = _SeedReader(policy, report)
    root = Path(image_root)
    captions: dict[str, tuple[str, str]] = {}
    for source, record in reader.records(Path(caption_file)):
        parsed = reader.qa(Path(caption_file), source, record)
        if parsed is not None and parsed[0] not in captions:
            captions[parsed[0]] = (parsed[1][0][1], record["image"])
    precise: dict[str, list[tuple[str, str]]] = defaultdict(list)
    task_names: dict[str, str] = {}
    image_paths: dict[str, str] = {}
    for source, record in reader.records(Path(precise_file)):
        parsed = reader.qa(Path(precise_file), source, record)
        if parsed is None:
            continue
        precise[parsed[0]].extend(parsed[1])
        task_names[parsed[0]] = str(record.get("task_name", "unknown"))
        image_paths[parsed[0]] = record["image"]
    informative: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for source, record in reader.records(Path(informative_file)):
        parsed = reader.qa(Path(informative_file), source, record)
        if parsed is not None:
            informative[parsed[0]].extend(parsed[1])
    examples = []
    for name, (caption, caption_image) in captions.items():
        if not precise.get(name) or not informative.get(name):
            report.dropped["no_precise_or_informative_qa"] = report.dropped.get("no_precise_or_informative_qa", 0) + 1
            continue
        candidates = [root / image_paths[name], root / name, root / caption_image]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            reader.bad(Path(caption_file), f"{caption_file}:{name}", "image", "missing_image",
                       f"no image file for {name} under {root}")
            continue
        qa = [SeedQA(PRECISE_HINT, q, a) for q, a in precise[name]]
        qa += [SeedQA(INFORMATIVE_HINT, q, a) for q, a in informative[name]]
        examples.append(SeedExample(Path(name).stem, path.resolve(), caption, tuple(qa), task_names[name], len(examples)))
    return examples, report


def build_seed(folder: Path, settings: Mapping[str, Any], policy: str = "skip") -> tuple[SeedFiles, SeedReport]:
    """Build the seed set ``settings`` describes (the ``seed_data`` node of conf/synth.yaml) into ``folder``."""
    source = settings["source"]
    blank, dev = float(settings["blank_fraction"]), float(settings["dev_fraction"])
    if source == "toy":
        examples = toy_seed_examples(
            folder, int(settings["n_images"]), int(settings["questions_per_image"]), int(settings["seed"])
        )
        return write_seed(folder, examples, folder.resolve(), blank, dev)
    if source == "visionflan":
        vf = settings["visionflan"]
        examples, report = visionflan_examples(
            vf["caption_file"], vf["precise_file"], vf["informative_file"], vf["image_root"], policy
        )
        if not examples:
            raise ValueError(f"seed_data.visionflan: no usable image in {vf['caption_file']} (dropped: {report.dropped})")
        # the blank image lives in the seed folder and the photos in the user's folder: one root above both
        root = Path(os.path.commonpath([folder.resolve(), Path(vf["image_root"]).resolve()]))
        return write_seed(folder, examples, root, blank, dev, report)
    raise ValueError(f"seed_data.source must be toy or visionflan, got {source!r}")
