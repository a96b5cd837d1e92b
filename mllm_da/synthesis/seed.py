"""Seed data for tuning a visual instruction synthesizer (reference §1.2–§1.4).

Every seed sample is one conversation on one image: the caption round (user: the fixed hint
``Describe the image.``, assistant: the caption), then every precise and every informative question-answer pair
of the image, shuffled together (``random.Random(sample index)``), each user turn being ``<hint>\\n<question>``.
Tuned with synthesizer masking (the caption round is masked, every later token trained), the model learns to
write hinted questions and both kinds of answers from an image and its caption.

Blank images (modality balancing): samples are grouped by task, each group is shuffled (seed 42), and each sample
is replaced by a blank image with probability ``blank_fraction`` (``random.Random(index in its group)``). The
project draws its own blank image (a plain white 240×160 PNG). Each group, in the order the tasks first appear,
is split into ``int((1 - dev_fraction) * n)`` train samples and the rest dev (so dev gets the rounding: a task of
under ten samples still gives one to dev at 0.1), and both lists are shuffled (seed 12345). The blank image is used in tuning only.

Two sources:

* ``toy``: scenes drawn like the toy domain's (but a separate draw, as VisionFLAN is separate from a target
  domain), captioned by :func:`~mllm_da.data.toy.describe_scene`, with rule-made questions whose precise answer is
  the rule answer and whose informative answer is a rule-written explanation (:func:`informative_answer`).
* ``visionflan``: the three files of the reference (ALLaVA captions of Vision-FLAN images, Vision-FLAN precise
  QA, ALLaVA informative QA), merged by image file name as §1.2 describes.
"""

from __future__ import annotations

import json
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
from mllm_da.data.records import (
    IMAGE_PLACEHOLDER,
    BadImageError,
    BadRecordError,
    Conversation,
    Turn,
    _Invalid,
    load_image,
    load_json_list,
    locate_image,
    lone_surrogate,
    write_sharegpt,
)
from mllm_da.synthesis.parse import CAPTION_HINT, INFORMATIVE_HINT, PRECISE_HINT
from mllm_da.utils.io import atomic_write_json, atomic_write_text

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
        raise ValueError(f"need 0 <= blank_fraction <= 1 and 0 <= dev_fraction < 1, got {blank_fraction}, {dev_fraction}")
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
    folder: Path,
    n_images: int,
    questions_per_image: int = 3,
    seed: int = 0,
    image_size: int = toy.REFERENCE_SIZE,
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
) -> list[SeedExample]:
    """Draw ``n_images`` toy scenes into ``folder/images`` with a caption and rule-made precise/informative QA.

    ``question_types`` / ``answer_types`` (None: all) narrow the kinds of question asked. A tiny synthesizer decodes
    greedily, so it writes the seed set's most common question shape for every image; narrowing the seed set picks
    which shape that is (the toy demo asks for counts, what a tiny model learns from pixels first).
    """
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
        tasks = toy.rule_tasks(
            scene, text_rng, questions_per_image, answer_types or toy.ANSWER_TYPES, question_types or toy.QUESTION_TYPES
        )
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


#: why a seed record is refused (a bad record: an error under ``policy="fail"``) or left out of the seed set by the
#: §1.2 merge (never an error); ``seed_rejects.jsonl`` and the report use these keys
SEED_REASONS: Mapping[str, str] = {
    "not_object": "the record is not a JSON object",
    "missing_field": "a required field ('image', 'conversations', a turn's 'value') is absent or empty",
    "wrong_type": "a field has the wrong JSON type, or the turns are not an even, non-empty list",
    "not_utf8": "a string holds a lone surrogate (it cannot be written as UTF-8)",
    "bad_path": "the image path contains a NUL byte",
    "bad_marker": "the <image> marker is neither a leading '<image>\\n' nor a trailing '\\n<image>'",
    "empty_turn": "a caption, question or answer is empty or only whitespace",
    "path_escape": "the image path resolves outside the image root",
    "missing_image": "no image file for the record's image",
    "bad_image": "the image file does not decode (truncated, not an image)",
    # left out by the merge (good records)
    "duplicate_caption": "a later caption of an image that already has one (the first caption wins)",
    "no_caption": "QA of an image that has no caption record",
    "no_precise_or_informative_qa": "an image without both precise and informative QA",
    "image_refused": "QA of an image whose caption record was refused for its image",
}


class _SeedInvalid(_Invalid):
    """Why one seed record (or its image) is refused; counted, written to the rejects file, raised under fail."""

    KEYS = SEED_REASONS


#: the merge's reasons: records left out, not bad
_UNUSED = ("duplicate_caption", "no_caption", "no_precise_or_informative_qa", "image_refused")


@dataclass
class _SeedRecord:
    """One well-formed record of a seed file: where it is, its image and its (question, answer) pairs."""

    path: Path
    location: str  # 1-based record index
    source: str  # file#index
    raw: Any
    image: str
    pairs: list[tuple[str, str]]
    task_name: str

    @property
    def name(self) -> str:
        return Path(self.image).name


def _seed_text(value: Any, where: str, *, empty_ok: bool = False) -> str:
    if value is None:
        raise _SeedInvalid("missing_field", where, "the field is absent or null")
    if not isinstance(value, str):
        raise _SeedInvalid("wrong_type", where, f"expected a string, got {type(value).__name__}")
    at = lone_surrogate(value)
    if at is not None:
        raise _SeedInvalid("not_utf8", where, f"not valid UTF-8 (lone surrogate at character {at})")
    if not empty_ok and not value.strip():
        raise _SeedInvalid("empty_turn", where, "the text is empty")
    return value


class _SeedReader:
    """Reads LLaVA-form JSON lists. Every record read ends as merged, rejected (bad: skipped and counted, or an error
    naming file#index and field under ``policy="fail"``) or unused (left out by the merge, counted); each rejected
    or unused record is a row of the rejects file."""

    def __init__(self, policy: str, report: SeedReport) -> None:
        if policy not in ("skip", "fail"):
            raise ValueError(f"policy must be skip or fail, got {policy!r}")
        self.policy = policy
        self.report = report
        self.rejects: list[dict[str, Any]] = []
        self.rejects_path: Path | None = None

    def records(self, path: Path) -> list[tuple[str, str, Any]]:
        """(source, location, record) of each element of the file's top-level list."""
        if not path.is_file():
            raise FileNotFoundError(f"seed file {path} does not exist")
        data = load_json_list(path, "a seed file")
        self.report.read += len(data)
        return [(f"{path}#{i}", str(i), record) for i, record in enumerate(data, start=1)]

    def reject(self, path: Path, location: str, source: str, raw: Any, where: str, key: str, reason: str) -> None:
        """Count and keep a rejects row; a bad record raises :class:`BadRecordError` under ``policy="fail"``."""
        self.rejects.append({"source": source, "location": location, "reason_key": key, "field": where,
                             "reason": reason, "raw": raw})
        if key in _UNUSED:
            self.report.unused[key] = self.report.unused.get(key, 0) + 1
            return
        self.report.rejected += 1
        self.report.dropped[key] = self.report.dropped.get(key, 0) + 1
        if self.policy == "fail":
            self.write_rejects()
            raise BadRecordError(path, location, source, where, key, reason)
        log.debug("%s: field '%s': %s [%s]", source, where, reason, key)

    def leave_out(self, record: _SeedRecord, key: str, reason: str) -> None:
        self.reject(record.path, record.location, record.source, record.raw, "image", key, reason)

    def write_rejects(self) -> None:
        if self.rejects_path is not None:
            # ASCII-escaped, so a rejected record holding a lone surrogate is still written
            atomic_write_text(self.rejects_path, "".join(json.dumps(row) + "\n" for row in self.rejects))
            self.report.rejects_path = str(self.rejects_path)

    def parse(self, path: Path, source: str, location: str, record: Any) -> _SeedRecord | None:
        """The record's image and (question, answer) pairs, or None when it is bad (and counted)."""
        try:
            return self._parse(path, source, location, record)
        except _SeedInvalid as bad:
            self.reject(path, location, source, record, bad.field, bad.key, bad.reason)
            return None

    @staticmethod
    def _parse(path: Path, source: str, location: str, record: Any) -> _SeedRecord:
        if not isinstance(record, dict):
            raise _SeedInvalid("not_object", "$", f"a record must be a JSON object, got {type(record).__name__}")
        if not record.get("image"):
            raise _SeedInvalid("missing_field", "image", "needs an 'image' path")
        image = _seed_text(record["image"], "image")
        if "\x00" in image:
            raise _SeedInvalid("bad_path", "image", "the image path contains a NUL byte")
        turns = record.get("conversations")
        if turns is None:
            raise _SeedInvalid("missing_field", "conversations", "needs a 'conversations' list")
        if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
            raise _SeedInvalid("wrong_type", "conversations", "needs an even, non-empty list of turns")
        pairs = []
        for i in range(0, len(turns), 2):
            for j in (i, i + 1):
                if not isinstance(turns[j], dict):
                    raise _SeedInvalid("wrong_type", f"conversations[{j}]", "a turn must be an object with a 'value'")
            human = _seed_text(turns[i].get("value"), f"conversations[{i}].value")
            answer = _seed_text(turns[i + 1].get("value"), f"conversations[{i + 1}].value")
            question = strip_image_marker(human)
            if question is None:
                raise _SeedInvalid("bad_marker", f"conversations[{i}].value",
                                   "the <image> marker must be a leading '<image>\\n' or a trailing '\\n<image>'")
            if not question.strip():
                raise _SeedInvalid("empty_turn", f"conversations[{i}].value", "the question is empty")
            pairs.append((question.strip(), answer.strip()))
        task_name = record.get("task_name", "unknown")
        task_name = _seed_text(task_name, "task_name") if task_name is not None else "unknown"
        return _SeedRecord(path, location, source, record, image, pairs, task_name)

    def read(self, path: Path) -> list[_SeedRecord]:
        parsed = (self.parse(path, source, location, record) for source, location, record in self.records(path))
        return [record for record in parsed if record is not None]


def _seed_image(root: Path, candidates: Sequence[str], check: bool) -> Path:
    """The first candidate path that is a file inside ``root`` (decoded when ``check``), else :class:`_SeedInvalid`."""
    escaped = None
    for text in candidates:
        try:
            resolved, inside, is_file = locate_image(root, text)
        except (OSError, RuntimeError, ValueError):  # too long a name, a symlink loop
            continue
        if not inside:
            escaped = escaped or text
        elif is_file:
            break
    else:
        if escaped is not None:
            raise _SeedInvalid("path_escape", "image", f"image {escaped!r} resolves outside the image root {root}")
        raise _SeedInvalid("missing_image", "image", f"no image file for {Path(candidates[0]).name} under {root}")
    if check:
        try:
            load_image(resolved)
        except BadImageError as err:
            raise _SeedInvalid("bad_image", "image", str(err)) from None
    return resolved


def visionflan_examples(
    caption_file: str | os.PathLike,
    precise_file: str | os.PathLike,
    informative_file: str | os.PathLike,
    image_root: str | os.PathLike,
    policy: str = "skip",
    report: SeedReport | None = None,
    rejects_path: str | os.PathLike | None = None,
    check_images: bool = False,
) -> tuple[list[SeedExample], SeedReport]:
    """Merge the three reference files by image file name (first caption wins; every QA pair appended; images
    without both precise and informative QA dropped; task name from the last precise record).

    A bad record (not an object, a missing or mistyped field, a lone surrogate, a misplaced ``<image>`` marker, an
    empty caption or answer) and an image that is missing, outside ``image_root`` (``..``, an absolute path, a
    symlink) or, with ``check_images``, does not decode, are skipped and counted under ``policy="skip"`` and raise
    :class:`BadRecordError` naming file#index and field under ``"fail"``. Records the merge leaves out are counted
    in ``report.unused``; with ``rejects_path`` every refused or unused record is written there with its reason,
    so ``report.read == report.rejected + report.merged + sum(report.unused.values())``.
    """
    report = report or SeedReport()
    reader = _SeedReader(policy, report)
    reader.rejects_path = Path(rejects_path) if rejects_path is not None else None
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"seed image root {root} is not an existing folder")
    root = root.resolve()
    captions: dict[str, _SeedRecord] = {}
    for record in reader.read(Path(caption_file)):
        if record.name in captions:
            reader.leave_out(record, "duplicate_caption", f"{record.name} already has a caption "
                             f"({captions[record.name].source})")
        else:
            captions[record.name] = record
    precise: dict[str, list[_SeedRecord]] = defaultdict(list)
    for record in reader.read(Path(precise_file)):
        precise[record.name].append(record)
    informative: dict[str, list[_SeedRecord]] = defaultdict(list)
    for record in reader.read(Path(informative_file)):
        informative[record.name].append(record)
    examples = []
    for name, caption in captions.items():
        p, i = precise.pop(name, []), informative.pop(name, [])
        if not p or not i:
            report.dropped["no_precise_or_informative_qa"] = report.dropped.get("no_precise_or_informative_qa", 0) + 1
            for record in (caption, *p, *i):
                reader.leave_out(record, "no_precise_or_informative_qa", f"{name} lacks precise or informative QA")
            continue
        try:
            path = _seed_image(root, [p[-1].image, name, caption.image], check_images)
        except _SeedInvalid as bad:
            reader.reject(caption.path, caption.location, caption.source, caption.raw, bad.field, bad.key, bad.reason)
            for record in (*p, *i):
                reader.leave_out(record, "image_refused", f"the image of {name} was refused ({bad.key})")
            continue
        report.merged += 1 + len(p) + len(i)
        qa = [SeedQA(PRECISE_HINT, q, a) for record in p for q, a in record.pairs]
        qa += [SeedQA(INFORMATIVE_HINT, q, a) for record in i for q, a in record.pairs]
        examples.append(SeedExample(Path(name).stem, path, caption.pairs[0][1], tuple(qa), p[-1].task_name,
                                    len(examples)))
    for leftover in (precise, informative):
        for name, records in leftover.items():
            for record in records:
                reader.leave_out(record, "no_caption", f"{name} has no caption record")
    reader.write_rejects()
    if report.rejected or report.unused:
        where = f"; rejects written to {reader.rejects_path}" if reader.rejects_path else ""
        log.warning("seed files: %d of %d records refused (%s), %d left out by the merge (%s)%s", report.rejected,
                    report.read, report.dropped, sum(report.unused.values()), report.unused, where)
    return examples, report


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
        )
        return write_seed(folder, examples, folder.resolve(), blank, dev)
    if source == "visionflan":
        vf = settings["visionflan"]
        rejects = folder / "seed_rejects.jsonl"
        examples, report = visionflan_examples(
            vf["caption_file"], vf["precise_file"], vf["informative_file"], vf["image_root"], policy,
            rejects_path=rejects, check_images=True,
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
