"""``evaluate.py`` and ``predict.py``: score a model on its domain's benchmarks, or answer questions about images.

The config is checked and the domain prepared here; :mod:`mllm_da.evaluation` does the generating and scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mllm_da.backbones.base import Backbone
from mllm_da.config_checks import check_eval_config, check_predict_config
from mllm_da.dashboards.wandb_run import log_run
from mllm_da.data.domain import prepare_domain
from mllm_da.evaluation.benchmarks import benchmark_specs
from mllm_da.evaluation.generation import GeneratorOptions
from mllm_da.evaluation.model_choice import backbone_config, column_name
from mllm_da.evaluation.predict import predict_backbone, questions_from_config
from mllm_da.evaluation.results import format_score_table, json_safe
from mllm_da.evaluation.runner import evaluate_backbone
from mllm_da.utils.devices import resolve_device
from mllm_da.utils.io import atomic_write_jsonl, atomic_write_text
from mllm_da.utils.runinfo import instantiate_loggers, run_folder


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate one model on the selected benchmarks; ``summary.json`` records the metrics and the files."""
    with run_folder(cfg, "evaluate") as summary:
        prepare_domain(cfg.domain)  # the toy domain builds its benchmark on first use, a custom one finds it
        if cfg.domain.get("found"):
            summary["domain"] = OmegaConf.to_container(cfg.domain.found)
        check_eval_config(cfg)
        out = Path(cfg.paths.output_dir)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        torch.manual_seed(int(cfg.seed))
        definitions = OmegaConf.to_container(cfg.benchmark, resolve=True)
        assert isinstance(definitions, dict)
        names = [cfg.benchmarks] if isinstance(cfg.benchmarks, str) else list(cfg.benchmarks)
        specs = benchmark_specs(
            definitions,  # type: ignore[arg-type]
            names,
            limit=cfg.get("limit"),
            max_new_tokens=cfg.get("max_new_tokens"),
            bad_rows=cfg.get("bad_rows"),
        )
        node = backbone_config(cfg)
        backbone: Backbone = instantiate(node, device=resolve_device(cfg.get("device")), _convert_="all")
        loggers = instantiate_loggers(cfg)
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

        def log_metrics(metrics: dict[str, float]) -> None:
            finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
            for lg in loggers:
                lg.log_metrics(finite, step=0)

        vllm = cfg.get("vllm")  # a mapping of engine arguments
        engine_args = cast("dict[str, Any]", OmegaConf.to_container(vllm, resolve=True)) if vllm else {}
        generation = GeneratorOptions(
            backend=cfg.backend,
            batch_size=int(cfg.batch_size),
            progress=cfg.progress,
            vllm=engine_args,
        )
        metrics = evaluate_backbone(
            backbone,
            specs,
            out,
            batch_size=int(cfg.batch_size),
            shuffle_images=bool(cfg.shuffle_images),
            seed=int(cfg.seed),
            logger_fn=log_metrics,
            image_separator=str(cfg.image_separator),
            generation=generation,
            cache_dir=Path(cfg.paths.cache_dir) / "datasets",
        )
        for lg in loggers:
            lg.save()
            lg.finalize("success")
        table = format_score_table({column_name(cfg, node): metrics})
        atomic_write_text(out / "scores.md", table + "\n")
        print(table, flush=True)
        summary["metrics"] = json_safe(metrics)
        summary["benchmarks"] = [s.name for s in specs]
        # rows read, kept and refused by reason per benchmark, as train.py and synth.py count their records
        tasks = json.loads((out / "scores.json").read_text(encoding="utf-8"))
        summary["data"] = {
            name: {
                "read": task["read"],
                "kept": task["rows"],
                "rejected": sum(task["skipped"].values()),
                "reasons": task["skipped"],
            }
            for name, task in tasks.items()
        }
        summary["artifacts"] = {
            "scores": str(out / "scores.json"),
            "table": str(out / "scores.md"),
            "predictions": str(out / "predictions"),
        }
        log_run(cfg, summary)  # sample tables and final scores, with logger=wandb
        return metrics


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Answer the configured questions; writes ``predictions.jsonl`` and ``summary.json`` in the run folder and
    returns the prediction rows (index, id, image, question, prediction)."""
    with run_folder(cfg, "predict") as summary:
        check_predict_config(cfg)
        questions = questions_from_config(cfg)
        out = Path(cfg.paths.output_dir)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        torch.manual_seed(int(cfg.seed))
        node = backbone_config(cfg)
        backbone: Backbone = instantiate(node, device=resolve_device(cfg.get("device")), _convert_="all")
        vllm = cfg.get("vllm")  # a mapping of engine arguments
        engine_args = cast("dict[str, Any]", OmegaConf.to_container(vllm, resolve=True)) if vllm else {}
        options = GeneratorOptions(
            backend=cfg.backend, batch_size=int(cfg.batch_size), progress=cfg.progress, vllm=engine_args
        )
        answers, stats = predict_backbone(
            backbone,
            questions,
            max_new_tokens=int(cfg.max_new_tokens),
            image_separator=str(cfg.image_separator),
            generation=options,
        )
        rows = [
            {"index": i, "id": q.id, "image": str(q.image), "question": q.question, "prediction": answer}
            for i, (q, answer) in enumerate(zip(questions, answers, strict=True))
        ]
        path = atomic_write_jsonl(out / "predictions.jsonl", rows)
        for row in rows:
            print(f"{row['image']}: {row['question']}\n  {row['prediction']}", flush=True)
        summary["model"] = {"family": node.family, "variant": node.variant, "source": node.get("source")}
        summary["questions"] = len(rows)
        summary["generation"] = {k: v for k, v in stats.as_dict().items() if math.isfinite(v)}
        summary["artifacts"] = {"predictions": str(path)}
        return rows
