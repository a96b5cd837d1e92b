"""Shared helpers of the benchmark scripts: the device, a measured matmul peak, timing, tables, results JSON.

Every figure a script reports is measured in that run: nothing here holds a device's datasheet number.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(dev: torch.device | None = None) -> str:
    """A short name for file names and tables: the GPU's name, or ``cpu-<threads>threads``."""
    dev = dev or device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu-{torch.get_num_threads()}threads"


def environment() -> dict[str, Any]:
    """What the figures depend on besides the code: versions, threads, and how busy the machine was."""
    env: dict[str, Any] = {
        "device": device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - always installed in this project
        pass
    if hasattr(os, "getloadavg"):
        env["load_average_1m"] = os.getloadavg()[0]
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
    return env


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak_flops(dev: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """Best of ``repeats`` timed square matmuls in ``dtype`` on ``dev``, in FLOP/s: the denominator of MFU.

    Measured rather than read from a datasheet, so MFU says how much of what this device really delivers
    (for a GPU in bf16, on this CPU in fp32) the training step uses.
    """
    n = n or (8192 if dev.type == "cuda" else 1024)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    inner = 20 if dev.type == "cuda" else 3
    for _ in range(2):
        torch.mm(a, b)
    synchronize(dev)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        synchronize(dev)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * n**3 / best


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed(fn: Callable[[], Any], dev: torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device synchronised on both sides, and its result."""
    synchronize(dev)
    start = time.perf_counter()
    out = fn()
    synchronize(dev)
    return time.perf_counter() - start, out


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "") -> str:
    """A plain fixed-width table of ``columns`` from ``rows``; returns what it printed."""
    cells = [[format_value(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_result(name: str, result: dict[str, Any], out: Path = RESULTS) -> Path:
    """``benchmarks/results/<name>.json`` (spaces in the name become underscores)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name.replace(' ', '_').replace('/', '_')}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"written: {shown}", flush=True)
    return path


def model_choice(overrides: Sequence[str], default: str) -> str:
    """The ``model=`` preset named in Hydra overrides, or ``default``."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), default)


def compose_config(config_name: str, overrides: Sequence[str], threads: int | None = None) -> Any:
    """An entry config (train / evaluate / synth) as its script would compose it, with this repo as root and
    ``logs/benchmarks`` as the run folder; ``threads`` sets torch's CPU threads first."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    if threads:
        torch.set_num_threads(threads)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=[f"paths.root_dir={ROOT}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(ROOT / "logs" / "benchmarks")
    return cfg
