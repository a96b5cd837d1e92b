"""Evaluation after training: the domain's benchmarks, read before training so that a missing download fails at
once, and the trained model's scores (with the blind control and the untrained model when asked) in
``<run>/eval/step_<n>/``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mllm_da.evaluation.benchmarks import Benchmark, benchmark_specs, load_benchmark
from mllm_da.evaluation.runner import evaluate_backbone, format_score_table
from mllm_da.utils.io import atomic_write_text


def load_eval_benchmarks(cfg: DictConfig) -> list[Benchmark]:
    """The domain's benchmarks, read before training so that a missing download fails at once."""
    if not cfg.eval.enabled or not cfg.eval.benchmarks:
        return []
    # the benchmark group: a mapping of name to definition
    definitions = cast("dict[str, dict[str, Any]]", OmegaConf.to_container(cfg.benchmark, resolve=True))
    names = [cfg.eval.benchmarks] if isinstance(cfg.eval.benchmarks, str) else list(cfg.eval.benchmarks)
    specs = benchmark_specs(definitions, names, limit=cfg.eval.limit, max_new_tokens=cfg.eval.max_new_tokens)
    try:
        rejects = Path(cfg.paths.output_dir) / "eval" / "rejects"
        cache = Path(cfg.paths.cache_dir) / "datasets"
        return [load_benchmark(spec, cache_dir=cache, rejects_path=rejects / f"{spec.name}.jsonl") for spec in specs]
    except Exception as err:
        if sys.version_info >= (3, 11):  # add_note is new in 3.11; the project supports 3.10
            err.add_note("evaluation after training needs these benchmarks; set eval.enabled=false to train without it")
        raise


def evaluate_after_training(
    cfg: DictConfig, backbone: Any, benchmarks: list[Benchmark], out: Path, loggers: list[Any], step: int
) -> dict[str, dict[str, float]]:
    """Score the trained model (and, when asked, the blind control and the untrained model) into <run>/eval/."""
    settings: dict[str, Any] = dict(
        batch_size=int(cfg.eval.batch_size),
        seed=int(cfg.seed),
        image_separator=str(cfg.eval.image_separator),
        cache_dir=Path(cfg.paths.cache_dir) / "datasets",
    )
    trained_id = {"run": str(out), "model": "trained", "step": step}

    def log_metrics(prefix: str) -> Any:
        def _log(metrics: dict[str, float]) -> None:
            finite = {f"{prefix}{k}": v for k, v in metrics.items() if v == v}
            for lg in loggers:
                lg.log_metrics(finite, step=step)
                lg.save()

        return _log

    backbone.model.eval()
    folder = out / "eval" / f"step_{step}"  # a run continued later evaluates a different model
    columns = {
        "trained": evaluate_backbone(
            backbone,
            benchmarks,
            folder / "trained",
            model_id=trained_id,
            logger_fn=log_metrics(""),
            **settings,
        )
    }
    if cfg.eval.shuffled_control:
        columns["trained, shuffled images"] = evaluate_backbone(
            backbone,
            benchmarks,
            folder / "trained_shuffled",
            shuffle_images=True,
            model_id=trained_id | {"images": "shuffled"},
            logger_fn=log_metrics("shuffled/"),
            **settings,
        )
    if cfg.eval.untrained_baseline:
        untrained = instantiate(cfg.model.backbone, _convert_="all")
        columns["untrained"] = evaluate_backbone(
            untrained,
            benchmarks,
            folder / "untrained",
            model_id={"run": str(out), "model": "untrained"},
            logger_fn=log_metrics("untrained/"),
            **settings,
        )
    table = format_score_table(columns)
    atomic_write_text(folder / "scores.md", table + "\n")
    print(f"\nScores (step {step}):\n{table}", flush=True)
    return columns
