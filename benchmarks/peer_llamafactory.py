"""Our ``train.py`` against LLaMA-Factory on the same tiny Qwen2-VL, the same synthesized ShareGPT file, the same step.

    python benchmarks/peer_llamafactory.py                 # or: make bench-peer
    python benchmarks/peer_llamafactory.py --rounds 6 --steps 120

One command from a fresh clone: it creates ``benchmarks/.venv-llamafactory`` (git-ignored) with torch pinned to the
project's version and LLaMA-Factory from the package index (``benchmarks/llamafactory-constraints.txt``; what it
needs on a CPU machine is in benchmarks/README.md), synthesizes the training file with ``synth.py
synthesizer=rules`` (ShareGPT ``messages`` + ``images``), builds our tiny Qwen2-VL checkpoint folder and a copy
converted to LLaMA-Factory's transformers (checked: the same loss and logits on a fixed input in both venvs), and
registers the file in a ``dataset_info.json`` for LLaMA-Factory's ``qwen2_vl`` template.

Then it trains, in interleaved rounds (each round runs every variant once; the order rotates per round):

* ``ours``: ``train.py data_mix=external data_mix.captions=false data_mix.external_file=<that file>`` (the file's
  conversations as they are), everything else as the preset says (length grouping, SDPA, our loader);
* ``ours loop adamw``: the same with ``optim.fused=false`` (torch's per-tensor AdamW loop, what train.py used on
  CPU before it took the fused kernel there too);
* ``llamafactory defaults``: LLaMA-Factory's SFT with its defaults (gradient checkpointing on; torch's fused
  AdamW, ``optim=adamw_torch_fused``);
* ``llamafactory no grad ckpt``: like for like with ``ours``: gradient checkpointing off, the same fused AdamW;
* ``llamafactory no grad ckpt frozen vision`` (only when named in ``--variants``): the same with LLaMA-Factory's
  default ``freeze_vision_tower=true``, which trains less than ours (our tiny preset trains the vision tower).

Every run has the same per-step batch, cutoff, fp32, one thread (OMP/MKL/torch threads = 1), learning-rate
schedule, weight decay, clipping and trained modules (the vision tower too, as our preset does), and the same
number of steps. ``peer_probe.py`` counts each step's samples and real (attention-mask) tokens inside both
processes; throughput is over the steps after ``--warmup``, per wall second and per CPU-second of the process
("per core"); start-up is from the process launch to its first training forward; memory is the peak RSS. Ratios
are taken per round (the runs next to each other) and their median and range reported. Prints one table, writes
``benchmarks/results/peer_llamafactory-<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import compose_config, environment, median, print_table, write_result  # noqa: E402

BENCH = ROOT / "benchmarks"
VENV = BENCH / ".venv-llamafactory"
CONSTRAINTS = BENCH / "llamafactory-constraints.txt"
STUBS = BENCH / "peer_stubs"
LLAMAFACTORY = "llamafactory==0.9.5"
VARIANTS = ("ours", "ours loop adamw", "llamafactory defaults", "llamafactory no grad ckpt")
#: not run unless asked for (--variants): LLaMA-Factory's default of a frozen vision tower trains less than ours
EXTRA_VARIANTS = ("llamafactory no grad ckpt frozen vision",)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)


# ------------------------------------------------------------------------------------------------------ set-up
def ensure_venv() -> Path:
    """LLaMA-Factory's own venv: torch first (the CPU wheel of the project's pin), then LLaMA-Factory constrained to
    it, then the CUDA-only torchvision / torchaudio wheels removed (see benchmarks/README.md)."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    wanted = f"{LLAMAFACTORY}\n{CONSTRAINTS.read_text()}"
    if marker.exists() and marker.read_text() == wanted:
        return python
    if not python.exists():
        run([sys.executable, "-m", "venv", VENV])
    pip = [python, "-m", "pip", "install", "-q", "-c", CONSTRAINTS]
    torch_pin = next(line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("torch=="))
    run([*pip, torch_pin])
    run([*pip, LLAMAFACTORY])
    run([python, "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio"])
    marker.write_text(wanted)
    return python


def synthesized_file(work: Path, env: dict[str, str]) -> Path:
    """synth.py's single-stage ShareGPT file with the rules synthesizer (cached: a rerun only looks it up)."""
    run_dir = work / "synth"
    run(
        [sys.executable, ROOT / "synth.py", "synthesizer=rules", f"paths.cache_dir={work / 'cache'}",
         f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return Path(json.loads((run_dir / "summary.json").read_text())["artifacts"]["single_stage"])


def tiny_checkpoint_folder(cache_dir: Path) -> tuple[Path, Any]:
    """Our tiny Qwen2-VL folder as train.py builds it (model.backbone of the preset), and the composed config."""
    from mllm_da.backbones.loading import tiny_checkpoint
    from mllm_da.backbones.spec import BackboneSpec

    cfg = compose_config("train", ["model=tiny_qwen2_vl", f"paths.cache_dir={cache_dir}"])
    fields = {k: v for k, v in dict(cfg.model.backbone).items() if k != "_target_"}
    return tiny_checkpoint(BackboneSpec.from_config(fields)), cfg


def convert_for_transformers4(source: Path, target: Path) -> list[str]:
    """A copy of a transformers-5 Qwen2-VL folder that transformers 4.57 reads the same; returns what changed.

    Weights are unchanged. config.json: ``rope_parameters`` (v5) becomes ``rope_theta`` + ``rope_scaling`` with the
    ``mrope_section`` (v4); tokenizer_config.json: the v5 class name ``TokenizersBackend`` becomes
    ``PreTrainedTokenizerFast`` (the same tokenizer.json); preprocessor_config.json gains ``min_pixels`` /
    ``max_pixels`` from ``size``.
    """
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    changes = []
    config = json.loads((target / "config.json").read_text())
    text = config["text_config"]
    if "rope_parameters" in text:
        rope = text.pop("rope_parameters")
        text["rope_theta"] = rope["rope_theta"]
        text["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
        changes.append("config.json: text_config.rope_parameters -> rope_theta + rope_scaling (mrope_section)")
    if "rope_parameters" in config.get("vision_config", {}):
        config["vision_config"].pop("rope_parameters")
        changes.append("config.json: vision_config.rope_parameters dropped (v4 has the same fixed vision rotary)")
    config.setdefault("torch_dtype", config.get("dtype", "float32"))
    (target / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = json.loads((target / "tokenizer_config.json").read_text())
    if tokenizer.get("tokenizer_class") == "TokenizersBackend":
        tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
        tokenizer.pop("backend", None)
        changes.append("tokenizer_config.json: tokenizer_class TokenizersBackend -> PreTrainedTokenizerFast")
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2))
    image = json.loads((target / "preprocessor_config.json").read_text())
    image.setdefault("min_pixels", image["size"]["shortest_edge"])
    image.setdefault("max_pixels", image["size"]["longest_edge"])
    (target / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    return changes


def check_conversion(ours: Path, converted: Path, lf_python: Path, env: dict[str, str]) -> dict[str, Any]:
    """The same loss and logits in both venvs, or stop: a benchmark of two different models would mean nothing."""
    script = BENCH / "peer_loss_check.py"
    outputs = [
        json.loads(run([py, script, folder], env=env, capture_output=True, text=True).stdout.splitlines()[-1])
        for py, folder in ((Path(sys.executable), ours), (lf_python, converted))
    ]
    if abs(outputs[0]["loss"] - outputs[1]["loss"]) > 1e-4 * max(1.0, abs(outputs[0]["loss"])):
        sys.exit(f"peer_llamafactory: the converted checkpoint differs: {outputs[0]} vs {outputs[1]}")
    return {"ours": outputs[0], "llamafactory": outputs[1]}


# ------------------------------------------------------------------------------------------------------- runs
def llamafactory_args(
    args: argparse.Namespace,
    checkpoint: Path,
    data_dir: Path,
    media_dir: Path,
    out: Path,
    cfg: Any,
    like: bool,
    frozen_vision: bool = False,
) -> dict[str, Any]:
    """LLaMA-Factory's SFT arguments: the same training as ours; ``like``: its speed defaults made ours too;
    ``frozen_vision``: its default of a frozen vision tower (less training than ours)."""
    optim = cfg.optim
    lf: dict[str, Any] = {
        "model_name_or_path": str(checkpoint),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_vision_tower": False,  # our preset trains every group (LLaMA-Factory's default freezes the tower)
        "freeze_multi_modal_projector": False,
        "dataset": "peer_toy",
        "dataset_dir": str(data_dir),
        "media_dir": str(media_dir),
        "template": "qwen2_vl",
        "cutoff_len": args.cutoff,
        "overwrite_cache": True,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 10,
        "plot_loss": False,
        "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": 1,
        "max_steps": args.steps,
        "learning_rate": float(cfg.model.recipe.lr),
        "lr_scheduler_type": "cosine",
        "warmup_ratio": float(optim.warmup_ratio),
        "weight_decay": float(optim.weight_decay),
        "adam_beta1": float(optim.betas[0]),
        "adam_beta2": float(optim.betas[1]),
        "adam_epsilon": float(optim.eps),
        "max_grad_norm": float(cfg.trainer.gradient_clip_val),
        "seed": 0,
    }
    if like:
        lf["disable_gradient_checkpointing"] = True
        lf["optim"] = args.like_optim
    if frozen_vision:
        lf["freeze_vision_tower"] = True
    return lf


def ours_overrides(args: argparse.Namespace, work: Path, data_file: Path, run_dir: Path) -> list[str]:
    """train.py on the synthesized file as it is: its records (ids and images as the captions') taken whole."""
    return [
        "data_mix=external",
        "data_mix.captions=false",
        f"data_mix.external_file={data_file}",
        f"paths.cache_dir={work / 'cache'}",
        f"data.micro_batch_size={args.batch}",
        f"data.global_batch_size={args.batch}",
        f"data.cutoff_len={args.cutoff}",
        "data.val_fraction=0",
        f"trainer.max_steps={args.steps}",
        "eval.enabled=false",
        "export=false",
        "checkpoint.every_n_steps=0",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *args.ours_overrides,
    ]


def measure(probe: dict[str, Any], warmup: int) -> dict[str, float]:
    """Rates over the steps after ``warmup`` (timed from the end of step ``warmup``), start-up, padding, memory."""
    steps = probe["steps"]
    if len(steps) <= warmup + 1:
        raise RuntimeError(f"only {len(steps)} optimiser steps recorded; need more than --warmup {warmup} + 1")
    window = steps[warmup:]
    wall = window[-1]["wall"] - steps[warmup - 1]["wall"] if warmup else window[-1]["wall"] - probe["launch_time"]
    cpu = window[-1]["cpu"] - steps[warmup - 1]["cpu"] if warmup else window[-1]["cpu"]
    tokens = sum(s["real_tokens"] for s in window)
    samples = sum(s["samples"] for s in window)
    return {
        "tokens_per_s": tokens / wall,
        "tokens_per_cpu_s": tokens / cpu,
        "samples_per_s": samples / wall,
        "samples_per_cpu_s": samples / cpu,
        "mean_real_tokens_per_sample": tokens / samples,
        "padding": 1 - sum(s["real_tokens"] for s in steps) / sum(s["padded_tokens"] for s in steps),
        "startup_s": probe["first_forward_time"] - probe["launch_time"],
        "peak_rss_mib": probe["peak_rss_mib"],
        "steps": len(steps),
    }


def one_run(variant: str, command: list[str], env: dict[str, str], out: Path, log: Path, timeout: int) -> dict:
    probe_path = out / "probe.json"
    probe_path.unlink(missing_ok=True)
    run_env = {**env, "PEER_PROBE_OUT": str(probe_path), "PEER_LAUNCH_TIME": repr(time.time())}
    with log.open("w") as f:
        done = subprocess.run(command, env=run_env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
    if done.returncode != 0 or not probe_path.exists():
        sys.exit(f"peer_llamafactory: {variant} failed (exit {done.returncode}); its log: {log}")
    return json.loads(probe_path.read_text())


def summarize(rounds: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows, ratios = [], {}
    keys = ("tokens_per_cpu_s", "tokens_per_s", "samples_per_cpu_s", "samples_per_s")
    for variant in VARIANTS + EXTRA_VARIANTS:
        runs = [r[variant]["metrics"] for r in rounds if variant in r]
        if not runs:
            continue
        row: dict[str, Any] = {"variant": variant}
        for key in (*keys, "startup_s", "peak_rss_mib", "padding", "mean_real_tokens_per_sample"):
            values = [m[key] for m in runs]
            row[key] = median(values)
            row[f"{key}_range"] = [min(values), max(values)]
        rows.append(row)
        if variant != "ours" and all(variant in r and "ours" in r for r in rounds):
            per_round = {k: [r["ours"]["metrics"][k] / r[variant]["metrics"][k] for r in rounds] for k in keys}
            ratios[f"ours / {variant}"] = {
                k: {"median": median(v), "min": min(v), "max": max(v), "per_round": v} for k, v in per_round.items()
            }
    return rows, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=80, help="optimiser steps per run (both trainers)")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the rates")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS + EXTRA_VARIANTS)
    parser.add_argument(
        "--like-optim", default="adamw_torch_fused", help="LLaMA-Factory's optim in the like-for-like runs (ours)"
    )
    parser.add_argument("--ours-overrides", nargs="*", default=[], help="more train.py overrides for ours")
    parser.add_argument("--machine", default=f"cpu-{os.cpu_count()}cores", help="names the results file")
    parser.add_argument("--tag", default="")
    parser.add_argument("--work", type=Path, default=ROOT / "logs" / "benchmarks" / "peer")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per training run")
    args = parser.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env = {**os.environ, **threads, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    env["HF_DATASETS_CACHE"] = str(work / "hf-datasets")
    lf_python = ensure_venv()
    data_file = synthesized_file(work, env)
    ours_checkpoint, cfg = tiny_checkpoint_folder(work / "cache")
    lf_checkpoint = work / "llamafactory-checkpoint"
    conversion = convert_for_transformers4(ours_checkpoint, lf_checkpoint)
    conversion_check = check_conversion(ours_checkpoint, lf_checkpoint, lf_python, env)
    data_dir = work / "llamafactory-data"
    data_dir.mkdir(exist_ok=True)
    dataset_info = {
        "peer_toy": {
            "file_name": str(data_file),
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }
    (data_dir / "dataset_info.json").write_text(json.dumps(dataset_info, indent=2))
    media_dir = Path(str(cfg.domain.image_root))
    lf_env = {**env, "PYTHONPATH": str(STUBS)}

    def command(variant: str, out: Path) -> tuple[list[str], dict[str, str]]:
        if variant.startswith("ours"):
            overrides = ours_overrides(args, work, data_file, out / "run")
            if variant == "ours loop adamw":
                overrides.append("optim.fused=false")
            return [sys.executable, str(BENCH / "peer_run_ours.py"), *overrides], env
        lf = llamafactory_args(
            args, lf_checkpoint, data_dir, media_dir, out / "run", cfg, "no grad" in variant, "frozen" in variant
        )
        (out / "args.json").write_text(json.dumps(lf, indent=2))
        return [str(lf_python), str(BENCH / "peer_run_llamafactory.py"), str(out / "args.json")], lf_env

    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        order = args.variants[index % len(args.variants) :] + args.variants[: index % len(args.variants)]
        results: dict[str, Any] = {}
        for variant in order:
            out = work / "runs" / f"round{index}-{variant.replace(' ', '_')}"
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            cmd, run_env = command(variant, out)
            load = os.getloadavg()[0]
            probe = one_run(variant, cmd, run_env, out, out / "log.txt", args.timeout)
            results[variant] = {"metrics": measure(probe, args.warmup), "info": probe["info"], "load_1m": load}
            m = results[variant]["metrics"]
            print(
                f"round {index + 1}/{args.rounds} {variant}: {m['samples_per_cpu_s']:.1f} samples/CPU-s, "
                f"{m['tokens_per_cpu_s']:,.0f} tokens/CPU-s, start-up {m['startup_s']:.1f} s",
                flush=True,
            )
        rounds.append(results)

    rows, ratios = summarize(rounds)
    title = (
        f"ours vs LLaMA-Factory ({LLAMAFACTORY}): tiny Qwen2-VL, batch {args.batch}, cutoff {args.cutoff}, fp32, "
        f"1 thread, {args.steps} steps ({args.warmup} warm-up), {args.rounds} interleaved rounds, medians"
    )
    table = print_table(
        rows,
        ["variant", "tokens_per_cpu_s", "tokens_per_s", "samples_per_cpu_s", "samples_per_s", "startup_s",
         "peak_rss_mib", "padding", "mean_real_tokens_per_sample"],
        title,
    )  # fmt: skip
    for name, ratio in ratios.items():
        spread = ", ".join(
            f"{k} {v['median']:.2f}x [{v['min']:.2f}-{v['max']:.2f}]" for k, v in ratio.items() if "cpu" in k
        )
        print(f"{name}: {spread}", flush=True)
    lf_version = subprocess.run(
        [lf_python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    ).stdout
    versions = {p["name"]: p["version"] for p in json.loads(lf_version)}
    result = {
        "benchmark": "peer_llamafactory",
        "settings": {**{k: v for k, v in vars(args).items() if k != "work"}, "llamafactory": LLAMAFACTORY},
        "environment": environment(),
        "llamafactory_venv": {
            k: versions.get(k)
            for k in ("llamafactory", "torch", "transformers", "accelerate", "datasets", "peft", "trl")
        },  # fmt: skip
        "data_file": str(data_file.relative_to(work)) if data_file.is_relative_to(work) else str(data_file),
        "checkpoint_conversion": conversion,
        "conversion_check": conversion_check,
        "rows": rows,
        "ratios": ratios,
        "rounds": rounds,
        "table": table,
    }
    name = f"peer_llamafactory-{args.machine}-1thread" + (f"-{args.tag}" if args.tag else "")
    write_result(name, result)


if __name__ == "__main__":
    main()
