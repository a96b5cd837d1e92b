"""Typed conversation records, validated once at the edge.

Everything downstream (mixing, chat formats, the datamodule) trusts a :class:`Conversation`: its roles are in
order, its ``<image>`` placeholders match its images, and every image lies inside the image root and decodes. A bad
record is never fixed up silently: under ``policy="skip"`` it is counted by reason, logged and written with its
reason to a rejects file; under ``policy="fail"`` it stops the read with file, line (or record index) and field.

Two input forms are read, from a JSON list or a JSON-lines file (told apart by the content, so JSON lines in a
``.json`` file are read as lines):

* LLaMA-Factory / OpenAI: ``{"messages": [{"role": "user", "content": "<image>..."}, ...], "images": [...]}``
* LLaVA: ``{"id": ..., "conversations": [{"from": "human", "value": "<image>\\n..."}, ...], "image": "a.png"}``

Image paths are relative to ``image_root`` (by default the data file's folder); one that resolves outside the root
(``..``, an absolute path, a symlink) is rejected, so a data file can never make training read arbitrary files.

The jobs around this reader live beside it: :mod:`~mllm_da.utils.conversation` (the types),
:mod:`~mllm_da.data.images` (decoding and locating images), :mod:`~mllm_da.data.bad_records` (reasons, errors,
rejects files) and :mod:`~mllm_da.data.json_files` (JSON lists and lines before validation). Their public names are
importable from here too, as other layers read them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_da.data.bad_records import (
    POLICIES,
    REASON_KEYS,
    BadFileError,
    BadRecordError,
    InvalidRecord,
    Policy,
    json_type,
    lone_surrogate,
    write_rejects,
)
from mllm_da.data.images import BadImageError, load_image, locate_image, unwrap_image
from mllm_da.data.json_files import READERS, JsonItem, json_items, json_kind, load_json_list
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER, Conversation, Role, Turn
from mllm_da.utils.io import atomic_write_json

__all__ = [
    "IMAGE_PLACEHOLDER",
    "POLICIES",
    "REASON_KEYS",
    "BadFileError",
    "BadImageError",
    "BadRecordError",
    "Conversation",
    "InvalidRecord",
    "JsonItem",
    "Policy",
    "ReadReport",
    "Role",
    "Turn",
    "json_items",
    "load_image",
    "load_json_list",
    "locate_image",
    "lone_surrogate",
    "read_conversations",
    "unwrap_image",
    "write_rejects",
    "write_sharegpt",
]

log = logging.getLogger(__name__)


@dataclass
class ReadReport:
    """What one :func:`read_conversations` call read, kept and rejected (``reasons`` counts REASON_KEYS)."""

    path: Path
    read: int = 0
    kept: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rejects_path: Path | None = None


# --------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Form:
    """Where one input form keeps its turns, and how its role names map to ours."""

    turns_key: str
    role_key: str
    content_key: str
    roles: Mapping[str, Role]


_FORMS = (
    _Form("messages", "role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    _Form("conversations", "from", "value", {"system": "system", "human": "user", "gpt": "assistant"}),
)
#: either form may name its images with either key (LLaMA-Factory uses ``images``, LLaVA a single ``image``)
_IMAGE_KEYS = ("images", "image")


def _text(value: Any, where: str) -> str:
    """A string that can be written back as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates)."""
    if not isinstance(value, str):
        raise InvalidRecord("wrong_type", where, f"expected a string, got {json_type(value)}")
    at = lone_surrogate(value)
    if at is not None:
        raise InvalidRecord("not_utf8", where, f"not valid UTF-8 (lone surrogate at character {at})")
    return value


class _Validator:
    """Turns one parsed JSON value into a :class:`Conversation` or raises :class:`InvalidRecord`."""

    def __init__(self, image_root: Path, check_images: bool, require_final_assistant: bool) -> None:
        self.root = image_root
        self.check_images = check_images
        self.require_final_assistant = require_final_assistant
        self._decoded: dict[Path, str | None] = {}  # an image shared by many records is decoded once

    def conversation(self, record: Any, default_id: str, source: str) -> Conversation:
        if not isinstance(record, dict):
            raise InvalidRecord("not_object", "$", f"a record must be a JSON object, got {json_type(record)}")
        forms = [form for form in _FORMS if form.turns_key in record]
        if len(forms) > 1:
            raise InvalidRecord("ambiguous_form", "$", "both 'messages' and 'conversations'; a record uses one form")
        if all(key in record for key in _IMAGE_KEYS):
            raise InvalidRecord("ambiguous_form", "$", "both 'images' and 'image'; a record names its images once")
        if not forms:
            raise InvalidRecord("missing_field", "messages", "no 'messages' (or LLaVA 'conversations') list")
        record_id = self._id(record, default_id)
        turns = self._turns(record[forms[0].turns_key], forms[0])
        images = self._images(record, turns)
        return Conversation(id=record_id, turns=turns, images=images, source=source)

    @staticmethod
    def _id(record: dict[str, Any], default: str) -> str:
        if "id" not in record:
            return default
        value = record["id"]
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise InvalidRecord("wrong_type", "id", f"expected a string or an integer, got {json_type(value)}")
        return _text(value, "id")

    def _turns(self, raw: Any, form: _Form) -> tuple[Turn, ...]:
        if not isinstance(raw, list):
            raise InvalidRecord("wrong_type", form.turns_key, f"expected a list of turns, got {json_type(raw)}")
        if not raw:
            raise InvalidRecord("no_turns", form.turns_key, "the list of turns is empty")
        turns = tuple(self._turn(item, f"{form.turns_key}[{i}]", form) for i, item in enumerate(raw))
        self._check_order(turns, form)
        return turns

    @staticmethod
    def _turn(item: Any, where: str, form: _Form) -> Turn:
        if not isinstance(item, dict):
            raise InvalidRecord("wrong_type", where, f"expected a turn object, got {json_type(item)}")
        role_at, content_at = f"{where}.{form.role_key}", f"{where}.{form.content_key}"
        if form.role_key not in item:
            raise InvalidRecord("missing_field", role_at, f"the turn has no '{form.role_key}'")
        name = _text(item[form.role_key], role_at)
        if name not in form.roles:
            raise InvalidRecord("unknown_role", role_at, f"unknown role {name!r}; expected one of {sorted(form.roles)}")
        if form.content_key not in item:
            raise InvalidRecord("missing_field", content_at, f"the turn has no '{form.content_key}'")
        content = _text(item[form.content_key], content_at)
        if not content.strip():
            raise InvalidRecord("empty_turn", content_at, "the turn's content is empty")
        return Turn(form.roles[name], content)

    def _check_order(self, turns: tuple[Turn, ...], form: _Form) -> None:
        """An optional leading system turn, then user and assistant alternating, starting with the user."""

        def role_at(i: int) -> str:
            return f"{form.turns_key}[{i}].{form.role_key}"

        start = 1 if turns[0].role == "system" else 0
        if start == len(turns):
            raise InvalidRecord("no_turns", form.turns_key, "only a system turn")
        for i in range(start, len(turns)):
            role = turns[i].role
            expected = "user" if (i - start) % 2 == 0 else "assistant"
            if role == "system":
                raise InvalidRecord("misplaced_system", role_at(i), "a system turn may only be the first turn")
            if role != expected:
                key = "first_not_user" if i == start else "not_alternating"
                raise InvalidRecord(key, role_at(i), f"expected a {expected} turn, got {role}")
        if self.require_final_assistant and turns[-1].role != "assistant":
            raise InvalidRecord("last_not_assistant", role_at(len(turns) - 1), "the last turn must be the assistant's")

    def _images(self, record: dict[str, Any], turns: tuple[Turn, ...]) -> tuple[Path, ...]:
        key = next((k for k in _IMAGE_KEYS if k in record), "images")
        raw = record.get(key, [])
        if key == "image" and isinstance(raw, str):
            entries = [(raw, key)]
        elif isinstance(raw, list):
            entries = [(item, f"{key}[{i}]") for i, item in enumerate(raw)]
        else:
            expected = "a path or a list of paths" if key == "image" else "a list of paths"
            raise InvalidRecord("wrong_type", key, f"expected {expected}, got {json_type(raw)}")
        paths = [_text(item, where) for item, where in entries]
        placeholders = sum(turn.content.count(IMAGE_PLACEHOLDER) for turn in turns)
        if placeholders != len(paths):
            raise InvalidRecord(
                "placeholder_mismatch",
                key,
                f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the turns but {len(paths)} image(s)",
            )
        return tuple(self._image(text, where) for text, (_, where) in zip(paths, entries))

    def _image(self, text: str, where: str) -> Path:
        if "\x00" in text:
            raise InvalidRecord("bad_path", where, "the image path contains a NUL byte")
        if not text:
            raise InvalidRecord("missing_image", where, "the image path is empty")
        try:
            resolved, inside, is_file = locate_image(self.root, text)
        except (OSError, RuntimeError) as err:  # too long a name, a symlink loop
            raise InvalidRecord("bad_path", where, f"cannot resolve image path {text!r} ({err})") from None
        if not inside:
            raise InvalidRecord("path_escape", where, f"image {text!r} resolves outside image_root {self.root}")
        if not is_file:
            raise InvalidRecord("missing_image", where, f"no image file {text!r} under image_root {self.root}")
        if self.check_images:
            if resolved not in self._decoded:
                try:
                    load_image(resolved)
                    self._decoded[resolved] = None
                except BadImageError as err:
                    self._decoded[resolved] = str(err)
            problem = self._decoded[resolved]
            if problem is not None:
                raise InvalidRecord("bad_image", where, problem)
        return resolved


# --------------------------------------------------------------------------------------------- reading


def read_conversations(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    policy: Policy = "skip",
    rejects_path: str | os.PathLike | None = None,
    check_images: bool = True,
    require_final_assistant: bool = True,
) -> tuple[list[Conversation], ReadReport]:
    """Read and validate every record of a ``.json`` or ``.jsonl`` file.

    A bad record is skipped (``policy="skip"``) or raises :class:`BadRecordError` (``policy="fail"``); either way
    it is counted in the report and, with ``rejects_path``, written there with its reason (the file is replaced on
    every read, and written before a ``fail`` raises). A problem with the file itself (missing, wrong suffix, a
    .json that does not parse or is not a list) raises whatever the policy. ``check_images=False`` still checks
    that each image exists inside the root but skips decoding it; ``require_final_assistant=False`` admits
    prompts that end with the user's turn (for generation).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    path = Path(path)
    if path.suffix.lower() not in READERS:
        raise BadFileError(f"{path}: unsupported data file suffix {path.suffix!r}; expected one of {sorted(READERS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    reader = READERS[json_kind(path)]
    root = Path(image_root) if image_root is not None else path.parent
    if not root.is_dir():
        raise FileNotFoundError(f"image_root {root} is not an existing folder")
    validator = _Validator(root.resolve(), check_images, require_final_assistant)
    report = ReadReport(path=path, rejects_path=Path(rejects_path) if rejects_path is not None else None)
    conversations: list[Conversation] = []
    rejects: list[dict[str, Any]] = []
    for item in reader(path):
        default_id = f"{path.stem}:{report.read}"
        report.read += 1
        try:
            if item.problem is not None:
                raise item.problem
            conversations.append(validator.conversation(item.value, default_id, item.source))
        except InvalidRecord as bad:
            report.rejected += 1
            report.reasons[bad.key] = report.reasons.get(bad.key, 0) + 1
            rejects.append(
                {
                    "source": item.source,
                    "location": item.location,
                    "reason_key": bad.key,
                    "field": bad.field,
                    "reason": bad.reason,
                    "raw": item.raw,
                }
            )
            log.debug("%s: rejected, field '%s': %s [%s]", item.source, bad.field, bad.reason, bad.key)
            if policy == "fail":
                write_rejects(report.rejects_path, rejects)
                raise BadRecordError(path, item.location, item.source, bad.field, bad.key, bad.reason) from None
    report.kept = len(conversations)
    write_rejects(report.rejects_path, rejects)
    if report.rejected:
        counts = ", ".join(f"{key}={count}" for key, count in sorted(report.reasons.items()))
        where = f"; rejects written to {report.rejects_path}" if report.rejects_path else ""
        log.warning("%s: rejected %d of %d records (%s)%s", path, report.rejected, report.read, counts, where)
    return conversations, report


def write_sharegpt(
    path: str | os.PathLike, conversations: Iterable[Conversation], image_root: str | os.PathLike
) -> Path:
    """Write conversations as a LLaMA-Factory ShareGPT ``.json`` list that :func:`read_conversations` reads back.

    Image paths are written relative to ``image_root``, so the file moves with its images; a conversation with an
    image outside the root raises before anything is written.
    """
    rows = [conversation.to_sharegpt(image_root) for conversation in conversations]
    return atomic_write_json(path, rows)
