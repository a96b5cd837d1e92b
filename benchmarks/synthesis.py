"""Synthesis throughput: records/s and new tokens/s of batched greedy synthesis for any ``synthesizer=`` preset.

    python benchmarks/synthesis.py                                   # tiny LLaVA-NeXT synthesizer on CPU
    python benchmarks/synthesis.py synthesizer=tiny_qwen2_vl --records 64
    python benchmarks/synthesis.py synthesizer=adamllm synthesis.batch_size=64 --records 512   # on a GPU
    python benchmarks/synthesis.py model.backbone.variant=random model=llava_next_adamllm_8b --tune no

Arguments with ``=`` are Hydra overrides of ``conf/synth.yaml``. The records are the configured domain's
image-caption pairs (the toy domain by default). ``--tune auto`` uses the tuned synthesizer when the pipeline has
already tuned one for this config (``python synth.py stage=tune_synthesizer ...``), else the untuned model, which
never emits its stop token and so always generates ``max_new_tokens`` (a worst case); ``--tune yes`` tunes first.
The first batch is a warm-up and is not timed. Writes ``benchmarks/results/synthesis-<synthesizer>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import compose_config  # noqa: E402
from mllm_da.backbones.loading import load_backbone  # noqa: E402
from mllm_da.synthesis import generate, tuning  # noqa: E402
from mllm_da.synthesis.cache import StageDir  # noqa: E402
from mllm_da.synthesis.inputs import read_domain_inputs  # noqa: E402
from mllm_da.synthesis.parse import extract_triplet, parse_output  # noqa: E402
from mllm_da.synthesis.runner import SynthesizerGenerator, plan_batches, prompt_cost  # noqa: E402
from mllm_da.synthesis.stage import VERSIONS, StageOutcome  # noqa: E402
from mllm_da.utils.devices import resolve_device  # noqa: E402


def tuned_stage(cfg, mode: str):
    """The tune stage to load the synthesizer from (None: untuned), following ``--tune``."""
    if mode == "no" or not tuning.needs_tuning(cfg):
        return None
    seed_outcome, seed_files = tuning.seed_stage(cfg)
    if mode == "yes":
        return tuning.tune_stage(cfg, seed_outcome, seed_files)
    train_cfg = tuning.tune_config(cfg, seed_files)
    from mllm_da.utils.runinfo import config_hash

    payload = {"version": VERSIONS["tune"], "seed": seed_outcome.dir.key, "train": config_hash(train_cfg)}
    stage = StageDir.for_stage(cfg.paths.cache_dir, "tune", payload)
    return StageOutcome("tune", stage, stage.meta(), True) if stage.is_complete() else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=48, help="timed records (after one warm-up batch)")
    parser.add_argument("--tune", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args, overrides = parser.parse_known_args(argv)
    cfg = compose_config("synth", overrides, args.threads)
    if cfg.domain.get("prepare"):
        instantiate(cfg.domain.prepare)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):  # tuning composes train.yaml
        tuned = tuned_stage(cfg, args.tune) if cfg.synthesizer.kind == "model" else None
    if cfg.synthesizer.kind != "model":
        raise SystemExit("the rule synthesizer has no generation to benchmark; pick a model synthesizer")
    device = resolve_device(cfg.synthesis.device)
    kwargs, _ = generate.backbone_kwargs(cfg, tuned)
    backbone = load_backbone(**kwargs)
    generator = SynthesizerGenerator(backbone, int(cfg.synthesis.max_new_tokens), device)
    batch_size = int(cfg.synthesis.batch_size)
    with open_dict(cfg):
        cfg.synthesis.limit = args.records + batch_size
    data = read_domain_inputs(cfg)
    inputs = data.inputs
    plan = plan_batches([prompt_cost(it) for it in inputs], [it.id for it in inputs], batch_size)
    generator([inputs[i] for i in plan[0]])  # warm-up
    fmt = generate.parse_format(cfg)
    rows, tokens_before = [], generator.new_tokens
    start = time.perf_counter()
    for batch in plan[1:]:
        rows += generator([inputs[i] for i in batch])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    new_tokens = generator.new_tokens - tokens_before
    parsed = [parse_output(r["text"] or "", fmt) for r in rows]
    result = {
        "synthesizer": cfg.synthesizer.name,
        "tuned": tuned is not None or bool(cfg.synthesizer.get("checkpoint")),
        "source": kwargs.get("source"),
        "family": kwargs["family"],
        "variant": kwargs["variant"],
        "device": device if device != "cpu" else f"cpu-{torch.get_num_threads()}threads",
        "dtype": kwargs.get("dtype"),
        "batch_size": batch_size,
        "max_new_tokens": int(cfg.synthesis.max_new_tokens),
        "records": len(rows),
        "seconds": round(seconds, 3),
        "records_per_s": round(len(rows) / seconds, 3),
        "new_tokens_per_s": round(new_tokens / seconds, 1),
        "mean_new_tokens": round(new_tokens / max(1, len(rows)), 1),
        "finished_rate": round(sum(r["finished"] for r in rows) / max(1, len(rows)), 3),
        "parse_rate": round(sum(bool(p) for p in parsed) / max(1, len(rows)), 3),
        "triplet_rate": round(sum(extract_triplet(p) is not None for p in parsed) / max(1, len(rows)), 3),
        "torch": torch.__version__,
        "host": platform.node(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"synthesis-{result['synthesizer']}-{result['device']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    main()
