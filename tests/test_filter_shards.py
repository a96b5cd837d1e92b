"""The LLM consistency filter sharded like synthesis (issue 19): the same batch log, plan and merge refusal, with
the tiny transformers judge and the fake ``vllm`` package (tests/fake_vllm). Sharded judging gives exactly the
unsharded labels (no duplicate, no gap), a missing shard is refused by name, a killed shard job resumes, and the
sharding settings change no cache key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, TEST_TINY
from hydra import compose, initialize_config_dir
from test_synthesis_vllm import fake_vllm, logged_calls  # noqa: F401  (the fake engine's fixture)

from mllm_da.synthesis.batches import IncompleteError
from mllm_da.synthesis.judging import SHARDING_KEYS, judge_shards, merged_labels
from mllm_da.synthesis.parse import Triplet

JUDGE_TINY = {"hidden": 32, "intermediate": 64, "layers": 1, "heads": 2, "kv_heads": 1, "vocab": 300}


def judge_settings(engine: str, batch_size: int = 2) -> dict:
    return {
        "backend": "llm",
        "model": {"variant": "tiny", "dtype": "float32", "tiny": JUDGE_TINY},
        "prompt_file": None,
        "batch_size": batch_size,
        "max_new_tokens": 2,
        "max_length": 8192,
        "stop_token": "<|end_of_text|>",
        "device": "cpu",
        "engine": engine,
        "vllm": {"enforce_eager": True},
        "batch_retries": 1,
    }


def sample_triplets(n: int) -> tuple[list[str], list[Triplet]]:
    ids = [f"rec{i:03d}" for i in range(n)]
    triplets = [
        Triplet(f"How many {'red ' * (i % 4)}shapes are there?", f"There are {i} shapes in the picture.", str(i))
        for i in range(n)
    ]
    return ids, triplets


def batch_counts(folder: Path) -> Counter:
    return Counter(
        json.loads(line)["batch"]
        for path in folder.glob("judgements-shard*.jsonl")
        for line in path.read_text().splitlines()
    )


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_sharded_judging_equals_the_unsharded_labels(engine: str, fake_vllm, tmp_path: Path):  # noqa: F811
    settings = judge_settings(engine)
    ids, triplets = sample_triplets(11)  # 6 batches of 2: shard 0 has [0, 3], shard 1 [1, 4], shard 2 [2, 5]
    cache = str(tmp_path / "cache")
    assert judge_shards(settings, cache, tmp_path / "whole", ids, triplets, progress=False) == 6
    whole = merged_labels(settings, tmp_path / "whole", ids, triplets, 1)

    sharded = tmp_path / "sharded"
    for shard in (2, 0):
        judge_shards(settings, cache, sharded, ids, triplets, shards=[shard], num_shards=3, progress=False)
    with pytest.raises(
        IncompleteError, match=r"2 of 6 batches not done yet \(shard 1: batches \[1, 4\] \(2 missing\)\)"
    ):
        merged_labels(settings, sharded, ids, triplets, 3)
    judge_shards(settings, cache, sharded, ids, triplets, shards=[1], num_shards=3, progress=False)
    assert merged_labels(settings, sharded, ids, triplets, 3) == whole
    assert sorted(batch_counts(sharded)) == list(range(6)) and set(batch_counts(sharded).values()) == {1}
    # a rerun of every shard, or with another shard count, finds every batch done
    assert judge_shards(settings, cache, sharded, ids, triplets, shards=[0, 1], num_shards=2, progress=False) == 0
    if engine == "vllm":
        prompts = [p for c in fake_vllm.CALLS if c["event"] == "generate" for p in c["prompts"]]
        assert len(prompts) == 2 * len(ids)  # each triplet sent once unsharded and once sharded


# ------------------------------------------------------------------------------------------ through synth.py configs


def run_overrides(cache: Path, *extra: str) -> list[str]:
    return [
        "synthesizer=rules",
        "domain.prepare.n_train=48",
        "domain.prepare.n_test=8",
        "domain.root=${paths.data_dir}/toy_small",
        "synthesis.limit=8",
        "synthesis.progress=false",
        "filter=llm",
        "filter.batch_size=2",
        "filter.model.variant=tiny",
        "filter.model.dtype=float32",
        "filter.device=cpu",
        f"paths.cache_dir={cache}",
        "quality.blind_sample=0",
        "logger=[]",
        *extra,
    ]


def run(compose_cfg, out: Path, overrides: list[str]) -> dict:
    from mllm_da.orchestration.synth import synthesize

    synthesize(compose_cfg(overrides, config_name="synth", output_dir=out))
    return json.loads((out / "summary.json").read_text())


def judgements(summary: dict) -> list[dict]:
    return [json.loads(line) for line in Path(summary["artifacts"]["judgements"]).read_text().splitlines()]


def test_filter_shard_jobs_and_the_merge_step_through_synth_configs(compose_cfg, tmp_path: Path):
    whole = run(compose_cfg, tmp_path / "whole", run_overrides(tmp_path / "cache-whole"))
    cache = tmp_path / "cache"
    shard = ["stage=filter", "filter.num_shards=3"]
    first = run(compose_cfg, tmp_path / "s0", run_overrides(cache, *shard, "filter.shard_index=0"))
    assert first["complete"] is False and "filter" not in first["stages"]
    merge = run_overrides(cache, "stage=all", "filter.num_shards=3", "filter.merge_only=true")
    with pytest.raises(
        IncompleteError, match=r"batches not done yet \(shard 1: batches \[1\] \(1 missing\); shard 2: batches \[2\]"
    ):
        run(compose_cfg, tmp_path / "refused", merge)
    assert run(compose_cfg, tmp_path / "s1", run_overrides(cache, *shard, "filter.shard_index=1"))["complete"] is False
    last = run(compose_cfg, tmp_path / "s2", run_overrides(cache, *shard, "filter.shard_index=2"))
    assert last["complete"] is True  # the shard that finds every batch done merges
    merged = run(compose_cfg, tmp_path / "merge", merge)
    assert merged["stages"]["filter"]["reused"] is True and merged["stages"]["format"]["reused"] is False

    # the same labels as one process, under the same cache key (sharding settings are not part of it)
    assert judgements(merged) == judgements(whole) and len({j["id"] for j in judgements(merged)}) == len(
        judgements(whole)
    )
    assert merged["stages"]["filter"]["key"] == whole["stages"]["filter"]["key"]
    key = json.loads((Path(merged["stages"]["filter"]["dir"]) / "key.json").read_text())
    assert not set(SHARDING_KEYS) & set(key["payload"]["filter"])
    assert merged["metrics"]["labels"] == whole["metrics"]["labels"]
    assert Path(merged["artifacts"]["single_stage"]).read_text() == Path(whole["artifacts"]["single_stage"]).read_text()
    stage = Path(merged["stages"]["filter"]["dir"])
    assert sorted(p.name for p in stage.glob("judgements-shard*.jsonl")) == [
        f"judgements-shard{i}.jsonl" for i in range(3)
    ]
    assert set(batch_counts(stage).values()) == {1}


def test_a_filter_shard_job_waits_for_the_synthesis_merge(compose_cfg, synth_backbone, tmp_path: Path):
    """A filter shard job never generates: before the synthesis shards ran, it stops naming them."""
    from mllm_da.backbones.loading import tiny_checkpoint
    from mllm_da.backbones.spec import BackboneSpec
    from mllm_da.orchestration.synth import synthesize

    checkpoint = tiny_checkpoint(BackboneSpec.from_config(synth_backbone))
    tiny = "{" + ",".join(f"{k}:{v}" for k, v in TEST_TINY.items()) + "}"
    overrides = [
        f"synthesizer.checkpoint={checkpoint}",
        f"model.backbone.tiny={tiny}",
        *run_overrides(tmp_path / "cache", "stage=filter", "filter.num_shards=2", "filter.shard_index=1")[1:],
    ]
    with pytest.raises(IncompleteError, match=r"no shard of this synthesis has started"):
        synthesize(compose_cfg(overrides, config_name="synth", output_dir=tmp_path / "run"))
    assert not list((tmp_path / "cache" / "synthesis").glob("synthesize-*/generations-shard*.jsonl"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["filter=llm", "filter.num_shards=3", "filter.shard_index=3"], r"filter.shard_index=3 must lie in \[0, "),
        (["filter=llm", "filter.num_shards=2", "filter.shard_index=1", "filter.merge_only=true"], "merge_only"),
        (["filter=llm", "filter.processes=2"], "filter.processes=2 needs at least as many shards"),
        (["filter=llm", "filter.num_shards=2", "filter.shard_index=0", "filter.processes=2"], "processes > 1"),
        (["+filter.num_shards=2"], "use filter=llm"),
        (
            ["filter=llm", "filter.num_shards=2", "filter.shard_index=0", "synthesis.num_shards=2"]
            + ["synthesis.shard_index=0"],
            "cannot go with synthesis.shard_index",
        ),
        (["filter=llm", "filter.merge_only=true", "stage=synthesize"], "need stage=filter or stage=all"),
    ],
)
def test_invalid_filter_shard_settings_are_refused(compose_cfg, overrides: list[str], message: str):
    from mllm_da.config_checks import ConfigError, check_synth_config

    with pytest.raises(ConfigError, match=message):
        check_synth_config(compose_cfg(overrides, config_name="synth"))


def test_slurm_launcher_composes_for_filter_shard_jobs(compose_cfg):
    """`synth.py -m hydra/launcher=slurm stage=filter filter=llm filter.engine=vllm filter.num_shards=8
    'filter.shard_index=range(8)'` without submitting: 8 jobs whose configs pass the checks, one GPU each by
    default and the judge's tensor-parallel GPUs when the recipe says so."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mllm_da.config_checks import check_synth_config

    base = ["stage=filter", "filter=llm", "filter.engine=vllm", "filter.num_shards=8"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("synth", overrides=["hydra/launcher=slurm", *base], return_hydra_config=True)
        assert cfg.hydra.launcher.gpus_per_node == 1
        tensor_parallel = [
            "hydra/launcher=slurm",
            *base,
            "filter.vllm.tensor_parallel_size=2",
            "hydra.launcher.gpus_per_node=${filter.vllm.tensor_parallel_size}",
        ]
        cfg = compose("synth", overrides=tensor_parallel, return_hydra_config=True)
        assert cfg.hydra.launcher.gpus_per_node == 2
    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(["filter.shard_index=range(8)"]), None)
    shards = []
    for job in jobs[0]:
        cfg = compose_cfg([*base, *job], config_name="synth")
        check_synth_config(cfg)
        shards.append(cfg.filter.shard_index)
    assert shards == list(range(8))


# ------------------------------------------------------------------------------------------ processes, kills


@pytest.mark.slow
def test_filter_processes_and_a_killed_shard_job_resume_on_the_vllm_engine(
    fake_vllm,  # noqa: F811
    compose_cfg,
    work_root: Path,
    tmp_path: Path,
    monkeypatch,
):
    """filter.processes=2 starts two judges (worker processes) and gives the one-process labels; a filter shard job
    (its own synth.py process, as a SLURM job runs) killed once its first batch is on disk resumes without redoing
    it, and the merge has every triplet once."""
    engine = ["filter.engine=vllm"]
    whole = run(compose_cfg, tmp_path / "whole", run_overrides(tmp_path / "cache-whole", *engine))
    both = run(
        compose_cfg,
        tmp_path / "procs",
        run_overrides(tmp_path / "cache-procs", *engine, "filter.processes=2", "filter.num_shards=2"),
    )
    assert judgements(both) == judgements(whole)
    inits = logged_calls(tmp_path, "init")
    assert len({c["pid"] for c in inits}) == 3 and os.getpid() not in {c["pid"] for c in inits}

    cache = tmp_path / "cache"
    shard = [*engine, "stage=filter", "filter.num_shards=2"]
    run(compose_cfg, tmp_path / "s0", run_overrides(cache, *shard, "filter.shard_index=0"))
    monkeypatch.setenv("FAKE_VLLM_DELAY", "0.5")
    cmd = [
        sys.executable,
        "synth.py",
        f"paths.root_dir={work_root}",
        *run_overrides(cache, *shard, "filter.shard_index=1"),
    ]
    cmd.append(f"hydra.run.dir={tmp_path / 's1-killed'}")
    with open(tmp_path / "shard1.log", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, shard_file = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:
        found = list((cache / "synthesis").glob("filter-*/judgements-shard1.jsonl"))
        if found and found[0].read_bytes().count(b"\n") >= 1:
            shard_file = found[0]
            break
        time.sleep(0.01)
    assert proc.poll() is None, (tmp_path / "shard1.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its judge worker, as a node failure would
    proc.wait()
    monkeypatch.delenv("FAKE_VLLM_DELAY")
    assert shard_file is not None
    done_before = batch_counts(shard_file.parent)
    assert len([b for b in done_before if b % 2 == 1]) >= 1

    total_batches = -(-len(judgements(whole)) // 2)
    shard1_done = len([b for b in done_before if b % 2 == 1])
    merge = run_overrides(cache, *engine, "stage=all", "filter.num_shards=2", "filter.merge_only=true")
    if shard1_done < total_batches // 2:  # (a kill after its last batch leaves nothing to refuse)
        with pytest.raises(IncompleteError, match=r"\(shard 1: batches \[") as refused:
            run(compose_cfg, tmp_path / "refused", merge)
        assert "shard 0" not in str(refused.value)
    before = len(logged_calls(tmp_path, "generate"))
    resumed = run(compose_cfg, tmp_path / "s1", run_overrides(cache, *shard, "filter.shard_index=1"))
    assert resumed["complete"] is True
    redone = len(logged_calls(tmp_path, "generate")) - before
    assert redone == total_batches // 2 - shard1_done  # only the missing ones
    merged = run(compose_cfg, tmp_path / "merge", merge)
    assert judgements(merged) == judgements(whole)
    assert sorted(batch_counts(shard_file.parent)) == list(range(total_batches))
    assert set(batch_counts(shard_file.parent).values()) == {1}
