"""Sweeps under faults: in one ``train.py -m`` process of three jobs, one job raises in the middle of training and one
runs out of memory (``callbacks=fault``: RuntimeError / torch.OutOfMemoryError at step 1). Both are recorded as
failed with their error in their summary.json, the sweep finishes the healthy job and exits 0. Rerun into the same
sweep folder: the finished job is skipped, the failed ones are retried (the faults are transient, ``times=1``, so the
retries succeed), and a third run skips all three.

(tests/test_training.py covers a job that fails on an invalid config before training; this covers failures during
training, an out-of-memory error among them, and the retry of failed jobs.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, small_run_overrides

from mllm_da.report import write_report
from mllm_da.training.faults import FaultInjection, InjectedFault
from mllm_da.utils.io import read_json, read_jsonl_tolerant

SKIPPED = "already finished with this config; skipped"


def sweep(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_a_sweep_records_raising_and_oom_jobs_goes_on_and_a_rerun_retries_only_them(
    work_root: Path, tmp_path: Path, fault_tally
):
    overrides = [o for o in small_run_overrides("qwen2_vl", steps=2) if not o.startswith("checkpoint.")]
    env = {**os.environ, "MLLM_DA_ROOT": str(work_root), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *overrides,
        "callbacks=fault",
        "callbacks.fault.fault=none,raise,oom",
        "callbacks.fault.at_step=1",
        "callbacks.fault.times=1",
        "checkpoint.every_n_steps=1",
        "export=false",
        "eval.enabled=false",
        f"hydra.sweep.dir={tmp_path}",
    ]
    first = sweep(cmd, env)
    summaries = [read_json(tmp_path / str(job) / "summary.json") for job in range(3)]
    assert [s["status"] for s in summaries] == ["ok", "failed", "failed"]
    assert summaries[1]["error"].startswith("InjectedFault: injected fault at step 1")
    assert summaries[2]["error"].startswith("OutOfMemoryError: CUDA out of memory: injected fault at step 1")
    assert "traceback" in summaries[2] and summaries[0]["global_step"] == 2
    assert first.stdout.count("train failed; summary") == 2 and SKIPPED not in first.stdout
    report = write_report(tmp_path)
    assert (report["jobs"], report["failed"]) == (3, 2)
    fault_tally.record("sweep job", "job raises (RuntimeError at step 1)", "recorded as failed, sweep went on")
    fault_tally.record("sweep job", "job OOM (torch.OutOfMemoryError at step 1)", "recorded as failed, sweep went on")

    second = sweep(cmd, env)
    assert second.stdout.count(SKIPPED) == 1 and f"{tmp_path / '0'}" in second.stdout.split(SKIPPED)[0]
    again = [read_json(tmp_path / str(job) / "summary.json") for job in range(3)]
    assert again[0] == summaries[0], "the finished job was run again"
    assert [s["status"] for s in again] == ["ok", "ok", "ok"]
    # the retries ran whole (ckpt_path is not set, so a retried job starts over) and the faults fired once each
    assert [s["global_step"] for s in again] == [2, 2, 2]
    for job, fault in ((1, "raise"), (2, "oom")):
        fired = list(read_jsonl_tolerant(tmp_path / str(job) / "faults.jsonl"))
        assert [f["fault"] for f in fired] == [fault]
    fault_tally.record("sweep job", "rerun of the sweep (finished job)", "skipped on rerun (finished)")

    third = sweep(cmd, env)
    assert third.stdout.count(SKIPPED) == 3
    fault_tally.record("sweep job", "rerun of the sweep (finished job)", "skipped on rerun (finished)", count=3)


def test_fault_injection_refuses_unknown_faults_and_is_silent_when_off(tmp_path: Path):
    with pytest.raises(ValueError, match="callbacks.fault.fault"):
        FaultInjection("segfault")
    with pytest.raises(ValueError, match="at_step"):
        FaultInjection("raise", at_step=0)
    assert FaultInjection("none").fault is None
    assert issubclass(InjectedFault, RuntimeError)
