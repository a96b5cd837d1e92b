"""The VisionFLAN seed source (reference §1.2): three LLaVA-form files merged by image file name.

The files are the reference's: ALLaVA captions of Vision-FLAN images, Vision-FLAN precise QA and ALLaVA
informative QA. Every record read ends as merged, refused (a bad record: skipped and counted, or an error under
``policy="fail"``) or left out by the merge (counted, never an error); each refused or left-out record is a row of
the rejects file, with its reason (:data:`SEED_REASONS`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_da.data.bad_records import BadRecordError, InvalidRecord, lone_surrogate, write_rejects
from mllm_da.data.images import BadImageError, load_image, locate_image
from mllm_da.data.json_files import load_json_list
from mllm_da.synthesis.parse import INFORMATIVE_HINT, PRECISE_HINT
from mllm_da.synthesis.seed_format import SeedExample, SeedQA, SeedReport
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)


def strip_image_marker(text: str) -> str | None:
    """A question without its ``<image>`` marker, which must be a leading ``<image>\\n`` or a trailing
    ``\\n<image>`` (or absent); ``None`` when it sits anywhere else."""
    if text.startswith(IMAGE_PLACEHOLDER + "\n"):
        text = text[len(IMAGE_PLACEHOLDER) + 1 :]
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


class _SeedInvalid(InvalidRecord):
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
        self.rejects.append(
            {
                "source": source,
                "location": location,
                "reason_key": key,
                "field": where,
                "reason": reason,
                "raw": raw,
            }
        )
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
            write_rejects(self.rejects_path, self.rejects)
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
                raise _SeedInvalid(
                    "bad_marker",
                    f"conversations[{i}].value",
                    "the <image> marker must be a leading '<image>\\n' or a trailing '\\n<image>'",
                )
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
            reader.leave_out(
                record,
                "duplicate_caption",
                f"{record.name} already has a caption ({captions[record.name].source})",
            )
        else:
            captions[record.name] = record
    precise: dict[str, list[_SeedRecord]] = defaultdict(list)
    for record in reader.read(Path(precise_file)):
        precise[record.name].append(record)
    informative: dict[str, list[_SeedRecord]] = defaultdict(list)
    for record in reader.read(Path(informative_file)):
        informative[record.name].append(record)
    examples: list[SeedExample] = []
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
        examples.append(
            SeedExample(Path(name).stem, path, caption.pairs[0][1], tuple(qa), p[-1].task_name, len(examples))
        )
    for leftover in (precise, informative):
        for name, records in leftover.items():
            for record in records:
                reader.leave_out(record, "no_caption", f"{name} has no caption record")
    reader.write_rejects()
    if report.rejected or report.unused:
        where = f"; rejects written to {reader.rejects_path}" if reader.rejects_path else ""
        log.warning(
            "seed files: %d of %d records refused (%s), %d left out by the merge (%s)%s",
            report.rejected,
            report.read,
            report.dropped,
            sum(report.unused.values()),
            report.unused,
            where,
        )
    return examples, report
