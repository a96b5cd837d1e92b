"""Padding before and after: the share of token slots that are padding, for random batches (the naive loop),
length-grouped batches (train.py's default) and packed micro batches (``data.packing=true``).

    python benchmarks/padding.py                     # toy data (tiny Qwen2-VL) and the realistic distribution
    python benchmarks/padding.py --n 5000 --batches 4 8 32

Only lengths are needed, so nothing is decoded or trained: each conversation is tokenised with the preset's
processor and its image tokens counted from the image size (the length plan of train.py, over-long samples
dropped). Batch orders come from the sampler's own function (:func:`length_grouped_batches`, megabatches of 50
batches); packing fills rows of ``data.cutoff_len`` first-fit decreasing within each micro batch. Prints one table
and writes ``benchmarks/results/padding.json``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import environment, print_table, write_result  # noqa: E402
from benchmarks.data_pipeline import processor_backbone  # noqa: E402
from benchmarks.workload import WorkloadSpec, draw  # noqa: E402
from mllm_da import toy  # noqa: E402
from mllm_da.backbones.base import pack_bins  # noqa: E402
from mllm_da.data.datamodule import length_grouped_batches, padding_fraction  # noqa: E402
from mllm_da.data.records import IMAGE_PLACEHOLDER, Turn  # noqa: E402


def toy_lengths(model: str, n: int, seed: int = 0) -> tuple[list[int], int]:
    """Planned lengths of toy conversations (caption round + 1..6 rule tasks) for ``model``'s processor."""
    backbone, cfg = processor_backbone(model)
    rng = random.Random(seed)
    size = int(cfg.model.backbone.image.get("min_pixels", 112 * 112) ** 0.5)
    lengths = []
    for _ in range(n):
        scene = toy.sample_scene(rng, size)
        turns = [
            Turn("user", IMAGE_PLACEHOLDER + toy.caption_instruction(rng)),
            Turn("assistant", toy.describe_scene(scene)),
        ]
        for task in toy.rule_tasks(scene, rng, rng.randint(1, 6)):
            turns += [Turn("user", task.prompt), Turn("assistant", task.answer)]
        lengths.append(backbone.encode(turns, [(size, size)]).expanded_length)
    cutoff = int(cfg.data.cutoff_len)
    return [x for x in lengths if x <= cutoff], cutoff


def realistic_lengths(model: str, n: int) -> tuple[list[int], int]:
    backbone, cfg = processor_backbone(model)
    cutoff = int(cfg.data.cutoff_len)
    lengths = [backbone.encode(d.turns, [d.size]).expanded_length for d in draw(WorkloadSpec(n=n))]
    return [x for x in lengths if x <= cutoff], cutoff


def packed_padding(lengths: list[int], batches: list[list[int]], capacity: int) -> float:
    """Padding share when each micro batch is packed into rows of ``capacity`` and padded to its longest row."""
    slots = real = 0
    for batch in batches:
        bins = pack_bins([lengths[i] for i in batch], capacity)
        rows = [sum(lengths[batch[j]] for j in b) for b in bins]
        slots += max(rows) * len(rows)
        real += sum(rows)
    return 1 - real / slots if slots else 0.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000, help="conversations per distribution")
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 8, 32])
    parser.add_argument("--toy-model", default="tiny_qwen2_vl")
    parser.add_argument("--real-model", default="qwen2_vl_2b")
    args = parser.parse_args(argv)
    distributions = {
        f"toy ({args.toy_model})": toy_lengths(args.toy_model, args.n),
        f"realistic ({args.real_model})": realistic_lengths(args.real_model, args.n),
    }
    rows = []
    for name, (lengths, cutoff) in distributions.items():
        for batch in args.batches:
            random_batches = length_grouped_batches(lengths, batch, random.Random(0), False)
            grouped = length_grouped_batches(lengths, batch, random.Random(0), True)
            rows.append(
                {
                    "lengths": name,
                    "samples": len(lengths),
                    "mean_tokens": sum(lengths) / len(lengths),
                    "max_tokens": max(lengths),
                    "micro_batch": batch,
                    "cutoff_len": cutoff,
                    "random": padding_fraction(lengths, random_batches),
                    "length_grouped": padding_fraction(lengths, grouped),
                    "random_packed": packed_padding(lengths, random_batches, cutoff),
                    "grouped_packed": packed_padding(lengths, grouped, cutoff),
                }
            )
    result = {"benchmark": "padding", **environment(), "n": args.n, "runs": rows}
    result["table"] = print_table(
        rows,
        [
            "lengths",
            "samples",
            "mean_tokens",
            "max_tokens",
            "micro_batch",
            "random",
            "length_grouped",
            "random_packed",
            "grouped_packed",
        ],
        title="padding share of the token slots (random = the naive loop; length_grouped = train.py's default; "
        "packed = data.packing=true, rows of cutoff_len)",
    )
    write_result("padding", result)
    return result


if __name__ == "__main__":
    main()
