"""JSON data files as records before validation: a JSON list or JSON lines, told apart by the content.

A bad line of a JSON-lines file is one bad record (its :attr:`JsonItem.problem`), not a bad file; a ``.json`` file
that does not parse or is not a list is a bad file (:class:`~mllm_da.data.bad_records.BadFileError`).
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_da.data.bad_records import BadFileError, InvalidRecord, json_type

_JSON_SPACE = b" \t\r\n"


@dataclass
class JsonItem:
    """One record as found in the file, before validation; ``raw`` is what a rejects row shows of it."""

    location: str  # 1-based line (.jsonl) or record index (.json)
    source: str
    raw: Any  # the line's text (.jsonl: it may not parse) or the parsed list element (.json)
    value: Any = None
    problem: InvalidRecord | None = None  # the line could not even be parsed


def _jsonl_items(path: Path) -> Iterator[JsonItem]:
    """One item per non-blank line; a bad line is one bad record, not a bad file."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if number == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            line = line.rstrip(b"\r\n")
            if not line.strip(_JSON_SPACE):
                continue
            location, source = str(number), f"{path}:{number}"
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                reason = f"the line is not valid UTF-8 ({err.reason} at byte {err.start})"
                raw = line.decode("utf-8", "backslashreplace")
                yield JsonItem(location, source, raw, problem=InvalidRecord("not_utf8", "$", reason))
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as err:
                detail = f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)
                yield JsonItem(
                    location,
                    source,
                    text,
                    problem=InvalidRecord("malformed_json", "$", f"malformed JSON ({detail})"),
                )
                continue
            yield JsonItem(location, source, text, value)


def load_json_list(path: str | os.PathLike, what: str = "a .json data file") -> list[Any]:
    """The top-level list of a ``.json`` file (empty for an empty file); anything else raises
    :class:`BadFileError` naming the file (and the line and column where the JSON breaks)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadFileError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadFileError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except (ValueError, RecursionError) as err:  # too deep a nesting, an integer of thousands of digits
        raise BadFileError(f"{path}: malformed JSON: {err}") from err
    if not isinstance(data, list):
        raise BadFileError(f"{path}: {what} must hold a list of records, got {json_type(data)}")
    return data


def _json_items(path: Path) -> Iterator[JsonItem]:
    """One item per element of the top-level list; a .json file that does not parse is a file-level error."""
    for index, value in enumerate(load_json_list(path), start=1):
        yield JsonItem(str(index), f"{path}#{index}", value, value)


#: the reader of each suffix
READERS: dict[str, Callable[[Path], Iterator[JsonItem]]] = {".jsonl": _jsonl_items, ".json": _json_items}


def json_items(path: Path, kind: str) -> Iterator[JsonItem]:
    """The records of a JSON list (``kind=".json"``) or JSON-lines (``".jsonl"``) file as read, before any
    validation: each with its ``file:line`` / ``file#index`` source and, for a line that does not parse, its
    problem (other readers, such as the custom domain's, validate them their own way)."""
    return READERS[kind](path)


def json_kind(path: Path) -> str:
    """``.json`` (one list) or ``.jsonl`` (one record a line), from the content: a ``.json`` file whose first two
    lines are each a JSON object is read as JSON lines. Anything else keeps its suffix's reader, which names what
    is wrong with it."""
    suffix = path.suffix.lower()
    if suffix != ".json":
        return suffix
    with path.open("rb") as handle:
        head = handle.read(1 << 16).removeprefix(codecs.BOM_UTF8).lstrip(_JSON_SPACE)
    lines = [line for line in head.split(b"\n")[:3] if line.strip(_JSON_SPACE)]
    if len(lines) < 2 or not lines[0].startswith(b"{"):
        return suffix
    try:
        json.loads(lines[0])
        json.loads(lines[1])
    except ValueError:  # a pretty-printed object, or lines longer than the sniffed head
        return suffix
    return ".jsonl"
