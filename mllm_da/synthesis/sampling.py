"""Seeded sampling per record, for synthesizers that would otherwise ask every image the same question.

Greedy decoding (the reference's) makes a small synthesizer write its seed set's most common question for every
image. Sampling with a temperature and a top-p cut gives it variety; to keep a synthetic set reproducible and
independent of batching, sharding and resumption, each record draws from its own random stream, seeded by the
record id. :class:`RecordSeededSampler` does this inside ``model.generate`` as a logits processor: it applies the
temperature and the top-p cut and adds Gumbel noise drawn from the record's stream, so that the greedy pick that
follows is a sample from the tempered, truncated distribution (the Gumbel-max trick).

With ``greedy_answers`` only the first turn (the hint and the instruction) is sampled: from the first turn end a
row has written on, its scores pass through untouched, so the answers (and the instruction repeated under the other
hint) are the synthesizer's likeliest ones. Variety in what is asked, no sampling noise in what is answered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """``temperature`` 0 means greedy (the reference); otherwise sample with this temperature and top-p."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    #: sample the first turn only, then decode greedily (see the module doc); needs the turn end's token ids
    greedy_answers: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"synthesis.sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"synthesis.sampling.top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def record_seed(seed: int, record_id: str) -> int:
    """A 63-bit seed from the run's seed and a record id (stable across processes and Python versions)."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RecordSeededSampler:
    """A ``transformers`` logits processor: tempered top-p scores plus per-row Gumbel noise (see module doc).

    Row ``i`` of the batch draws its noise at generation step ``t`` from a generator seeded by
    ``(seeds[i], t)``, so a record's tokens do not depend on which other records share its batch.
    """

    def __init__(self, config: SamplingConfig, seeds: Sequence[int], turn_end_ids: Sequence[int] = ()) -> None:
        if config.greedy_answers and not turn_end_ids:
            raise ValueError("synthesis.sampling.greedy_answers needs the chat format's turn end token")
        self.config = config
        self.seeds = list(seeds)
        self.turn_end_ids = torch.tensor(list(turn_end_ids) if config.greedy_answers else [], dtype=torch.long)
        self._start: int | None = None
        #: rows that have written a turn end (greedy_answers): updated from each step's newest token only
        self._answering = torch.zeros(len(self.seeds), dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if self._start is None:
            self._start = input_ids.shape[1]
        step = input_ids.shape[1] - self._start
        if len(self.turn_end_ids) and step > 0:  # the prompt's own turn ends do not count
            self._answering |= torch.isin(input_ids[:, -1].cpu(), self.turn_end_ids)
        logits = scores.float() / self.config.temperature
        if self.config.top_p < 1:
            logits = _top_p(logits, self.config.top_p)
        noise = torch.zeros_like(logits)
        for row, seed in enumerate(self.seeds):
            if self._answering[row]:
                continue  # its scores pass through below: no noise to draw
            generator = torch.Generator().manual_seed(seed + step)
            uniform = torch.rand(logits.shape[1], generator=generator).clamp_(1e-20, 1.0 - 1e-7)
            noise[row] = -torch.log(-torch.log(uniform)).to(logits.device)
        sampled = (logits + noise).to(scores.dtype)
        if self._answering.any():
            sampled = torch.where(self._answering.to(scores.device)[:, None], scores, sampled)
        return sampled


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (at least one); the rest get -inf."""
    ordered, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
    drop = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # mass before this token already reaches top_p
    ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
