"""Why a benchmark cannot be used: the whole source (:class:`BenchmarkError`) or one row
(:class:`BenchmarkRowError`)."""

from __future__ import annotations


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
