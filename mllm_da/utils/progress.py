"""Progress bars for the long loops (synthesizer tuning, synthesis, evaluation): one rule for when to show them.

``auto`` shows a bar (rate and time left) when standard error is a terminal and ``CI`` is not set, so an
interactive run shows where it is while CI logs and redirected output stay free of bar redraws (the periodic log
lines remain); ``true`` / ``false`` force it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm

Setting = bool | str | None


def show_progress(setting: Setting = "auto") -> bool:
    """Whether to draw progress bars for ``setting`` (``auto``/None, or a bool / "true" / "false")."""
    if isinstance(setting, bool):
        return setting
    text = str(setting).strip().lower() if setting is not None else "auto"
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    if text != "auto":
        raise ValueError(f"progress must be auto, true or false, got {setting!r}")
    in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
    return not in_ci and sys.stderr.isatty()


def progress_bar(total: int, desc: str, unit: str, setting: Setting = "auto", **kwargs: Any) -> tqdm:
    """A tqdm bar with rate and ETA, disabled (a no-op) when :func:`show_progress` says no."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not show_progress(setting), dynamic_ncols=True, **kwargs)
