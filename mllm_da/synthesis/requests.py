"""What a synthesizer is asked, whichever engine answers: one image-caption record, the §2.2 prompt's turns, and
the row a record gets when its generation failed."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from mllm_da.backbones.generate import cut_at_stop_token
from mllm_da.synthesis.parse import CAPTION_HINT, INFORMATIVE_HINT, PRECISE_HINT
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER, Turn


@dataclass(frozen=True)
class SynthesisInput:
    """One image-caption record to synthesize for; ``image`` is an absolute path."""

    id: str
    caption: str
    image: str


def synthesizer_prompt(caption: str) -> list[Turn]:
    """The §2.2 prompt's turns; the backbone appends the open user header after the assistant turn."""
    return [Turn("user", f"{IMAGE_PLACEHOLDER}\n{CAPTION_HINT}"), Turn("assistant", caption)]


#: ``synthesis.first_hint`` → the text the synthesizer's output is made to start with
FIRST_HINT_PREFILLS = {"informative": INFORMATIVE_HINT + "\n", "precise": PRECISE_HINT + "\n"}


def first_turn_prefill(first_hint: str | None) -> str:
    """What the synthesizer's first user turn is made to start with: nothing (it picks the hint itself, the
    reference), or the named hint, so that e.g. the informative answer, which reasons about the image, is written
    before the precise one and the precise answer can follow from it (a departure; docs/synthesis.md)."""
    if first_hint is None:
        return ""
    if first_hint not in FIRST_HINT_PREFILLS:
        raise ValueError(f"synthesis.first_hint must be null, informative or precise, got {first_hint!r}")
    return FIRST_HINT_PREFILLS[first_hint]


def empty_row(record_id: str) -> dict[str, Any]:
    """A synthesis result row before generation: no text, not finished, no error."""
    return {"id": record_id, "text": None, "finished": False, "new_tokens": 0, "error": None}


def failed_generation_row(record_id: str, error: str) -> dict[str, Any]:
    """The row of a record whose generation failed after its batch's retries and once alone (kept, not dropped:
    it is counted as ``failed`` and parses to no task)."""
    return {**empty_row(record_id), "error": f"generation failed: {error}", "failed": True}


def fill_generated_rows(
    rows: list[dict[str, Any]],
    slots: Sequence[int],
    generated: Sequence[Sequence[int]],
    stop_ids: Collection[int],
    tokenizer: Any,
    prefill: str = "",
) -> int:
    """Write each generation into its row: ``prefill`` (the prompt's forced start of the output) and the tokens
    up to the first stop token, decoded with the special tokens kept (the parser reads the turn markers), whether
    it stopped, and its length. Returns the tokens kept, so either engine counts its throughput the same way."""
    stops = set(stop_ids)
    total = 0
    for slot, tokens in zip(slots, generated):
        kept, finished = cut_at_stop_token(list(tokens), stops)
        text = tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        rows[slot]["text"] = prefill + text
        rows[slot]["finished"] = finished
        rows[slot]["new_tokens"] = len(kept)
        total += len(kept)
    return total
