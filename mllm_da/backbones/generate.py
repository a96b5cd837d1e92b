"""Batched decoding with ``model.generate``, shared by evaluation (answers) and synthesis (instruction data).

Decoding is greedy (``do_sample=False``, one beam) and stops at any of the chat format's stop tokens; a caller may
add logits processors (the synthesizer's per-record seeded sampling). Each row's new tokens end at its first stop
token, which is not part of the text.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from transformers import GenerationConfig


def greedy_config(tokenizer: Any, stop_ids: Sequence[int], max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding that stops at ``stop_ids``; padding with the tokenizer's pad token, else the first stop."""
    pad = tokenizer.pad_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=list(stop_ids),
        pad_token_id=pad if pad is not None else stop_ids[0],
    )


def to_model(batch: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The batch on the model's device, its floating tensors (pixels) in the model's dtype."""
    param = next(model.parameters())
    return {
        k: v.to(param.device, dtype=param.dtype) if v.is_floating_point() else v.to(param.device)
        for k, v in batch.items()
    }


def new_tokens(
    model: Any,
    tokenizer: Any,
    batch: dict[str, torch.Tensor],
    stop_ids: Sequence[int],
    max_new_tokens: int,
    logits_processor: Sequence[Any] = (),
) -> list[list[int]]:
    """Each row's generated tokens (the prompt cut off), stop tokens and padding included."""
    output = model.generate(
        **to_model(batch, model),
        generation_config=greedy_config(tokenizer, stop_ids, max_new_tokens),
        logits_processor=list(logits_processor),
    )
    return output[:, batch["input_ids"].shape[1] :].tolist()


def cut_at_stop_token(tokens: Sequence[int], stop_ids: Collection[int]) -> tuple[list[int], bool]:
    """``(tokens before the first stop token, whether there was one)``."""
    end = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
    return (list(tokens) if end is None else list(tokens[:end])), end is not None
