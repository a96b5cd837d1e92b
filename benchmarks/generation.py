"""Generation throughput for any ``model=`` preset: samples/s batched vs one prompt at a time.

    python benchmarks/generation.py                                   # tiny_qwen2_vl on this machine
    python benchmarks/generation.py model=qwen2_vl_2b model.backbone.variant=random --n 64 --batch 16

Arguments with ``=`` are Hydra overrides of ``conf/evaluate.yaml``. Two prompt kinds, both on toy-domain scenes
drawn at ``--image-size``, both through the evaluation generator (:class:`HFGenerator`, greedy, left-padded,
sorted by length):

* ``eval``: one user turn, image then a benchmark-style question (the toy VQA/MC prompts), stopping at the turn end;
* ``synthesis``: a caption round (user instruction + assistant caption) then an open user turn, stopping at the
  synthesizer's end-of-text (reference §2.2).

Each kind runs ``--n`` prompts with ``--batch`` prompts per batch, again batched with a static (preallocated)
KV cache (``cache_implementation="static"``; ``--compile`` also compiles the decoding step, as transformers does
for a static cache), and one at a time. Prints a table and writes
``benchmarks/results/generation-<model>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import compose_config, environment  # noqa: E402
from mllm_da import toy  # noqa: E402
from mllm_da.backbones.base import Backbone  # noqa: E402
from mllm_da.data.records import IMAGE_PLACEHOLDER, Turn  # noqa: E402
from mllm_da.evaluation.generation import GenerationRequest, HFGenerator, question_turns  # noqa: E402


def toy_requests(n: int, image_size: int, kind: str, seed: int = 0) -> list[GenerationRequest]:
    """``n`` prompts on freshly drawn toy scenes: benchmark questions or synthesizer continuations."""
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        scene = toy.sample_scene(rng, image_size)
        image = toy.render_scene(scene)
        if kind == "eval":
            task = toy.rule_tasks(scene, rng, 1)[0]
            turns = question_turns(task.prompt)
        else:
            turns = (
                Turn("user", IMAGE_PLACEHOLDER + toy.caption_instruction(rng)),
                Turn("assistant", toy.describe_scene(scene)),
            )
        requests.append(GenerationRequest(i, turns, lambda img=image: [img], (image.size,)))
    return requests


class StaticCacheGenerator(HFGenerator):
    """The evaluation generator with a preallocated KV cache (and, if asked, a compiled decoding step)."""

    def __init__(self, *args, compile_step: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.compile_step = compile_step

    def _config(self, max_new_tokens: int):
        config = super()._config(max_new_tokens)
        config.cache_implementation = "static"
        if not self.compile_step:
            config.disable_compile = True
        return config


def measure(
    backbone: Backbone,
    requests,
    batch_size: int,
    max_new_tokens: int,
    synthesizer: bool,
    cache: str = "dynamic",
    compile_step: bool = False,
) -> dict:
    if cache == "static":
        generator: HFGenerator = StaticCacheGenerator(
            backbone, batch_size=batch_size, progress=False, synthesizer=synthesizer, compile_step=compile_step
        )
    else:
        generator = HFGenerator(backbone, batch_size=batch_size, progress=False, synthesizer=synthesizer)
    generator.generate(requests[: min(len(requests), batch_size)], max_new_tokens=max_new_tokens)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    cpu = time.process_time()
    generator.generate(requests, max_new_tokens=max_new_tokens)
    cpu = time.process_time() - cpu
    stats = generator.stats.as_dict()
    stats["cpu_s"] = cpu
    stats["samples_per_cpu_s"] = stats["samples"] / cpu if cpu else float("nan")
    stats["batch_size"] = batch_size
    stats["cache"] = cache + (" + compile" if compile_step else "")
    stats["padding_share"] = 1 - stats["prompt_tokens"] / stats["padded_tokens"] if stats["padded_tokens"] else 0.0
    return stats


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="prompts per measurement")
    parser.add_argument("--batch", type=int, default=8, help="prompts per batch for the batched measurement")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--kinds", nargs="+", default=["eval", "synthesis"], choices=["eval", "synthesis"])
    parser.add_argument("--no-static", action="store_true", help="skip the static-cache measurement")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 on a shared CPU: a busy core stalls every multi-threaded op)",
    )
    parser.add_argument("--compile", action="store_true", help="compile the static-cache decoding step too")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args, overrides = parser.parse_known_args(argv)
    cfg = compose_config("evaluate", overrides, args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    backbone: Backbone = instantiate(cfg.model.backbone, device=str(device), _convert_="all")
    backbone.model.eval()

    model_name = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "tiny_qwen2_vl")
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    )
    result: dict = {
        "model": model_name,
        "family": backbone.family,
        "variant": backbone.spec.variant,
        "device": device_name,
        "dtype": str(next(backbone.model.parameters()).dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in backbone.model.parameters()),
        "prompts": args.n,
        "max_new_tokens": args.max_new_tokens,
        "image_size": args.image_size,
        "torch": torch.__version__,
        "host": platform.node(),
        "overrides": overrides,
        "environment": environment(),
        "runs": {},
    }
    for kind in args.kinds:
        requests = toy_requests(args.n, args.image_size, kind)
        synth = kind == "synthesis"
        batched = measure(backbone, requests, args.batch, args.max_new_tokens, synth)
        single = measure(backbone, requests, 1, args.max_new_tokens, synth)
        result["runs"][kind] = {
            "batched": batched,
            "one_at_a_time": single,
            "speedup": batched["samples_per_s"] / single["samples_per_s"],
            "cpu_speedup": batched["samples_per_cpu_s"] / single["samples_per_cpu_s"],
        }
        if not args.no_static:
            static = measure(backbone, requests, args.batch, args.max_new_tokens, synth, "static", args.compile)
            result["runs"][kind]["batched_static_cache"] = static
            result["runs"][kind]["static_vs_dynamic"] = static["samples_per_s"] / batched["samples_per_s"]
            result["runs"][kind]["static_vs_dynamic_cpu"] = static["samples_per_cpu_s"] / batched["samples_per_cpu_s"]

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"generation-{model_name}-{device_name.replace(' ', '_')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{model_name} on {device_name}, {args.n} prompts, up to {args.max_new_tokens} new tokens")
    print(
        f"{'kind':<10} {'mode':<22} {'batch':>5} {'samples/s':>10} {'samples/cpu-s':>13} {'new tok/s':>10} "
        f"{'new tok':>8} {'pad':>6}"
    )
    for kind, run in result["runs"].items():
        for mode in ("batched", "batched_static_cache", "one_at_a_time"):
            if mode not in run:
                continue
            s = run[mode]
            print(
                f"{kind:<10} {mode:<22} {s['batch_size']:>5} {s['samples_per_s']:>10.2f} "
                f"{s['samples_per_cpu_s']:>13.2f} "
                f"{s['new_tokens_per_s']:>10.1f} {s['new_tokens']:>8} {s['padding_share']:>6.1%}"
            )
        print(
            f"{kind:<10} speedup batched / one at a time: {run['speedup']:.2f}x wall, "
            f"{run['cpu_speedup']:.2f}x CPU time"
        )
        if "static_vs_dynamic" in run:
            print(
                f"{kind:<10} static / dynamic cache (batched): {run['static_vs_dynamic']:.2f}x wall, "
                f"{run['static_vs_dynamic_cpu']:.2f}x CPU time"
            )
    print(f"written: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return result


if __name__ == "__main__":
    main()
