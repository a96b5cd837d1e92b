"""Report of a sweep: `python experiments/report.py logs/<task>/multiruns/<time>` (same as `python -m mllm_da.report`).

Writes report.md, report.csv and report.png (every benchmark metric across the sweep axes) into the sweep folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllm_da.report import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
