"""Tables and a chart of a sweep: ``python -m mllm_da.report <multirun folder>``.

Reads each job's ``summary.json`` and the overrides Hydra recorded for it (``.hydra/overrides.yaml``), keeps as
axes the overrides whose values differ between jobs, and writes ``report.md``, ``report.csv`` and ``report.png``
(one panel per benchmark metric, one bar per job) into the folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mllm_da.utils.io import atomic_open, atomic_write_text

#: per-question-type metrics (eval/<task>/<type>/<metric>) are left to --all-metrics: the table stays readable
TOP_LEVEL_EVAL = re.compile(r"^eval/[^/]+/[^/]+$")


@dataclass
class Job:
    folder: Path
    status: str
    overrides: dict[str, str]
    metrics: dict[str, float]
    error: str = ""
    axes: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.axes.items()) or self.folder.name


def read_overrides(folder: Path) -> dict[str, str]:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    pairs = (str(item).lstrip("+~").split("=", 1) for item in items)
    return {key: value for key, value in (p if len(p) == 2 else (p[0], "") for p in pairs)}


def read_jobs(sweep: Path) -> list[Job]:
    """Every job folder under ``sweep`` holding a summary.json (nested sweeps included), in job order."""
    jobs = []
    for path in sorted(sweep.rglob("summary.json"), key=lambda p: [int(s) if s.isdigit() else s for s in p.parts]):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable summary.json ({err})") from err
        metrics = {k: float(v) for k, v in (summary.get("metrics") or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        jobs.append(Job(path.parent, summary.get("status", "?"), read_overrides(path.parent), metrics,
                        str(summary.get("error", ""))[:200]))
    if not jobs:
        raise FileNotFoundError(f"{sweep}: no summary.json below it; is it a multirun folder of train.py?")
    keys = sorted({k for job in jobs for k in job.overrides})
    varying = [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
    for job in jobs:
        job.axes = {k: job.overrides.get(k, "") for k in varying}
    return jobs


def metric_names(jobs: Sequence[Job], all_metrics: bool = False) -> list[str]:
    names = sorted({k for job in jobs for k in job.metrics if k.startswith("eval/")})
    if not all_metrics:
        names = [n for n in names if TOP_LEVEL_EVAL.match(n)]
    extra = [k for k in ("train/loss_last", "val/loss") if any(k in job.metrics for job in jobs)]
    return names + extra


#: the headline losses a two-stage job reports are its last stage's (training/run.py copies them up)
STAGE_LOSSES = ("train/loss_last", "val/loss")


def last_stage(job: Job) -> str | None:
    """The name of a multi-stage job's last stage (the prefix of its per-stage loss keys), else None."""
    stages = [key.split("/", 1)[0] for key in job.metrics if key.endswith("/train/loss_last") and key.count("/") == 2]
    return sorted(stages)[-1] if stages else None


def column_name(metric: str, jobs: Sequence[Job]) -> str:
    """A metric's column title; a headline loss says when some jobs report their last stage's."""
    if metric in STAGE_LOSSES and any(last_stage(job) for job in jobs):
        return f"{metric} (last stage)"
    return metric


def cell(value: float | None) -> str:
    if value is None:
        return "–"
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def rows(jobs: Sequence[Job], metrics: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    axes = list(jobs[0].axes)
    header = ["job", *axes, "status", *(column_name(m, jobs) for m in metrics)]
    body = [[job.folder.name, *job.axes.values(), job.status, *(cell(job.metrics.get(m)) for m in metrics)]
            for job in jobs]
    return header, body


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    numeric = [all(re.fullmatch(r"-?[\d.]+|–|n/a", r[i]) for r in body) and i >= 1 for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).rjust(w) if n else str(c).ljust(w)
                                 for c, w, n in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def _all_zero(values: Sequence[float]) -> bool:
    finite = [v for v in values if not math.isnan(v)]
    return bool(finite) and all(v == 0 for v in finite)


def axis_range(values: Sequence[float]) -> tuple[float, float]:
    """The value axis of a panel: from 0 (or the smallest negative value) to a little past the largest value,
    with room for the value labels; never a fixed 0-100, and 0-1 when every value is 0 (the title says so)."""
    finite = [v for v in values if not math.isnan(v)] or [0.0]
    low, high = min(0.0, min(finite)), max(0.0, max(finite))
    if low == high == 0:
        return 0.0, 1.0
    span = high - low
    return low - (0.05 * span if low < 0 else 0.0), high + 0.18 * span


def chart(jobs: Sequence[Job], metrics: Sequence[str], path: Path) -> Path:
    """One panel per metric, one bar per job (labelled by its axis values); failed jobs have no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if m.startswith("eval/")] or list(metrics)
    cols = min(3, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 0.9 + 0.45 * len(jobs) * nrows + 0.8 * nrows),
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes.flat, shown):
        values = [job.metrics.get(metric, math.nan) for job in jobs]
        ax.barh(range(len(jobs)), [0 if math.isnan(v) else v for v in values],
                color=[colours(i % 10) for i in range(len(jobs))])
        for i, v in enumerate(values):
            ax.text(0 if math.isnan(v) else v, i, " n/a" if math.isnan(v) else f" {v:.1f}", va="center", fontsize=8)
        ax.set_yticks(range(len(jobs)), [job.label for job in jobs], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(*axis_range(values))
        title = column_name(metric, jobs).removeprefix("eval/")
        ax.set_title(title + (" (all 0)" if _all_zero(values) else ""), fontsize=10)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_open(path) as handle:
        fig.savefig(handle, dpi=110, format="png")
    plt.close(fig)
    return path


def write_report(sweep: str | Path, out: str | Path | None = None, all_metrics: bool = False) -> dict[str, Any]:
    """Write report.md / report.csv / report.png for a sweep folder; returns their paths and the table."""
    sweep = Path(sweep)
    out = Path(out) if out else sweep
    jobs = read_jobs(sweep)
    metrics = metric_names(jobs, all_metrics)
    header, body = rows(jobs, metrics)
    table = markdown_table(header, body)
    failed = [f"- job {j.folder.name} ({j.label}): {j.error}" for j in jobs if j.status != "ok"]
    staged = [f"- job {j.folder.name} ({j.label}): {', '.join(m for m in STAGE_LOSSES if m in metrics)} of its last "
              f"stage, {last_stage(j)}" for j in jobs if last_stage(j) and any(m in metrics for m in STAGE_LOSSES)]
    text = f"# Sweep {sweep.name}\n\n{table}\n" + ("\nFailed jobs:\n" + "\n".join(failed) + "\n" if failed else "")
    text += "\nLosses of multi-stage jobs:\n" + "\n".join(staged) + "\n" if staged else ""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([[job.folder.name, *job.axes.values(), job.status,
                       *(job.metrics.get(m, "") for m in metrics)] for job in jobs])
    paths = {"markdown": atomic_write_text(out / "report.md", text),
             "csv": atomic_write_text(out / "report.csv", buffer.getvalue())}
    if metrics and any(job.metrics for job in jobs):
        paths["png"] = chart(jobs, metrics, out / "report.png")
    return {"table": table, "jobs": len(jobs), "failed": len(failed), **{k: str(v) for k, v in paths.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a multirun folder (logs/<task>/multiruns/<time>)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep folder)")
    parser.add_argument("--all-metrics", action="store_true", help="also the per-question-type metrics")
    args = parser.parse_args(argv)
    result = write_report(args.sweep, args.out, args.all_metrics)
    print(result["table"])
    print("\n".join(f"written: {result[k]}" for k in ("markdown", "csv", "png") if k in result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
