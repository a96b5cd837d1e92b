"""What a synthesizer is asked, whichever engine answers: one image-caption record, the §2.2 prompt's turns, and
the row a record gets when its generation failed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mllm_da.backbones.generate import cut_at_stop_token
from mllm_da.synthesis.parse import (
    CAPTION_HINT,
    INFORMATIVE_HINT,
    PRECISE_HINT,
    ParseFormat,
    extract_triplet,
    parse_output,
)
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


@dataclass(frozen=True)
class SelfCheck:
    """``synthesis.self_check``: after each output, ask the synthesizer its triplet's question once more under the
    precise hint (greedy, up to ``max_new_tokens``, stopping at the turn end); ``fmt`` finds the triplet."""

    fmt: ParseFormat
    max_new_tokens: int = 32

    def to_json(self) -> dict[str, Any]:
        return {"fmt": dataclasses.asdict(self.fmt), "max_new_tokens": self.max_new_tokens}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SelfCheck | None:
        """The self-check a job's JSON describes; None (off) for an empty one."""
        return cls(ParseFormat(**data["fmt"]), int(data["max_new_tokens"])) if data else None


def self_check_turns(caption: str, question: str) -> list[Turn]:
    """The synthesizer prompt with its own question asked back under the precise hint, as a finished user turn:
    the synthesizer answers it once more, directly, in the format it was tuned on (``synthesis.self_check``)."""
    return [*synthesizer_prompt(caption), Turn("user", f"{PRECISE_HINT}\n{question}")]


def self_check_questions(
    rows: Sequence[dict[str, Any]], slots: Sequence[int], fmt: ParseFormat
) -> list[tuple[int, str]]:
    """``(slot, question)`` of each row among ``slots`` whose generated text holds a triplet: the ones that get a
    self-check, asked the triplet's question."""
    checked = []
    for slot in slots:
        text = rows[slot]["text"]
        triplet = extract_triplet(parse_output(text, fmt)) if text is not None else None
        if triplet is not None:
            checked.append((slot, triplet.question))
    return checked


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


def fill_self_checks(
    rows: list[dict[str, Any]],
    slots: Sequence[int],
    generated: Sequence[Sequence[int]],
    stop_ids: Collection[int],
    tokenizer: Any,
) -> int:
    """Write each self-check answer (the tokens up to the turn end, special tokens dropped, stripped) into its
    row's ``self_check``; returns the tokens kept."""
    stops = set(stop_ids)
    total = 0
    for slot, tokens in zip(slots, generated):
        kept, _ = cut_at_stop_token(list(tokens), stops)
        rows[slot]["self_check"] = tokenizer.decode(kept, skip_special_tokens=True).strip()
        total += len(kept)
    return total


#: an engine's greedy generation for the self-check: (prompts of (turns, image), stop ids, max new tokens) -> the
#: new token ids of each prompt
SelfCheckGenerate = Callable[[list[tuple[list[Turn], Any]], list[int], int], Sequence[Sequence[int]]]


def answer_self_checks(
    rows: list[dict[str, Any]],
    items: Sequence[SynthesisInput],
    images: Mapping[int, Any],
    check: SelfCheck,
    backbone: Any,
    generate: SelfCheckGenerate,
) -> int:
    """Ask each generated triplet's question once more (``synthesis.self_check``) through ``generate`` and write
    the answers into the rows; ``images`` maps the generated rows' slots to their image. Returns the tokens."""
    checks = self_check_questions(rows, list(images), check.fmt)
    if not checks:
        return 0
    turn_end = backbone.stop_token_ids()
    generated = generate(
        [(self_check_turns(items[slot].caption, question), images[slot]) for slot, question in checks],
        turn_end,
        check.max_new_tokens,
    )
    return fill_self_checks(rows, [slot for slot, _ in checks], generated, turn_end, backbone.tokenizer)
