"""One ``train.py`` run with the step probe, for ``peer_llamafactory.py`` (runs in the project's venv).

    PEER_PROBE_OUT=probe.json python benchmarks/peer_run_ours.py <train.py overrides ...>

The arguments are ``train.py``'s Hydra overrides; ``train.py`` runs unchanged (as ``__main__``), with the probe of
``peer_probe.py`` counting the batches of the transformers model it trains.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_probe  # noqa: E402
from transformers import Qwen2VLForConditionalGeneration  # noqa: E402


def main() -> None:
    peer_probe.install(Qwen2VLForConditionalGeneration)
    sys.argv = [str(ROOT / "train.py"), *sys.argv[1:]]
    sys.path.insert(0, str(ROOT))
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")


if __name__ == "__main__":
    main()
