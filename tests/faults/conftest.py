"""The fault-injection suite's shared parts: Hypothesis profiles and a tally of every fault case tried.

Two profiles: ``quick`` (the default, part of ``make test`` and CI) and ``full`` (``make test-faults``, which sets
``MLLM_DA_FAULT_PROFILE=full``). Each test calls :func:`FaultTally.record` once per case it checked, with the input
kind, the fault and the outcome it asserted; with ``MLLM_DA_FAULT_REPORT=<file>`` the session writes the tally there
as JSON, and ``python -m tests.faults.report`` turns it into the table in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("quick", max_examples=25, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("full", max_examples=300, deadline=None, suppress_health_check=_SUPPRESS)
PROFILE = os.environ.get("MLLM_DA_FAULT_PROFILE", "quick")
settings.load_profile(PROFILE)

#: the outcomes a case may end in; anything else (a traceback from inside a library, a silent drop) fails the test
OUTCOMES = (
    "error names file/line/field",
    "skipped, counted, in rejects file",
    "accepted (valid input)",
    "refused, nothing executed",
    "resumed, output equal to uninterrupted run",
    "recorded as failed, sweep went on",
    "skipped on rerun (finished)",
)

_TALLY: Counter[tuple[str, str, str]] = Counter()


class FaultTally:
    """Counts cases by (input kind, fault, outcome) for the reliability table."""

    def record(self, kind: str, fault: str, outcome: str, count: int = 1) -> None:
        assert outcome in OUTCOMES, f"unknown outcome {outcome!r}; use one of {OUTCOMES}"
        _TALLY[(kind, fault, outcome)] += count


@pytest.fixture(scope="session")
def fault_tally() -> FaultTally:
    return FaultTally()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("MLLM_DA_FAULT_REPORT")
    if not target or not _TALLY:
        return
    rows = [
        {"kind": kind, "fault": fault, "outcome": outcome, "cases": count}
        for (kind, fault, outcome), count in sorted(_TALLY.items())
    ]
    payload = {"profile": PROFILE, "exitstatus": int(exitstatus), "rows": rows}
    Path(target).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
