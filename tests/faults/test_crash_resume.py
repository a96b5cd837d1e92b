"""Crashes: real processes (evaluate.py, train.py, the synthesis worker) are SIGKILLed at random points and rerun;
the outputs must equal an uninterrupted run's. Plus: every whole-file write is atomic (a writer killed at random
leaves the old file or the new one), and a truncated output (summary.json, predictions, a synthesis shard, a
checkpoint) is never read as whole on resume.

Quick profile: one kill point per process kind. Full profile (``MLLM_DA_FAULT_PROFILE=full``, marked slow): five
or more seeded random kill points per kind, some of them killed twice before the rerun that finishes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TEST_TINY, small_run_overrides

from faults.conftest import PROFILE
from mllm_da.backbones.loading import load_backbone
from mllm_da.orchestration.evaluate import evaluate
from mllm_da.orchestration.train import train
from mllm_da.synthesis.cache import StageDir
from mllm_da.synthesis.runner import (
    BatchLog,
    SynthesisInput,
    SynthesisJob,
    SynthesizerGenerator,
    make_generator,
    merge_batches,
    run_job,
)
from mllm_da.training.checkpoints import AtomicCheckpointIO, checkpoint_problem, checkpoint_step, resume_point
from mllm_da.training.stages import stages_of
from mllm_da.utils.io import read_json, read_jsonl_tolerant
from mllm_da.utils.runinfo import finished_run

FULL = PROFILE == "full"
#: seeded kill points: reproducible; MLLM_DA_FAULT_SEED picks another draw
BASE_SEED = int(os.environ.get("MLLM_DA_FAULT_SEED", "4"))
TINY = "{" + ",".join(f"{k}:{v}" for k, v in TEST_TINY.items()) + "}"
OUTCOME = "resumed, output equal to uninterrupted run"


def cases(kind: str, quick: int, full: int) -> list[pytest.param]:
    """Case numbers: ``quick`` of them in the quick profile; the full profile adds more, marked slow."""
    params = [pytest.param(i, id=f"{kind}{i}") for i in range(quick)]
    params += [pytest.param(i, id=f"{kind}{i}", marks=pytest.mark.slow) for i in range(quick, full)]
    return params if FULL else params[:quick]


# ------------------------------------------------------------------------------------------------ processes


def env_for(work_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLLM_DA_ROOT": str(work_root),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(ROOT),
        "TOKENIZERS_PARALLELISM": "false",
    }


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def kill_when(
    cmd: list[str], env: dict[str, str], ready: Callable[[], bool], delay: float, log_file: Path, timeout: float = 300.0
) -> bool:
    """Start ``cmd``, wait until ``ready()`` (polled every 2 ms), wait ``delay`` s more, SIGKILL it. Returns
    whether it was killed while running (False: it finished first)."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        try:
            while proc.poll() is None and not ready():
                if time.time() > deadline:
                    raise AssertionError(f"{cmd[1]} never reached its kill point; see {log_file}")
                time.sleep(0.002)
            if delay:
                end = time.time() + delay
                while proc.poll() is None and time.time() < end:
                    time.sleep(0.002)
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not killed:
        assert proc.returncode == 0, f"{cmd[1]} failed before it was killed:\n{log_file.read_text()[-3000:]}"
    else:
        assert proc.returncode == -signal.SIGKILL
    return killed


# ------------------------------------------------------------------------------------------------ evaluation

EVAL_OVERRIDES = [
    "model=tiny_qwen2_vl",
    f"model.backbone.tiny={TINY}",
    "domain.prepare.n_train=8",
    "domain.prepare.n_test=6",
    "domain.root=${paths.data_dir}/toy_eval",
    "batch_size=2",
    "max_new_tokens=8",
    "progress=false",
    "logger=csv",
]
TASKS = ("toy_vqa", "toy_mc")


def eval_outputs(folder: Path) -> dict:
    """What must not depend on interruptions: every prediction line and the scores per task."""
    preds = {t: (folder / "predictions" / f"{t}.jsonl").read_text().splitlines() for t in TASKS}
    scores = read_json(folder / "scores.json")
    return {
        "predictions": preds,
        "scores": {t: (scores[t]["scores"], scores[t]["by_group"], scores[t]["rows"]) for t in TASKS},
    }


@pytest.fixture(scope="module")
def eval_reference(compose_cfg, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval_reference")
    evaluate(compose_cfg(EVAL_OVERRIDES, config_name="evaluate", output_dir=out))
    return out, eval_outputs(out)


@pytest.mark.parametrize("case", cases("eval", 1, 6))
def test_sigkilled_evaluation_resumes_to_the_uninterrupted_result(
    case: int, compose_cfg, eval_reference, work_root: Path, tmp_path: Path, fault_tally
):
    """evaluate.py is killed after a random number of predicted rows (plus a random delay), once or twice; the rerun
    into its folder finishes with every row exactly once and the uninterrupted run's predictions and scores."""
    _, expected = eval_reference
    rng = random.Random(f"{BASE_SEED}/eval/{case}")
    total = sum(len(rows) for rows in expected["predictions"].values())
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "evaluate.py"), *EVAL_OVERRIDES, f"hydra.run.dir={run}"]
    kills = []

    def rows_on_disk() -> int:
        return sum(complete_lines(run / "predictions" / f"{t}.jsonl") for t in TASKS)

    for _ in range(2 if case % 3 == 2 else 1):
        target = rng.randint(1, total - 1)
        killed = kill_when(
            cmd,
            env_for(work_root),
            lambda t=target: rows_on_disk() >= t,
            rng.uniform(0, 0.3),
            tmp_path / "evaluate.log",
        )
        kills.append((target, killed))
    before = rows_on_disk()
    evaluate(compose_cfg(EVAL_OVERRIDES, config_name="evaluate", output_dir=run))
    got = eval_outputs(run)
    for task in TASKS:
        indices = [json.loads(line)["index"] for line in got["predictions"][task]]
        assert indices == sorted(set(indices)), f"{task}: a row twice or out of order (kills {kills})"
    assert got == expected, f"kills at {kills} (rows on disk before the rerun: {before})"
    assert read_json(run / "summary.json")["status"] == "ok"
    fault_tally.record("evaluation process", "SIGKILL at random batch", OUTCOME, count=sum(k for _, k in kills))


# ------------------------------------------------------------------------------------------------ training

TRAIN_STEPS = 8
TRAIN_OVERRIDES = [
    *[o for o in small_run_overrides("qwen2_vl", steps=TRAIN_STEPS) if not o.startswith("data.")],
    # ~43 training samples in batches of 8: 6 steps per epoch, so the run crosses an epoch boundary
    "data.micro_batch_size=8",
    "data.global_batch_size=8",
    "data.val_fraction=0.1",
    "checkpoint.every_n_steps=1",
    "checkpoint.keep=-1",
    "export=false",
    "eval.enabled=false",
    "callbacks=batch_log",
]


#: a checkpoint written after an epoch's last batch is restored by Lightning with that epoch not yet ended;
#: ConversationDataModule.train_dataloader then sets the finished epoch's order again. The fix belongs in
#: mllm_da/data/datamodule.py (use trainer.fit_loop.epoch_loop.batch_progress.current.processed); until it is in,
#: a resume from exactly an epoch's end is an expected failure (a resume anywhere else must match).
def batch_records(run: Path) -> list[dict]:
    return list(read_jsonl_tolerant(run / "batches.jsonl"))


def last_attempt_by_step(records: list[dict]) -> dict[int, dict]:
    """The record of each step from the last process that trained it (a killed process may have gone past the
    checkpoint its successor resumed from)."""
    out: dict[int, dict] = {}
    for rec in records:
        out[rec["step"]] = rec
    return out


def state_dict_of(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def train_reference(compose_cfg, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("train_reference")
    train(compose_cfg(TRAIN_OVERRIDES, output_dir=out))
    summary = read_json(out / "summary.json")
    assert summary["status"] == "ok", summary.get("error")
    records = batch_records(out)
    assert [r["step"] for r in records] == list(range(1, TRAIN_STEPS + 1))
    assert {r["epoch"] for r in records} == {0, 1}, "the reference should cross an epoch boundary"
    by_epoch = [[r["sample_ids"] for r in records if r["epoch"] == e] for e in (0, 1)]
    assert by_epoch[1] != by_epoch[0][: len(by_epoch[1])], "epoch 1 replayed epoch 0's batch order"
    by_step = last_attempt_by_step(records)
    epoch_ends = {s for s in by_step if s + 1 in by_step and by_step[s + 1]["epoch"] != by_step[s]["epoch"]}
    return out, {"summary": summary, "by_step": by_step, "epoch_ends": epoch_ends}


@pytest.mark.parametrize(
    "step",
    [pytest.param(s, marks=[] if s in (6, 7) else [pytest.mark.slow]) for s in range(1, TRAIN_STEPS)]
    if FULL
    else [6, 7],
)
def test_resume_from_each_checkpoint_continues_with_the_same_batches(
    step: int, compose_cfg, train_reference, tmp_path: Path, fault_tally
):
    """Deterministic companion of the kill test: resuming (ckpt_path=auto) from the reference's checkpoint of
    step k (6 is an epoch's last batch, 7 the first of the next epoch) gives the reference's batches and losses."""
    ref_dir, ref = train_reference
    assert ref["epoch_ends"] == {6}, "the reference run must cross one epoch boundary, after step 6"
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(ref_dir / "checkpoints" / f"step_{step}.ckpt", tmp_path / "checkpoints" / "last.ckpt")
    train(compose_cfg([*TRAIN_OVERRIDES, "ckpt_path=auto"], output_dir=tmp_path))
    got = batch_records(tmp_path)
    assert [r["step"] for r in got] == list(range(step + 1, TRAIN_STEPS + 1))
    for rec in got:
        assert rec["sample_ids"] == ref["by_step"][rec["step"]]["sample_ids"], f"step {rec['step']}"
        assert rec["loss"] == pytest.approx(ref["by_step"][rec["step"]]["loss"], rel=1e-5, abs=1e-7)
    fault_tally.record("training process", "resume from each checkpoint step", OUTCOME)


def _save_in_progress(run: Path, after_step: int) -> Callable[[], bool]:
    """Ready when a checkpoint is being written (its temporary file exists) after ``after_step`` steps."""
    ckpts, log_file = run / "checkpoints", run / "batches.jsonl"

    def ready() -> bool:
        return complete_lines(log_file) >= after_step and ckpts.is_dir() and any(ckpts.glob(".*.tmp"))

    return ready


@pytest.mark.parametrize("case", cases("train", 1, 6))
def test_sigkilled_training_resumes_at_its_last_checkpoint_with_the_same_data_order(
    case: int, compose_cfg, train_reference, work_root: Path, tmp_path: Path, fault_tally
):
    """train.py (a checkpoint every step) is killed at a random step, after a random delay or in the middle of a
    checkpoint write, once or twice; ``ckpt_path=auto`` then resumes at the step of the last whole checkpoint
    with the same batches (sample ids), the same losses and the same final weights as the uninterrupted run."""
    ref_dir, ref = train_reference
    rng = random.Random(f"{BASE_SEED}/train/{case}")
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *TRAIN_OVERRIDES, "ckpt_path=auto", f"hydra.run.dir={run}"]
    kills = []
    for attempt in range(2 if case % 3 == 2 else 1):
        step = rng.randint(1, TRAIN_STEPS - 1)
        if case % 2 == 1:  # in the middle of writing a checkpoint
            fault, ready, delay = "SIGKILL during checkpoint write", _save_in_progress(run, step), 0.0
        else:
            fault, delay = "SIGKILL at random step", rng.uniform(0, 0.4)
            ready = lambda s=step: complete_lines(run / "batches.jsonl") >= s  # noqa: E731
        killed = kill_when(cmd, env_for(work_root), ready, delay, tmp_path / "train.log")
        kills.append((fault, step, killed))
        assert killed or attempt > 0 or fault.endswith("write"), f"train.py finished before step {step}"
        last = run / "checkpoints" / "last.ckpt"
        # checkpoints are written atomically: whatever the kill hit, last.ckpt is whole (or absent)
        assert not last.exists() or checkpoint_problem(last) is None, f"torn checkpoint after kills {kills}"
    last = run / "checkpoints" / "last.ckpt"
    resume_step = checkpoint_step(last) if last.exists() else 0
    before = batch_records(run)
    cfg = compose_cfg([*TRAIN_OVERRIDES, "ckpt_path=auto"], output_dir=run)
    finished_before = finished_run(cfg) is not None
    train(cfg)
    summary = read_json(run / "summary.json")
    assert summary["status"] == "ok", summary.get("error")
    after = batch_records(run)[len(before) :]
    # every step, as last trained, saw the same samples and had the same loss as in the uninterrupted run
    got = last_attempt_by_step(before + after)
    assert sorted(got) == list(range(1, TRAIN_STEPS + 1))
    other = [s for s, rec in ref["by_step"].items() if got[s]["sample_ids"] != rec["sample_ids"]]
    assert not other, f"steps {other} saw other samples than the uninterrupted run (kills {kills})"
    for step, rec in ref["by_step"].items():
        assert got[step]["loss"] == pytest.approx(rec["loss"], rel=1e-5, abs=1e-7), f"step {step} (kills {kills})"
    if not finished_before:
        if resume_step:
            assert summary["stages"][0]["started_from"] == {"checkpoint": str(last)}
        # resumed at the step of the last whole checkpoint: the rerun's first step is the one after it
        assert [r["step"] for r in after] == list(range(resume_step + 1, TRAIN_STEPS + 1)), kills
        assert summary["loss_curve"]["step"] == list(range(resume_step + 1, TRAIN_STEPS + 1))
        assert summary["loss_curve"]["loss"] == pytest.approx(
            ref["summary"]["loss_curve"]["loss"][resume_step:], rel=1e-5, abs=1e-7
        )
    # the final weights match
    final, reference = state_dict_of(last), state_dict_of(ref_dir / "checkpoints" / "last.ckpt")
    assert final.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=f"{name} (kills {kills})")
    assert summary["global_step"] == TRAIN_STEPS or finished_before
    assert not list((run / "checkpoints").glob(".*.tmp")), "a stale temporary checkpoint was left behind"
    for fault, _, killed in kills:
        if killed:
            fault_tally.record("training process", fault, OUTCOME)


# ------------------------------------------------------------------------------------------------ synthesis


@pytest.fixture(scope="module")
def synth_generator(synth_backbone) -> SynthesizerGenerator:
    return SynthesizerGenerator(load_backbone(**synth_backbone), max_new_tokens=32)


def synth_rows(folder: Path, inputs: list[SynthesisInput]) -> list[dict]:
    plan = read_json(folder / "plan.json")["batches"]
    return merge_batches(BatchLog(folder, "generations"), plan, [i.id for i in inputs])


def synth_job(
    backbone: dict, inputs: list[SynthesisInput], folder: Path, num_shards: int = 1, backend: str = "hf"
) -> SynthesisJob:
    return SynthesisJob(
        backend=backend,
        backbone=backbone,
        inputs=inputs,
        folder=str(folder),
        batch_size=1,
        max_new_tokens=32,
        threads=2,
        progress=False,
        num_shards=num_shards,
        shards=list(range(num_shards)),
    )


@pytest.fixture(scope="module")
def synth_reference(synth_backbone, synth_inputs, synth_generator, tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("synth_reference")
    run_job(synth_job(synth_backbone, synth_inputs, folder), synth_generator)
    return synth_rows(folder, synth_inputs)


FAKE_VLLM = ROOT / "tests" / "fake_vllm"


def synth_engine(
    backend: str, monkeypatch, synth_backbone, synth_inputs, synth_generator, synth_reference, folder: Path
) -> tuple[object, list[dict], dict[str, str]]:
    """The backend's generator, its uninterrupted rows and its worker processes' extra environment, so that the
    same faults run against both backends: transformers, and vLLM through the fake package (tests/fake_vllm,
    slowed so that a kill lands between batches)."""
    if backend == "hf":
        return synth_generator, synth_reference, {}
    monkeypatch.syspath_prepend(str(FAKE_VLLM))
    monkeypatch.setitem(sys.modules, "vllm", None)  # so that the fake is unloaded again after the test
    del sys.modules["vllm"]
    job = synth_job(synth_backbone, synth_inputs, folder, backend="vllm")
    generator = make_generator(job)
    run_job(job, generator)
    env = {"PYTHONPATH": os.pathsep.join([str(FAKE_VLLM), str(ROOT)]), "FAKE_VLLM_DELAY": "0.1"}
    return generator, synth_rows(folder, synth_inputs), env


@pytest.mark.parametrize("backend", ["hf", "vllm"])
@pytest.mark.parametrize("case", cases("synth", 1, 6))
def test_sigkilled_synthesis_resumes_at_random_points(
    case: int,
    backend: str,
    synth_backbone,
    synth_inputs,
    synth_generator,
    synth_reference,
    work_root: Path,
    tmp_path: Path,
    fault_tally,
    monkeypatch,
):
    """The synthesis worker (``python -m mllm_da.synthesis.runner``) is killed after a random number of batches
    plus a random delay (the existing test kills it right after the first batch), once or twice; the rerun
    finishes with exactly one result per input, equal to the uninterrupted run's."""
    synth_generator, synth_reference, extra_env = synth_engine(
        backend, monkeypatch, synth_backbone, synth_inputs, synth_generator, synth_reference, tmp_path / "reference"
    )
    rng = random.Random(f"{BASE_SEED}/synth/{case}")
    num_shards = 2 if case % 2 else 1  # two shard files written by one worker: the merge reads both
    job = synth_job(synth_backbone, synth_inputs, tmp_path / "killed", num_shards, backend)
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job.to_json()))
    folder = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mllm_da.synthesis.runner", str(spec)]
    n = len(synth_inputs)
    kills = []

    def batches_on_disk() -> int:
        return sum(complete_lines(p) for p in folder.glob("generations-shard*.jsonl"))

    for _ in range(2 if case % 3 == 2 else 1):
        target = rng.randint(1, n - 1)
        kills.append(
            (
                target,
                kill_when(
                    cmd,
                    {**env_for(work_root), **extra_env},
                    lambda t=target: batches_on_disk() >= t,
                    rng.uniform(0, 0.5),
                    tmp_path / "synth.log",
                ),
            )
        )
    assert len(BatchLog(folder, "generations").done()) <= n
    run_job(job, synth_generator)
    assert synth_rows(folder, synth_inputs) == synth_reference, f"kills {kills}"
    batches = [
        json.loads(line)["batch"]
        for p in folder.glob("generations-shard*.jsonl")
        for line in p.read_text().splitlines()
        if line.strip()
    ]
    assert sorted(batches) == list(range(n)), f"a batch twice or missing (kills {kills})"
    fault_tally.record(
        f"synthesis process ({backend})", "SIGKILL at random batch", OUTCOME, count=sum(k for _, k in kills)
    )


# ------------------------------------------------------------------------------------------------ atomic writes

WRITER = """
import itertools, sys
from mllm_da.utils import io
target, kind = sys.argv[1], sys.argv[2]
for n in itertools.count():
    body = {"n": n, "pad": "x" * 3_000_000}
    if kind == "file":
        io.atomic_write_json(target, body)
    else:
        with io.atomic_dir(target) as tmp:
            for i in range(4):
                (tmp / f"part{i}.json").write_text(__import__("json").dumps(body))
    print(n, flush=True)
"""


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_writer_killed_at_random_leaves_the_old_or_the_new_output(kind: str, tmp_path: Path, fault_tally):
    """A process rewriting a 3 MB JSON file (atomic_write_json) or a folder of four (atomic_dir, as the export is
    written) is SIGKILLed at random moments: the output is always a whole old or new version, never a mix."""
    rng = random.Random(f"{BASE_SEED}/writer/{kind}")
    target = tmp_path / ("out.json" if kind == "file" else "export")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for trial in range(12 if FULL else 4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target), kind],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # one version is on disk
        time.sleep(rng.uniform(0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        if kind == "file":
            assert json.loads(target.read_text())["pad"] == "x" * 3_000_000
        else:
            parts = sorted(target.iterdir())
            assert [p.name for p in parts] == [f"part{i}.json" for i in range(4)], parts
            versions = {json.loads(p.read_text())["n"] for p in parts}
            assert len(versions) == 1, f"trial {trial}: a folder mixing versions {versions}"
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        for p in leftovers:  # what a killed writer leaves: hidden temporaries, never the output itself
            assert p.name.endswith((".tmp", ".old")), p
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    fault_tally.record("output files", f"SIGKILL while writing ({kind})", OUTCOME, count=12 if FULL else 4)


def test_a_checkpoint_save_that_dies_half_way_leaves_the_previous_one(
    train_reference, tmp_path: Path, monkeypatch, fault_tally
):
    """The trainer's checkpoint writer (AtomicCheckpointIO; the kill-during-write cases above show the trainer
    uses it: they wait for its temporary file): a save that dies half-way leaves the previous checkpoint."""
    ref_dir, _ = train_reference
    target = tmp_path / "last.ckpt"
    shutil.copy(ref_dir / "checkpoints" / "last.ckpt", target)
    before = target.read_bytes()

    def dies_half_way(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"global_step": 99}, target)
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    fault_tally.record("output files", "crash while saving a checkpoint", OUTCOME)


# ------------------------------------------------------------------------------------------------ truncated files


def test_truncated_summary_json_is_not_taken_for_a_finished_run(compose_cfg, tmp_path: Path, caplog, fault_tally):
    overrides = [
        *small_run_overrides("qwen2_vl", steps=1),
        "checkpoint.every_n_steps=0",
        "export=false",
        "eval.enabled=false",
    ]
    cfg = compose_cfg(overrides, output_dir=tmp_path)
    train(cfg)
    whole = read_json(tmp_path / "summary.json")
    assert finished_run(cfg) == whole
    text = (tmp_path / "summary.json").read_text()
    (tmp_path / "summary.json").write_text(text[: len(text) // 2])
    with caplog.at_level(logging.WARNING):
        assert finished_run(cfg) is None  # damaged: the job is run again
    assert "summary.json" in caplog.text and "truncated" in caplog.text
    train(cfg)
    again = read_json(tmp_path / "summary.json")
    assert again["status"] == "ok" and again["loss_curve"] == whole["loss_curve"]
    fault_tally.record("output files", "truncated summary.json", OUTCOME)


def test_truncated_predictions_are_redone_and_a_damaged_line_names_the_file(
    compose_cfg, eval_reference, tmp_path: Path, fault_tally
):
    ref_dir, expected = eval_reference
    rng = random.Random(f"{BASE_SEED}/predictions")
    for trial in range(6 if FULL else 2):
        run = tmp_path / f"t{trial}"
        shutil.copytree(ref_dir, run)
        for task in TASKS:
            path = run / "predictions" / f"{task}.jsonl"
            data = path.read_bytes()
            path.write_bytes(data[: rng.randrange(1, len(data))])  # cut anywhere, a line or a character included
        (run / "summary.json").unlink()
        evaluate(compose_cfg(EVAL_OVERRIDES, config_name="evaluate", output_dir=run))
        assert eval_outputs(run) == expected
    fault_tally.record("output files", "truncated predictions jsonl", OUTCOME, count=6 if FULL else 2)

    run = tmp_path / "damaged"
    shutil.copytree(ref_dir, run)
    path = run / "predictions" / "toy_vqa.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: malformed JSON line")):
        evaluate(compose_cfg(EVAL_OVERRIDES, config_name="evaluate", output_dir=run))
    meta = run / "predictions" / "toy_vqa.meta.json"
    path.write_text("\n".join(lines) + "\n")
    meta.write_text(meta.read_text()[:10])
    with pytest.raises(ValueError, match=re.escape(f"{meta}: this predictions settings file is truncated")):
        evaluate(compose_cfg(EVAL_OVERRIDES, config_name="evaluate", output_dir=run))
    fault_tally.record(
        "output files", "damaged predictions line / truncated meta.json", "error names file/line/field", count=2
    )


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_truncated_synthesis_shard_is_redone_and_damage_names_the_file(
    backend: str,
    synth_backbone,
    synth_inputs,
    synth_generator,
    synth_reference,
    tmp_path: Path,
    fault_tally,
    monkeypatch,
):
    synth_generator, synth_reference, _ = synth_engine(
        backend, monkeypatch, synth_backbone, synth_inputs, synth_generator, synth_reference, tmp_path / "ref"
    )
    rng = random.Random(f"{BASE_SEED}/shard")
    reference = tmp_path / "ref"
    if backend == "hf":
        run_job(synth_job(synth_backbone, synth_inputs, reference), synth_generator)
    for trial in range(6 if FULL else 2):
        folder = tmp_path / f"t{trial}"
        shutil.copytree(reference, folder)
        shard = folder / "generations-shard0.jsonl"
        data = shard.read_bytes()
        shard.write_bytes(data[: rng.randrange(1, len(data))])
        run_job(synth_job(synth_backbone, synth_inputs, folder, backend=backend), synth_generator)
        assert synth_rows(folder, synth_inputs) == synth_reference
    fault_tally.record("output files", "truncated synthesis shard", OUTCOME, count=6 if FULL else 2)

    folder = tmp_path / "damaged"
    shutil.copytree(reference, folder)
    shard = folder / "generations-shard0.jsonl"
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join([lines[0][:30], *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{shard}:1: not a batch record")):
        BatchLog(folder, "generations").done()
    plan = folder / "plan.json"
    plan.write_text(plan.read_text()[:25])
    with pytest.raises(ValueError, match=re.escape(f"{plan}: this batch plan is truncated")):
        run_job(synth_job(synth_backbone, synth_inputs, folder), synth_generator)
    stage = StageDir.for_stage(tmp_path / "cache", "filter", {"x": 1})
    stage.complete({"n": 1})
    stage.done_file.write_text(stage.done_file.read_text()[:8])
    assert not stage.is_complete()  # a damaged done.json: the stage is done again
    fault_tally.record(
        "output files", "damaged shard line / truncated plan.json", "error names file/line/field", count=2
    )
    fault_tally.record("output files", "truncated stage done.json", OUTCOME)


def test_truncated_checkpoint_is_passed_over_or_named(
    compose_cfg, train_reference, tmp_path: Path, caplog, fault_tally
):
    """ckpt_path=auto passes over a torn last.ckpt for the newest whole step_*.ckpt (with a warning) and the run
    ends as the uninterrupted one; an explicit torn checkpoint is an error naming it."""
    ref_dir, ref = train_reference
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    # what a non-atomic save killed at step 6 would leave: step_5 whole, step_6 and last.ckpt torn
    shutil.copy(ref_dir / "checkpoints" / "step_5.ckpt", ckpts / "step_5.ckpt")
    data = (ref_dir / "checkpoints" / "step_6.ckpt").read_bytes()
    (ckpts / "step_6.ckpt").write_bytes(data[: len(data) // 2])
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 3])

    cfg = compose_cfg([*TRAIN_OVERRIDES, "ckpt_path=auto"], output_dir=tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        assert resume_point(cfg, stages_of(cfg)) == (0, str(ckpts / "step_5.ckpt"))
    assert "last.ckpt is truncated" in caplog.text and (ckpts / "last.ckpt.damaged").exists()
    train(cfg)
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["loss_curve"]["step"] == [6, 7, 8]
    assert summary["loss_curve"]["loss"] == pytest.approx(ref["summary"]["loss_curve"]["loss"][5:], rel=1e-5)
    assert checkpoint_step(ckpts / "last.ckpt") == 8
    fault_tally.record("output files", "truncated last.ckpt (ckpt_path=auto)", OUTCOME)

    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(data[: len(data) // 3])
    explicit = compose_cfg([*TRAIN_OVERRIDES, f"ckpt_path={torn}"], output_dir=tmp_path / "explicit")
    with pytest.raises(ValueError, match=re.escape(f"ckpt_path={torn}: truncated or not a torch checkpoint")):
        resume_point(explicit, stages_of(explicit))
    fault_tally.record("output files", "truncated checkpoint (explicit ckpt_path)", "error names file/line/field")


# ------------------------------------------------------------------------------------------------ write audit

#: every call that writes a file in mllm_da/ and the entry points, with why it cannot leave a half-written output
#: behind: (file, text of the call's line, reason). A new write must be atomic (mllm_da.utils.io) or be added here.
WRITE_PATTERN = re.compile(
    r"\.write_text\(|\.write_bytes\(|open\([^)]*['\"][wa]b?['\"]|json\.dump\(|torch\.save\("
    r"|save_pretrained\(|to_csv\(|savefig\(|OmegaConf\.save\(|\.save\(|to_parquet\("
    r"|save_to_disk\("
)
AUDITED = [
    ("mllm_da/utils/io.py", 'os.fdopen(fd, "wb")', "the atomic writer itself: temporary file, fsync, os.replace"),
    ("mllm_da/utils/io.py", 'open(path, "ab", buffering=0)', "append_jsonl: one write per call, torn tail ignored"),
    ("mllm_da/training/checkpoints.py", "torch.save(checkpoint, handle)", "AtomicCheckpointIO, inside atomic_open"),
    (
        "mllm_da/orchestration/after_training.py",
        "lg.save()",
        "logger output (metrics.csv, wandb): a log, not read on resume",
    ),
    ("mllm_da/orchestration/evaluate.py", "lg.save()", "logger output: a log, not read on resume"),
    ("mllm_da/report.py", "fig.savefig(handle", "inside atomic_open"),
    ("mllm_da/training/export.py", "backbone.save(folder", "export: into atomic_dir's temporary folder"),
    ("mllm_da/training/export.py", "base.save(folder", "export: into atomic_dir's temporary folder"),
    ("mllm_da/training/export.py", 'model.save_pretrained(str(folder / "adapter"))', "inside atomic_dir"),
    ("mllm_da/backbones/base.py", "save_pretrained(folder", "Backbone.save: called into temporary folders only"),
    ("mllm_da/backbones/base.py", "processor.save_pretrained(folder)", "called into temporary folders only"),
    ("mllm_da/backbones/qwen.py", "save_pretrained(folder)", "save_processor: into temporary folders only"),
    (
        "mllm_da/backbones/loading.py",
        ".save_pretrained(tmp, safe_serialization=True)",
        "tiny checkpoint: into build_dir_once's temporary folder",
    ),
    ("mllm_da/synthesis/filter.py", "save_pretrained(tmp", "tiny judge: mkdtemp, then os.replace"),
    ("mllm_da/synthesis/seed_format.py", '.save(tmp, format="PNG")', "temporary file, then os.replace"),
    ("mllm_da/toy/images.py", "image.save(buffer", "in memory, then atomic_write_bytes"),
    ("mllm_da/utils/io.py", 'open(path / ".lock", "w")', "locked_dir: a lock file, holds nothing"),
    ("mllm_da/data/images.py", "value.save(buffer", "in memory"),
    ("mllm_da/dashboards/gallery.py", "picture.save(buffer", "thumbnail JPEG in memory"),
    ("mllm_da/backbones/convert_llava.py", "model.save_pretrained(tmp", "converter: inside atomic_dir"),
    ("mllm_da/backbones/convert_llava.py", "processor.save_pretrained(tmp)", "converter: inside atomic_dir"),
]


def test_every_file_write_is_atomic_or_audited():
    sources = [
        *(ROOT / "mllm_da").rglob("*.py"),
        *(ROOT / n for n in ("train.py", "evaluate.py", "synth.py", "predict.py")),
    ]
    unaudited = []
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if not WRITE_PATTERN.search(code) or code.strip().startswith(('"', "'")):
                continue
            if not any(rel == f and text in code for f, text, _ in AUDITED):
                unaudited.append(f"{rel}:{number}: {line.strip()}")
    assert not unaudited, "writes that are neither atomic (mllm_da.utils.io) nor audited:\n" + "\n".join(unaudited)


def test_a_resumed_generation_keeps_the_uninterrupted_batches(work_root: Path, fault_tally):
    """Rows already predicted (``done``, here a partial batch) do not reshape the remaining batches: every batch
    generated on resume holds the same requests as in the uninterrupted run, so its padding and greedy tokens match."""
    from PIL import Image

    from mllm_da.evaluation.generation import GenerationRequest, HFGenerator, question_turns

    backbone = load_backbone(
        family="qwen2_vl",
        variant="tiny",
        tiny=dict(TEST_TINY),
        image={"min_pixels": 12544, "max_pixels": 12544},
        cache_dir=str(work_root / ".cache"),
    )
    prompts = [
        "Is it red?",
        "How many shapes are in the picture, counting every one?",
        "Where?",
        "What colour is the largest shape?",
        "Is there a circle near the top left corner?",
        "Count.",
        "Why?",
    ]
    requests = [
        GenerationRequest(
            i, question_turns(p), lambda i=i: [Image.new("RGB", (96, 80), (20 * i, 90, 200))], ((96, 80),)
        )
        for i, p in enumerate(prompts)
    ]
    seen: list[list[int]] = []
    generator = HFGenerator(backbone, batch_size=3, progress=False)
    whole = generator.generate(requests, max_new_tokens=6, on_batch=lambda pairs: seen.append([k for k, _ in pairs]))
    batches = [set(b) for b in seen]
    done = {seen[0][0], *seen[1]}  # part of the first batch and all of the second
    resumed_batches: list[list[int]] = []
    resumed = generator.generate(
        requests, max_new_tokens=6, done=done, on_batch=lambda pairs: resumed_batches.append([k for k, _ in pairs])
    )
    assert set(resumed) == set(whole) - done and all(resumed[k] == whole[k] for k in resumed)
    assert [set(b) for b in resumed_batches] == [batches[0] - done, *batches[2:]]
    fault_tally.record("evaluation process", "resume inside a partly written batch", OUTCOME)
