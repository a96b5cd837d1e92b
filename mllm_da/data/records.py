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
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from PIL import Image

from mllm_da.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"

Role = Literal["system", "user", "assistant"]
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

_JSON_SPACE = b" \t\r\n"
_WHITE = (255, 255, 255, 255)


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Turn:
    """One message; ``content`` marks each image's position with :data:`IMAGE_PLACEHOLDER`."""

    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """A validated record. ``images`` are resolved absolute paths, one per placeholder, in placeholder order.

    Lists are accepted for ``turns`` and ``images`` and stored as tuples, so a conversation is immutable and
    hashable. ``source`` (``file:line`` or ``file#index``) says where it came from; it is not part of equality, so
    a conversation written out and read back compares equal.
    """

    id: str
    turns: tuple[Turn, ...]
    images: tuple[Path, ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "turns", tuple(self.turns))
        object.__setattr__(self, "images", tuple(Path(image) for image in self.images))

    def to_sharegpt(self, image_root: str | os.PathLike) -> dict[str, Any]:
        """The LLaMA-Factory ShareGPT form, images relative to ``image_root`` (which must contain them all)."""
        root = Path(image_root).resolve()
        images = []
        for image in self.images:
            resolved = image.resolve()
            if not resolved.is_relative_to(root):
                raise ValueError(f"{self.source or self.id}: image {image} is not inside image_root {root}")
            images.append(resolved.relative_to(root).as_posix())
        return {
            "id": self.id,
            "messages": [{"role": turn.role, "content": turn.content} for turn in self.turns],
            "images": images,
        }


@dataclass
class ReadReport:
    """What one :func:`read_conversations` call read, kept and rejected (``reasons`` counts REASON_KEYS)."""

    path: Path
    read: int = 0
    kept: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rejects_path: Path | None = None


class BadImageError(ValueError):
    """An image file is missing or does not decode."""


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


# --------------------------------------------------------------------------------------------- images


def load_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode an image (a file, or the bytes of one embedded in a dataset) fully and return it as RGB, so that
    every backbone sees the same pixels.

    Transparent pixels are composited on white (not left as whatever colour hides under alpha 0); 16-bit
    greyscale is scaled from 0..65535 and float images from 0..1 to 0..255; an animation gives its first frame.
    A missing, truncated or undecodable image raises :class:`BadImageError` naming the file.
    """
    if isinstance(source, bytes):
        name, opened = "the embedded image", io.BytesIO(source)
    else:
        name = str(Path(source))
        opened = Path(source)
    try:
        with Image.open(opened) as image:
            image.load()
            return _to_rgb(image)
    except FileNotFoundError as err:
        raise BadImageError(f"{name}: no such image file") from err
    except Exception as err:  # a decoder can fail in many ways on a hostile file; each means "not an image"
        raise BadImageError(f"{name}: cannot decode image ({type(err).__name__}: {err})") from err


def unwrap_image(value: Any) -> tuple[bytes | str | None, str | None]:
    """A stored image value as embedded bytes or a path string, or ``(None, why not)``.

    Accepted: bytes; ``{"bytes": ..., "path": ...}`` (``datasets.Image`` without decoding: the bytes win); a PIL
    image (encoded as PNG); a path string; a one-element list of any of these (the ShareGPT ``images`` form).
    """
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            return None, f"expected one image, got a list of {len(value)}"
        value = value[0]
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        value = buffer.getvalue()
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value), None) if value else (None, "the embedded image is empty")
    if not isinstance(value, str) or not value.strip():
        return None, "no image (null or empty)"
    return value, None


def locate_image(root: Path, text: str) -> tuple[Path, bool, bool]:
    """``(resolved path, inside root?, is a file?)`` of an image path relative to ``root`` (an absolute path replaces
    the root; symlinks are followed). Raises ``OSError``/``RuntimeError`` for a name too long or a symlink loop;
    each reader maps the outcomes to its own reasons."""
    resolved = (root / text).resolve()
    inside = resolved.is_relative_to(root)
    return resolved, inside, inside and resolved.is_file()


def lone_surrogate(text: str) -> int | None:
    """The position of the first lone surrogate in ``text`` (JSON's ``\\ud800`` escapes decode to one: such a
    string cannot be written as UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "F" or image.mode == "I" or image.mode.startswith("I;16"):
        scale = 255.0 if image.mode == "F" else 255.0 / 65535.0
        values = np.nan_to_num(np.asarray(image, dtype=np.float64)) * scale
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.has_transparency_data:
        canvas = Image.new("RGBA", image.size, _WHITE)
        canvas.alpha_composite(image.convert("RGBA"))
        return canvas.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # converting RGB to RGB would copy it


# --------------------------------------------------------------------------------------------- validation


class _Invalid(Exception):
    """Why one record is rejected; turned into a rejects row or a :class:`BadRecordError` by the reader.
    ``KEYS`` are the reason keys a reader reports (a subclass of another reader names its own)."""

    KEYS: Any = REASON_KEYS

    def __init__(self, key: str, where: str, reason: str) -> None:
        assert key in self.KEYS, key
        super().__init__(reason)
        self.key = key
        self.field = where
        self.reason = reason


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


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _text(value: Any, where: str) -> str:
    """A string that can be written back as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates)."""
    if not isinstance(value, str):
        raise _Invalid("wrong_type", where, f"expected a string, got {_json_type(value)}")
    at = lone_surrogate(value)
    if at is not None:
        raise _Invalid("not_utf8", where, f"not valid UTF-8 (lone surrogate at character {at})")
    return value


class _Validator:
    """Turns one parsed JSON value into a :class:`Conversation` or raises :class:`_Invalid`."""

    def __init__(self, image_root: Path, check_images: bool, require_final_assistant: bool) -> None:
        self.root = image_root
        self.check_images = check_images
        self.require_final_assistant = require_final_assistant
        self._decoded: dict[Path, str | None] = {}  # an image shared by many records is decoded once

    def conversation(self, record: Any, default_id: str, source: str) -> Conversation:
        if not isinstance(record, dict):
            raise _Invalid("not_object", "$", f"a record must be a JSON object, got {_json_type(record)}")
        forms = [form for form in _FORMS if form.turns_key in record]
        if len(forms) > 1:
            raise _Invalid(
                "ambiguous_form", "$", "both 'messages' and 'conversations'; a record uses one form"
            )
        if all(key in record for key in _IMAGE_KEYS):
            raise _Invalid("ambiguous_form", "$", "both 'images' and 'image'; a record names its images once")
        if not forms:
            raise _Invalid("missing_field", "messages", "no 'messages' (or LLaVA 'conversations') list")
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
            raise _Invalid("wrong_type", "id", f"expected a string or an integer, got {_json_type(value)}")
        return _text(value, "id")

    def _turns(self, raw: Any, form: _Form) -> tuple[Turn, ...]:
        if not isinstance(raw, list):
            raise _Invalid("wrong_type", form.turns_key, f"expected a list of turns, got {_json_type(raw)}")
        if not raw:
            raise _Invalid("no_turns", form.turns_key, "the list of turns is empty")
        turns = tuple(self._turn(item, f"{form.turns_key}[{i}]", form) for i, item in enumerate(raw))
        self._check_order(turns, form)
        return turns

    @staticmethod
    def _turn(item: Any, where: str, form: _Form) -> Turn:
        if not isinstance(item, dict):
            raise _Invalid("wrong_type", where, f"expected a turn object, got {_json_type(item)}")
        role_at, content_at = f"{where}.{form.role_key}", f"{where}.{form.content_key}"
        if form.role_key not in item:
            raise _Invalid("missing_field", role_at, f"the turn has no '{form.role_key}'")
        name = _text(item[form.role_key], role_at)
        if name not in form.roles:
            raise _Invalid(
                "unknown_role", role_at, f"unknown role {name!r}; expected one of {sorted(form.roles)}"
            )
        if form.content_key not in item:
            raise _Invalid("missing_field", content_at, f"the turn has no '{form.content_key}'")
        content = _text(item[form.content_key], content_at)
        if not content.strip():
            raise _Invalid("empty_turn", content_at, "the turn's content is empty")
        return Turn(form.roles[name], content)

    def _check_order(self, turns: tuple[Turn, ...], form: _Form) -> None:
        """An optional leading system turn, then user and assistant alternating, starting with the user."""

        def role_at(i: int) -> str:
            return f"{form.turns_key}[{i}].{form.role_key}"

        start = 1 if turns[0].role == "system" else 0
        if start == len(turns):
            raise _Invalid("no_turns", form.turns_key, "only a system turn")
        for i in range(start, len(turns)):
            role = turns[i].role
            expected = "user" if (i - start) % 2 == 0 else "assistant"
            if role == "system":
                raise _Invalid("misplaced_system", role_at(i), "a system turn may only be the first turn")
            if role != expected:
                key = "first_not_user" if i == start else "not_alternating"
                raise _Invalid(key, role_at(i), f"expected a {expected} turn, got {role}")
        if self.require_final_assistant and turns[-1].role != "assistant":
            raise _Invalid(
                "last_not_assistant", role_at(len(turns) - 1), "the last turn must be the assistant's"
            )

    def _images(self, record: dict[str, Any], turns: tuple[Turn, ...]) -> tuple[Path, ...]:
        key = next((k for k in _IMAGE_KEYS if k in record), "images")
        raw = record.get(key, [])
        if key == "image" and isinstance(raw, str):
            entries = [(raw, key)]
        elif isinstance(raw, list):
            entries = [(item, f"{key}[{i}]") for i, item in enumerate(raw)]
        else:
            expected = "a path or a list of paths" if key == "image" else "a list of paths"
            raise _Invalid("wrong_type", key, f"expected {expected}, got {_json_type(raw)}")
        paths = [_text(item, where) for item, where in entries]
        placeholders = sum(turn.content.count(IMAGE_PLACEHOLDER) for turn in turns)
        if placeholders != len(paths):
            raise _Invalid(
                "placeholder_mismatch",
                key,
                f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the turns but {len(paths)} image(s)",
            )
        return tuple(self._image(text, where) for text, (_, where) in zip(paths, entries))

    def _image(self, text: str, where: str) -> Path:
        if "\x00" in text:
            raise _Invalid("bad_path", where, "the image path contains a NUL byte")
        if not text:
            raise _Invalid("missing_image", where, "the image path is empty")
        try:
            resolved, inside, is_file = locate_image(self.root, text)
        except (OSError, RuntimeError) as err:  # too long a name, a symlink loop
            raise _Invalid("bad_path", where, f"cannot resolve image path {text!r} ({err})") from None
        if not inside:
            raise _Invalid("path_escape", where, f"image {text!r} resolves outside image_root {self.root}")
        if not is_file:
            raise _Invalid("missing_image", where, f"no image file {text!r} under image_root {self.root}")
        if self.check_images:
            if resolved not in self._decoded:
                try:
                    load_image(resolved)
                    self._decoded[resolved] = None
                except BadImageError as err:
                    self._decoded[resolved] = str(err)
            problem = self._decoded[resolved]
            if problem is not None:
                raise _Invalid("bad_image", where, problem)
        return resolved


# --------------------------------------------------------------------------------------------- reading


@dataclass
class _Item:
    """One record as found in the file, before validation; ``raw`` is what a rejects row shows of it."""

    location: str  # 1-based line (.jsonl) or record index (.json)
    source: str
    raw: Any  # the line's text (.jsonl: it may not parse) or the parsed list element (.json)
    value: Any = None
    problem: _Invalid | None = None  # the line could not even be parsed


def _jsonl_items(path: Path) -> Iterator[_Item]:
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
                yield _Item(location, source, raw, problem=_Invalid("not_utf8", "$", reason))
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as err:
                detail = (
                    f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)
                )
                yield _Item(
                    location,
                    source,
                    text,
                    problem=_Invalid("malformed_json", "$", f"malformed JSON ({detail})"),
                )
                continue
            yield _Item(location, source, text, value)


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
        raise BadFileError(
            f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from err
    except (ValueError, RecursionError) as err:  # too deep a nesting, an integer of thousands of digits
        raise BadFileError(f"{path}: malformed JSON: {err}") from err
    if not isinstance(data, list):
        raise BadFileError(f"{path}: {what} must hold a list of records, got {_json_type(data)}")
    return data


def _json_items(path: Path) -> Iterator[_Item]:
    """One item per element of the top-level list; a .json file that does not parse is a file-level error."""
    for index, value in enumerate(load_json_list(path), start=1):
        yield _Item(str(index), f"{path}#{index}", value, value)


_READERS: dict[str, Callable[[Path], Iterator[_Item]]] = {".jsonl": _jsonl_items, ".json": _json_items}


def json_items(path: Path, kind: str) -> Iterator[_Item]:
    """The records of a JSON list (``kind=".json"``) or JSON-lines (``".jsonl"``) file as read, before any
    validation: each with its ``file:line`` / ``file#index`` source and, for a line that does not parse, its
    problem (other readers, such as the custom domain's, validate them their own way)."""
    return _READERS[kind](path)


def _json_kind(path: Path) -> str:
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


def _write_rejects(path: Path | None, rows: Iterable[dict[str, Any]]) -> None:
    # ASCII-escaped JSON, so a rejected record holding a lone surrogate is still written (and reads back equal)
    if path is not None:
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


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
    if path.suffix.lower() not in _READERS:
        raise BadFileError(
            f"{path}: unsupported data file suffix {path.suffix!r}; expected one of {sorted(_READERS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    reader = _READERS[_json_kind(path)]
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
        except _Invalid as bad:
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
                _write_rejects(report.rejects_path, rejects)
                raise BadRecordError(
                    path, item.location, item.source, bad.field, bad.key, bad.reason
                ) from None
    report.kept = len(conversations)
    _write_rejects(report.rejects_path, rejects)
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
