"""vLLM engines for synthesis and the LLM consistency filter, behind the same interfaces as the transformers ones
(:class:`~mllm_da.synthesis.runner.SynthesizerGenerator`: records in, one result row per record out;
:class:`~mllm_da.synthesis.filter.LLMJudge`: prompts in, one label per prompt out), so batching, retries,
sharding and resumption (:mod:`mllm_da.synthesis.batches`) are the same code for both.

Same requests as the transformers path: the prompt is the backbone adapter's token ids
(:meth:`Backbone.generation_prompt_ids`, one image token per image, which vLLM expands) with the image as
``multi_modal_data``; generation stops only at the synthesizer's end-of-text (``stop_token_ids``, with
``ignore_eos`` so that a checkpoint's own EOS, e.g. Llama-3's turn end, does not stop it); the new token ids are
cut at the first stop token and decoded by the same tokenizer with special tokens kept (the parser needs the turn
markers). Greedy by default; with ``synthesis.sampling`` each record's request carries its own seed
(:func:`~mllm_da.synthesis.sampling.record_seed`), so a record's sample does not depend on its batch or shard (it
is vLLM's sampler, so it is not the transformers path's sample). ``vllm`` is imported only here, lazily.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from mllm_da.backbones.base import Backbone
from mllm_da.backbones.generate import cut_at_stop_token
from mllm_da.data.images import BadImageError, load_image
from mllm_da.synthesis.filter import judge_stop_id, parse_label
from mllm_da.synthesis.requests import (
    SelfCheck,
    SynthesisInput,
    answer_self_checks,
    empty_row,
    fill_generated_rows,
    synthesizer_prompt,
)
from mllm_da.synthesis.sampling import SamplingConfig, record_seed

log = logging.getLogger(__name__)

#: the synthesizer engine's context length when synthesis.vllm.max_model_len is null (the reference's vLLM setting)
REFERENCE_MAX_MODEL_LEN = 6144

#: engine settings of ``synthesis.vllm`` / ``filter.vllm`` passed to ``vllm.LLM`` by name (``extra`` holds others)
ENGINE_KEYS = (
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "max_model_len",
    "dtype",
    "enforce_eager",
    "max_num_seqs",
)


def import_vllm() -> ModuleType:
    """The ``vllm`` package, or an error that says how to get it (it needs a CUDA build of torch)."""
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ImportError(
            f"the vllm backend needs the vllm package ({err}); on a GPU machine: pip install 'mllm-da[vllm]' "
            "(it brings its own CUDA build of torch: use a separate virtualenv), or use synthesis.backend=hf / "
            "filter.engine=hf"
        ) from err


def engine_kwargs(settings: Mapping[str, Any], model_path: str, default_dtype: str) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments from a ``vllm`` settings node (null values: vLLM's own default)."""
    kwargs: dict[str, Any] = {"model": model_path, "seed": 0}
    for key in ENGINE_KEYS:
        if settings.get(key) is not None:
            kwargs[key] = settings[key]
    kwargs.setdefault("dtype", default_dtype)
    kwargs.update(settings.get("extra") or {})
    return kwargs


class VLLMSynthesizerGenerator:
    """Synthesizer decoding through ``vllm.LLM.generate``: a planned batch is one ``generate`` call (vLLM schedules
    it continuously inside), one result row per record, the same rows as the transformers generator."""

    def __init__(
        self,
        backbone: Backbone,
        model_path: str,
        *,
        max_new_tokens: int = 512,
        sampling: SamplingConfig | None = None,
        engine: Mapping[str, Any] | None = None,
        prefill: str = "",
        self_check: SelfCheck | None = None,
    ) -> None:
        vllm = import_vllm()
        self.backbone = backbone
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling or SamplingConfig()
        self.prefill = prefill
        self.self_check = self_check
        self.stop_ids = backbone.stop_token_ids(synthesizer=True)
        if not self.stop_ids:
            raise ValueError(f"{backbone.family}: the chat format's synthesizer_end is not a token of the tokenizer")
        self._sampling_params = vllm.SamplingParams
        kwargs = engine_kwargs(engine or {}, model_path, backbone.spec.dtype)
        kwargs["limit_mm_per_prompt"] = {"image": 1}
        pixels = {k: v for k, v in backbone.spec.image.items() if k in ("min_pixels", "max_pixels")}
        if pixels:  # the image-processor settings the transformers path uses (Qwen's pixel bounds)
            kwargs.setdefault("mm_processor_kwargs", pixels)
        kwargs.setdefault("max_model_len", REFERENCE_MAX_MODEL_LEN)
        self.llm = vllm.LLM(**kwargs)
        self.new_tokens = 0

    def sampling_params(self, record_id: str) -> Any:
        """Greedy, or this record's seeded sample; stops only at the synthesizer's end-of-text."""
        greedy = self.sampling.greedy
        return self._sampling_params(
            temperature=0.0 if greedy else self.sampling.temperature,
            top_p=1.0 if greedy else self.sampling.top_p,
            seed=None if greedy else record_seed(self.sampling.seed, record_id),
            max_tokens=self.max_new_tokens,
            stop_token_ids=list(self.stop_ids),
            ignore_eos=True,
            skip_special_tokens=False,
            include_stop_str_in_output=False,
        )

    def __call__(self, items: Sequence[SynthesisInput]) -> list[dict[str, Any]]:
        rows = [empty_row(it.id) for it in items]
        prompts, params, slots = [], [], []
        images: dict[int, Any] = {}
        for slot, item in enumerate(items):
            try:
                image = load_image(item.image)
            except BadImageError as err:
                rows[slot]["error"] = str(err)
                continue
            ids = self.backbone.generation_prompt_ids(synthesizer_prompt(item.caption), self.prefill)
            prompts.append({"prompt_token_ids": ids, "multi_modal_data": {"image": image}})
            params.append(self.sampling_params(item.id))
            slots.append(slot)
            images[slot] = image
        if not prompts:
            return rows
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vllm returned {len(outputs)} outputs for {len(prompts)} prompts")
        generated = [output.outputs[0].token_ids for output in outputs]
        self.new_tokens += fill_generated_rows(
            rows, slots, generated, self.stop_ids, self.backbone.tokenizer, self.prefill
        )
        if self.self_check is not None:
            self.new_tokens += answer_self_checks(rows, items, images, self.self_check, self.backbone, self._greedy)
        return rows

    def _greedy(self, prompts: list[tuple[list[Any], Any]], stop_ids: list[int], max_new: int) -> list[Any]:
        """Greedy generation of (turns, image) prompts in one call (the self-check's engine call)."""
        params = self._sampling_params(
            temperature=0.0,
            max_tokens=max_new,
            stop_token_ids=list(stop_ids),
            skip_special_tokens=False,
            include_stop_str_in_output=False,
        )
        requests = [
            {"prompt_token_ids": self.backbone.generation_prompt_ids(turns), "multi_modal_data": {"image": image}}
            for turns, image in prompts
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        if len(outputs) != len(requests):
            raise RuntimeError(f"vllm returned {len(outputs)} outputs for {len(requests)} self-check prompts")
        return [output.outputs[0].token_ids for output in outputs]


class VLLMJudge:
    """The consistency filter's judge through vLLM: same prompts (tokenised as the transformers judge does),
    greedy, ``max_new_tokens``, stop at the judge's end-of-text; a prompt longer than ``max_length`` tokens is
    labelled ``too_long`` without being sent."""

    def __init__(
        self,
        source: str,
        *,
        max_new_tokens: int = 2,
        max_length: int = 8192,
        stop_token: str | None = "<|end_of_text|>",
        dtype: str = "bfloat16",
        engine: Mapping[str, Any] | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        vllm = import_vllm()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.stop_id = judge_stop_id(self.tokenizer, stop_token)
        self.params = vllm.SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=[self.stop_id], skip_special_tokens=True
        )
        kwargs = engine_kwargs(engine or {}, source, dtype)
        kwargs.setdefault("max_model_len", max_length)
        self.llm = vllm.LLM(**kwargs)
        self.seconds = 0.0

    def labels(self, prompts: Sequence[str]) -> list[str]:
        encoded = [list(self.tokenizer(p)["input_ids"]) for p in prompts]
        out = ["too_long"] * len(prompts)
        slots = [i for i, ids in enumerate(encoded) if len(ids) + self.max_new_tokens <= self.max_length]
        if not slots:
            return out
        start = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": encoded[i]} for i in slots], self.params, use_tqdm=False)
        self.seconds += time.perf_counter() - start
        for i, output in zip(slots, outputs):
            kept, _ = cut_at_stop_token(list(output.outputs[0].token_ids), {self.stop_id})
            out[i] = parse_label(str(self.tokenizer.decode(kept, skip_special_tokens=True)))
        return out
