"""Greedy generation for evaluation and synthesis (reference §5.2), batched through the backbone adapter.

The prompt is the adapter's own: :meth:`Backbone.generation_batch` renders the family's chat format (its
default system prompt: Qwen's "You are a helpful assistant.", the AdaMLLM LLaVA system text, none for Mllama)
and left-pads the batch; generation stops at the format's stop tokens. Decoding is pure greedy with a fresh
``GenerationConfig`` (the reference's vLLM ``temperature=0`` has no repetition penalty, while some
checkpoints' ``generation_config.json`` carry one). Only the new tokens are decoded, cut at the first stop
token or string.

Requests are sorted by planned prompt length (image tokens included) so that a batch pads little; results come
back to the caller batch by batch (``on_batch``), which is how the runner appends predictions as they are
made. A resumed run passes every request with the keys already generated as ``done``: the batches are planned
over all requests, as in an uninterrupted run, and those made only of done requests are skipped, so every batch
that is generated holds the same requests (the same padding, hence the same greedy tokens) as it would have
without the interruption.

:class:`VLLMGenerator` runs the same prompts through vLLM when the ``vllm`` package is installed (the
reference's engine); it is chosen by ``backend="vllm"`` or ``"auto"`` (vLLM on a GPU when importable, else
transformers).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import torch
from PIL import Image

from mllm_da.backbones.base import Backbone
from mllm_da.backbones.generate import cut_at_stop_token, greedy_config, to_model
from mllm_da.backbones.loading import engine_checkpoint
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER, Turn
from mllm_da.utils.progress import Setting, progress_bar

log = logging.getLogger(__name__)

Backend = Literal["hf", "vllm", "auto"]
#: the reference's vLLM settings (§5.2): context length and prompts per engine call
VLLM_MAX_MODEL_LEN = 6144
VLLM_CHUNK = 500


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt. ``images`` is called when the request's batch is built, so pixels are decoded only then.

    ``image_sizes`` ((width, height) per image) lets the generator plan the prompt length without decoding.
    """

    key: int
    turns: tuple[Turn, ...]
    images: Callable[[], list[Image.Image]]
    image_sizes: tuple[tuple[int, int], ...] = ()


@dataclass
class GenerationStats:
    """What one :meth:`generate` call did: the throughput numbers the benchmark script reports."""

    samples: int = 0
    batches: int = 0
    new_tokens: int = 0
    prompt_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")

    @property
    def new_tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {
            "samples": self.samples,
            "batches": self.batches,
            "new_tokens": self.new_tokens,
            "prompt_tokens": self.prompt_tokens,
            "padded_tokens": self.padded_tokens,
            "seconds": self.seconds,
            "samples_per_s": self.samples_per_s,
            "new_tokens_per_s": self.new_tokens_per_s,
        }


OnBatch = Callable[[list[tuple[int, str]]], None]


class Generator(Protocol):
    """What the runner needs: texts for requests, reported batch by batch. ``done`` holds the keys generated
    before a crash: the generator is given every request, plans its batches as an uninterrupted run would, and
    generates (and reports) only what is missing."""

    stats: GenerationStats

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_new_tokens: int,
        on_batch: OnBatch | None = None,
        desc: str = "generate",
        done: Collection[int] = (),
    ) -> dict[int, str]: ...


def question_turns(prompt: str, n_images: int = 1, image_separator: str = "") -> tuple[Turn, ...]:
    """The single user turn of an evaluation prompt: the image(s) first, then the benchmark's full ``input``.

    The reference puts the image before the text for every family; LLaVA's ``llava_llama_3`` conversation puts
    a newline between them (``image_separator="\\n"``), the HF chat templates of Qwen2-VL and Mllama do not.
    """
    return (Turn("user", (IMAGE_PLACEHOLDER + image_separator) * n_images + prompt),)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string (vLLM's ``stop`` semantics: excluded)."""
    cut = len(text)
    for stop in stop_strings:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class HFGenerator:
    """Batched, left-padded greedy decoding with ``model.generate``.

    ``synthesizer=True`` stops at the synthesizer's end-of-text instead of the turn end (reference §2.2).
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        batch_size: int = 8,
        progress: Setting = "auto",
        synthesizer: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backbone = backbone
        self.batch_size = batch_size
        self.progress = progress
        self.stop_ids = backbone.stop_token_ids(synthesizer=synthesizer)
        stop_strings = [backbone.chat_format.synthesizer_end] if synthesizer else backbone.chat_format.stop_strings
        self.stop_strings = tuple(s for s in stop_strings if s)
        if not self.stop_ids:
            raise ValueError(f"{backbone.family}: the chat format names no stop token that the tokenizer knows")
        self.stats = GenerationStats()

    def prompt_length(self, request: GenerationRequest) -> int:
        """Tokens the prompt will take, image tokens included, without decoding its images."""
        text, _ = self.backbone.render(request.turns, add_generation_prompt=request.turns[-1].role == "user")
        ids = self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(ids) + sum(self.backbone.num_image_tokens(w, h) - 1 for w, h in request.image_sizes)

    def decode(self, new_tokens: torch.Tensor) -> tuple[list[str], int]:
        """Texts of the generated tokens, each cut at its first stop token, then at any stop string."""
        texts, count = [], 0
        stops = set(self.stop_ids)
        for row in new_tokens.tolist():
            kept, _ = cut_at_stop_token(row, stops)
            count += len(kept)
            text = self.backbone.tokenizer.decode(kept, skip_special_tokens=True)
            texts.append(cut_at_stop(text, self.stop_strings))
        return texts, count

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_new_tokens: int,
        on_batch: OnBatch | None = None,
        desc: str = "generate",
        done: Collection[int] = (),
    ) -> dict[int, str]:
        """Texts keyed by request key; ``on_batch`` gets each batch's ``(key, text)`` pairs as they come.

        ``done``: keys generated before (a resumed run). The batches are planned over all ``requests``; a batch of
        done requests only is skipped, any other is generated whole and reports only its keys not in ``done``.
        """
        self.stats = GenerationStats()
        done = frozenset(done)
        if not requests or all(r.key in done for r in requests):
            return {}
        model = self.backbone.model
        was_training = model.training
        model.eval()
        lengths = [self.prompt_length(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: -lengths[i])  # longest first: memory errors show early
        config = greedy_config(self.backbone.tokenizer, self.stop_ids, max_new_tokens)
        results: dict[int, str] = {}
        start = time.perf_counter()
        bar = progress_bar(sum(r.key not in done for r in requests), desc, "sample", self.progress)
        try:
            for first in range(0, len(order), self.batch_size):
                chunk = [requests[i] for i in order[first : first + self.batch_size]]
                if all(r.key in done for r in chunk):
                    continue
                batch = self.backbone.generation_batch([(r.turns, r.images()) for r in chunk])
                width = batch["input_ids"].shape[1]
                self.stats.prompt_tokens += int(batch["attention_mask"].sum())
                self.stats.padded_tokens += int(batch["attention_mask"].numel())
                # a transformers model or its PEFT wrapper: nn.Module's stubs do not know generate
                output = cast(Any, model).generate(**to_model(batch, model), generation_config=config)
                texts, count = self.decode(output[:, width:])
                pairs = [(r.key, t) for r, t in zip(chunk, texts, strict=True) if r.key not in done]
                results.update(pairs)
                self.stats.samples += len(chunk)
                self.stats.batches += 1
                self.stats.new_tokens += count
                if on_batch is not None:
                    on_batch(pairs)
                bar.update(len(pairs))
        finally:
            bar.close()
            self.stats.seconds = time.perf_counter() - start
            model.train(was_training)
        return results


class VLLMGenerator:
    """The same prompts through vLLM (greedy, ``max_model_len`` 6144, 500-prompt chunks, as the reference).

    vLLM tokenises the rendered prompt with ``add_special_tokens=True``: for the Llama-3 formats, whose text
    starts with ``<|begin_of_text|>``, that gives the reference's double BOS; Qwen prompts are unchanged.
    """

    def __init__(
        self,
        backbone: Backbone,
        model_path: str,
        *,
        progress: Setting = "auto",
        synthesizer: bool = False,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = VLLM_MAX_MODEL_LEN,
        chunk_size: int = VLLM_CHUNK,
        **engine_kwargs: object,
    ) -> None:
        from vllm import LLM

        self.backbone = backbone
        self.progress = progress
        self.chunk_size = chunk_size
        stops = [backbone.chat_format.synthesizer_end] if synthesizer else backbone.chat_format.stop_strings
        self.stop_strings = [s for s in stops if s]
        pixels = {k: v for k, v in backbone.spec.image.items() if k in ("min_pixels", "max_pixels")}
        kwargs: dict[str, object] = dict(
            model=model_path,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            limit_mm_per_prompt={"image": 1},
            dtype=backbone.spec.dtype,
            seed=0,
        )
        if pixels:
            kwargs["mm_processor_kwargs"] = pixels
        kwargs.update(engine_kwargs)
        self.llm = LLM(**kwargs)
        self.stats = GenerationStats()

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_new_tokens: int,
        on_batch: OnBatch | None = None,
        desc: str = "generate",
        done: Collection[int] = (),
    ) -> dict[int, str]:
        from vllm import SamplingParams

        # vLLM schedules its own batches (continuous batching): done requests are simply left out
        requests = [r for r in requests if r.key not in frozenset(done)]

        self.stats = GenerationStats()
        params = SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, stop=self.stop_strings, skip_special_tokens=True
        )
        results: dict[int, str] = {}
        start = time.perf_counter()
        bar = progress_bar(len(requests), desc, "sample", self.progress)
        try:
            for first in range(0, len(requests), self.chunk_size):
                chunk = list(requests[first : first + self.chunk_size])
                prompts = []
                for r in chunk:
                    text, _ = self.backbone.render(r.turns, add_generation_prompt=r.turns[-1].role == "user")
                    if r.turns[-1].role == "assistant":
                        text += self.backbone.chat_format.user_prefix
                    images = r.images()
                    data = {"image": images[0] if len(images) == 1 else images} if images else {}
                    prompts.append({"prompt": text, "multi_modal_data": data})
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
                pairs = [(r.key, o.outputs[0].text) for r, o in zip(chunk, outputs, strict=True)]
                results.update(pairs)
                self.stats.samples += len(chunk)
                self.stats.batches += 1
                self.stats.new_tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
                self.stats.prompt_tokens += sum(len(o.prompt_token_ids or []) for o in outputs)
                if on_batch is not None:
                    on_batch(pairs)
                bar.update(len(chunk))
        finally:
            bar.close()
            self.stats.seconds = time.perf_counter() - start
        return results


def vllm_model_path(backbone: Backbone) -> str:
    """The folder or hub id vLLM loads: the preset's source, or the materialised tiny checkpoint."""
    return engine_checkpoint(backbone.spec)


@dataclass
class GeneratorOptions:
    """How :func:`make_generator` builds a generator (the ``generation`` settings of evaluate.yaml)."""

    backend: Backend = "hf"
    batch_size: int = 8
    #: auto (a bar on a terminal, not in CI), true or false (mllm_da.utils.progress)
    progress: Setting = "auto"
    synthesizer: bool = False
    vllm: dict[str, Any] = field(default_factory=dict)


def make_generator(backbone: Backbone, options: GeneratorOptions | None = None) -> Generator:
    """An :class:`HFGenerator`, or a :class:`VLLMGenerator` for ``backend="vllm"`` (or ``"auto"`` with vLLM
    and a GPU). A backbone whose weights were changed in memory (just trained, not saved) must use ``"hf"``.
    """
    options = options or GeneratorOptions()
    if options.backend not in ("hf", "vllm", "auto"):
        raise ValueError(f"generation backend must be hf, vllm or auto, got {options.backend!r}")
    use_vllm = options.backend == "vllm" or (
        options.backend == "auto" and vllm_available() and torch.cuda.is_available()
    )
    if use_vllm:
        if not vllm_available():
            raise ImportError("backend=vllm needs the vllm package (pip install vllm); use backend=hf without it")
        return VLLMGenerator(
            backbone,
            vllm_model_path(backbone),
            progress=options.progress,
            synthesizer=options.synthesizer,
            **options.vllm,
        )
    return HFGenerator(
        backbone, batch_size=options.batch_size, progress=options.progress, synthesizer=options.synthesizer
    )
