"""Benchmark definitions and loading (reference §5.1).

A :class:`BenchmarkSpec` is what one ``conf/benchmark/<name>.yaml`` says: where the rows are, which fields
hold the prompt, label and image, which scorer of :data:`~mllm_da.evaluation.scorers.SCORERS` applies, how
long answers may be. :func:`load_benchmark` turns it into a :class:`Benchmark`: validated text rows kept in
memory and images read only when a batch needs them (Food101 has 25K embedded images; holding them decoded
would not fit).

Sources, tried in this order:

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

Images are embedded (``datasets.Image``: bytes, as the AdaptLLM datasets hold them) or paths relative to
``image_root`` (by default the data file's folder); a path that resolves outside the root is refused, as in
:mod:`mllm_da.data.records`. A bad row (missing field, missing image, unknown label) stops the load with the
source, the 0-based row and the field under ``bad_rows="fail"``, or is skipped and counted by reason under
``"skip"``; either way it is listed in ``Benchmark.rejects`` (and the ``rejects_path`` file). A JSONL line that is
not UTF-8 or not JSON is such a row too (under ``fail`` the error names ``file:line``). Every row's image is
decoded once at load time (``check_images``), so a truncated picture is a bad row, not a crash mid-evaluation.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from mllm_da.data.records import BadImageError, load_image, locate_image, lone_surrogate, unwrap_image
from mllm_da.evaluation.scorers import (
    SCORERS,
    ChoiceLabels,
    LabelSpace,
    MultiLabelSpace,
    food101_labels,
    foodseg103_labels,
    nutrition5k_labels,
)
from mllm_da.utils.io import atomic_write_text

log = logging.getLogger(__name__)

BadRows = Literal["fail", "skip"]
LABEL_SPACES: Mapping[str, Callable[[Any], LabelSpace]] = {
    "food101": food101_labels,
    "foodseg103": foodseg103_labels,
    "nutrition5k": nutrition5k_labels,
}
#: every reason a benchmark row can be refused for; scores.json counts skipped rows under these keys
ROW_REASONS: Mapping[str, str] = {
    "missing_field": "a field the metric needs is absent or null",
    "wrong_type": "a field has the wrong type (e.g. a multi-label label that is not a list of names)",
    "empty_prompt": "the prompt field is empty or only whitespace",
    "bad_answer_type": "answer_type is neither OPEN nor CLOSED (compared exactly, as the scorer does)",
    "unknown_label": "the gold label is not one of the options or not in the label vocabulary",
    "missing_image": "the image is null, empty, or names no file",
    "path_escape": "an image path that resolves outside image_root",
    "bad_image": "the image does not decode (truncated, not an image, a decompression bomb)",
    "not_utf8": "a JSONL line is not UTF-8, or a text field holds a lone surrogate",
    "malformed_json": "a JSONL line is not valid JSON",
    "not_object": "a row of a JSON/JSONL file is not a JSON object",
}
_FILE_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json")


class BenchmarkError(ValueError):
    """A benchmark cannot be loaded at all: no source, a missing column, an unreadable file."""


class BenchmarkRowError(ValueError):
    """A row breaks the benchmark's schema under ``bad_rows="fail"``; names the source, row and field."""

    def __init__(self, origin: str, index: int, field_name: str, reason: str, message: str) -> None:
        # rows are counted from 1 in messages, as the record readers count lines; ``index`` stays 0-based
        super().__init__(f"{origin} row {index + 1}: field '{field_name}': {message} [{reason}]")
        self.origin = origin
        self.index = index
        self.field = field_name
        self.reason = reason


# --------------------------------------------------------------------------------------------------- spec


#: generation budget per metric when a benchmark does not set one: short answers (a word, a yes/no, a letter) get
#: 32 tokens, ingredient lists 256 (the reference's budget for them), free text (ROUGE-L) the reference's 1,024
DEFAULT_MAX_NEW_TOKENS: Mapping[str, int] = {
    "vqa_open_closed": 32,
    "multiple_choice": 32,
    "multi_label_f1": 256,
    "multi_label_recall": 256,
    "rouge_l": 1024,
}


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: where its rows are, how to read them, and how to score them.

    ``source`` is a local file or folder (the usual case: a local copy of the AdaptLLM datasets) or a hub id;
    ``hub_id`` is tried when ``source`` is not on disk. ``config``/``split`` select the hub configuration and
    split; ``disk_subset`` names the task's folder inside a ``save_to_disk`` copy. ``limit`` keeps the first
    rows of the split (row indices, which seed the MC fallback, are unchanged by it).
    """

    name: str
    metric: str
    source: str | None = None
    hub_id: str | None = None
    config: str | None = None
    split: str = "test"
    disk_subset: str | None = None
    image_root: str | None = None
    image_field: str = "image"
    prompt_field: str = "input"
    label_field: str = "label"
    id_field: str | None = "id"
    #: rows with this field get a per-value breakdown of the metric (the toy's question types)
    group_field: str | None = "question_type"
    #: food101 / foodseg103 / nutrition5k: build the label space of that task from ``label_file``
    label_space: str | None = None
    label_file: str | None = None
    #: null: the metric's default (:data:`DEFAULT_MAX_NEW_TOKENS`), so a short-answer benchmark never waits for
    #: 1,024 tokens of a model that does not stop
    max_new_tokens: int | None = None
    limit: int | None = None
    bad_rows: BadRows = "fail"
    #: decode every row's image at load time, so that a truncated or undecodable image is a bad row (skipped or an
    #: error by ``bad_rows``) before any generation starts, not a crash in the middle of it
    check_images: bool = True

    def __post_init__(self) -> None:
        where = f"benchmark {self.name!r}"
        if not self.name or "/" in self.name:
            raise ValueError(f"{where}: name must be non-empty and contain no '/' (it names output files)")
        if self.metric not in SCORERS:
            raise ValueError(f"{where}: metric {self.metric!r} is not one of {sorted(SCORERS)}")
        if self.label_space is not None and self.label_space not in LABEL_SPACES:
            raise ValueError(
                f"{where}: label_space {self.label_space!r} is not one of {sorted(LABEL_SPACES)}"
            )
        if SCORERS[self.metric].needs_labels and self.label_space not in ("foodseg103", "nutrition5k"):
            raise ValueError(f"{where}: metric {self.metric} needs label_space foodseg103 or nutrition5k")
        if self.label_space == "food101" and self.metric != "multiple_choice":
            raise ValueError(f"{where}: label_space food101 goes with metric multiple_choice")
        if self.label_space is not None and not self.label_file:
            raise ValueError(
                f"{where}: label_space {self.label_space} needs label_file (the JSON label list)"
            )
        if not self.source and not self.hub_id:
            raise ValueError(f"{where}: set source (a local file or folder) or hub_id")
        if self.bad_rows not in ("fail", "skip"):
            raise ValueError(f"{where}: bad_rows must be 'fail' or 'skip', got {self.bad_rows!r}")
        if self.max_new_tokens is None:
            object.__setattr__(self, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS[self.metric])
        if self.max_new_tokens < 1:
            raise ValueError(f"{where}: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"{where}: limit must be >= 0 or null, got {self.limit}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> BenchmarkSpec:
        """Build from a config node, refusing unknown keys (a typo would otherwise be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in dict(cfg).items() if k != "_target_"}
        unknown = set(data) - names
        if unknown:
            raise ValueError(
                f"benchmark {data.get('name', '?')!r}: unknown key(s) {sorted(unknown)}; "
                f"known: {sorted(names)}"
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def fingerprint(self) -> dict[str, Any]:
        """What decides a benchmark's rows and prompts: a resumed predictions file must share it."""
        keys = (
            "source",
            "hub_id",
            "config",
            "split",
            "disk_subset",
            "image_field",
            "prompt_field",
            "label_field",
            "metric",
            "max_new_tokens",
        )
        return {k: getattr(self, k) for k in keys}


# --------------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class BenchmarkRow:
    """One validated row. ``index`` is its 0-based position in the split (the reference's ``syn_id``).

    ``fields`` holds every text field under its own name plus the gold label under ``"label"``, as the scorers
    read it (``answer_type``, options ``A``..``D`` ...). ``group`` is the ``group_field`` value or None.
    """

    index: int
    id: str
    prompt: str
    label: Any
    fields: Mapping[str, Any]
    group: str | None = None


@dataclass
class Benchmark:
    """A loaded benchmark: its rows, label space and a way to read each row's image on demand."""

    spec: BenchmarkSpec
    rows: list[BenchmarkRow]
    labels: LabelSpace | None
    origin: str
    #: rows read (the first ``limit`` of the split), and skipped rows counted by reason
    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    #: every refused row: source (file:line or origin row), row, reason_key, field, reason, raw
    rejects: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _image_value: Callable[[int], Any] = field(default=lambda i: None, repr=False)
    _image_root: Path | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> Image.Image:
        """The decoded RGB image of the row at split position ``index``."""
        try:
            return load_image(self._image_ref(index))
        except BadImageError as err:
            raise BadImageError(f"{self.origin} row {index + 1}: field '{self.spec.image_field}': {err}") from err

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) from the image header only, to plan prompt lengths without decoding pixels."""
        ref = self._image_ref(index)
        try:
            with Image.open(ref if isinstance(ref, Path) else io.BytesIO(ref)) as image:
                return image.size
        except Exception as err:
            raise BadImageError(f"{self.origin} row {index + 1}: field '{self.spec.image_field}': {err}") from err

    def image_key(self, index: int) -> str:
        """The row's image identity (resolved path or content hash): rows sharing a picture share it."""
        ref = self._image_ref(index)
        if isinstance(ref, Path):
            return str(ref)
        return hashlib.sha1(ref).hexdigest()

    def _image_ref(self, index: int) -> Path | bytes:
        ref, problem = _image_reference(self._image_value(index), self._image_root)
        if problem is not None:
            raise BadImageError(f"{self.origin} row {index + 1}: field '{self.spec.image_field}': {problem[1]}")
        assert ref is not None
        return ref


def _image_reference(value: Any, root: Path | None) -> tuple[Path | bytes | None, tuple[str, str] | None]:
    """Turn a stored image value into bytes or a checked path; returns ``(ref, None)`` or ``(None, problem)``.

    Accepted values: bytes; ``{"bytes": ..., "path": ...}`` (``datasets.Image`` without decoding); a path
    string; a one-element list of any of these (the ShareGPT ``images`` form).
    """
    value, problem = unwrap_image(value)
    if value is None:
        return None, ("missing_image", str(problem))
    if isinstance(value, bytes):
        return value, None
    if "\x00" in value:
        return None, ("missing_image", "the image path contains a NUL byte")
    at = lone_surrogate(value)
    if at is not None:
        return None, ("not_utf8", f"the image path holds a lone surrogate at character {at}")
    if root is None:
        return None, ("missing_image", f"image path {value!r:.200} given but the benchmark has no image_root")
    try:
        resolved, inside, is_file = locate_image(root.resolve(), value)  # an absolute path inside the root is fine
    except (OSError, RuntimeError) as err:  # too long a name, a symlink loop
        return None, ("missing_image", f"cannot resolve image path {value!r:.200} ({type(err).__name__}: {err})")
    if not inside:
        return None, ("path_escape", f"image path {value!r:.200} resolves outside image_root {root}")
    if not is_file:
        return None, ("missing_image", f"image file {resolved} does not exist")
    return resolved, None


# ------------------------------------------------------------------------------------------------ sources


@dataclass
class _Source:
    """Rows from wherever they came: a ``datasets.Dataset`` or a list of dicts from a JSON/JSONL file."""

    origin: str
    columns: list[str]
    length: int
    text_rows: Callable[[int], Iterator[dict[str, Any]]]
    image_value: Callable[[int], Any]
    default_root: Path | None
    #: rows that could not be read at all (JSON/JSONL): row index → (field, reason, message, where, raw text);
    #: ``where`` is ``file:line`` for a JSONL line
    problems: dict[int, tuple[str, str, str, str, Any]] = field(default_factory=dict)


def _dataset_source(ds: Any, origin: str, image_field: str, default_root: Path | None) -> _Source:
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

    return _Source(origin, columns, len(ds), text_rows, image_value, default_root)


def _json_source(path: Path, image_field: str) -> _Source:
    """A JSON list or JSONL file, read here so that a bad line is named ``file:line``.

    A JSONL line that is not UTF-8 or not JSON, and a row that is not an object, is a row of its own with a
    problem, so that ``bad_rows`` decides whether it stops the load or is skipped (row indices do not shift).
    """
    rows: list[Any] = []
    problems: dict[int, tuple[str, str, str, str, Any]] = {}
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BenchmarkError(f"{path}: cannot read ({err})") from err
    if path.suffix == ".jsonl":
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
    else:
        try:
            data_list = json.loads(data.decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            raise BenchmarkError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
        except json.JSONDecodeError as err:
            raise BenchmarkError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from err
        except (ValueError, RecursionError) as err:
            raise BenchmarkError(f"{path}: malformed JSON ({err})") from err
        if not isinstance(data_list, list):
            raise BenchmarkError(
                f"{path}: a JSON benchmark must be a list of row objects, got {type(data_list).__name__}"
            )
        rows = data_list
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            message = f"a row must be a JSON object, got {type(row).__name__}"
            problems[i] = ("$", "not_object", message, f"{path} row {i + 1}", row)
            rows[i] = {}
    columns = sorted({key for row in rows for key in row})

    def text_rows(limit: int) -> Iterator[dict[str, Any]]:
        for row in rows[:limit]:
            yield {k: v for k, v in row.items() if k != image_field}

    return _Source(
        str(path), columns, len(rows), text_rows, lambda i: rows[i].get(image_field), path.parent, problems
    )


def _file_source(path: Path, spec: BenchmarkSpec, cache_dir: str | None) -> _Source:
    if path.suffix in (".json", ".jsonl"):
        return _json_source(path, spec.image_field)
    import datasets

    builder = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix)
    if builder is None:
        raise BenchmarkError(
            f"{path}: unsupported benchmark file type (use one of {', '.join(_FILE_SUFFIXES)})"
        )
    ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
    return _dataset_source(ds, str(path), spec.image_field, path.parent)


def _files_in(folder: Path, split: str) -> list[Path] | None:
    """Data files of one split inside ``folder``: the whole folder if it holds only data files of one kind,
    else files whose name contains the split name."""
    for suffix in _FILE_SUFFIXES:
        files = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))
        if not files:
            continue
        named = [p for p in files if split in p.stem]
        return named or (files if folder.name == split else None)
    return None


def _folder_source(folder: Path, spec: BenchmarkSpec, cache_dir: str | None) -> _Source:
    import datasets

    subset_dirs = [d for d in (spec.disk_subset, spec.config, spec.split) if d]
    if (folder / "state.json").is_file():
        ds = datasets.Dataset.load_from_disk(str(folder))
        return _dataset_source(ds, str(folder), spec.image_field, folder)
    for name in subset_dirs:
        if (folder / name / "state.json").is_file():
            ds = datasets.Dataset.load_from_disk(str(folder / name))
            return _dataset_source(ds, str(folder / name), spec.image_field, folder / name)
    if (folder / "dataset_dict.json").is_file():
        dd = datasets.DatasetDict.load_from_disk(str(folder))
        for name in subset_dirs:
            if name in dd:
                return _dataset_source(dd[name], f"{folder}[{name}]", spec.image_field, folder)
        raise BenchmarkError(
            f"{folder}: save_to_disk folder has splits {sorted(dd)}, none named {subset_dirs} "
            "(set the benchmark's disk_subset)"
        )
    candidates = [folder / spec.config / spec.split, folder / spec.config] if spec.config else []
    candidates += [folder / spec.split, folder]
    for place in candidates:
        if not place.is_dir():
            continue
        files = _files_in(place, spec.split)
        if files:
            if files[0].suffix in (".json", ".jsonl"):
                if len(files) > 1:
                    raise BenchmarkError(
                        f"{place}: several JSON files for split {spec.split!r}: {[f.name for f in files]}"
                    )
                return _json_source(files[0], spec.image_field)
            builder = "parquet" if files[0].suffix == ".parquet" else "arrow"
            ds = datasets.load_dataset(
                builder, data_files=[str(f) for f in files], split="train", cache_dir=cache_dir
            )
            return _dataset_source(ds, str(place), spec.image_field, place)
    try:
        ds = datasets.load_dataset(str(folder), name=spec.config, split=spec.split, cache_dir=cache_dir)
    except Exception as err:
        raise BenchmarkError(
            f"{folder}: found no save_to_disk folder, no {spec.split!r} data files and no loadable dataset "
            f"(config {spec.config!r}): {type(err).__name__}: {err}"
        ) from err
    return _dataset_source(ds, str(folder), spec.image_field, folder)


def _hub_source(hub_id: str, spec: BenchmarkSpec, cache_dir: str | None, tried: str | None) -> _Source:
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
    return _dataset_source(ds, f"{hub_id}[{spec.config or ''}:{spec.split}]", spec.image_field, None)


def _open_source(spec: BenchmarkSpec, cache_dir: str | None) -> _Source:
    local = Path(spec.source).expanduser() if spec.source else None
    if local is not None and local.is_file():
        return _file_source(local, spec, cache_dir)
    if local is not None and local.is_dir():
        return _folder_source(local, spec, cache_dir)
    hub_id = spec.hub_id
    if (
        hub_id is None
        and spec.source
        and not spec.source.startswith((".", "/", "~"))
        and spec.source.count("/") == 1
    ):
        hub_id = spec.source  # "owner/name" that is not on disk
    if hub_id is None:
        raise BenchmarkError(
            f"benchmark {spec.name!r}: source {spec.source} does not exist and no hub_id is set"
        )
    return _hub_source(hub_id, spec, cache_dir, str(local) if local is not None and spec.hub_id else None)


# --------------------------------------------------------------------------------------------- validation


def load_label_space(spec: BenchmarkSpec) -> LabelSpace | None:
    """The label vocabulary of a food task, read from ``spec.label_file`` (never bundled with the code)."""
    if spec.label_space is None:
        return None
    path = Path(str(spec.label_file)).expanduser()
    if not path.is_file():
        raise BenchmarkError(
            f"benchmark {spec.name!r}: label file {path} not found "
            "(set ADAMLLM_LABELS_DIR to the folder holding "
            "food101_name_to_label.json, foodseg103_id2label.json and nutrition5k_ingredients.json)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BenchmarkError(f"{path}: not a readable JSON label file ({err})") from err
    try:
        return LABEL_SPACES[spec.label_space](data)
    except (ValueError, TypeError, AttributeError) as err:
        raise BenchmarkError(f"{path}: not a valid {spec.label_space} label file ({err})") from err


def _check_row(
    fields: Mapping[str, Any], spec: BenchmarkSpec, labels: LabelSpace | None
) -> tuple[str, str, str] | None:
    """``(field, reason, message)`` for the first problem of a row's text fields, or None."""
    for name, value in fields.items():
        texts = value if isinstance(value, (list, tuple)) else [value]
        for text in texts:
            at = lone_surrogate(text) if isinstance(text, str) else None
            if at is not None:
                return str(name), "not_utf8", f"the text holds a lone surrogate at character {at}"
    prompt = fields.get(spec.prompt_field)
    if prompt is None:
        return spec.prompt_field, "missing_field", "the prompt is missing"
    if not isinstance(prompt, str):
        return spec.prompt_field, "wrong_type", f"the prompt must be a string, got {type(prompt).__name__}"
    if not prompt.strip():
        return spec.prompt_field, "empty_prompt", "the prompt is empty"
    label = fields.get(spec.label_field)
    if label is None:
        return spec.label_field, "missing_field", "the label is missing"
    metric = spec.metric
    if metric == "vqa_open_closed":
        answer_type = fields.get("answer_type")
        if answer_type is None:
            return "answer_type", "missing_field", "VQA rows need answer_type OPEN or CLOSED"
        if answer_type not in ("OPEN", "CLOSED"):
            return (
                "answer_type",
                "bad_answer_type",
                f"answer_type must be OPEN or CLOSED, got {answer_type!r}",
            )
    if metric in ("multi_label_f1", "multi_label_recall"):
        if not isinstance(label, (list, tuple)) or not all(isinstance(n, str) for n in label):
            return (
                spec.label_field,
                "wrong_type",
                f"a multi-label label must be a list of names, got {label!r:.80}",
            )
        assert isinstance(labels, MultiLabelSpace)
        unknown = [n for n in label if n not in labels.name_to_id]
        if unknown:
            return (
                spec.label_field,
                "unknown_label",
                f"label name(s) {unknown} not in the {spec.label_space} list",
            )
    elif not isinstance(label, (str, int)) or isinstance(label, bool):
        return spec.label_field, "wrong_type", f"the label must be a string, got {type(label).__name__}"
    if metric == "multiple_choice":
        if isinstance(labels, ChoiceLabels):
            if str(label) not in labels.label_to_choice and str(label) not in labels.options:
                return spec.label_field, "unknown_label", f"label {label!r} is not a {spec.label_space} class"
        else:
            if fields.get("A") is None:
                return "A", "missing_field", "multiple-choice rows need option fields A, B, ..."
            letters = []
            for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
                option = fields.get(letter)
                if option is None:
                    break
                if not isinstance(option, (str, int, float)) or isinstance(option, bool):
                    return letter, "wrong_type", f"an option must be a string, got {type(option).__name__}"
                letters.append(letter)
            if str(label) not in letters:
                return (
                    spec.label_field,
                    "unknown_label",
                    f"label {label!r} is not one of the options {letters}",
                )
    return None


def _image_problem(
    ref: Path | bytes, decoded: dict[Path | str, tuple[str, str] | None]
) -> tuple[str, str] | None:
    """``("bad_image", message)`` when the image does not decode, else None (cached per picture)."""
    key: Path | str = ref if isinstance(ref, Path) else hashlib.sha1(ref).hexdigest()
    if key not in decoded:
        try:
            load_image(ref)
            decoded[key] = None
        except BadImageError as err:
            decoded[key] = ("bad_image", str(err))
    return decoded[key]


def _write_rejects(path: Path | None, rows: list[dict[str, Any]]) -> None:
    if path is not None:  # ASCII-escaped JSON lines (a rejected row may hold a lone surrogate)
        atomic_write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def load_benchmark(
    spec: BenchmarkSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    rejects_path: str | os.PathLike | None = None,
) -> Benchmark:
    """Read, validate and keep a benchmark's rows; images are decoded once to check them (``spec.check_images``)
    and then read again only when a batch needs them (:meth:`Benchmark.image`).

    ``cache_dir`` is where ``datasets`` keeps its arrow cache for parquet/hub sources (default: its own). Every
    refused row is kept in :attr:`Benchmark.rejects` with its reason and, with ``rejects_path``, written there as
    JSON lines (also before a ``bad_rows="fail"`` error is raised).
    """
    rejects_path = Path(rejects_path) if rejects_path is not None else None
    rejects: list[dict[str, Any]] = []
    source = _open_source(spec, str(cache_dir) if cache_dir is not None else None)
    for needed in (spec.prompt_field, spec.label_field, spec.image_field):
        if needed not in source.columns and source.length > len(source.problems):  # rows that could be read
            raise BenchmarkError(
                f"{source.origin}: benchmark {spec.name!r} has no field {needed!r} "
                f"(fields: {source.columns}); "
                "set the benchmark's prompt_field / label_field / image_field"
            )
    labels = load_label_space(spec)
    root = Path(spec.image_root).expanduser() if spec.image_root else source.default_root
    limit = source.length if spec.limit is None else min(spec.limit, source.length)
    rows: list[BenchmarkRow] = []
    skipped: Counter[str] = Counter()
    decoded: dict[Path | str, tuple[str, str] | None] = {}  # a picture shared by many rows is decoded once
    for index, fields in enumerate(source.text_rows(limit)):
        unreadable = source.problems.get(index)
        if unreadable is not None and unreadable[1] in ("malformed_json", "not_utf8"):
            where, reason, message, place, raw = unreadable
            if spec.bad_rows == "fail":
                rejects.append({"source": place, "row": index, "reason_key": reason, "field": where,
                                "reason": message, "raw": raw})
                _write_rejects(rejects_path, rejects)
                raise BenchmarkError(f"{place}: {message} [{reason}]")
            problem: tuple[str, str, str] | None = (where, reason, message)
        elif unreadable is not None:
            problem = unreadable[:3]
        else:
            problem = _check_row(fields, spec, labels)
        if problem is None:
            ref, image_problem = _image_reference(source.image_value(index), root)
            if image_problem is None and spec.check_images and ref is not None:
                image_problem = _image_problem(ref, decoded)
            if image_problem is not None:
                problem = (spec.image_field, *image_problem)
        if problem is not None:
            where, reason, message = problem
            rejects.append({
                "source": unreadable[3] if unreadable is not None else f"{source.origin} row {index + 1}",
                "row": index,
                "reason_key": reason,
                "field": where,
                "reason": message,
                "raw": unreadable[4] if unreadable is not None else fields,
            })
            if spec.bad_rows == "fail":
                _write_rejects(rejects_path, rejects)
                raise BenchmarkRowError(source.origin, index, where, reason, message)
            skipped[reason] += 1
            log.warning(
                "%s row %d: field '%s': %s [%s] (skipped)", source.origin, index + 1, where, message, reason
            )
            continue
        scored = dict(fields)
        scored["label"] = fields[spec.label_field]
        row_id = fields.get(spec.id_field) if spec.id_field else None
        group = fields.get(spec.group_field) if spec.group_field else None
        rows.append(
            BenchmarkRow(
                index=index,
                id=str(row_id) if row_id is not None else str(index),
                prompt=fields[spec.prompt_field],
                label=scored["label"],
                fields=scored,
                group=str(group) if group is not None else None,
            )
        )
    _write_rejects(rejects_path, rejects)
    if skipped:
        where = f"; rejects written to {rejects_path}" if rejects_path else ""
        log.warning(
            "%s: skipped %d of %d rows: %s%s", source.origin, sum(skipped.values()), limit, dict(skipped), where
        )
    return Benchmark(
        spec=spec,
        rows=rows,
        labels=labels,
        origin=source.origin,
        read=limit,
        skipped=dict(skipped),
        rejects=rejects,
        _image_value=source.image_value,
        _image_root=root,
    )


def benchmark_specs(
    definitions: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    *,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    bad_rows: BadRows | None = None,
) -> list[BenchmarkSpec]:
    """The specs named in ``names`` (a domain's ``benchmarks`` list) from the composed ``benchmark`` node.

    ``limit`` / ``max_new_tokens`` / ``bad_rows``, when given, override every selected benchmark's own value.
    """
    specs = []
    for name in names:
        if name not in definitions:
            raise ValueError(
                f"benchmark {name!r} is not defined; defined: {sorted(definitions)} (conf/benchmark/)"
            )
        node = definitions[name]
        if node.get("name", name) != name:
            raise ValueError(f"benchmark {name!r}: its name field says {node.get('name')!r}")
        specs.append(
            BenchmarkSpec.from_config(
                {"name": name, **node}, limit=limit, max_new_tokens=max_new_tokens, bad_rows=bad_rows
            )
        )
    return specs
