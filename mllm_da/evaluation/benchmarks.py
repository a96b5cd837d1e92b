"""Benchmark loading (reference §5.1): a :class:`~mllm_da.evaluation.spec.BenchmarkSpec` becomes a
:class:`Benchmark`, validated text rows kept in memory and images read only when a batch needs them (Food101 has
25K embedded images; holding them decoded would not fit).

Rows come from a file, a folder or the hub (:mod:`mllm_da.evaluation.sources`) and are checked one by one
(:mod:`mllm_da.evaluation.rows`). A bad row (missing field, missing image, unknown label) stops the load with the
source, the 0-based row and the field under ``bad_rows="fail"``, or is skipped and counted by reason under
``"skip"``; either way it is listed in ``Benchmark.rejects`` (and the ``rejects_path`` file). A JSONL line that is
not UTF-8 or not JSON is such a row too (under ``fail`` the error names ``file:line``). Every row's image is
decoded once at load time (``check_images``), so a truncated picture is a bad row, not a crash mid-evaluation.

The spec, its errors and the row reasons are re-exported here, where callers have always imported them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mllm_da.data.bad_records import write_rejects
from mllm_da.data.records import BadImageError, load_image
from mllm_da.evaluation.errors import BenchmarkError, BenchmarkRowError
from mllm_da.evaluation.labels import LabelSpace, load_label_space
from mllm_da.evaluation.rows import ROW_REASONS, RowProblem, check_row, image_problem, image_reference
from mllm_da.evaluation.scorers import SCORERS
from mllm_da.evaluation.sources import Source, open_source
from mllm_da.evaluation.spec import DEFAULT_MAX_NEW_TOKENS, BadRows, BenchmarkSpec, benchmark_specs

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "ROW_REASONS",
    "BadImageError",
    "BadRows",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkRow",
    "BenchmarkRowError",
    "BenchmarkSpec",
    "benchmark_specs",
    "load_benchmark",
]

log = logging.getLogger(__name__)


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
        ref, problem = image_reference(self._image_value(index), self._image_root)
        if problem is not None:
            raise BadImageError(f"{self.origin} row {index + 1}: field '{self.spec.image_field}': {problem[1]}")
        assert ref is not None
        return ref


@dataclass
class _Reading:
    """What :func:`load_benchmark` needs while it walks the rows of one source."""

    spec: BenchmarkSpec
    source: Source
    labels: LabelSpace | None
    root: Path | None
    rejects_path: Path | None
    rejects: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    #: a picture shared by many rows is decoded once
    decoded: dict[Path | str, tuple[str, str] | None] = field(default_factory=dict)

    def problem(self, index: int, fields: dict[str, Any]) -> RowProblem | None:
        """The row's first problem: unreadable, a text field, or its image (decoded once per picture)."""
        unreadable = self.source.problems.get(index)
        if unreadable is not None:
            if unreadable[1] in ("malformed_json", "not_utf8") and self.spec.bad_rows == "fail":
                where, reason, message, place, raw = unreadable
                self.rejects.append(
                    {
                        "source": place,
                        "row": index,
                        "reason_key": reason,
                        "field": where,
                        "reason": message,
                        "raw": raw,
                    }
                )
                write_rejects(self.rejects_path, self.rejects)
                raise BenchmarkError(f"{place}: {message} [{reason}]")
            return unreadable[:3]
        problem = check_row(fields, self.spec, self.labels)
        if problem is not None:
            return problem
        ref, bad_image = image_reference(self.source.image_value(index), self.root)
        if bad_image is None and self.spec.check_images and ref is not None:
            bad_image = image_problem(ref, self.decoded)
        return (self.spec.image_field, *bad_image) if bad_image is not None else None

    def refuse(self, index: int, fields: dict[str, Any], problem: RowProblem) -> None:
        """List the row in the rejects; stop under ``bad_rows="fail"``, else count it as skipped."""
        where, reason, message = problem
        unreadable = self.source.problems.get(index)
        self.rejects.append(
            {
                "source": unreadable[3] if unreadable is not None else f"{self.source.origin} row {index + 1}",
                "row": index,
                "reason_key": reason,
                "field": where,
                "reason": message,
                "raw": unreadable[4] if unreadable is not None else fields,
            }
        )
        if self.spec.bad_rows == "fail":
            write_rejects(self.rejects_path, self.rejects)
            raise BenchmarkRowError(self.source.origin, index, where, reason, message)
        self.skipped[reason] += 1
        log.warning("%s row %d: field '%s': %s [%s] (skipped)", self.source.origin, index + 1, where, message, reason)

    def row(self, index: int, fields: dict[str, Any]) -> BenchmarkRow:
        spec = self.spec
        scored = dict(fields)
        scored["label"] = fields[spec.label_field]
        row_id = fields.get(spec.id_field) if spec.id_field else None
        group = fields.get(spec.group_field) if spec.group_field else None
        return BenchmarkRow(
            index=index,
            id=str(row_id) if row_id is not None else str(index),
            prompt=fields[spec.prompt_field],
            label=scored["label"],
            fields=scored,
            group=str(group) if group is not None else None,
        )


def _check_columns(spec: BenchmarkSpec, source: Source) -> None:
    for needed in (spec.prompt_field, spec.label_field, spec.image_field):
        if needed not in source.columns and source.length > len(source.problems):  # rows that could be read
            raise BenchmarkError(
                f"{source.origin}: benchmark {spec.name!r} has no field {needed!r} "
                f"(fields: {source.columns}); "
                "set the benchmark's prompt_field / label_field / image_field"
            )


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
    source = open_source(spec, str(cache_dir) if cache_dir is not None else None)
    _check_columns(spec, source)
    labels = load_label_space(
        spec.name, spec.metric, SCORERS[spec.metric].needs_labels, spec.label_space, spec.label_file
    )
    root = Path(spec.image_root).expanduser() if spec.image_root else source.default_root
    reading = _Reading(spec, source, labels, root, Path(rejects_path) if rejects_path is not None else None)
    limit = source.length if spec.limit is None else min(spec.limit, source.length)
    rows: list[BenchmarkRow] = []
    for index, fields in enumerate(source.text_rows(limit)):
        problem = reading.problem(index, fields)
        if problem is not None:
            reading.refuse(index, fields, problem)
        else:
            rows.append(reading.row(index, fields))
    write_rejects(reading.rejects_path, reading.rejects)
    if reading.skipped:
        where = f"; rejects written to {rejects_path}" if rejects_path else ""
        log.warning(
            "%s: skipped %d of %d rows: %s%s",
            source.origin,
            sum(reading.skipped.values()),
            limit,
            dict(reading.skipped),
            where,
        )
    return Benchmark(
        spec=spec,
        rows=rows,
        labels=labels,
        origin=source.origin,
        read=limit,
        skipped=dict(reading.skipped),
        rejects=reading.rejects,
        _image_value=source.image_value,
        _image_root=root,
    )
