"""A stand-in for the ``vllm`` package in tests (vLLM itself needs a CUDA build of torch).

It has the real package's call shapes: ``LLM(model=..., **engine_args)`` (unknown engine arguments raise
``TypeError``, as ``EngineArgs`` does), ``SamplingParams(...)`` with the real field names, and
``LLM.generate(prompts, sampling_params, use_tqdm=...)`` taking text or token prompts with ``multi_modal_data``,
one ``SamplingParams`` or one per prompt, and returning ``RequestOutput``-like objects (``outputs[0].token_ids``,
``.text``, ``.finish_reason``). It generates no language: each request's tokens are a deterministic function of
its prompt ids (and its seed when it samples), so reruns, shards and resumptions must give identical rows.

Every construction and call is recorded in ``CALLS`` and, when ``FAKE_VLLM_LOG`` names a file, appended there as a
JSON line (worker processes). Faults, read at call time from the environment: ``FAKE_VLLM_FAIL_CALLS`` (comma
separated generate-call numbers of this process, from 1, that raise as an out-of-memory error would),
``FAKE_VLLM_POISON`` (a token id: a call whose prompts hold it raises ``ValueError``, as vLLM refuses a whole call
for one bad request) and ``FAKE_VLLM_DELAY`` (seconds per call, to give kill tests a window).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

__version__ = "0.0.fake"

CALLS: list[dict[str, Any]] = []
ENGINE_ARGS = {
    "tokenizer",
    "trust_remote_code",
    "tensor_parallel_size",
    "dtype",
    "seed",
    "gpu_memory_utilization",
    "max_model_len",
    "enforce_eager",
    "max_num_seqs",
    "limit_mm_per_prompt",
    "mm_processor_kwargs",
    "swap_space",
    "quantization",
}
_generate_calls = 0


def _record(event: dict[str, Any]) -> None:
    CALLS.append(event)
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event) + "\n")


@dataclasses.dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")


@dataclasses.dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


def _vocab_size(model: str) -> int:
    config = json.loads((Path(model) / "config.json").read_text())
    return int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size") or 100)


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        if not (Path(model) / "config.json").exists():
            raise OSError(f"fake vllm: {model} has no config.json")
        self.model = model
        self.kwargs = kwargs
        self.vocab = _vocab_size(model)
        self.max_model_len = kwargs.get("max_model_len") or 4096
        self.limit_mm = (kwargs.get("limit_mm_per_prompt") or {}).get("image", 1)
        _record({"event": "init", "model": model, "kwargs": kwargs, "pid": os.getpid()})

    def _tokens(self, prompt_ids: list[int], params: SamplingParams) -> tuple[list[int], str]:
        key = json.dumps([prompt_ids, params.seed if params.temperature > 0 else None, params.temperature])
        digest = hashlib.sha256(key.encode()).digest()
        budget = params.max_tokens or 16
        length = 1 + digest[0] % budget
        tokens = [digest[(i + 1) % len(digest)] * 7 % self.vocab for i in range(length)]
        stops = set(params.stop_token_ids or [])
        tokens = [t for t in tokens if t not in stops]
        if length < budget and stops:  # the request stops at its stop token (kept in token_ids, as vLLM does)
            return tokens + [min(stops)], "stop"
        return tokens[:budget], "length"

    def generate(self, prompts: Any, sampling_params: Any = None, use_tqdm: bool = True) -> list[RequestOutput]:
        global _generate_calls
        _generate_calls += 1
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = (
            sampling_params
            if isinstance(sampling_params, list)
            else [sampling_params or SamplingParams()] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        if not all(isinstance(p, SamplingParams) for p in params):
            raise TypeError("sampling_params must be SamplingParams")
        shapes = []
        for prompt in prompts:
            if isinstance(prompt, str) or "prompt_token_ids" not in prompt:
                raise TypeError("the fake vllm takes token prompts only ({'prompt_token_ids': [...]})")
            images = (prompt.get("multi_modal_data") or {}).get("image")
            images = [] if images is None else images if isinstance(images, list) else [images]
            if len(images) > self.limit_mm:
                raise ValueError(f"You set image={self.limit_mm} (or defaulted to 1) in `limit_mm_per_prompt`")
            if not all(hasattr(im, "size") and hasattr(im, "mode") for im in images):
                raise TypeError("multi_modal_data['image'] must be PIL images")
            shapes.append(
                {"prompt_token_ids": list(prompt["prompt_token_ids"]), "images": [list(im.size) for im in images]}
            )
        _record(
            {
                "event": "generate",
                "call": _generate_calls,
                "pid": os.getpid(),
                "prompts": shapes,
                "params": [dataclasses.asdict(p) for p in params],
                "use_tqdm": use_tqdm,
            }
        )
        time.sleep(float(os.environ.get("FAKE_VLLM_DELAY") or 0))
        failing = {int(n) for n in (os.environ.get("FAKE_VLLM_FAIL_CALLS") or "").split(",") if n.strip()}
        if _generate_calls in failing:
            raise RuntimeError(f"CUDA out of memory (fake vllm, call {_generate_calls})")
        poison = os.environ.get("FAKE_VLLM_POISON")
        outputs = []
        for n, (shape, param) in enumerate(zip(shapes, params)):
            ids = shape["prompt_token_ids"]
            if poison and int(poison) in ids:
                raise ValueError(f"fake vllm: request {n} is refused (token {poison})")
            if len(ids) > self.max_model_len:
                raise ValueError(
                    f"The decoder prompt (length {len(ids)}) is longer than the maximum model length "
                    f"of {self.max_model_len}."
                )
            tokens, reason = self._tokens(ids, param)
            outputs.append(RequestOutput(str(n), ids, [CompletionOutput(0, f"<{len(tokens)} tokens>", tokens, reason)]))
        return outputs
