"""The vLLM backends of synthesis and of the LLM filter, through the generator interface, against a fake ``vllm``
package (tests/fake_vllm: the real call shapes, recorded calls, injected faults): the requests equal the
transformers path's, retries and per-record isolation are the shared batch code's for both backends, and shards
run as separate jobs merge only when all are done, naming the missing ones."""

from __future__ import annotations

import dataclasses
import importlib
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

from mllm_da.backbones.loading import load_backbone, load_prompt_backbone
from mllm_da.synthesis.batches import BatchLog, IncompleteError, merge_batches
from mllm_da.synthesis.requests import synthesizer_prompt
from mllm_da.synthesis.runner import SynthesisJob, SynthesizerGenerator, make_generator, run_job
from mllm_da.synthesis.sampling import record_seed
from mllm_da.utils.io import read_json

FAKE = Path(__file__).parent / "fake_vllm"
FAULT_VARS = ("FAKE_VLLM_FAIL_CALLS", "FAKE_VLLM_POISON", "FAKE_VLLM_DELAY")


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path: Path):
    """The fake ``vllm`` importable here and in worker processes; its calls logged to a file."""
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE), str(ROOT)]))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(tmp_path / "vllm-calls.jsonl"))
    for name in FAULT_VARS:
        monkeypatch.delenv(name, raising=False)
    sys.modules.pop("vllm", None)
    module = importlib.import_module("vllm")
    assert module.__version__ == "0.0.fake"
    module.CALLS.clear()
    module._generate_calls = 0
    yield module
    sys.modules.pop("vllm", None)


def logged_calls(tmp_path: Path, event: str) -> list[dict]:
    path = tmp_path / "vllm-calls.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r["event"] == event]


def job_for(backbone: dict, inputs: list, folder: Path, backend: str, **fields) -> SynthesisJob:
    base = dict(batch_size=4, max_new_tokens=12, progress=False, threads=2, retries=1)
    return SynthesisJob(backbone=backbone, inputs=inputs, folder=str(folder), backend=backend, **{**base, **fields})


def rows_of(folder: Path, inputs: list, num_shards: int = 1) -> list[dict]:
    plan = read_json(folder / "plan.json")["batches"]
    return merge_batches(BatchLog(folder, "generations"), plan, [i.id for i in inputs], num_shards)


class FaultyHF:
    """The transformers generator with the fake engine's faults: the listed call numbers fail
    (``FAKE_VLLM_FAIL_CALLS``), and a call holding a prompt longer than ``max_prompt`` tokens is refused whole, as
    vLLM refuses a call with a prompt over ``max_model_len``."""

    def __init__(self, generator: SynthesizerGenerator, max_prompt: int | None) -> None:
        self.generator = generator
        self.max_prompt = max_prompt
        self.calls = 0

    @property
    def new_tokens(self) -> int:
        return self.generator.new_tokens

    def __call__(self, items):
        self.calls += 1
        if str(self.calls) in (os.environ.get("FAKE_VLLM_FAIL_CALLS") or "").split(","):
            raise RuntimeError(f"CUDA out of memory (call {self.calls})")
        backbone = self.generator.backbone
        lengths = [len(backbone.generation_prompt_ids(synthesizer_prompt(it.caption))) for it in items]
        if self.max_prompt and max(lengths) > self.max_prompt:
            raise ValueError(f"a prompt of {max(lengths)} tokens is refused (limit {self.max_prompt})")
        return self.generator(items)


def generator_for(backend: str, job: SynthesisJob, backbone: dict, max_prompt: int | None = None):
    """The backend's generator; ``max_prompt``: refuse calls holding a longer prompt (vLLM: its max_model_len)."""
    if backend == "hf":
        return FaultyHF(SynthesizerGenerator(load_backbone(**backbone), job.max_new_tokens), max_prompt)
    return make_generator(dataclasses.replace(job, vllm={"max_model_len": max_prompt}))


def with_one_long_caption(backbone: dict, inputs: list) -> tuple[list, str, int]:
    """The inputs with one record's caption tripled, its id, and a prompt limit that only its prompt exceeds."""
    prompts = load_prompt_backbone(**backbone)
    long = dataclasses.replace(inputs[3], caption=" ".join([inputs[3].caption] * 3))
    inputs = [*inputs[:3], long, *inputs[4:]]
    lengths = [len(prompts.generation_prompt_ids(synthesizer_prompt(it.caption))) for it in inputs]
    assert lengths[3] > max(lengths[:3] + lengths[4:])
    return inputs, long.id, max(lengths[:3] + lengths[4:])


# ------------------------------------------------------------------------------------------ requests


def test_vllm_requests_are_the_hf_prompts_with_the_synthesizer_stop(
    fake_vllm, synth_backbone, synth_inputs, tmp_path: Path
):
    engine = {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.5, "enforce_eager": True, "max_model_len": None}
    job = job_for(synth_backbone, synth_inputs, tmp_path / "v", "vllm", vllm=engine)
    run_job(job)
    init = [c for c in fake_vllm.CALLS if c["event"] == "init"]
    assert len(init) == 1
    kwargs = init[0]["kwargs"]
    assert kwargs["limit_mm_per_prompt"] == {"image": 1} and kwargs["max_model_len"] == 6144
    assert kwargs["gpu_memory_utilization"] == 0.5 and kwargs["enforce_eager"] is True
    assert kwargs["dtype"] == "float32"  # null: the model preset's dtype
    backbone = load_backbone(**synth_backbone)
    stop_ids = backbone.stop_token_ids(synthesizer=True)
    plan = read_json(tmp_path / "v" / "plan.json")["batches"]
    calls = [c for c in fake_vllm.CALLS if c["event"] == "generate"]
    assert len(calls) == len(plan)  # one engine call per planned batch
    by_id = {it.id: it for it in synth_inputs}

    for call, batch in zip(calls, plan):
        items = [synth_inputs[i] for i in batch]
        for prompt, item in zip(call["prompts"], items):
            ids = prompt["prompt_token_ids"]
            assert ids == backbone.generation_prompt_ids(synthesizer_prompt(item.caption))  # what generate() gets
            text = backbone.tokenizer.decode(ids)
            assert item.caption in text and text.endswith(backbone.chat_format.user_prefix)
            assert ids.count(backbone.image_token_id) == 1 and len(prompt["images"]) == 1  # vLLM expands it
        assert call["use_tqdm"] is False
        for params in call["params"]:
            assert params["temperature"] == 0.0 and params["seed"] is None  # greedy
            assert params["stop_token_ids"] == stop_ids and params["ignore_eos"] is True
            assert params["skip_special_tokens"] is False and params["max_tokens"] == 12
    rows = rows_of(tmp_path / "v", synth_inputs)
    assert [r["id"] for r in rows] == sorted(by_id) and all(r["error"] is None for r in rows)
    assert all(r["new_tokens"] <= 12 and isinstance(r["text"], str) for r in rows)
    stats = [json.loads(line) for line in (tmp_path / "v" / "runs.jsonl").read_text().splitlines()]
    assert stats[0]["backend"] == "vllm" and stats[0]["new_tokens"] == sum(r["new_tokens"] for r in rows)


def test_sampling_gives_each_request_its_record_seed(fake_vllm, synth_backbone, synth_inputs, tmp_path: Path):
    sampling = {"temperature": 0.7, "top_p": 0.9, "seed": 3}
    run_job(job_for(synth_backbone, synth_inputs, tmp_path / "b4", "vllm", sampling=sampling))
    seeds = {}
    for call in (c for c in fake_vllm.CALLS if c["event"] == "generate"):
        for params in call["params"]:
            assert params["temperature"] == 0.7 and params["top_p"] == 0.9
            seeds[params["seed"]] = params
    assert set(seeds) == {record_seed(3, it.id) for it in synth_inputs}
    run_job(job_for(synth_backbone, synth_inputs, tmp_path / "b1", "vllm", sampling=sampling, batch_size=1))
    assert rows_of(tmp_path / "b4", synth_inputs) == rows_of(
        tmp_path / "b1", synth_inputs
    )  # a record's sample does not depend on its batch


def test_without_vllm_the_backend_says_how_to_get_it(monkeypatch, synth_backbone, synth_inputs, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"mllm-da\[vllm\].*synthesis.backend=hf"):
        make_generator(job_for(synth_backbone, synth_inputs, tmp_path, "vllm"))


# ------------------------------------------------------------------------------------------ faults, both backends


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_a_failing_batch_is_retried_then_isolated_and_redone_on_rerun(
    backend: str, fake_vllm, synth_backbone, synth_inputs, tmp_path: Path, monkeypatch
):
    inputs, long_id, limit = with_one_long_caption(synth_backbone, synth_inputs)
    reference_job = job_for(synth_backbone, inputs, tmp_path / "ref", backend)
    run_job(reference_job, generator_for(backend, reference_job, synth_backbone))
    reference = rows_of(tmp_path / "ref", inputs)

    # a transient error (an out-of-memory on the first call): retried, nothing lost, same rows
    monkeypatch.setenv("FAKE_VLLM_FAIL_CALLS", "1")
    fake_vllm._generate_calls = 0
    job = job_for(synth_backbone, inputs, tmp_path / "transient", backend)
    run_job(job, generator_for(backend, job, synth_backbone))
    assert rows_of(tmp_path / "transient", inputs) == reference
    assert BatchLog(tmp_path / "transient", "generations").failed() == {}
    monkeypatch.delenv("FAKE_VLLM_FAIL_CALLS")

    # one prompt over the engine's limit makes every call holding it fail: its batch fails twice, then its
    # records go alone; the others get their rows, the long one a failed row
    job = job_for(synth_backbone, inputs, tmp_path / "poisoned", backend)
    generator = generator_for(backend, job, synth_backbone, max_prompt=limit)
    calls_before = fake_vllm._generate_calls
    run_job(job, generator)
    rows = rows_of(tmp_path / "poisoned", inputs)
    assert [r["id"] for r in rows] == [r["id"] for r in reference]  # no record dropped
    failed = [r for r in rows if r.get("failed")]
    assert [r["id"] for r in failed] == [long_id]
    assert "longer than" in failed[0]["error"] or "refused" in failed[0]["error"]
    assert list(BatchLog(tmp_path / "poisoned", "generations").failed().values()) == [[long_id]]
    plan = read_json(tmp_path / "poisoned" / "plan.json")["batches"]
    bad_batch = next(b for b in plan if long_id in [inputs[i].id for i in b])
    calls = generator.calls if backend == "hf" else fake_vllm._generate_calls - calls_before
    assert calls == len(plan) + job.retries + len(bad_batch)  # each batch once, one retry, then each record alone
    assert all(r["text"] is not None for r in rows if r["id"] != long_id)

    # the fault gone, a rerun redoes only the batch with the failure; its clean line supersedes the failed one
    stats = run_job(job, generator_for(backend, job, synth_backbone))
    assert stats["batches"] == 1
    assert rows_of(tmp_path / "poisoned", inputs) == reference
    assert BatchLog(tmp_path / "poisoned", "generations").failed() == {}


def test_merge_refuses_while_a_shard_is_missing_and_names_it(fake_vllm, synth_backbone, synth_inputs, tmp_path):
    job = job_for(synth_backbone, synth_inputs, tmp_path / "s", "vllm", batch_size=2, num_shards=3, shards=[1])
    run_job(job)
    with pytest.raises(IncompleteError, match=r"shard 0: batches \[0, 3\] \(2 missing\); shard 2: batches \[2\]"):
        rows_of(tmp_path / "s", synth_inputs, num_shards=3)


# ------------------------------------------------------------------------------------------ the filter's judge


def test_vllm_judge_labels_like_the_hf_judge_interface(fake_vllm, tmp_path: Path):
    from mllm_da.synthesis.engines import VLLMJudge
    from mllm_da.synthesis.filter import judge_source, judge_stop_id

    settings = {
        "model": {
            "variant": "tiny",
            "tiny": {"hidden": 32, "intermediate": 64, "layers": 1, "heads": 2, "kv_heads": 1, "vocab": 300},
        }
    }
    source = judge_source(settings, str(tmp_path / "cache"))
    judge = VLLMJudge(source, max_new_tokens=2, max_length=40, engine={"enforce_eager": True})
    labels = judge.labels(["## Consistent:", "word " * 80, "another short prompt"])
    assert labels[1] == "too_long" and all(isinstance(x, str) for x in labels)
    init, call = [c for c in fake_vllm.CALLS if c["event"] in ("init", "generate")]
    assert init["kwargs"]["max_model_len"] == 40 and init["kwargs"]["enforce_eager"] is True
    assert len(call["prompts"]) == 2  # the too-long prompt is not sent
    stop = judge_stop_id(judge.tokenizer, "<|end_of_text|>")
    assert call["params"][0]["stop_token_ids"] == [stop] and call["params"][0]["max_tokens"] == 2
    assert call["params"][0]["temperature"] == 0.0


def test_llm_filter_on_the_vllm_engine_through_synth_configs(fake_vllm, compose_cfg, tmp_path: Path):
    from mllm_da.orchestration.synth import synthesize

    overrides = [
        "synthesizer=rules",
        "domain.prepare.n_train=48",
        "domain.prepare.n_test=8",
        "domain.root=${paths.data_dir}/toy_small",
        "synthesis.limit=12",
        "filter=llm",
        "filter.engine=vllm",
        "filter.batch_size=5",
        "filter.model.variant=tiny",
        "filter.model.dtype=float32",
        "filter.vllm.gpu_memory_utilization=0.4",
        "quality.blind_sample=0",
        "logger=[]",
    ]
    metrics = synthesize(compose_cfg(overrides, config_name="synth", output_dir=tmp_path / "run"))
    generate = logged_calls(tmp_path, "generate")  # the vLLM judge runs in a worker process of its own
    triplets = sum(len(c["prompts"]) for c in generate)
    assert triplets == sum(metrics["labels"].values()) and triplets > 0
    assert [len(c["prompts"]) for c in generate][0] == min(5, triplets)  # filter.batch_size prompts per call
    (init,) = logged_calls(tmp_path, "init")
    assert init["kwargs"]["gpu_memory_utilization"] == 0.4 and init["kwargs"]["dtype"] == "float32"
    assert init["pid"] != os.getpid() and not fake_vllm.CALLS  # its GPU memory goes back with the process


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["synthesis.backend=tgi"], "synthesis.backend"),
        (["synthesis.vllm.gpu_memory_utilization=1.5"], "gpu_memory_utilization"),
        (["synthesis.vllm.tensor_parallel_size=0"], "tensor_parallel_size"),
        (["synthesis.num_shards=2", "synthesis.shard_index=1", "synthesis.merge_only=true"], "merge_only"),
        (["synthesis.batch_retries=-1"], "batch_retries"),
        (["filter=llm", "filter.engine=tgi"], "filter.engine"),
    ],
)
def test_invalid_engine_options_are_refused(compose_cfg, overrides: list[str], message: str):
    from mllm_da.config_checks import ConfigError, check_synth_config

    with pytest.raises(ConfigError, match=message):
        check_synth_config(compose_cfg(overrides, config_name="synth"))


def test_slurm_launcher_composes_for_shard_jobs(compose_cfg):
    """`synth.py -m hydra/launcher=slurm synthesis.num_shards=8 synthesis.shard_index=range(8)` without submitting:
    the launcher is submitit's SLURM one with one task and one engine's GPUs per job, and the sweep is 8 jobs whose
    configs pass the checks."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mllm_da.config_checks import check_synth_config

    args = ["synthesis.num_shards=8", "synthesis.shard_index=range(8)", "stage=synthesize"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "synth",
            overrides=["hydra/launcher=slurm", "synthesis.vllm.tensor_parallel_size=2", "synthesis.backend=vllm"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 2)
    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)[0]
    assert len(jobs) == 8
    shards = []
    for job in jobs:
        cfg = compose_cfg(list(job), config_name="synth")
        check_synth_config(cfg)
        shards.append(cfg.synthesis.shard_index)
    assert shards == list(range(8))


# ------------------------------------------------------------------------------------------ shards as jobs


def shard_overrides(checkpoint: Path, cache: Path, shard: int | None = None, merge: bool = False) -> list[str]:
    out = [
        f"synthesizer.checkpoint={checkpoint}",
        "domain.prepare.n_train=48",
        "domain.prepare.n_test=8",
        "domain.root=${paths.data_dir}/toy_small",
        "synthesis.limit=12",
        "synthesis.batch_size=2",
        f"paths.cache_dir={cache}",
        "synthesis.max_new_tokens=8",
        "synthesis.num_shards=2",
        "synthesis.backend=vllm",
        "stage=synthesize",
        "quality.blind_sample=0",
        "synthesis.progress=false",
        "logger=[]",
    ]
    if shard is not None:
        out.append(f"synthesis.shard_index={shard}")
    if merge:
        out.append("synthesis.merge_only=true")
    return out


@pytest.mark.slow
def test_shards_as_separate_jobs_merge_only_when_all_are_done(
    fake_vllm, compose_cfg, synth_backbone, work_root: Path, tmp_path: Path, monkeypatch
):
    """Shard jobs of `synth.py` (as the SLURM multirun starts them, sharing the cache): shard 1 is killed mid-way,
    the merge step is refused naming it, shard 1 rerun resumes, and the merge has every record exactly once."""
    from mllm_da.backbones.loading import tiny_checkpoint
    from mllm_da.backbones.spec import BackboneSpec
    from mllm_da.orchestration.synth import synthesize

    checkpoint = tiny_checkpoint(BackboneSpec.from_config(synth_backbone))
    tiny = "{" + ",".join(f"{k}:{v}" for k, v in TEST_TINY.items()) + "}"
    common = [f"model.backbone.tiny={tiny}"]
    cache = tmp_path / "cache"
    synthesize(
        compose_cfg([*common, *shard_overrides(checkpoint, cache, 0)], config_name="synth", output_dir=tmp_path / "0")
    )

    # shard 1 in its own process, killed once its first batch is on disk
    monkeypatch.setenv("FAKE_VLLM_DELAY", "0.3")
    cmd = [sys.executable, "synth.py", f"paths.root_dir={work_root}", *common, *shard_overrides(checkpoint, cache, 1)]
    cmd.append(f"hydra.run.dir={tmp_path / '1'}")
    stage_dirs = lambda: list((cache / "synthesis").glob("synthesize-*"))  # noqa: E731
    with open(tmp_path / "shard1.log", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    shard_file = None
    while time.time() < deadline and proc.poll() is None:
        found = [p / "generations-shard1.jsonl" for p in stage_dirs() if (p / "generations-shard1.jsonl").exists()]
        if found and found[0].read_bytes().count(b"\n") >= 1:
            shard_file = found[0]
            break
        time.sleep(0.01)
    assert proc.poll() is None, (tmp_path / "shard1.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its engine worker, as a node failure would
    proc.wait()
    assert shard_file is not None
    monkeypatch.delenv("FAKE_VLLM_DELAY")

    with pytest.raises(IncompleteError, match=r"shard 1: batches \["):
        synthesize(
            compose_cfg(
                [*common, *shard_overrides(checkpoint, cache, merge=True)],
                config_name="synth",
                output_dir=tmp_path / "merge-refused",
            )
        )
    synthesize(
        compose_cfg([*common, *shard_overrides(checkpoint, cache, 1)], config_name="synth", output_dir=tmp_path / "1b")
    )
    metrics = synthesize(
        compose_cfg(
            [*common, *shard_overrides(checkpoint, cache, merge=True)],
            config_name="synth",
            output_dir=tmp_path / "merge",
        )
    )
    stage = shard_file.parent
    generations = [json.loads(line)["id"] for line in (stage / "generations.jsonl").read_text().splitlines()]
    assert metrics["records"] == 12 and len(generations) == 12 and len(set(generations)) == 12
    batches = Counter(
        json.loads(line)["batch"] for p in stage.glob("generations-shard*.jsonl") for line in p.read_text().splitlines()
    )
    assert sorted(batches) == list(range(6)) and set(batches.values()) == {1}  # no batch twice, none missing


def test_the_self_check_is_a_second_greedy_call_of_the_engine(fake_vllm, synth_backbone, synth_inputs):
    from test_self_check import triplet_prefill

    from mllm_da.backbones.loading import engine_checkpoint
    from mllm_da.synthesis.engines import VLLMSynthesizerGenerator
    from mllm_da.synthesis.parse import LLAMA3
    from mllm_da.synthesis.requests import SelfCheck, self_check_turns

    backbone = load_prompt_backbone(**synth_backbone)
    question = "Is there a red circle?"
    generator = VLLMSynthesizerGenerator(
        backbone,
        engine_checkpoint(backbone.spec),
        max_new_tokens=4,
        prefill=triplet_prefill(question),
        self_check=SelfCheck(LLAMA3, 6),
    )
    rows = generator(synth_inputs[:3])
    calls = [c for c in fake_vllm.CALLS if c["event"] == "generate"]
    assert len(calls) == 2  # the outputs, then the self-checks
    for prompt, item in zip(calls[1]["prompts"], synth_inputs[:3]):
        assert prompt["prompt_token_ids"] == backbone.generation_prompt_ids(self_check_turns(item.caption, question))
    for params in calls[1]["params"]:
        assert params["temperature"] == 0.0 and params["max_tokens"] == 6
        assert params["stop_token_ids"] == backbone.stop_token_ids()
    assert all(isinstance(r["self_check"], str) for r in rows)
