"""``evaluate.py`` and ``predict.py``: scoring a model on its domain's benchmarks and answering questions about
images are one step each, done by :mod:`mllm_da.evaluation` (which checks the config and writes summary.json);
named here so that every entry point calls the orchestration."""

from __future__ import annotations

from mllm_da.evaluation.predict import predict
from mllm_da.evaluation.runner import evaluate

__all__ = ["evaluate", "predict"]
