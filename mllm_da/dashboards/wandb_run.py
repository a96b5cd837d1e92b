"""Everything the project sends to wandb beyond Lightning's scalars, in one place: the sweep axes as top-level
config keys, sample tables with image cells, the final scores in the run summary under stable names, and the
synthesized data as an artifact reference (paths and content hashes, nothing uploaded).

wandb stays optional: it is imported only when a wandb run is open (``logger=wandb``), and with
``WANDB_MODE=offline`` everything lands in the run folder's ``wandb/`` for ``wandb sync`` to upload later."""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from mllm_da.dashboards.samples import (
    RunFolder,
    SampleSizes,
    eval_rows,
    synth_rows,
    synthesis_files,
    synthesis_folders,
    thumbnail,
    train_rows,
)

log = logging.getLogger(__name__)

#: config groups whose chosen option is a sweep axis (a top-level wandb config key, None where a config lacks it)
AXIS_GROUPS = ("domain", "model", "finetune", "data_mix", "stage_mode", "synthesizer", "filter", "experiment")
#: prefixes of the final scores in the run summary, by the eval column they come from
SCORE_PREFIX = {"trained": "final/", "trained, shuffled images": "final/shuffled/", "untrained": "final/untrained/"}


def sweep_axes(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The run's position in a sweep: each group's chosen option, the seed, the experiment and the command-line
    overrides, read from Hydra when it composed the run and from the config's own names otherwise."""
    choices: dict[str, Any] = {}
    overrides: list[str] = []
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hc = HydraConfig.get()
        choices = dict(hc.runtime.choices)
        overrides = list(hc.overrides.task)
    axes: dict[str, Any] = {}
    for group in AXIS_GROUPS:
        node = cfg.get(group)
        own_name = node.get("name") if isinstance(node, Mapping) else None
        axes[group] = choices.get(group) or own_name
    domain = cfg.get("domain")
    if isinstance(domain, Mapping) and domain.get("name"):
        axes["domain"] = domain["name"]  # the domain's own name: a custom domain's folder, not "custom"
    axes["seed"] = cfg.get("seed")
    axes["task_name"] = cfg.get("task_name")
    axes["overrides"] = overrides
    axes["overrides_text"] = " ".join(overrides)
    return axes


class SweepWandbLogger(WandbLogger):
    """Lightning's WandbLogger whose config holds the sweep axes as top-level keys beside the full resolved
    config (under ``cfg``), so that wandb's grouping, filters and parallel coordinates need no nested keys.
    ``log_samples`` sizes the sample tables (:class:`SampleSizes`); it is checked here, before any work."""

    def __init__(self, *args: Any, log_samples: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.sample_sizes = SampleSizes.from_config(log_samples)
        super().__init__(*args, **kwargs)

    def log_hyperparams(self, params: Any) -> None:
        plain = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        full = dict(cast("Mapping[str, Any]", plain))  # a config: a mapping of names
        super().log_hyperparams({**sweep_axes(full), "cfg": full})


def sample_sizes(cfg: DictConfig) -> SampleSizes:
    """``log_samples`` of the configured wandb logger (the defaults without one)."""
    for node in (cfg.get("logger") or {}).values():
        if node is not None and str(node.get("_target_", "")).endswith("WandbLogger"):
            values = node.get("log_samples")
            plain = OmegaConf.to_container(values, resolve=True) if values is not None else None
            return SampleSizes.from_config(plain)  # type: ignore[arg-type]
    return SampleSizes()


def open_run() -> Any:
    """The open wandb run, or None (no wandb logger, or wandb never imported)."""
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


def final_scores(summary: Mapping[str, Any], shuffled_images: bool = False) -> dict[str, float]:
    """The run's finite numeric metrics as ``final/<name>``; a train run's eval columns as ``final/eval/...``,
    ``final/shuffled/eval/...`` and ``final/untrained/eval/...``, as an evaluate run's are."""
    out: dict[str, float] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                add(f"{prefix}/{key}", inner)
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[prefix] = float(value)

    for key, value in (summary.get("metrics") or {}).items():
        add(f"final/{key}", value)
    if shuffled_images:  # evaluate.py shuffle_images=true: the blind control's scores
        out = {k.replace("final/", "final/shuffled/", 1): v for k, v in out.items()}
    for column, metrics in (summary.get("eval") or {}).items():
        for key, value in metrics.items():
            add(f"{SCORE_PREFIX.get(column, f'final/{column}/')}{key}", value)
    return out


def _table(rows: list[dict[str, Any]], columns: list[str], image_px: int) -> Any:
    import wandb

    present = [c for c in columns if any(c in r for r in rows)]
    table = wandb.Table(columns=["image", *present])
    for row in rows:
        picture = thumbnail(row.get("image"), image_px)
        table.add_data(wandb.Image(picture) if picture is not None else None, *[row.get(c) for c in present])
    return table


EVAL_COLUMNS = [
    "benchmark",
    "question_type",
    "question",
    "prediction",
    "label",
    "score",
    "right",
    "shuffled_prediction",
    "shuffled_score",
    "untrained_prediction",
    "untrained_score",
    "id",
]
SYNTH_COLUMNS = [
    "caption",
    "instruction",
    "informative",
    "precise",
    "filter_label",
    "kept",
    "formatted_task",
    "question_type",
    "toy_truth",
    "precise_right",
    "informative_right",
    "id",
]
TRAIN_COLUMNS = ["stage", "text", "trained", "id", "source"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_synthesis_artifact(run: Any, folder: RunFolder) -> str | None:
    """The synthesized data as a ``synthetic-tasks`` artifact of references: each file's path and sha256 (in the
    metadata), nothing uploaded. Named after the synthesis stage keys, so equal data is one artifact."""
    files = synthesis_files(folder)
    if not files:
        return None
    import wandb

    keys = "-".join(p.name for p in synthesis_folders(folder).values())
    artifact = wandb.Artifact(
        name=f"synth-{hashlib.sha256(keys.encode()).hexdigest()[:12]}",
        type="synthetic-tasks",
        metadata={"files": {str(p): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files}},
    )
    for path in files:
        artifact.add_reference(path.as_uri(), name=f"{path.parent.name}/{path.name}", checksum=False)
    run.log_artifact(artifact)
    return artifact.name


def log_run(cfg: DictConfig, summary: dict[str, Any]) -> None:
    """At the end of an entry point, into the open wandb run (nothing when there is none): the sample tables, the
    final scores in the run summary and the synthesized data's reference; ``summary["wandb"]`` says where."""
    run = open_run()
    if run is None:
        return
    sizes = sample_sizes(cfg)
    config = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))  # the run's config: a mapping
    folder = RunFolder(Path(cfg.paths.output_dir).resolve(), summary, config, Path.cwd())
    run.summary.update(final_scores(summary, bool(cfg.get("shuffle_images"))))
    record: dict[str, Any] = {"id": run.id, "dir": str(run.dir), "project": run.project, "tables": []}
    try:
        tables: dict[str, Any] = {}
        rows = eval_rows(folder, sizes.eval_rows)
        for bench in sorted({r["benchmark"] for r in rows}):
            mine = [r for r in rows if r["benchmark"] == bench]
            tables[f"samples/eval/{bench}"] = _table(mine, EVAL_COLUMNS, sizes.image_px)
        if synthesized := synth_rows(folder, sizes.synth_rows):
            tables["samples/synth"] = _table(synthesized, SYNTH_COLUMNS, sizes.image_px)
        if conversations := train_rows(folder, sizes.train_rows):
            tables["samples/train_data"] = _table(conversations, TRAIN_COLUMNS, sizes.image_px)
        if tables:
            run.log(tables)
        record["tables"] = sorted(tables)
        if sizes.artifact:
            record["artifact"] = log_synthesis_artifact(run, folder)
    except Exception as err:  # the run itself succeeded: its samples are a view of it, not a reason to fail it
        log.warning("wandb sample tables not logged: %s: %s", type(err).__name__, err)
        record["samples_error"] = f"{type(err).__name__}: {err}"
    summary["wandb"] = record
