"""Where a benchmark's rows come from (reference §5.1), tried in this order:

* a single file: ``.jsonl`` / ``.json`` (read here, so a bad line is named ``file:line``), ``.parquet`` or
  ``.arrow`` (read with ``datasets``);
* a ``save_to_disk`` folder: a ``Dataset`` (``state.json``), or a ``DatasetDict`` (``dataset_dict.json``)
  whose split named ``disk_subset`` (or ``split``) is used. This is what ``huggingface-cli download
  AdaptLLM/biomed-VQA-benchmark`` leaves: one ``save_to_disk`` folder per task (``vqa_rad/``, ``pmc_vqa/``,
  ...). The task folder is opened directly, since the repository's ``dataset_dict.json`` does not list every
  task;
* a folder of parquet/arrow/json files: ``<config>/<split>/*.parquet`` (the hub's parquet conversion),
  ``<config>/*<split>*``, ``*<split>*``, else ``datasets.load_dataset(folder, config, split=split)`` (README
  configs);
* a hub id (``hub_id``, or ``source`` when it is no folder) through ``datasets.load_dataset``, when online.

Text columns are iterated; the image column is read one row at a time, when a batch needs it.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_da.evaluation.errors import BenchmarkError
from mllm_da.evaluation.spec import BenchmarkSpec

FILE_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json")
Problem = tuple[str, str, str, str, Any]
"""A row that could not be read: (field, reason, message, where, raw text); ``where`` is ``file:line`` for JSONL."""


@dataclass
class Source:
    """Rows from wherever they came: a ``datasets.Dataset`` or a list of dicts from a JSON/JSONL file."""

    origin: str
    columns: list[str]
    length: int
    text_rows: Callable[[int], Iterator[dict[str, Any]]]
    image_value: Callable[[int], Any]
    default_root: Path | None
    #: rows that could not be read at all (JSON/JSONL), by row index
    problems: dict[int, Problem] = field(default_factory=dict)


def dataset_source(ds: Any, origin: str, image_field: str, default_root: Path | None) -> Source:
    """Wrap a ``datasets.Dataset``: text columns are iterated, the image column is read one row at a time."""
    import datasets

    columns = list(ds.column_names)
    images = None
    if image_field in columns:
        feature = ds.features[image_field]
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(image_field, datasets.Image(decode=False))
        else:
            inner = getattr(feature, "feature", None)
            if isinstance(inner, datasets.Image):
                ds = ds.cast_column(image_field, type(feature)(datasets.Image(decode=False)))
        images = ds.select_columns([image_field])
    text = ds.remove_columns([image_field]) if image_field in columns else ds

    def text_rows(limit: int) -> Iterator[dict[str, Any]]:
        yield from (text.select(range(limit)) if limit < len(text) else text)

    def image_value(i: int) -> Any:
        return None if images is None else images[i][image_field]

    return Source(origin, columns, len(ds), text_rows, image_value, default_root)


def _jsonl_rows(path: Path, data: bytes) -> tuple[list[Any], dict[int, Problem]]:
    """The lines of a JSONL file as rows; a line that is not UTF-8 or not JSON is an empty row with a problem."""
    rows: list[Any] = []
    problems: dict[int, Problem] = {}
    for number, raw in enumerate(data.removeprefix(codecs.BOM_UTF8).split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            message = f"not valid UTF-8 ({err.reason} at byte {err.start})"
            problems[len(rows)] = ("$", "not_utf8", message, where, raw.decode("utf-8", "backslashreplace"))
            rows.append({})
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            problems[len(rows)] = ("$", "malformed_json", f"malformed JSON line ({err.msg})", where, line)
            rows.append({})
        except (ValueError, RecursionError) as err:  # too deep a nesting, an integer of thousands of digits
            problems[len(rows)] = ("$", "malformed_json", f"malformed JSON line ({err})", where, line)
            rows.append({})
    return rows, problems


def _json_list_rows(path: Path, data: bytes) -> list[Any]:
    """The rows of a JSON list file; a file that does not parse as a list stops the load."""
    try:
        data_list = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise BenchmarkError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise BenchmarkError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from err
    except (ValueError, RecursionError) as err:
        raise BenchmarkError(f"{path}: malformed JSON ({err})") from err
    if not isinstance(data_list, list):
        raise BenchmarkError(f"{path}: a JSON benchmark must be a list of row objects, got {type(data_list).__name__}")
    return data_list


def json_source(path: Path, image_field: str) -> Source:
    """A JSON list or JSONL file, read here so that a bad line is named ``file:line``.

    A JSONL line that is not UTF-8 or not JSON, and a row that is not an object, is a row of its own with a
    problem, so that ``bad_rows`` decides whether it stops the load or is skipped (row indices do not shift).
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BenchmarkError(f"{path}: cannot read ({err})") from err
    if path.suffix == ".jsonl":
        rows, problems = _jsonl_rows(path, data)
    else:
        rows, problems = _json_list_rows(path, data), {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            message = f"a row must be a JSON object, got {type(row).__name__}"
            problems[i] = ("$", "not_object", message, f"{path} row {i + 1}", row)
            rows[i] = {}
    columns = sorted({key for row in rows for key in row})

    def text_rows(limit: int) -> Iterator[dict[str, Any]]:
        for row in rows[:limit]:
            yield {k: v for k, v in row.items() if k != image_field}

    return Source(str(path), columns, len(rows), text_rows, lambda i: rows[i].get(image_field), path.parent, problems)


def _file_source(path: Path, spec: BenchmarkSpec, cache_dir: str | None) -> Source:
    if path.suffix in (".json", ".jsonl"):
        return json_source(path, spec.image_field)
    import datasets

    builder = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix)
    if builder is None:
        raise BenchmarkError(f"{path}: unsupported benchmark file type (use one of {', '.join(FILE_SUFFIXES)})")
    ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
    return dataset_source(ds, str(path), spec.image_field, path.parent)


def _files_in(folder: Path, split: str) -> list[Path] | None:
    """Data files of one split inside ``folder``: the whole folder if it holds only data files of one kind,
    else files whose name contains the split name."""
    for suffix in FILE_SUFFIXES:
        files = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))
        if not files:
            continue
        named = [p for p in files if split in p.stem]
        return named or (files if folder.name == split else None)
    return None


def _save_to_disk_source(folder: Path, spec: BenchmarkSpec) -> Source | None:
    """A ``save_to_disk`` Dataset in ``folder`` or in its task sub-folder, or a DatasetDict's split; else None."""
    import datasets

    subset_dirs = [d for d in (spec.disk_subset, spec.config, spec.split) if d]
    if (folder / "state.json").is_file():
        return dataset_source(datasets.Dataset.load_from_disk(str(folder)), str(folder), spec.image_field, folder)
    for name in subset_dirs:
        if (folder / name / "state.json").is_file():
            ds = datasets.Dataset.load_from_disk(str(folder / name))
            return dataset_source(ds, str(folder / name), spec.image_field, folder / name)
    if not (folder / "dataset_dict.json").is_file():
        return None
    dd = datasets.DatasetDict.load_from_disk(str(folder))
    for name in subset_dirs:
        if name in dd:
            return dataset_source(dd[name], f"{folder}[{name}]", spec.image_field, folder)
    raise BenchmarkError(
        f"{folder}: save_to_disk folder has splits {sorted(dd)}, none named {subset_dirs} "
        "(set the benchmark's disk_subset)"
    )


def _data_files_source(folder: Path, spec: BenchmarkSpec, cache_dir: str | None) -> Source | None:
    """The split's data files: ``<config>/<split>/``, ``<config>/``, ``<split>/`` or the folder; else None."""
    import datasets

    candidates = [folder / spec.config / spec.split, folder / spec.config] if spec.config else []
    for place in [*candidates, folder / spec.split, folder]:
        files = _files_in(place, spec.split) if place.is_dir() else None
        if not files:
            continue
        if files[0].suffix in (".json", ".jsonl"):
            if len(files) > 1:
                raise BenchmarkError(f"{place}: several JSON files for split {spec.split!r}: {[f.name for f in files]}")
            return json_source(files[0], spec.image_field)
        builder = "parquet" if files[0].suffix == ".parquet" else "arrow"
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", cache_dir=cache_dir)
        return dataset_source(ds, str(place), spec.image_field, place)
    return None


def _folder_source(folder: Path, spec: BenchmarkSpec, cache_dir: str | None) -> Source:
    import datasets

    found = _save_to_disk_source(folder, spec) or _data_files_source(folder, spec, cache_dir)
    if found is not None:
        return found
    try:
        ds = datasets.load_dataset(str(folder), name=spec.config, split=spec.split, cache_dir=cache_dir)
    except Exception as err:
        raise BenchmarkError(
            f"{folder}: found no save_to_disk folder, no {spec.split!r} data files and no loadable dataset "
            f"(config {spec.config!r}): {type(err).__name__}: {err}"
        ) from err
    return dataset_source(ds, str(folder), spec.image_field, folder)


def _hub_source(hub_id: str, spec: BenchmarkSpec, cache_dir: str | None, tried: str | None) -> Source:
    import datasets

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        hint = f"no local copy at {tried}; " if tried else ""
        raise BenchmarkError(
            f"benchmark {spec.name!r}: {hint}HF_HUB_OFFLINE is set, so hub dataset {hub_id!r} can only come "
            "from the local cache. Download it (huggingface-cli download --repo-type dataset "
            f"{hub_id} --local-dir <dir>) "
            "and point MLLM_DA_BENCH_DIR or the benchmark's source at it."
        )
    try:
        ds = datasets.load_dataset(hub_id, name=spec.config, split=spec.split, cache_dir=cache_dir)
    except Exception as err:
        raise BenchmarkError(
            f"benchmark {spec.name!r}: could not load {hub_id!r} "
            f"(config {spec.config!r}, split {spec.split!r}): "
            f"{type(err).__name__}: {err}"
        ) from err
    return dataset_source(ds, f"{hub_id}[{spec.config or ''}:{spec.split}]", spec.image_field, None)


def open_source(spec: BenchmarkSpec, cache_dir: str | None) -> Source:
    local = Path(spec.source).expanduser() if spec.source else None
    if local is not None and local.is_file():
        return _file_source(local, spec, cache_dir)
    if local is not None and local.is_dir():
        return _folder_source(local, spec, cache_dir)
    hub_id = spec.hub_id
    if hub_id is None and spec.source and not spec.source.startswith((".", "/", "~")) and spec.source.count("/") == 1:
        hub_id = spec.source  # "owner/name" that is not on disk
    if hub_id is None:
        raise BenchmarkError(f"benchmark {spec.name!r}: source {spec.source} does not exist and no hub_id is set")
    return _hub_source(hub_id, spec, cache_dir, str(local) if local is not None and spec.hub_id else None)


# --------------------------------------------------------------------------------------------- validation
