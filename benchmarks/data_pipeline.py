"""Data-pipeline throughput at real image sizes: samples/s per CPU core, with data-loader worker variants.

    python benchmarks/data_pipeline.py                                  # the four real-size presets
    python benchmarks/data_pipeline.py --models qwen2_vl_2b --workers 0 1 2 --n 128

No model is built: each preset's processor (the one ``variant=random`` uses: the real image settings, an
offline tokenizer) runs the training data path of train.py on :mod:`benchmarks.workload` conversations (JPEG
images with the long side between 448 and 1280 px, 1 to 8 tasks each):

* ``plan``: :class:`ConversationDataset` (image headers, chat rendering, tokenisation, label masks, cutoff);
* ``load``: :class:`ConversationDataModule`'s train loader: decode + image processing + image-token expansion +
  padding (the real ``Collator``), with ``--workers`` data-loader processes; the second epoch is timed, its
  persistent workers already running as in a long run.

"Per core" divides samples by the CPU seconds all of the pipeline's processes used (user + system, workers
included, from ``/proc``), so it holds on a shared machine; samples/s is wall clock. For every adapter with a fast
pixel path (``fast_image.py``, the adapter's ``fast_pixels``: Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, Mllama) the load is
measured with it on the preset's image backend (``fast torchvision``: the presets' default) with each worker
count, then in-process on the other backend (``fast pil``) and with transformers' PIL processor (``hf pil``), the
before/after of those changes. Prints one table and writes ``benchmarks/results/data_pipeline-<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks.common import environment, median, print_table, write_result  # noqa: E402
from benchmarks.workload import WorkloadSpec, conversations  # noqa: E402
from mllm_da.backbones.base import Backbone, BackboneSpec  # noqa: E402
from mllm_da.backbones.loading import family_class  # noqa: E402
from mllm_da.data.datamodule import ConversationDataModule, ConversationDataset  # noqa: E402

PRESETS = ("qwen2_vl_2b", "qwen2_5_vl_3b", "llava_next_llama3_8b", "mllama_11b")


def preset_config(model: str) -> Any:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[f"model={model}", f"paths.root_dir={ROOT}"])


def processor_backbone(model: str) -> tuple[Backbone, Any]:
    """The preset's backbone adapter around its processor only (a stand-in object where the model would be)."""
    cfg = preset_config(model)
    fields = OmegaConf.to_container(cfg.model.backbone, resolve=True)
    fields.pop("_target_", None)
    spec = BackboneSpec.from_config(fields)
    cls = family_class(spec.family)
    processor = cls.tiny_processor(spec.tiny, spec.image)
    return cls(SimpleNamespace(config=SimpleNamespace()), processor, spec), cfg


def cpu_seconds(pids: list[int] = ()) -> float:
    """User + system seconds of this process (all its threads) and of the live processes ``pids``."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def measure_plan(backbone: Backbone, convs, cutoff: int) -> tuple[dict[str, Any], ConversationDataset]:
    cpu, wall = cpu_seconds(), time.perf_counter()
    dataset = ConversationDataset(backbone, convs, cutoff_len=cutoff, truncation="drop")
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    n = len(convs)
    return {
        "stage": "plan",
        "samples": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "samples_per_s": n / wall,
        "samples_per_s_per_core": n / cpu,
        "kept": dataset.report.kept,
    }, dataset


def measure_load(backbone: Backbone, convs, cutoff: int, batch: int, workers: int) -> dict[str, Any]:
    """The train loader's second epoch (its persistent workers already started, as in a long run); CPU time
    is this process's plus its workers'."""
    module = ConversationDataModule(backbone, convs, micro_batch_size=batch, cutoff_len=cutoff, num_workers=workers)
    module.setup("fit")
    loader = module.train_dataloader()
    start = time.perf_counter()
    for _ in loader:  # first epoch: starts the workers
        pass
    first_epoch = time.perf_counter() - start
    pids = [w.pid for w in loader._iterator._workers] if workers else []
    samples = tokens = 0
    cpu, wall = cpu_seconds(pids), time.perf_counter()
    for batch_data in loader:
        samples += len(batch_data["sample_ids"])
        tokens += int(batch_data["attention_mask"].sum())
    wall = time.perf_counter() - wall
    cpu = cpu_seconds(pids) - cpu
    if workers:
        loader._iterator._shutdown_workers()
    return {
        "stage": "load",
        "workers": workers,
        "samples": samples,
        "wall_s": wall,
        "cpu_s": cpu,
        "samples_per_s": samples / wall,
        "samples_per_s_per_core": samples / cpu,
        "tokens_per_sample": tokens / samples,
        "first_epoch_s": first_epoch,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PRESETS))
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=96, help="conversations (images) per measurement")
    parser.add_argument("--batch", type=int, default=8, help="micro batch")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per variant; the median is kept")
    parser.add_argument("--min-side", type=int, default=448)
    parser.add_argument("--max-side", type=int, default=1280)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1: per-core figures)")
    parser.add_argument("--no-slow-path", action="store_true", help="skip the transformers-processor variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    spec = WorkloadSpec(n=args.n, min_side=args.min_side, max_side=args.max_side)
    convs = conversations(spec)
    result: dict[str, Any] = {
        "benchmark": "data_pipeline",
        **environment(),
        "workload": spec.__dict__,
        "batch": args.batch,
        "repeats": args.repeats,
        "runs": [],
    }
    rows = []
    for model in args.models:
        backbone, cfg = processor_backbone(model)
        cutoff = int(cfg.data.cutoff_len)
        fast_path = hasattr(backbone, "fast_pixels")
        preset_backend = backbone.spec.image_backend
        # (label, fast path on, image backend, workers): the preset's own settings with each worker count, then
        # the fast path on the other backend and transformers' PIL processor, in-process
        variants = [("fast" if fast_path else "hf", fast_path, preset_backend, w) for w in args.workers]
        if fast_path and not args.no_slow_path:
            other = "pil" if preset_backend == "torchvision" else "torchvision"
            variants += [("fast", True, other, 0), ("hf", False, "pil", 0)]
        plans = []
        for _ in range(args.repeats):
            plan, dataset = measure_plan(backbone, convs, cutoff)
            plans.append(plan)
        plan = min(plans, key=lambda r: r["cpu_s"]) | {
            "samples_per_s_per_core": median([r["samples_per_s_per_core"] for r in plans]),
            "samples_per_s": median([r["samples_per_s"] for r in plans]),
        }
        lengths = dataset.lengths
        plan |= {"model": model, "variant": "-", "mean_tokens": sum(lengths) / len(lengths), "max_tokens": max(lengths)}
        rows.append(plan)
        result["runs"].append(plan)
        for path, fast, backend, workers in variants:
            if fast_path:
                backbone.fast_pixels = fast
            backbone.spec.image_backend = backend
            runs = [measure_load(backbone, convs, cutoff, args.batch, workers) for _ in range(args.repeats)]
            row = runs[0] | {
                "model": model,
                "variant": f"{path} {backend}, workers={workers}",
                "pixels": path,
                "image_backend": backend,
                "samples_per_s": median([r["samples_per_s"] for r in runs]),
                "samples_per_s_per_core": median([r["samples_per_s_per_core"] for r in runs]),
                "wall_s": median([r["wall_s"] for r in runs]),
                "cpu_s": median([r["cpu_s"] for r in runs]),
                "repeats": [{k: r[k] for k in ("wall_s", "cpu_s")} for r in runs],
            }
            rows.append(row)
            result["runs"].append(row)
        backbone.spec.image_backend = preset_backend
        if fast_path:
            backbone.fast_pixels = True
    table = print_table(
        rows,
        [
            "model",
            "stage",
            "variant",
            "samples",
            "samples_per_s",
            "samples_per_s_per_core",
            "cpu_s",
            "wall_s",
            "mean_tokens",
            "tokens_per_sample",
        ],
        title=f"data pipeline on {result['device']} ({os.cpu_count()} cores, load {result.get('load_average_1m')}), "
        f"images {args.min_side}-{args.max_side} px, micro batch {args.batch}, median of {args.repeats}",
    )
    result["table"] = table
    write_result(f"data_pipeline-{result['device']}", result)
    return result


if __name__ == "__main__":
    main()
