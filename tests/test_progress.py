"""Progress bars: shown on a terminal outside CI, quiet in CI and redirected logs, and fed by the long loops."""

from __future__ import annotations

import pytest

from mllm_da.utils import progress
from mllm_da.utils.progress import progress_bar, show_progress


class _Tty:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(("tty", "ci", "shown"), [(True, "", True), (True, "true", False), (False, "", False)])
def test_auto_shows_a_bar_only_on_a_terminal_outside_ci(monkeypatch, tty: bool, ci: str, shown: bool):
    monkeypatch.setattr(progress.sys, "stderr", _Tty(tty))
    monkeypatch.setenv("CI", ci)
    assert show_progress("auto") is shown and show_progress(None) is shown
    assert show_progress(True) and not show_progress("false")
    with pytest.raises(ValueError, match="progress must be auto"):
        show_progress("sometimes")


def test_synthesis_feeds_a_bar_with_its_records(monkeypatch, tmp_path, synth_inputs, synth_backbone):
    from mllm_da.synthesis import runner

    seen: list[tuple[int, str, str, object]] = []

    def recording_bar(total, desc, unit, setting="auto", **kwargs):
        bar = progress_bar(total, desc, unit, False, **kwargs)
        seen.append((total, desc, unit, setting))
        return bar

    monkeypatch.setattr(runner, "progress_bar", recording_bar)
    job = runner.SynthesisJob(
        backbone=synth_backbone,
        inputs=synth_inputs[:4],
        folder=str(tmp_path / "s"),
        batch_size=2,
        max_new_tokens=4,
        progress="true",
    )
    runner.run_job(job)
    assert seen == [(4, "synthesis shards [0]", "record", "true")]


def test_evaluation_draws_one_bar_per_benchmark_with_the_configured_setting(monkeypatch, compose_cfg, tmp_path):
    from mllm_da.evaluation import generation
    from mllm_da.orchestration.evaluate import evaluate
    from tests.test_custom_domain import BENCHMARK_ROWS, _benchmark, _csv

    calls: list[tuple[int, str, object]] = []

    def recording_bar(total, desc, unit, setting="auto", **kwargs):
        calls.append((total, desc, setting))
        return progress_bar(total, desc, unit, False, **kwargs)

    monkeypatch.setattr(generation, "progress_bar", recording_bar)
    root = tmp_path / "mine"
    _csv(root)
    _benchmark(root, BENCHMARK_ROWS)
    cfg = compose_cfg(
        ["domain=custom", f"domain.root={root}", "progress=true", "max_new_tokens=2"],
        config_name="evaluate",
        output_dir=tmp_path / "run",
    )
    evaluate(cfg)
    assert calls == [(2, "eval custom_mc", True), (4, "eval custom_vqa", True)]
    assert compose_cfg([], config_name="evaluate").progress == "auto"
