"""Training throughput of any ``model=`` preset against a naive baseline measured in the same run, on the same data.

    python benchmarks/train_step.py model=tiny_qwen2_vl                                   # CPU, toy data
    python benchmarks/train_step.py model=tiny_qwen2_vl finetune=lora
    python benchmarks/train_step.py model=qwen2_vl_2b model.backbone.variant=random --workload realistic  # GPU

Arguments with ``=`` are Hydra overrides of ``conf/train.yaml``. One model is built; every variant trains one
epoch over the same samples (``--workload toy``: the toy domain the demo trains on; ``realistic``: image-caption
conversations with 1-8 tasks on 448-1280 px images, :mod:`benchmarks.workload`) with a fresh AdamW, one untimed
warm-up step first. Variants, each from the row above it (the last three each from ``+ fused adamw`` alone):

* ``naive``: random batches padded to the longest sample, eager attention, ``torch.optim.AdamW`` defaults
  (not fused), no compile, no pinned memory: the obvious loop with no optimisation;
* ``+ length grouping``, ``+ sdpa``, ``+ fused adamw`` (with pinned host memory on a GPU);
* ``+ packing`` (micro batch packed into rows of ``data.cutoff_len``), ``+ compile`` (on a GPU, or with
  ``--compile``), ``+ grad checkpointing``;
* ``ours``: what ``train.py`` does with this config (``data.group_by_length``, ``data.packing``,
  ``model.backbone.attn_implementation``, ``optim.fused``, ``compile``,
  ``finetune.gradient_checkpointing``, ``data.pin_memory``).

Rounds are interleaved (variant A, B, ... then again) and the median epoch time is kept, so a load change on a
shared machine hits every variant alike; on CPU the process's CPU seconds per epoch are reported too
(``tokens_per_cpu_s``), the steadier figure when other processes share the cores (``--threads 1`` makes it a
per-core figure). Tokens are the samples' real (non-padding) tokens. Model FLOPs are
counted once per sample by ``torch.utils.flop_counter`` on the unpadded sample (forward + backward as this
finetune method needs it, eager attention counted in full, no recomputation); MFU divides them by the epoch
time and by the matmul peak measured in this script (bf16 on a GPU for the bf16 presets; on CPU the fp32 peak
of the tiny presets' dtype). Prints one table, writes
``benchmarks/results/train_step-<model>-<finetune>-<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import (  # noqa: E402
    compose_config,
    device,
    device_name,
    environment,
    matmul_peak_flops,
    median,
    model_choice,
    print_table,
    synchronize,
    write_result,
)
from benchmarks.workload import WorkloadSpec, conversations, toy_conversations  # noqa: E402
from mllm_da.backbones.base import Backbone, EncodedSample  # noqa: E402
from mllm_da.data.datamodule import ConversationDataset, length_grouped_batches, padding_fraction  # noqa: E402
from mllm_da.training.finetune import FinetuneConfig, apply_finetune, parameter_groups  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One way of running the same epoch."""

    name: str
    group: bool = False
    pack: bool = False
    attn: str = "eager"
    fused: bool = False
    compile: bool = False
    checkpointing: bool = False
    pin: bool = False


def variants(
    cfg: Any, dev: torch.device, finetune: FinetuneConfig, backbone: Backbone, with_compile: bool
) -> list[Variant]:
    naive = Variant("naive")
    grouped = replace(naive, name="+ length grouping", group=True)
    sdpa = replace(grouped, name="+ sdpa", attn="sdpa")
    fused = replace(sdpa, name="+ fused adamw", fused=True, pin=dev.type == "cuda")
    out = [naive, grouped, sdpa, fused]
    if backbone.supports_packing:
        out.append(replace(fused, name="+ packing", pack=True))
    if with_compile:
        out.append(replace(fused, name="+ compile", compile=True))
    out.append(replace(fused, name="+ grad checkpointing", checkpointing=True))
    ours = Variant(
        "ours",
        group=bool(cfg.data.group_by_length),
        pack=bool(cfg.data.get("packing", False)),
        attn=str(cfg.model.backbone.attn_implementation or "sdpa"),
        fused=bool(cfg.optim.fused),  # train.py fuses on CUDA and CPU alike
        compile=bool(cfg.get("compile", False)),
        checkpointing=finetune.gradient_checkpointing,
        pin=bool(cfg.data.pin_memory) and dev.type == "cuda",
    )
    return out + [ours]


def encoded_samples(backbone: Backbone, convs, cutoff: int) -> list[EncodedSample]:
    """The length plan of train.py (over-long samples dropped), images decoded once."""
    dataset = ConversationDataset(backbone, convs, cutoff_len=cutoff, truncation="drop")
    return [dataset[i] for i in range(len(dataset))]


def hf_model(model: torch.nn.Module) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def to_device(batch: dict[str, Any], dev: torch.device, dtype: torch.dtype, pin: bool) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if key.startswith("_") or key == "sample_ids":
            continue
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                value = value.to(dtype)
            value = value.to(dev, non_blocking=pin)
        out[key] = value
    out.setdefault("use_cache", False)
    return out


def count_model_flops(model: torch.nn.Module, backbone: Backbone, samples, dev, dtype) -> float:
    """Forward + backward FLOPs of every sample alone (no padding), eager attention, no recomputation."""
    hf_model(model).set_attn_implementation("eager")
    counter = FlopCounterMode(display=False)
    with counter:
        for sample in samples:
            batch = to_device(backbone.collate([sample]), dev, dtype, pin=False)
            model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["toy", "realistic"], default="toy")
    parser.add_argument("--n", type=int, default=None, help="samples per epoch (default: 256 toy, 128 realistic)")
    parser.add_argument("--batch", type=int, default=None, help="micro batch (default: the preset's)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved epochs per variant; the median is kept")
    parser.add_argument("--cutoff", type=int, default=None, help="longest sample (default: data.cutoff_len)")
    parser.add_argument("--variants", nargs="*", default=None, help="names to run (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tag", default="", help="appended to the result file name")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also measure torch.compile on CPU (always on a GPU; minutes of compilation on CPU)",
    )
    args, overrides = parser.parse_known_args(argv)
    cfg = compose_config("train", overrides, args.threads)
    dev = device()
    torch.manual_seed(0)
    finetune = FinetuneConfig.from_config(cfg.finetune, cfg.model.get("groups"))
    if finetune.load_bits is not None:
        raise SystemExit("QLoRA is not benchmarked here: bitsandbytes kernels need a pretrained checkpoint")
    backbone: Backbone = instantiate(cfg.model.backbone, device=str(dev), _convert_="all")
    model = apply_finetune(backbone, replace(finetune, gradient_checkpointing=False))
    model.train()
    dtype = next(model.parameters()).dtype
    cutoff = args.cutoff or int(cfg.data.cutoff_len)
    batch_size = args.batch or int(cfg.data.micro_batch_size)
    n = args.n or (256 if args.workload == "toy" else 128)
    convs = toy_conversations(n) if args.workload == "toy" else conversations(WorkloadSpec(n=n))
    samples = encoded_samples(backbone, convs, cutoff)
    lengths = [s.expanded_length for s in samples]
    real_tokens = sum(lengths)
    peak = matmul_peak_flops(dev, dtype)
    model_flops = count_model_flops(model, backbone, samples, dev, dtype)

    plan = variants(cfg, dev, finetune, backbone, with_compile=args.compile or dev.type == "cuda")
    if args.variants:
        plan = [v for v in plan if v.name in args.variants or v.name.lstrip("+ ") in args.variants]
    batches: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
    padding: dict[tuple[bool, bool], dict[str, float]] = {}
    for v in plan:
        key = (v.group, v.pack)
        if key in batches:
            continue
        order = length_grouped_batches(lengths, batch_size, torch_rng(0), v.group)
        collated = [
            backbone.collate_packed([samples[i] for i in b], cutoff)
            if v.pack
            else backbone.collate([samples[i] for i in b])
            for b in order
        ]
        slots = sum(int(b["input_ids"].numel()) for b in collated)
        padding[key] = {
            "padding_fraction": 1 - real_tokens / slots,
            "sequence_slots": slots,
            "grouped_plan_padding": padding_fraction(lengths, order),
        }
        batches[key] = collated
    pinned: dict[tuple[bool, bool], list[dict[str, Any]]] = {}

    compiled: dict[str, Any] = {}
    timings: dict[str, list[float]] = {v.name: [] for v in plan}
    cpu_times: dict[str, list[float]] = {v.name: [] for v in plan}
    extra: dict[str, dict[str, Any]] = {v.name: {} for v in plan}
    hf = hf_model(model)
    for round_index in range(args.rounds):
        for v in plan:
            if "error" in extra[v.name]:
                continue
            hf.set_attn_implementation(v.attn)
            if v.checkpointing:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                if finetune.method != "full":
                    hf.enable_input_require_grads()
            elif hf.is_gradient_checkpointing:
                hf.gradient_checkpointing_disable()
            call = model
            if v.compile:
                call = compiled.setdefault("model", torch.compile(model, dynamic=True))
            groups = parameter_groups(backbone, model, cfg.optim.lr, cfg.optim.weight_decay, finetune)
            optimizer = torch.optim.AdamW(groups, fused=True) if v.fused else torch.optim.AdamW(groups)
            source = batches[(v.group, v.pack)]
            if v.pin:
                source = pinned.setdefault(
                    (v.group, v.pack),
                    [{k: t.pin_memory() if isinstance(t, torch.Tensor) else t for k, t in b.items()} for b in source],
                )

            def step(batch: dict[str, Any], *, _call=call, _opt=optimizer, _pin=v.pin) -> None:
                _call(**to_device(batch, dev, dtype, _pin)).loss.backward()
                _opt.step()
                _opt.zero_grad(set_to_none=True)

            try:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(dev)
                synchronize(dev)
                start = time.perf_counter()
                step(source[0])  # warm-up: optimiser state, kernels, compilation
                synchronize(dev)
                if round_index == 0:
                    extra[v.name]["first_step_s"] = time.perf_counter() - start
                start, cpu = time.perf_counter(), time.process_time()
                for batch in source:
                    step(batch)
                synchronize(dev)
                timings[v.name].append(time.perf_counter() - start)
                cpu_times[v.name].append(time.process_time() - cpu)
                if dev.type == "cuda":
                    extra[v.name]["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
            except torch.cuda.OutOfMemoryError as err:  # the naive baseline may not fit where ours does
                extra[v.name]["error"] = f"out of memory: {str(err).splitlines()[0]}"
            finally:
                del optimizer
                model.zero_grad(set_to_none=True)
    if hf.is_gradient_checkpointing:
        hf.gradient_checkpointing_disable()

    rows = []
    for v in plan:
        epoch, cpu = median(timings[v.name]), median(cpu_times[v.name])
        key = (v.group, v.pack)
        row: dict[str, Any] = {
            "variant": v.name,
            **asdict(v),
            **padding[key],
            **extra[v.name],
            "epoch_s": epoch,
            "epochs_s": timings[v.name],
            "tokens_per_s": real_tokens / epoch,
            "samples_per_s": len(samples) / epoch,
            "model_tflops_per_s": model_flops / epoch / 1e12,
            "mfu": model_flops / epoch / peak,
            "cpu_s": cpu,
            "tokens_per_cpu_s": real_tokens / cpu if cpu else float("nan"),
        }
        rows.append(row)
    base = next((r for r in rows if r["variant"] == "naive"), None)
    for row in rows:
        row["speedup_vs_naive"] = row["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        # on a shared CPU the process's CPU seconds are the steadier measure (what other processes take is not
        # counted); on a GPU the wall clock is what counts
        row["cpu_speedup_vs_naive"] = row["tokens_per_cpu_s"] / base["tokens_per_cpu_s"] if base else float("nan")

    model_name = model_choice(overrides, "tiny_qwen2_vl")
    result: dict[str, Any] = {
        "benchmark": "train_step",
        **environment(),
        "model": model_name,
        "family": backbone.family,
        "variant": backbone.spec.variant,
        "finetune": finetune.method,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "workload": args.workload,
        "samples": len(samples),
        "dropped_over_cutoff": len(convs) - len(samples),
        "micro_batch": batch_size,
        "cutoff_len": cutoff,
        "real_tokens_per_epoch": real_tokens,
        "mean_sample_tokens": real_tokens / len(samples),
        "max_sample_tokens": max(lengths),
        "model_flops_per_epoch": model_flops,
        "matmul_peak_tflops": peak / 1e12,
        "matmul_peak_dtype": str(dtype).removeprefix("torch."),
        "rounds": args.rounds,
        "overrides": overrides,
        "runs": rows,
    }
    columns = [
        "variant",
        "tokens_per_s",
        "samples_per_s",
        "speedup_vs_naive",
        "mfu",
        "padding_fraction",
        "epoch_s",
        "first_step_s",
    ]
    columns += ["peak_memory_gib"] if dev.type == "cuda" else ["tokens_per_cpu_s", "cpu_speedup_vs_naive"]
    result["table"] = print_table(
        rows,
        columns,
        title=f"{model_name} {finetune.method} ({backbone.spec.variant}, {result['dtype']}) on {device_name(dev)}: "
        f"{len(samples)} {args.workload} samples, {real_tokens / len(samples):.0f} tokens each on average, "
        f"micro batch {batch_size}; MFU against a measured {result['matmul_peak_dtype']} matmul peak of "
        f"{peak / 1e12:.3g} TFLOP/s; median of {args.rounds} interleaved epochs",
    )
    if any("error" in r for r in rows):
        for r in rows:
            if "error" in r:
                print(f"{r['variant']}: {r['error']}")
    tag = f"-{args.tag}" if args.tag else ""
    write_result(f"train_step-{model_name}-{finetune.method}-{args.workload}-{device_name(dev)}{tag}", result)
    return result


def torch_rng(seed: int):
    """The sampler's RNG (``random.Random``): the same batch order for every variant with the same grouping."""
    import random

    return random.Random(seed)


if __name__ == "__main__":
    main()
