"""The bad-record policy shared by every reader of user files: what a refusal says, and where it is written.

A bad record is never fixed up silently: under ``policy="skip"`` it is counted by reason, logged and written with
its reason to a rejects file (:func:`write_rejects`); under ``policy="fail"`` it stops the read with a
:class:`BadRecordError` naming the file, the line (or record index) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from mllm_da.utils.io import atomic_write_text

Policy = Literal["skip", "fail"]
POLICIES: tuple[str, ...] = ("skip", "fail")

#: every reason a record can be rejected for, with what it means; reports and rejects files use these keys
REASON_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "malformed_json": "a .jsonl line is not valid JSON",
        "not_utf8": "a line or string is not valid UTF-8 (undecodable bytes or a lone surrogate escape)",
        "not_object": "the record is not a JSON object",
        "ambiguous_form": "the record mixes the two forms ('messages' and 'conversations', or 'images' and 'image')",
        "missing_field": "a required field is absent",
        "wrong_type": "a field has the wrong JSON type",
        "no_turns": "there is no user or assistant turn",
        "unknown_role": "a turn's role is not one the form knows",
        "empty_turn": "a turn's content is empty or only whitespace",
        "misplaced_system": "a system turn that is not the first turn",
        "first_not_user": "the first turn after the system turn is not the user's",
        "not_alternating": "user and assistant turns do not alternate",
        "last_not_assistant": "the last turn is not the assistant's",
        "placeholder_mismatch": "the number of <image> placeholders differs from the number of images",
        "bad_path": "an image path that cannot be a file name (NUL byte, unresolvable)",
        "path_escape": "an image path that resolves outside image_root",
        "missing_image": "an image path that is empty or names no file",
        "bad_image": "an image file that does not decode (truncated, not an image)",
    }
)


class BadFileError(ValueError):
    """A data file as a whole cannot be read (wrong suffix, not UTF-8, a .json that does not parse or is not a
    list); the message names the file and, for JSON, the line and column."""


class BadRecordError(ValueError):
    """A record broke the contract under ``policy="fail"``; names the file, the line or record index and the field."""

    def __init__(self, path: Path, location: str, source: str, where: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: field '{where}': {reason} [{key}]")
        self.path = path
        self.location = location
        self.field = where
        self.key = key
        self.reason = reason


class InvalidRecord(Exception):
    """Why one record is rejected; turned into a rejects row or a :class:`BadRecordError` by the reader.
    ``KEYS`` are the reason keys a reader reports (a subclass for another reader names its own)."""

    KEYS: Any = REASON_KEYS

    def __init__(self, key: str, where: str, reason: str) -> None:
        assert key in self.KEYS, key
        super().__init__(reason)
        self.key = key
        self.field = where
        self.reason = reason


def lone_surrogate(text: str) -> int | None:
    """The position of the first lone surrogate in ``text`` (JSON's ``\\ud800`` escapes decode to one: such a
    string cannot be written as UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages (``object``, ``array``, ``null``...)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def write_rejects(path: Path | None, rows: Iterable[Mapping[str, Any]]) -> None:
    """Replace the rejects file ``path`` (nothing when None) with one JSON line per refused record.

    The JSON is ASCII-escaped, so a rejected record holding a lone surrogate is still written (and reads back
    equal); values JSON cannot hold (paths) are written as strings. The file is written even when empty, so an
    old file never outlives the read that replaced it.
    """
    if path is not None:
        atomic_write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))
