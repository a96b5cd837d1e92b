"""A researcher's own domain from one folder (``domain=custom domain.root=DIR``).

:func:`prepare_custom_domain` finds the image-caption data and the optional benchmark in ``DIR`` by the conventions
below, reads whichever format they are in (detected from the content, not the file name), and points the domain at
files the rest of the pipeline already reads: the image-caption records as ShareGPT JSONL, the benchmark as one
open/closed VQA file and one multiple-choice file. It returns those paths as overrides of the ``domain`` node
(:func:`mllm_da.data.domain.prepare_domain` applies them) and logs what it found.

Conventions (README "Adapt to your own domain"):

* image-caption data: the first of ``image_caption_pairs``, ``captions``, ``metadata`` (any suffix, or a folder
  saved by ``datasets``) in ``DIR``; else a folder of images (``DIR/images`` or ``DIR``) with a same-named ``.txt``
  caption beside each image;
* benchmark (optional): ``benchmark`` (any suffix, or a ``datasets`` folder) in ``DIR``;
* image paths are relative to ``DIR`` (or to ``DIR/images``); embedded image bytes are written once under the
  prepared folder.

Formats: a JSON list or JSON lines (ShareGPT ``messages``/``images``, LLaVA ``conversations``/``image``, or flat
rows with an image and a caption field), CSV/TSV with a header, parquet, a ``datasets`` ``save_to_disk`` folder,
and the image + ``.txt`` folder. ShareGPT and LLaVA files are read as they are (their line numbers stay the ones
in messages); the other formats are converted once into ``<cache>/domains/custom/<name>-<hash>/`` and rebuilt when
a source file changes.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mllm_da.data.records import IMAGE_PLACEHOLDER, POLICIES, BadRecordError, json_items, unwrap_image
from mllm_da.data.toy import MC_INSTRUCTION
from mllm_da.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, read_json

log = logging.getLogger(__name__)

#: names (without suffix) of the image-caption source in the domain folder, in the order they are looked for
CAPTION_NAMES: tuple[str, ...] = ("image_caption_pairs", "captions", "metadata")
BENCHMARK_NAME = "benchmark"
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: accepted field names of flat rows (CSV, parquet, JSON rows), matched case-insensitively, first match wins
IMAGE_FIELDS: tuple[str, ...] = ("image", "images", "image_path", "file_name", "filename", "file", "path", "img")
CAPTION_FIELDS: tuple[str, ...] = ("caption", "text", "description", "captions")
QUESTION_FIELDS: tuple[str, ...] = ("question", "input", "prompt", "query")
ANSWER_FIELDS: tuple[str, ...] = ("answer", "label", "output", "gt_answer")
#: the user turn of a converted caption record (the caption is the assistant's answer)
DEFAULT_CAPTION_INSTRUCTION = "Describe the image."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: how the user benchmark's rows are split: one file per scorer (conf/benchmark/custom_vqa.yaml, custom_mc.yaml)
BENCHMARK_FILES: Mapping[str, str] = {"custom_vqa": "benchmark_vqa.jsonl", "custom_mc": "benchmark_mc.jsonl"}
_FORMAT_VERSION = 1  # bump when the converted files change shape, so old prepared folders are rebuilt


class CustomDomainError(ValueError):
    """The domain folder cannot be used as it is; the message names the folder or file and what to change."""


# ------------------------------------------------------------------------------------------------ formats


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
class _Row:
    location: str  # "file:line" (1-based) or "folder[name]"
    fields: dict[str, Any]


def _json_rows(path: Path, fmt: str) -> Iterator[_Row]:
    """Rows of a JSON list or JSON-lines file, read by the record readers (a bad line is a bad row)."""
    for item in json_items(path, f".{fmt}"):
        if item.problem is not None:
            yield _Row(item.source, {"__problem__": item.problem.reason})
        elif not isinstance(item.value, dict):
            yield _Row(item.source, {"__problem__": "not an object"})
        else:
            yield _Row(item.source, item.value)


def _csv_rows(path: Path, delimiter: str) -> Iterator[_Row]:
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
            yield _Row(location, {"__problem__": f"more fields than the header's {len(reader.fieldnames)}"})
            continue
        yield _Row(location, {k.strip(): v for k, v in row.items() if k is not None})


def _dataset_rows(path: Path, fmt: str, split: str) -> Iterator[_Row]:
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
        yield _Row(f"{path}[row {index}]", dict(row))


def read_rows(path: Path, split: str = "train") -> tuple[str, Iterator[_Row]]:
    """``(format, rows)`` of a data file or folder; row locations count from 1."""
    fmt = sniff_format(path)
    if fmt in ("json", "jsonl"):
        return fmt, _json_rows(path, fmt)
    if fmt in ("csv", "tsv"):
        return fmt, _csv_rows(path, "\t" if fmt == "tsv" else ",")
    return fmt, _dataset_rows(path, fmt, split)


def _field(row: Mapping[str, Any], names: Sequence[str]) -> str | None:
    """The row's key matching one of ``names`` case-insensitively (first name first), or None."""
    lowered = {key.lower(): key for key in row}
    return next((lowered[name] for name in names if name in lowered), None)


# ------------------------------------------------------------------------------------------------ images


class _ImageStore:
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


def _has_embedded_images(rows: Sequence[_Row]) -> bool:
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

    def readable(self, rows: Sequence[_Row], policy: str) -> Iterator[_Row]:
        """The rows that could be read at all, each counted as read; a malformed one is refused here."""
        for row in rows:
            self.read += 1
            if "__problem__" in row.fields:
                self.refuse(row, "malformed_row", "$", row.fields["__problem__"], policy)
                continue
            yield row

    def refuse(self, row: _Row, key: str, where: str, reason: str, policy: str) -> None:
        self.rejected += 1
        self.reasons[key] = self.reasons.get(key, 0) + 1
        self.rejects.append({"source": row.location, "reason_key": key, "field": where, "reason": reason})
        if policy == "fail":
            raise BadRecordError(Path(self.path), row.location, row.location, where, key, reason)
        log.warning("%s: field '%s': %s [%s] (skipped)", row.location, where, reason, key)


# ------------------------------------------------------------------------------------------------ captions


def _caption_records(
    rows: Sequence[_Row], report: SourceReport, store: _ImageStore, instruction: str, policy: str
) -> list[dict[str, Any]]:
    """ShareGPT records from flat rows (an image and a caption) or from rows already in ShareGPT/LLaVA form."""
    records = []
    for row in report.readable(rows, policy):
        fields = row.fields
        image_key = _field(fields, IMAGE_FIELDS)
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
        caption_key = _field(fields, CAPTION_FIELDS)
        caption = fields.get(caption_key) if caption_key else None
        if not isinstance(caption, str) or not caption.strip():
            where = caption_key or "caption"
            reason = "the caption is empty" if caption_key else f"no caption field (one of {list(CAPTION_FIELDS)})"
            report.refuse(row, "missing_caption", where, reason, policy)
            continue
        records.append({
            "id": record_id,
            "messages": [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}{instruction}"},
                         {"role": "assistant", "content": caption.strip()}],
            "images": [image],
        })
        report.kept += 1
    return records


def _text_folder_rows(folder: Path, root: Path) -> list[_Row]:
    """One row per image under ``folder`` (recursively), with the caption of the same-named ``.txt``."""
    rows = []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        relative = image.relative_to(root).as_posix()
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            rows.append(_Row(str(image), {"id": relative, "image": relative, "__no_caption__": str(caption_file)}))
            continue
        caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        rows.append(_Row(str(caption_file), {"id": relative, "image": relative, "caption": caption}))
    return rows


def _is_conversation_file(fmt: str, rows: Sequence[_Row]) -> bool:
    first = next((row.fields for row in rows if "__problem__" not in row.fields), {})
    return fmt in ("json", "jsonl") and ("messages" in first or "conversations" in first)


def _conversation_image_root(rows: Sequence[_Row], root: Path) -> Path:
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
    key = _field(fields, ("options", "choices"))
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


def _benchmark_rows(
    rows: Sequence[_Row], report: SourceReport, store: _ImageStore, policy: str
) -> dict[str, list[dict[str, Any]]]:
    """Split the user's benchmark rows into open/closed VQA rows and multiple-choice rows."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in BENCHMARK_FILES}
    for row in report.readable(rows, policy):
        fields = row.fields
        keys = {what: _field(fields, names) for what, names in
                (("image", IMAGE_FIELDS), ("question", QUESTION_FIELDS), ("answer", ANSWER_FIELDS))}
        missing = next((what for what, key in keys.items()
                        if key is None or fields[key] is None or str(fields[key]).strip() == ""), None)
        if missing is not None:
            report.refuse(row, "missing_field", missing, f"the row has no {missing}", policy)
            continue
        image, problem = store.path_of(fields[keys["image"]])
        if image is None:
            report.refuse(row, "missing_image", str(keys["image"]), str(problem), policy)
            continue
        question, answer = str(fields[keys["question"]]).strip(), str(fields[keys["answer"]]).strip()
        base: dict[str, Any] = {"id": str(fields.get("id") or row.location.rsplit("/", 1)[-1]), "image": image}
        group_key = _field(fields, ("question_type",))
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
                report.refuse(row, "unknown_label", "answer",
                              f"answer {answer!r} is neither an option's letter nor one of the options", policy)
                continue
            prompt = "\n".join([question, *(f"{k}. {v}" for k, v in zip(letters, options)), MC_INSTRUCTION])
            out["custom_mc"].append(base | {"input": prompt, "label": label} | dict(zip(letters, options)))
        else:
            type_key = _field(fields, ("answer_type",))
            given = str(fields[type_key]).strip().lower() if type_key and fields[type_key] not in (None, "") else None
            if given is not None and given not in _ANSWER_TYPES:
                report.refuse(row, "bad_answer_type", str(type_key),
                              f"answer_type must be open or closed (any case), got {fields[type_key]!r}", policy)
                continue
            answer_type = _ANSWER_TYPES[given] if given else ("CLOSED" if answer.lower() in ("yes", "no") else "OPEN")
            out["custom_vqa"].append(base | {"input": question, "label": answer, "answer_type": answer_type})
        report.kept += 1
    return out


# ------------------------------------------------------------------------------------------------ finding


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


def _fingerprint(paths: Sequence[Path], settings: Mapping[str, Any]) -> str:
    """What decides the prepared files: the sources' sizes and modification times, and the settings."""
    parts: list[Any] = [_FORMAT_VERSION, dict(settings)]
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        parts.append([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ entry


def prepare_custom_domain(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    captions: str | None = None,
    benchmark: str | None = None,
    caption_instruction: str = DEFAULT_CAPTION_INSTRUCTION,
    policy: str = "skip",
) -> dict[str, Any]:
    """Find and read a user's domain folder; return the ``domain`` keys that point at readable files.

    Returned keys: ``image_caption_pairs``, ``image_root``, ``benchmarks`` (the non-empty ones of
    :data:`BENCHMARK_FILES`), ``benchmark_files`` and ``benchmark_image_root``, and ``found`` (what was read, with
    counts). Row problems found while converting are skipped and counted, or raise :class:`BadRecordError` naming
    the file and line under ``policy="fail"``; image decoding is checked later by the readers, as for every domain.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if root is None or str(root) in ("", "None", "???"):
        raise CustomDomainError("domain=custom needs domain.root=<your data folder>")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CustomDomainError(f"domain.root {root} is not an existing folder")
    caption_source = find_source(root, CAPTION_NAMES, captions, "image-caption data")
    bench_source = find_source(root, (BENCHMARK_NAME,), benchmark, "benchmark")
    image_folder = root / "images" if (root / "images").is_dir() else root
    sources = [p for p in (caption_source, bench_source) if p is not None] or [image_folder]
    settings = {"root": str(root), "caption_instruction": caption_instruction, "policy": policy,
                "captions": str(caption_source), "benchmark": str(bench_source)}
    key = _fingerprint(sources, settings)
    prepared = Path(out_dir).expanduser().resolve() / "custom" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', root.name)}-{key[:12]}"
    manifest = prepared / "manifest.json"
    if manifest.is_file():
        found = read_json(manifest, "prepared-domain manifest")
        log.info("custom domain %s (prepared earlier in %s):\n%s", root, prepared, describe(found))
        return found

    # image-caption data
    if caption_source is None:
        rows = _text_folder_rows(image_folder, root)
        if not rows:
            raise CustomDomainError(
                f"{root}: found no image-caption data: expected one of {[n + '.<json|jsonl|csv|tsv|parquet>' for n in CAPTION_NAMES]}, "
                f"a `datasets` folder of that name, or images with same-named .txt captions in {image_folder}"
            )
        fmt, caption_path = "image folder with .txt captions", image_folder
        for row in rows:
            if "__no_caption__" in row.fields:
                row.fields = {"__problem__": f"no caption file {row.fields['__no_caption__']}"}
    else:
        fmt, row_iter = read_rows(caption_source, "train")
        rows, caption_path = list(row_iter), caption_source
    caption_report = SourceReport(str(caption_path), fmt)
    if caption_source is not None and _is_conversation_file(fmt, rows):
        image_root = _conversation_image_root(rows, root)  # read as it is: its line numbers stay the user's
        pairs_path, caption_report.read = caption_source, len(rows)
    else:
        store = _ImageStore(root, prepared, _has_embedded_images(rows))
        records = _caption_records(rows, caption_report, store, caption_instruction, policy)
        if not records:
            raise CustomDomainError(f"{caption_path}: no usable image-caption record ({caption_report.reasons})")
        pairs_path = atomic_write_jsonl(prepared / "image_caption_pairs.jsonl", records)
        image_root = store.root
        _write_rejects(prepared / "rejects" / "image_caption_pairs.jsonl", caption_report)

    # benchmark
    bench_report, bench_files, bench_root = None, {}, None
    split: dict[str, list[dict[str, Any]]] = {}
    if bench_source is not None:
        bench_fmt, bench_iter = read_rows(bench_source, "test")
        bench_rows = list(bench_iter)
        bench_report = SourceReport(str(bench_source), bench_fmt)
        store = _ImageStore(root, prepared, _has_embedded_images(bench_rows))
        split = _benchmark_rows(bench_rows, bench_report, store, policy)
        _write_rejects(prepared / "rejects" / "benchmark.jsonl", bench_report)
        bench_root = str(store.root)
        for name, rows_of_kind in split.items():
            if rows_of_kind:
                bench_files[name] = str(atomic_write_jsonl(prepared / BENCHMARK_FILES[name], rows_of_kind))

    found = {
        "image_caption_pairs": str(pairs_path),
        "image_root": str(image_root),
        "benchmarks": sorted(bench_files),
        "benchmark_files": bench_files,
        "benchmark_image_root": bench_root,
        "found": {
            "root": str(root),
            "prepared": str(prepared),
            "captions": _report_dict(caption_report),
            "benchmark": _report_dict(bench_report) if bench_report else None,
            "benchmark_rows": {name: len(split[name]) for name in bench_files} if bench_source is not None else {},
        },
    }
    atomic_write_json(manifest, found)
    log.info("custom domain %s:\n%s", root, describe(found))
    return found


def _report_dict(report: SourceReport) -> dict[str, Any]:
    return {k: v for k, v in asdict(report).items() if k != "rejects"}


def _write_rejects(path: Path, report: SourceReport) -> None:
    if report.rejects:
        atomic_write_jsonl(path, report.rejects)
    elif path.exists():
        path.unlink()


def describe(found: Mapping[str, Any]) -> str:
    """What :func:`prepare_custom_domain` found, as lines for the log."""
    info = found["found"]
    captions = info["captions"]
    lines = [
        f"  image-caption data: {captions['path']} ({captions['format']}): {captions['read']} read"
        + (f", {captions['rejected']} refused {captions['reasons']}" if captions["rejected"] else ""),
        f"  training file: {found['image_caption_pairs']} (images under {found['image_root']})",
    ]
    bench = info.get("benchmark")
    if bench is None:
        lines.append(f"  benchmark: none (add {BENCHMARK_NAME}.jsonl to {info['root']} to evaluate)")
    else:
        counts = ", ".join(f"{name} {n} rows" for name, n in info["benchmark_rows"].items()) or "no usable row"
        refused = f", {bench['rejected']} refused {bench['reasons']}" if bench["rejected"] else ""
        lines.append(f"  benchmark: {bench['path']} ({bench['format']}): {counts}{refused}")
    return "\n".join(lines)
