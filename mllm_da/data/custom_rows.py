"""A custom domain's rows turned into the files the pipeline reads: ShareGPT caption records and benchmark rows.

Flat rows (an image and a caption, or an image, a question and an answer) are matched by field name, whatever the
case; images stay where they are or, when embedded, are written once under the prepared folder. Every refused
row is counted by reason in its file's :class:`SourceReport`, or raises under ``policy="fail"``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from PIL import Image

from mllm_da.data.bad_records import BadRecordError
from mllm_da.data.custom_files import Row, field_named
from mllm_da.data.images import unwrap_image
from mllm_da.toy import MC_INSTRUCTION
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER
from mllm_da.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: accepted field names of flat rows (CSV, parquet, JSON rows), matched case-insensitively, first match wins
IMAGE_FIELDS: tuple[str, ...] = (
    "image",
    "images",
    "image_path",
    "file_name",
    "filename",
    "file",
    "path",
    "img",
)
CAPTION_FIELDS: tuple[str, ...] = ("caption", "text", "description", "captions")
QUESTION_FIELDS: tuple[str, ...] = ("question", "input", "prompt", "query")
ANSWER_FIELDS: tuple[str, ...] = ("answer", "label", "output", "gt_answer")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: how the user benchmark's rows are split: one file per scorer (conf/benchmark/custom_vqa.yaml, custom_mc.yaml)
BENCHMARK_FILES: Mapping[str, str] = {"custom_vqa": "benchmark_vqa.jsonl", "custom_mc": "benchmark_mc.jsonl"}


# ------------------------------------------------------------------------------------------------ images


class ImageStore:
    """Turns a row's image value into a path relative to :attr:`root`.

    Paths stay where they are (relative to the domain folder, or to its ``images/``); embedded bytes are written
    once, named by their hash, under ``<prepared>/images`` — and then the root is the prepared folder, so path
    images of the same source are copied beside them (one root per file keeps the readers' escape check).
    """

    def __init__(self, domain_root: Path, prepared: Path, embedded: bool) -> None:
        self.domain_root = domain_root
        self.prepared = prepared
        self.embedded = embedded
        self.root = prepared if embedded else domain_root

    def path_of(self, value: Any) -> tuple[str | None, str | None]:
        """``(relative path, None)`` or ``(None, why not)``."""
        value, problem = unwrap_image(value)
        if value is None:
            return None, problem
        if isinstance(value, bytes):
            return self._store(value, None), None
        return self._locate(value.strip())

    def _locate(self, text: str) -> tuple[str | None, str | None]:
        for base in (self.domain_root, self.domain_root / "images"):
            candidate = (base / text).resolve()
            if candidate.is_relative_to(self.domain_root) and candidate.is_file():
                relative = candidate.relative_to(self.domain_root).as_posix()
                if not self.embedded:
                    return relative, None
                return self._store(candidate.read_bytes(), candidate.suffix), None
        if not (self.domain_root / text).resolve().is_relative_to(self.domain_root):
            return None, f"image {text!r} resolves outside the domain folder {self.domain_root}"
        return None, f"no image file {text!r} under {self.domain_root} or {self.domain_root / 'images'}"

    def _store(self, data: bytes, suffix: str | None) -> str:
        if suffix is None:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    suffix = "." + (image.format or "png").lower().replace("jpeg", "jpg")
            except Exception:  # noqa: BLE001 - not an image: stored anyway, the record reader rejects it by name
                suffix = ".bin"
        name = f"images/{hashlib.sha1(data).hexdigest()}{suffix}"
        target = self.prepared / name
        if not target.exists():
            atomic_write_bytes(target, data)
        return name


def has_embedded_images(rows: Sequence[Row]) -> bool:
    def embedded(value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return any(embedded(v) for v in value)
        if isinstance(value, Mapping):
            return bool(value.get("bytes"))
        return isinstance(value, (bytes, bytearray, Image.Image))

    return any(embedded(value) for row in rows for value in row.fields.values())


# ------------------------------------------------------------------------------------------------ report


@dataclass
class SourceReport:
    """What one user file gave: its format, rows read and converted, and rows refused by reason."""

    path: str
    format: str
    read: int = 0
    kept: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def readable(self, rows: Sequence[Row], policy: str) -> Iterator[Row]:
        """The rows that could be read at all, each counted as read; a malformed one is refused here."""
        for row in rows:
            self.read += 1
            if "__problem__" in row.fields:
                self.refuse(row, "malformed_row", "$", row.fields["__problem__"], policy)
                continue
            yield row

    def refuse(self, row: Row, key: str, where: str, reason: str, policy: str) -> None:
        self.rejected += 1
        self.reasons[key] = self.reasons.get(key, 0) + 1
        self.rejects.append({"source": row.location, "reason_key": key, "field": where, "reason": reason})
        if policy == "fail":
            raise BadRecordError(Path(self.path), row.location, row.location, where, key, reason)
        log.warning("%s: field '%s': %s [%s] (skipped)", row.location, where, reason, key)


# ------------------------------------------------------------------------------------------------ captions


def caption_records(
    rows: Sequence[Row], report: SourceReport, store: ImageStore, instruction: str, policy: str
) -> list[dict[str, Any]]:
    """ShareGPT records from flat rows (an image and a caption) or from rows already in ShareGPT/LLaVA form."""
    records = []
    for row in report.readable(rows, policy):
        fields = row.fields
        image_key = field_named(fields, IMAGE_FIELDS)
        if image_key is None:
            report.refuse(row, "missing_field", "image", f"no image field (one of {list(IMAGE_FIELDS)})", policy)
            continue
        image, problem = store.path_of(fields[image_key])
        if image is None:
            report.refuse(row, "missing_image", image_key, str(problem), policy)
            continue
        record_id = str(fields.get("id") or row.location.rsplit("/", 1)[-1])
        turns = fields.get("messages") or fields.get("conversations")
        if turns:  # ShareGPT / LLaVA rows of a parquet or datasets source: kept as they are, images stored
            key = "messages" if "messages" in fields else "conversations"
            records.append({"id": record_id, key: turns, "images": [image]})
            report.kept += 1
            continue
        caption_key = field_named(fields, CAPTION_FIELDS)
        caption = fields.get(caption_key) if caption_key else None
        if not isinstance(caption, str) or not caption.strip():
            where = caption_key or "caption"
            reason = "the caption is empty" if caption_key else f"no caption field (one of {list(CAPTION_FIELDS)})"
            report.refuse(row, "missing_caption", where, reason, policy)
            continue
        records.append(
            {
                "id": record_id,
                "messages": [
                    {"role": "user", "content": f"{IMAGE_PLACEHOLDER}{instruction}"},
                    {"role": "assistant", "content": caption.strip()},
                ],
                "images": [image],
            }
        )
        report.kept += 1
    return records


def text_folder_rows(folder: Path, root: Path) -> list[Row]:
    """One row per image under ``folder`` (recursively), with the caption of the same-named ``.txt``."""
    rows = []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        relative = image.relative_to(root).as_posix()
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            rows.append(Row(str(image), {"id": relative, "image": relative, "__no_caption__": str(caption_file)}))
            continue
        caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        rows.append(Row(str(caption_file), {"id": relative, "image": relative, "caption": caption}))
    return rows


def is_conversation_file(fmt: str, rows: Sequence[Row]) -> bool:
    first = next((row.fields for row in rows if "__problem__" not in row.fields), {})
    return fmt in ("json", "jsonl") and ("messages" in first or "conversations" in first)


def conversation_image_root(rows: Sequence[Row], root: Path) -> Path:
    """``root`` or ``root/images``: whichever more of the records' image paths resolve under."""
    votes: Counter[Path] = Counter()
    for row in rows[:200]:
        value = row.fields.get("images", row.fields.get("image"))
        names = value if isinstance(value, list) else [value]
        for name in names:
            if isinstance(name, str) and name:
                for base in (root, root / "images"):
                    if (base / name).is_file():
                        votes[base] += 1
                        break
    return max((root, root / "images"), key=lambda base: (votes[base], base == root))


# ------------------------------------------------------------------------------------------------ benchmark


_ANSWER_TYPES = {"open": "OPEN", "closed": "CLOSED"}


def _options(fields: Mapping[str, Any]) -> tuple[list[str] | None, str | None]:
    """The row's options (a list, an ``A``/``B``/... mapping, a ``|``-separated string, or fields ``A``, ``B``,
    ...), ``None`` for an open/closed row, or ``(None, why)`` when they are malformed."""
    key = field_named(fields, ("options", "choices"))
    value = fields.get(key) if key else None
    if value is None or value == "":
        letters = [fields[letter] for letter in LETTERS if fields.get(letter) not in (None, "")]
        return (letters or None), None
    if isinstance(value, str):
        value = [part.strip() for part in value.split("|")]
    if isinstance(value, Mapping):
        value = [value[letter] for letter in LETTERS if letter in value]
    if not isinstance(value, (list, tuple)) or len(value) < 2 or len(value) > len(LETTERS):
        return None, f"options must be a list of 2 to {len(LETTERS)} texts"
    texts = [str(v).strip() for v in value]
    if any(not text for text in texts) or len(set(texts)) != len(texts):
        return None, "options must be distinct and non-empty"
    return texts, None


def benchmark_rows(
    rows: Sequence[Row], report: SourceReport, store: ImageStore, policy: str
) -> dict[str, list[dict[str, Any]]]:
    """Split the user's benchmark rows into open/closed VQA rows and multiple-choice rows."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in BENCHMARK_FILES}
    for row in report.readable(rows, policy):
        fields = row.fields
        keys = {
            what: field_named(fields, names)
            for what, names in (
                ("image", IMAGE_FIELDS),
                ("question", QUESTION_FIELDS),
                ("answer", ANSWER_FIELDS),
            )
        }
        missing = next(
            (
                what
                for what, key in keys.items()
                if key is None or fields[key] is None or str(fields[key]).strip() == ""
            ),
            None,
        )
        if missing is not None:
            report.refuse(row, "missing_field", missing, f"the row has no {missing}", policy)
            continue
        found = cast("dict[str, str]", keys)  # no key is None past the missing-field check
        image, problem = store.path_of(fields[found["image"]])
        if image is None:
            report.refuse(row, "missing_image", str(found["image"]), str(problem), policy)
            continue
        question, answer = str(fields[found["question"]]).strip(), str(fields[found["answer"]]).strip()
        base: dict[str, Any] = {
            "id": str(fields.get("id") or row.location.rsplit("/", 1)[-1]),
            "image": image,
        }
        group_key = field_named(fields, ("question_type",))
        if group_key and fields[group_key] not in (None, ""):
            base["question_type"] = str(fields[group_key])
        options, problem = _options(fields)
        if problem is not None:
            report.refuse(row, "bad_options", "options", problem, policy)
            continue
        if options is not None:
            letters = LETTERS[: len(options)]
            by_text = {text.lower(): letter for letter, text in zip(letters, options)}
            label = answer.upper() if answer.upper() in letters else by_text.get(answer.lower())
            if label is None:
                report.refuse(
                    row,
                    "unknown_label",
                    "answer",
                    f"answer {answer!r} is neither an option's letter nor one of the options",
                    policy,
                )
                continue
            prompt = "\n".join([question, *(f"{k}. {v}" for k, v in zip(letters, options)), MC_INSTRUCTION])
            out["custom_mc"].append(base | {"input": prompt, "label": label} | dict(zip(letters, options)))
        else:
            type_key = field_named(fields, ("answer_type",))
            given = str(fields[type_key]).strip().lower() if type_key and fields[type_key] not in (None, "") else None
            if given is not None and given not in _ANSWER_TYPES:
                assert type_key is not None  # given comes from the type_key field
                report.refuse(
                    row,
                    "bad_answer_type",
                    str(type_key),
                    f"answer_type must be open or closed (any case), got {fields[type_key]!r}",
                    policy,
                )
                continue
            answer_type = _ANSWER_TYPES[given] if given else ("CLOSED" if answer.lower() in ("yes", "no") else "OPEN")
            out["custom_vqa"].append(base | {"input": question, "label": answer, "answer_type": answer_type})
        report.kept += 1
    return out
