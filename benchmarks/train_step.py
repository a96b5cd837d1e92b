"""Training-step throughput for any ``model=`` preset: tokens/s, samples/s and peak memory.

    python benchmarks/train_step.py model=tiny_qwen2_vl
    python benchmarks/train_step.py model=qwen2_vl_2b model.backbone.variant=random finetune=lora --steps 10

Arguments with ``=`` are Hydra overrides of ``conf/train.yaml``; the batch is toy-domain conversations (scenes
drawn at ``--image-size``) encoded, collated and stepped through the same finetune/optimiser code as train.py.
Prints one table and writes ``benchmarks/results/train_step-<model>-<finetune>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mllm_da.backbones.base import Backbone  # noqa: E402
from mllm_da.data import toy  # noqa: E402
from mllm_da.data.mixing import mix_single_stage  # noqa: E402
from mllm_da.data.records import Turn  # noqa: E402
from mllm_da.training.finetune import FinetuneConfig, apply_finetune, parameter_groups  # noqa: E402


def toy_batch(backbone: Backbone, size: int, image_size: int, seed: int = 0) -> list:
    """``size`` encoded toy conversations (caption + 3 rule tasks) with their images attached."""
    rng = random.Random(seed)
    samples = []
    for i in range(size):
        scene = toy.sample_scene(rng, image_size)
        tasks = [t for task in toy.rule_tasks(scene, rng, 3)
                 for t in (Turn("user", task.prompt), Turn("assistant", task.answer_text))]
        caption = [Turn("user", "Describe the image."), Turn("assistant", toy.describe_scene(scene))]
        turns = mix_single_stage(f"bench{i}", caption, tasks)
        image = toy.render_scene(scene)
        sample = backbone.encode(turns, [image.size], sample_id=f"bench{i}")
        sample.images = [image]
        samples.append(sample)
    return samples


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=None, help="micro batch (default: the preset's)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args, overrides = parser.parse_known_args(argv)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(ROOT / "logs" / "benchmarks")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    finetune = FinetuneConfig.from_config(cfg.finetune, cfg.model.get("groups"))
    backbone: Backbone = instantiate(cfg.model.backbone, quantization_bits=finetune.load_bits, _convert_="all")
    model = apply_finetune(backbone, finetune).to(device) if finetune.load_bits is None else apply_finetune(
        backbone, finetune)
    model.train()
    groups = parameter_groups(backbone, model, cfg.optim.lr, cfg.optim.weight_decay, finetune)
    optimizer = torch.optim.AdamW(groups, fused=device.type == "cuda" or None)

    batch_size = args.batch or int(cfg.data.micro_batch_size)
    batch = backbone.collate(toy_batch(backbone, batch_size, args.image_size))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    dtype = next(model.parameters()).dtype
    for key in ("pixel_values",):
        if key in batch and batch[key].is_floating_point():
            batch[key] = batch[key].to(dtype)
    tokens = int(batch["attention_mask"].sum())

    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    model_name = OmegaConf.select(cfg, "hydra:runtime.choices.model", default=None) or next(
        (o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "tiny_qwen2_vl")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    result = {
        "model": model_name,
        "family": backbone.family,
        "variant": backbone.spec.variant,
        "finetune": finetune.method,
        "device": device_name,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "micro_batch": batch_size,
        "image_size": args.image_size,
        "tokens_per_batch": tokens,
        "seq_len": int(batch["input_ids"].shape[1]),
        "steps": args.steps,
        "step_s": elapsed / args.steps,
        "tokens_per_s": tokens * args.steps / elapsed,
        "samples_per_s": batch_size * args.steps / elapsed,
        "peak_memory_gib": peak_memory_gib(device),
        "final_loss": loss,
        "torch": torch.__version__,
        "host": platform.node(),
        "overrides": overrides,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train_step-{model_name}-{finetune.method}-{device_name.replace(' ', '_')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    print(f"written: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return result


if __name__ == "__main__":
    main()
