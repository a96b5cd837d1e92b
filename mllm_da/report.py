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
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mllm_da.report_quality import quality_table
from mllm_da.stats import Interval, mean_interval, paired_comparison
from mllm_da.utils.io import atomic_open, atomic_write_text
from mllm_da.utils.tables import markdown_table

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
    #: the names of its stages in training order (summary.json's ``stages``); empty for a single stage or unknown
    stages: list[str] = field(default_factory=list)
    #: its folder under the sweep folder (``3``, or ``synthetic/3`` for sweeps run in parts under one folder)
    name: str = ""

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.axes.items()) or self.name or self.folder.name


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
        metrics = {
            k: float(v)
            for k, v in (summary.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        stages = [str(s.get("name")) for s in summary.get("stages") or [] if isinstance(s, dict)]
        jobs.append(
            Job(
                path.parent,
                summary.get("status", "?"),
                read_overrides(path.parent),
                metrics,
                str(summary.get("error", ""))[:200],
                stages=stages if len(stages) > 1 else [],
                name=path.parent.relative_to(sweep).as_posix(),
            )
        )
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


#: the headline losses a two-stage job reports are its last stage's (training/fit.py copies them up)
STAGE_LOSSES = ("train/loss_last", "val/loss")


def last_stage(job: Job) -> str | None:
    """The name of a multi-stage job's last stage, else None: from its summary's stage list, or for a summary
    without one, the last prefix of its per-stage loss keys (training/fit.py writes them in stage order)."""
    if job.stages:
        return job.stages[-1]
    stages = [key.split("/", 1)[0] for key in job.metrics if key.endswith("/train/loss_last") and key.count("/") == 2]
    return stages[-1] if stages else None


def column_name(metric: str, jobs: Sequence[Job]) -> str:
    """A metric's column title. A headline loss of multi-stage jobs is their last stage's: when every job that
    has it is multi-stage with the same last stage, the title is that stage's own key (``stage2_tasks/val/loss``),
    otherwise it says "(last stage)" and the report names each job's stage under the table."""
    if metric not in STAGE_LOSSES:
        return metric
    last_stages = {last_stage(job) for job in jobs if metric in job.metrics}
    if len(last_stages) == 1 and None not in last_stages:
        return f"{last_stages.pop()}/{metric}"
    return f"{metric} (last stage)" if any(last_stages) else metric


def cell(value: float | None) -> str:
    if value is None:
        return "–"
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def rows(jobs: Sequence[Job], metrics: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    axes = list(jobs[0].axes)
    header = ["job", *axes, "status", *(column_name(m, jobs) for m in metrics)]
    body = [[job.name, *job.axes.values(), job.status, *(cell(job.metrics.get(m)) for m in metrics)] for job in jobs]
    return header, body


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


def chart(
    jobs: Sequence[Job], metrics: Sequence[str], path: Path, intervals: dict[str, dict[str, Interval]] | None = None
) -> Path:
    """One panel per metric: one bar per job (labelled by its axis values; failed jobs have no bar), or, when
    ``intervals`` (condition → metric → mean and interval over seeds) is given, one bar per condition with its
    95 % interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if m.startswith("eval/")] or list(metrics)
    labels = list(intervals) if intervals else [job.label for job in jobs]
    cols = min(3, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(5.2 * cols, 0.9 + 0.45 * len(labels) * nrows + 0.8 * nrows), squeeze=False
    )
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes.flat, shown):
        if intervals:
            spans = [intervals[name][metric] for name in labels]
            values = [i.mean for i in spans]
            errors = [
                [0.0 if math.isnan(i.low) else i.mean - i.low for i in spans],
                [0.0 if math.isnan(i.high) else i.high - i.mean for i in spans],
            ]
            tops = [v if math.isnan(i.high) else i.high for v, i in zip(values, spans)]
        else:
            values = [job.metrics.get(metric, math.nan) for job in jobs]
            errors, tops = None, values
        ax.barh(
            range(len(labels)),
            [0 if math.isnan(v) else v for v in values],
            xerr=errors,
            capsize=3,
            color=[colours(i % 10) for i in range(len(labels))],
        )
        for i, v in enumerate(values):
            ax.text(0 if math.isnan(v) else v, i, " n/a" if math.isnan(v) else f" {v:.1f}", va="bottom", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(*axis_range([*values, *tops]))
        title = column_name(metric, jobs).removeprefix("eval/")
        ax.set_title(title + (" (all 0)" if _all_zero(values) else ""), fontsize=10)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_open(path) as handle:
        fig.savefig(handle, dpi=110, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ seeds and pairs

SEED_AXIS = "seed"


def conditions(jobs: Sequence[Job]) -> dict[tuple[tuple[str, str], ...], list[Job]]:
    """Finished jobs grouped by their axis values other than ``seed``: one condition, its seeds."""
    groups: dict[tuple[tuple[str, str], ...], list[Job]] = {}
    for job in jobs:
        if job.status == "ok":
            key = tuple((k, v) for k, v in job.axes.items() if k != SEED_AXIS)
            groups.setdefault(key, []).append(job)
    return groups


def condition_label(key: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key) or "all"


def aggregate_table(jobs: Sequence[Job], metrics: Sequence[str]) -> tuple[str, dict[str, dict[str, Interval]]]:
    """Mean and 95 % bootstrap interval of each metric over each condition's seeds, as Markdown."""
    groups = conditions(jobs)
    axes = [k for k in jobs[0].axes if k != SEED_AXIS]
    header = [*axes, "seeds", *(column_name(m, jobs) for m in metrics)]  # loss titles as in the job table
    body, intervals = [], {}
    for key, members in groups.items():
        row = {m: mean_interval([j.metrics.get(m, math.nan) for j in members]) for m in metrics}
        intervals[condition_label(key)] = row
        body.append([*(v for _, v in key), str(len(members)), *(row[m].format() for m in metrics)])
    return markdown_table(header, body), intervals


def row_scores(job: Job) -> dict[str, dict[str, float]]:
    """Per benchmark, each row's score (0-1) keyed by row id and, for open/closed rows, by answer type, from the
    job's newest predictions (a train run's eval/step_*/trained, or an evaluate run's predictions/)."""
    steps = sorted(
        job.folder.glob("eval/step_*/trained/predictions"),
        key=lambda p: int(p.parent.parent.name.removeprefix("step_")),
    )
    folder = steps[-1] if steps else job.folder / "predictions"
    out: dict[str, dict[str, float]] = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            kind = row.get("answer_type")
            task = f"{path.stem}/{kind.lower()}" if kind else path.stem
            out.setdefault(task, {})[str(row["id"])] = float(row["score"])
    return out


def baseline_condition(conditions: Sequence[dict[str, str]], baseline: str) -> str:
    """The label of the one condition ``baseline`` names: ``key=value`` pairs in any order (each must hold), or
    else a substring of the label. A name that fits none or several is refused, naming the conditions."""
    labels = [condition_label(tuple(c.items())) for c in conditions]
    if "=" in baseline:
        wanted = dict(part.strip().split("=", 1) for part in baseline.split(",") if part.strip())
        found = [label for label, c in zip(labels, conditions) if all(c.get(k) == v for k, v in wanted.items())]
    else:
        found = [label for label in labels if baseline in label]
    if len(found) != 1:
        raise ValueError(
            f"--baseline {baseline!r} names {len(found)} of the sweep's conditions (one is needed): "
            + "; ".join(found or labels)
        )
    return found[0]


def paired_table(jobs: Sequence[Job], baseline: str | None = None) -> str:
    """Each condition against the baseline condition (the first, or the one whose label contains ``baseline``) on
    the same benchmark rows: the mean difference of row scores (averaged over a condition's seeds) with its 95 %
    bootstrap interval, a sign-flip permutation p-value and, for right/wrong rows of one seed each, McNemar's."""
    groups = conditions(jobs)
    if len(groups) < 2:
        return ""
    labels = {condition_label(k): members for k, members in groups.items()}
    base = baseline_condition([dict(k) for k in groups], baseline) if baseline else next(iter(labels))
    scores = {name: [row_scores(j) for j in members] for name, members in labels.items()}

    def averaged(name: str, task: str) -> dict[str, float]:
        runs = [s[task] for s in scores[name] if task in s]
        common = set.intersection(*(set(r) for r in runs)) if runs else set()
        return {rid: sum(r[rid] for r in runs) / len(runs) for rid in common}

    tasks = sorted({t for runs in scores.values() for s in runs for t in s})
    body = []
    for name in labels:
        if name == base:
            continue
        for task in tasks:
            a, b = averaged(base, task), averaged(name, task)
            shared = sorted(set(a) & set(b))
            if not shared:
                continue
            result = paired_comparison([a[r] for r in shared], [b[r] for r in shared])
            diff = result.difference  # scores are 0-1: shown in points like the metrics
            body.append(
                [
                    name,
                    task,
                    str(len(shared)),
                    Interval(100 * diff.mean, 100 * diff.low, 100 * diff.high, diff.n).format(),
                    f"{result.p_permutation:.3g}",
                    "–" if result.p_mcnemar is None else f"{result.p_mcnemar:.3g}",
                ]
            )
    if not body:
        return ""
    return markdown_table(
        ["condition", "benchmark", "rows", f"difference vs {base} [95 % CI]", "p (permutation)", "p (McNemar)"], body
    )


def write_report(
    sweep: str | Path, out: str | Path | None = None, all_metrics: bool = False, baseline: str | None = None
) -> dict[str, Any]:
    """Write report.md / report.csv / report.png for a sweep folder; returns their paths and the table."""
    sweep = Path(sweep)
    out = Path(out) if out else sweep
    jobs = read_jobs(sweep)
    metrics = metric_names(jobs, all_metrics)
    header, body = rows(jobs, metrics)
    table = markdown_table(header, body)
    failed = [f"- job {j.name} ({j.label}): {j.error}" for j in jobs if j.status != "ok"]
    staged = [
        f"- job {j.name} ({j.label}): {', '.join(m for m in STAGE_LOSSES if m in metrics)} of its last "
        f"stage, {last_stage(j)}"
        for j in jobs
        if last_stage(j) and any(m in metrics for m in STAGE_LOSSES)
    ]
    text = f"# Sweep {sweep.name}\n\n{table}\n" + ("\nFailed jobs:\n" + "\n".join(failed) + "\n" if failed else "")
    intervals: dict[str, dict[str, Interval]] = {}
    if any(len(members) > 1 for members in conditions(jobs).values()):
        aggregated, intervals = aggregate_table(jobs, metrics)
        text += f"\n## Over seeds: mean [95 % bootstrap interval]\n\n{aggregated}\n"
    paired = paired_table(jobs, baseline)
    if paired:
        text += (
            "\n## Paired on the same benchmark rows\n\nRow scores averaged over each condition's seeds; "
            "McNemar only for right/wrong rows of one seed each.\n\n" + paired + "\n"
        )
    synthetic_sets = quality_table([job.folder for job in jobs], [job.name for job in jobs])
    if synthetic_sets:
        text += (
            "\n## Synthetic task sets\n\nOf the tasks each set trains on (kept by its filter), against the toy truth "
            "where the captions are toy scenes; jobs that differ only in seed or stage mode share one set.\n\n"
            + synthetic_sets
            + "\n"
        )
    text += "\nLosses of multi-stage jobs:\n" + "\n".join(staged) + "\n" if staged else ""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(
        [[job.name, *job.axes.values(), job.status, *(job.metrics.get(m, "") for m in metrics)] for job in jobs]
    )
    paths = {
        "markdown": atomic_write_text(out / "report.md", text),
        "csv": atomic_write_text(out / "report.csv", buffer.getvalue()),
    }
    if metrics and any(job.metrics for job in jobs):
        paths["png"] = chart(jobs, metrics, out / "report.png", intervals)
    return {"table": table, "jobs": len(jobs), "failed": len(failed), **{k: str(v) for k, v in paths.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a multirun folder (logs/<task>/multiruns/<time>)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep folder)")
    parser.add_argument("--all-metrics", action="store_true", help="also the per-question-type metrics")
    parser.add_argument(
        "--baseline",
        default=None,
        help="the condition the paired tests compare against: key=value pairs in any order (e.g. "
        "'stage_mode=single_stage, data_mix=synthetic') or a substring of its label; default: the first",
    )
    args = parser.parse_args(argv)
    try:
        result = write_report(args.sweep, args.out, args.all_metrics, args.baseline)
    except (OSError, ValueError) as err:  # a wrong folder or baseline: say which, no traceback
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(result["table"])
    print("\n".join(f"written: {result[k]}" for k in ("markdown", "csv", "png") if k in result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
