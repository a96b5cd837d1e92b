"""Reading a synthesizer's output (reference §2.3): hinted question/answer turns, then at most one task triplet.

The synthesizer continues a prompt that ends with an open user header, so its text is a run of turns
``<hint>\\n<question><turn end><assistant header><answer><turn end><user header>...``. The delimiters come from
the backbone's chat format; for the Llama-3 headers of the AdaMLLM synthesizer they are exactly the reference's
strings (:data:`LLAMA3`). Parsing follows the reference's rules, with the one departure below:

1. split the text on the user header;
2. if the text does not end with the turn end, the last piece is a truncated turn and is dropped;
3. each piece must split into exactly two parts on ``turn end + assistant header``; the question is the first
   part stripped, the answer the second minus its trailing turn end, stripped; a piece with an empty side, or
   that does not split in two, is skipped.

One departure, on by default: the reference removes the turn end of every answer but the last by cutting as many
characters as the turn end has, whether or not the answer ends with it (so a middle answer "Red." without its turn
end becomes empty and its pair is dropped, and "The lesion is red." becomes "The lesi"). We remove the turn end
only where it is present. ``ParseFormat.reference_cut=True`` (``synthesis.reference_answer_cut=true``) restores
the reference's cut (docs/synthesis.md).

A triplet is the first question (walking the pairs in order) that has been asked under both hints; each hint's
answer is the latest one given for that question up to that point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mllm_da.backbones.chat_format import LLAMA3_HEADERS, ChatFormat
from mllm_da.data.records import Turn

#: the fixed hints of the synthesizer's input/output format (reference §1.3); part of the protocol the released
#: synthesizer was trained on, so they are kept verbatim
CAPTION_HINT = "Describe the image."
PRECISE_HINT = "Answer with a precise response."
INFORMATIVE_HINT = "Answer with an informative response."


@dataclass(frozen=True)
class ParseFormat:
    """The three delimiters the parser needs, derived from a chat format."""

    user_header: str
    qa_separator: str
    turn_close: str
    #: cut len(turn_close) characters off every answer but the last, present or not, as the reference does
    reference_cut: bool = False

    @classmethod
    def from_chat_format(cls, chat_format: ChatFormat) -> ParseFormat:
        close = chat_format.turn_end + chat_format.turn_suffix
        return cls(chat_format.user_prefix, close + chat_format.assistant_prefix, close)


#: the reference's delimiters (Llama-3 headers, ``llava_llama_3``), from the backbones' own chat format
LLAMA3 = ParseFormat.from_chat_format(LLAMA3_HEADERS)


@dataclass(frozen=True)
class QAPair:
    """One generated round: the user turn (hint and question) and the assistant's answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class Triplet:
    """A question with its precise and informative answers; ``as_fields`` gives the filter prompt's keys."""

    question: str
    precise: str
    informative: str

    def as_fields(self) -> dict[str, str]:
        return {"Q": self.question, "precise_A": self.precise, "informative_A": self.informative}

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Triplet:
        return cls(fields["Q"], fields["precise_A"], fields["informative_A"])


def parse_output(text: str, fmt: ParseFormat = LLAMA3) -> list[QAPair]:
    """The complete question/answer rounds of a synthesizer output, in order (rules in the module docstring)."""
    pieces = text.split(fmt.user_header)
    if not text.endswith(fmt.turn_close):
        pieces = pieces[:-1]
    pairs = []
    for number, piece in enumerate(pieces, start=1):
        parts = piece.split(fmt.qa_separator)
        if len(parts) != 2:
            continue
        question = parts[0].strip()
        if fmt.reference_cut and number < len(pieces):
            answer = parts[1][: -len(fmt.turn_close)].strip()
        else:
            answer = parts[1].removesuffix(fmt.turn_close).strip()
        if question and answer:
            pairs.append(QAPair(question, answer))
    return pairs


def pairs_to_turns(pairs: Iterable[QAPair]) -> list[Turn]:
    """Alternating user/assistant turns, the form the reference stores parsed outputs in."""
    return [turn for p in pairs for turn in (Turn("user", p.question), Turn("assistant", p.answer))]


def extract_triplet(pairs: Sequence[QAPair]) -> Triplet | None:
    """The first question asked under both hints, or ``None`` (reference §2.3: at most one per image)."""
    precise_prefix, informative_prefix = PRECISE_HINT + "\n", INFORMATIVE_HINT + "\n"
    precise: dict[str, str] = {}
    informative: dict[str, str] = {}
    for pair in pairs:
        if pair.question.startswith(precise_prefix):
            key = pair.question[len(precise_prefix) :]
            precise[key] = pair.answer
        elif pair.question.startswith(informative_prefix):
            key = pair.question[len(informative_prefix) :]
            informative[key] = pair.answer
        else:
            continue
        if key in precise and key in informative:
            return Triplet(key, precise[key], informative[key])
    return None
