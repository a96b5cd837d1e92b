"""train(cfg) end to end through the real configs: each family, LoRA, QLoRA, resume, export and reload."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, ROOT, small_run_overrides
from omegaconf import open_dict
from PIL import Image
from transformers import AutoModelForImageTextToText

from mllm_da.backbones.loading import load_backbone
from mllm_da.data.records import Turn
from mllm_da.orchestration.train import train
from mllm_da.report import write_report


def run(compose_cfg, out: Path, overrides: list[str]) -> dict:
    cfg = compose_cfg(overrides, output_dir=out)
    train(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok", summary.get("error")
    return summary


def reload_and_compare(summary: dict, family: str) -> None:
    """The exported folder loads with plain transformers and gives the trained model's logits; it generates."""
    export = Path(summary["artifacts"]["export"])
    plain = AutoModelForImageTextToText.from_pretrained(export).eval()
    ours = load_backbone(family=family, variant="pretrained", source=str(export))
    img = Image.new("RGB", (112, 112), (245, 245, 245))
    turns = [Turn("user", "<image>\nHow many shapes are there?")]
    batch = ours.generation_batch([(turns, [img])])
    with torch.no_grad():
        ref = plain(**batch).logits
        got = ours.model.eval()(**batch).logits
    assert torch.allclose(ref, got, atol=1e-5)
    out = plain.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_a_step_and_exports_a_loadable_checkpoint(compose_cfg, tmp_path: Path, family: str):
    summary = run(compose_cfg, tmp_path, small_run_overrides(family, steps=2))
    assert summary["global_step"] == 2
    assert all(math.isfinite(v) for v in summary["loss_curve"]["loss"])
    counts = summary["trainable_parameters"]
    assert all(counts[g]["trainable"] > 0 for g in ("vision", "projector", "llm"))
    assert summary["data"]["train"] > 0 and summary["data"]["plan"]["kept"] > 0
    assert {"eval/toy_vqa/closed_accuracy", "eval/toy_mc/accuracy"} <= set(summary["metrics"]), sorted(
        summary["metrics"]
    )
    assert (
        len((Path(summary["artifacts"]["eval"]) / "trained" / "predictions" / "toy_vqa.jsonl").read_text().splitlines())
        == 4
    )
    reload_and_compare(summary, family)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_and_qlora_train_only_adapters_in_the_llm_and_export_merged(compose_cfg, tmp_path: Path, method: str):
    overrides = [
        *small_run_overrides("qwen2_vl", steps=2),
        f"finetune={method}",
        "model.groups.vision.train=false",
        "model.groups.projector.train=false",
        "finetune.gradient_checkpointing=true",
    ]
    summary = run(compose_cfg, tmp_path, overrides)
    counts = summary["trainable_parameters"]
    assert counts["vision"]["trainable"] == counts["projector"]["trainable"] == 0
    assert 0 < counts["llm"]["trainable"] < counts["llm"]["total"]
    assert (Path(summary["artifacts"]["export"]) / "adapter" / "adapter_config.json").exists()
    reload_and_compare(summary, "qwen2_vl")


def test_resume_from_a_checkpoint_continues_at_the_right_step_with_the_same_data(compose_cfg, tmp_path: Path):
    overrides = [
        *small_run_overrides("qwen2_vl", steps=4),
        "checkpoint.every_n_steps=2",
        "checkpoint.keep=-1",
        "export=false",
    ]
    whole = run(compose_cfg, tmp_path / "whole", overrides)
    ckpt = tmp_path / "whole" / "checkpoints" / "step_2.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir())
    resumed = run(compose_cfg, tmp_path / "resumed", [*overrides, f"ckpt_path={ckpt}"])
    assert whole["loss_curve"]["step"] == [1, 2, 3, 4]
    assert resumed["loss_curve"]["step"] == [3, 4]
    assert resumed["loss_curve"]["loss"] == pytest.approx(whole["loss_curve"]["loss"][2:], rel=1e-4)

    # a run that died after its step-2 checkpoint, rerun in its folder with ckpt_path=auto, goes on from there
    stopped = tmp_path / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, stopped / "checkpoints" / "last.ckpt")
    auto = run(compose_cfg, stopped, [*overrides, "ckpt_path=auto"])
    assert auto["stages"][0]["started_from"] == {"checkpoint": str(stopped / "checkpoints" / "last.ckpt")}
    assert auto["loss_curve"]["loss"] == pytest.approx(whole["loss_curve"]["loss"][2:], rel=1e-4)


def test_debug_fdr_runs_one_batch_without_a_logger(compose_cfg, tmp_path: Path):
    """debug=fdr (one training and one validation batch, logger: null) runs: the learning-rate monitor, which
    Lightning refuses without a logger, is only added when there is one."""
    summary = run(compose_cfg, tmp_path, [*small_run_overrides("qwen2_vl"), "debug=fdr"])
    assert summary["global_step"] == 1 and "export" not in summary["artifacts"]


def test_failed_run_writes_a_failed_summary(compose_cfg, tmp_path: Path):
    cfg = compose_cfg(
        [*small_run_overrides("qwen2_vl"), "domain.image_caption_pairs=/nonexistent/pairs.json"], output_dir=tmp_path
    )
    with open_dict(cfg):
        cfg.domain.prepare = None
    with pytest.raises(Exception, match="pairs.json"):
        train(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "pairs.json" in summary["error"]


def test_multirun_goes_on_after_a_failed_job_closes_each_wandb_run_and_reruns_only_unfinished_jobs(
    work_root: Path, tmp_path: Path
):
    """One ``train.py -m`` process, three jobs, one of them invalid: two ok summaries with one offline wandb run
    each, one failed summary naming the error; rerun into the same sweep folder, the finished jobs are skipped."""
    overrides = [o for o in small_run_overrides("qwen2_vl", steps=1) if not o.startswith("logger=")]
    env = {**os.environ, "MLLM_DA_ROOT": str(work_root), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "data.truncation=drop,cut_text,bogus",
        "logger=wandb",
        "export=false",
        "eval.enabled=false",
        f"hydra.sweep.dir={tmp_path}",
        *overrides,
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads((tmp_path / str(job) / "summary.json").read_text()) for job in (0, 1, 2)]
    assert [s["status"] for s in summaries] == ["ok", "ok", "failed"]
    assert "data.truncation" in summaries[2]["error"]
    runs = [sorted((tmp_path / str(job) / "wandb").glob("offline-run-*")) for job in (0, 1)]
    assert [len(r) for r in runs] == [1, 1] and runs[0][0].name != runs[1][0].name

    report = write_report(tmp_path)
    assert report["jobs"] == 3 and report["failed"] == 1
    header = report["table"].splitlines()[0]
    assert "data.truncation" in header and "train/loss_last" in header
    assert (tmp_path / "report.csv").read_text().count("\n") == 4 and (tmp_path / "report.png").stat().st_size

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already finished with this config; skipped") == 2
    assert [len(sorted((tmp_path / str(job) / "wandb").glob("offline-run-*"))) for job in (0, 1)] == [1, 1]


def test_two_stage_trains_captions_then_tasks_starting_stage_two_from_stage_one_weights(compose_cfg, tmp_path: Path):
    overrides = [
        *small_run_overrides("qwen2_vl", steps=4),
        "stage_mode=two_stage",
        "checkpoint.every_n_steps=2",
        "export=false",
        "eval.enabled=false",
    ]
    summary = run(compose_cfg, tmp_path, overrides)
    first, second = summary["stages"]
    assert (first["name"], second["name"]) == ("stage1_captions", "stage2_tasks")
    assert first["global_step"] == second["global_step"] == 2
    assert first["data"]["tasks"] == "none" and not second["data"]["captions"]
    assert second["started_from"] == {"stage": "stage1_captions", "weights_sha256": first["final_weights_sha256"]}
    assert second["start_weights_sha256"] == first["final_weights_sha256"] != first["start_weights_sha256"]
    assert second["final_weights_sha256"] != second["start_weights_sha256"]
    assert {"stage1_captions/train/loss_last", "stage2_tasks/train/loss_last", "train/loss_last"} <= set(
        summary["metrics"]
    )
    assert (tmp_path / "checkpoints" / "stage1_captions" / "last.ckpt").exists()
    # resuming from a stage-2 checkpoint skips stage 1 and starts from the checkpoint's weights
    ckpt = tmp_path / "checkpoints" / "stage2_tasks" / "last.ckpt"
    resumed = run(compose_cfg, tmp_path / "resumed", [*overrides, f"ckpt_path={ckpt}"])
    assert "skipped" in resumed["stages"][0]
    assert resumed["stages"][1]["started_from"] == {"checkpoint": str(ckpt)}


def test_ddp_with_two_cpu_processes(work_root: Path, tmp_path: Path):
    """trainer=ddp on 2 CPU processes (gloo), run as its own process: both ranks train, rank 0 writes the run."""
    overrides = [o for o in small_run_overrides("qwen2_vl", steps=2) if not o.startswith("data.global_batch")]
    env = {**os.environ, "MLLM_DA_ROOT": str(work_root), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *overrides,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "data.global_batch_size=8",
        "export=false",
        "eval.enabled=false",
        f"hydra.run.dir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["world_size"] == 2 and summary["global_step"] == 2
    assert all(math.isfinite(v) for v in summary["loss_curve"]["loss"])


@pytest.mark.slow
def test_optuna_search_through_the_local_process_launcher(work_root: Path, tmp_path: Path):
    """Two Optuna trials, each train.py job in its own process (submitit): both finish and report val/loss."""
    overrides = [o for o in small_run_overrides("qwen2_vl", steps=2) if not o.startswith("data.val_fraction")]
    env = {**os.environ, "MLLM_DA_ROOT": str(work_root), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "experiment=toy/hparam_search",
        *overrides,
        "hydra.sweeper.n_trials=2",
        "hydra/launcher=local_processes",
        f"hydra.sweep.dir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(summaries) == 2 and all(s["status"] == "ok" and "val/loss" in s["metrics"] for s in summaries)
    assert "best_value" in (tmp_path / "optimization_results.yaml").read_text()
