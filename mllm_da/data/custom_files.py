"""A custom domain's files: found in the domain folder by name, and read as rows whatever their format.

The format is told from the content, not the file name: a JSON list or JSON lines (read by the record readers, so
a bad line is a bad row), CSV/TSV with a header, parquet, or a ``datasets`` ``save_to_disk`` folder. Rows keep
where they came from (``file:line`` or ``folder[row n]``, counted from 1) for every message about them.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_da.data.json_files import json_items


class CustomDomainError(ValueError):
    """The domain folder cannot be used as it is; the message names the folder or file and what to change."""


def sniff_format(path: Path) -> str:
    """The format of a data file or folder, from its content: ``hf_dataset``, ``parquet``, ``json``, ``jsonl``,
    ``csv`` or ``tsv`` (a ``.json`` file holding JSON lines is ``jsonl``)."""
    if path.is_dir():
        if any((path / name).is_file() for name in ("state.json", "dataset_dict.json", "dataset_info.json")):
            return "hf_dataset"
        raise CustomDomainError(f"{path}: a folder that is not a `datasets` save_to_disk folder")
    with path.open("rb") as handle:
        head = handle.read(65536)
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.removeprefix(codecs.BOM_UTF8).decode("utf-8", "replace").lstrip()
    if not text:
        raise CustomDomainError(f"{path}: the file is empty")
    if text[0] == "[":
        return "json"
    if text[0] == "{":
        first_line = text.split("\n", 1)[0].strip()
        try:
            json.loads(first_line)
            return "jsonl"
        except ValueError:
            return "json"  # one pretty-printed object: read as JSON, refused there with its line
    header = text.split("\n", 1)[0]
    return "tsv" if header.count("\t") > header.count(",") else "csv"


@dataclass
class Row:
    """One row of a user file: where it is, and its fields (``__problem__``: why it could not be read)."""

    location: str  # "file:line" (1-based) or "folder[name]"
    fields: dict[str, Any]


def _json_rows(path: Path, fmt: str) -> Iterator[Row]:
    """Rows of a JSON list or JSON-lines file, read by the record readers (a bad line is a bad row)."""
    for item in json_items(path, f".{fmt}"):
        if item.problem is not None:
            yield Row(item.source, {"__problem__": item.problem.reason})
        elif not isinstance(item.value, dict):
            yield Row(item.source, {"__problem__": "not an object"})
        else:
            yield Row(item.source, item.value)


def _csv_rows(path: Path, delimiter: str) -> Iterator[Row]:
    try:
        text = path.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as err:
        raise CustomDomainError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise CustomDomainError(f"{path}: no header line")
    for row in reader:
        # reader.line_num is the line the record ended on (a quoted caption may span lines)
        location = f"{path}:{reader.line_num}"
        if None in row:
            yield Row(location, {"__problem__": f"more fields than the header's {len(reader.fieldnames)}"})
            continue
        yield Row(location, {k.strip(): v for k, v in row.items() if k is not None})


def _dataset_rows(path: Path, fmt: str, split: str) -> Iterator[Row]:
    import datasets

    if fmt == "parquet":
        ds = datasets.Dataset.from_parquet(str(path))
    else:
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded and len(loaded) != 1:
                raise CustomDomainError(f"{path}: splits {sorted(loaded)}; expected {split!r} or a single split")
            loaded = loaded[split] if split in loaded else next(iter(loaded.values()))
        ds = loaded
    for name, feature in ds.features.items():  # keep images as stored bytes/paths, never decode them here
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    for index, row in enumerate(ds, start=1):
        yield Row(f"{path}[row {index}]", dict(row))


def read_rows(path: Path, split: str = "train") -> tuple[str, Iterator[Row]]:
    """``(format, rows)`` of a data file or folder; row locations count from 1."""
    fmt = sniff_format(path)
    if fmt in ("json", "jsonl"):
        return fmt, _json_rows(path, fmt)
    if fmt in ("csv", "tsv"):
        return fmt, _csv_rows(path, "\t" if fmt == "tsv" else ",")
    return fmt, _dataset_rows(path, fmt, split)


def field_named(row: Mapping[str, Any], names: Sequence[str]) -> str | None:
    """The row's key matching one of ``names`` case-insensitively (first name first), or None."""
    lowered = {key.lower(): key for key in row}
    return next((lowered[name] for name in names if name in lowered), None)


def _candidates(root: Path, name: str) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p.stem == name or p.name == name) and not p.name.startswith("."))


def find_source(root: Path, names: Sequence[str], given: str | None, what: str) -> Path | None:
    """The file or folder holding ``what``: ``given`` (relative to ``root``) or the first convention name found."""
    if given:
        path = (root / given).expanduser()
        if not path.exists():
            raise CustomDomainError(f"{what} {path} does not exist")
        return path
    for name in names:
        found = [p for p in _candidates(root, name) if p.is_file() or p.is_dir()]
        if len(found) > 1:
            raise CustomDomainError(
                f"{root}: several {what} candidates {[p.name for p in found]}; keep one, or name it with "
                f"domain.prepare.{'captions' if what == 'image-caption data' else 'benchmark'}=<file>"
            )
        if found:
            return found[0]
    return None
