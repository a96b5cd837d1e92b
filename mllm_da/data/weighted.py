"""Weighted mixtures of data mixes, e.g. all rule-made conversations plus half of the synthetic ones.

Each component is an ordinary data mix (``conf/data_mix/*.yaml``) with a weight: a weight below 1 keeps that share
of its conversations (a seeded sample), a weight above 1 repeats them (whole copies plus a seeded sample for the
fraction). Ids get ``#<component>`` (and ``.<copy>`` for repeats) so that they stay unique; the train/val split
uses the id before ``#``, so copies of one record never land on both sides.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_da.data.mixing import DataMix, DomainFiles
from mllm_da.data.records import Conversation, Policy


@dataclass
class Component:
    mix: DataMix
    weight: float = 1.0


def weighted_sample(items: list[Conversation], weight: float, rng: random.Random) -> list[tuple[int, Conversation]]:
    """(copy number, conversation) pairs: ``floor(weight)`` whole copies plus a seeded sample of the fraction."""
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"a mixture weight must be a finite number >= 0, got {weight}")
    whole, fraction = divmod(weight, 1.0)
    picked = [(copy, conv) for copy in range(int(whole)) for conv in items]
    extra = sorted(rng.sample(range(len(items)), round(fraction * len(items))))
    return picked + [(int(whole), items[i]) for i in extra]


@dataclass
class WeightedMix:
    """Several data mixes with weights; ``build`` returns their weighted union."""

    name: str
    components: dict[str, Component]
    seed: int = 0
    # what config checks and stages read of a data mix: this one has captions and mixed task sources
    captions: bool = True
    tasks: str = "mixed"
    reports: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.components = {
            name: c if isinstance(c, Component) else Component(**c) for name, c in self.components.items()
        }
        if not self.components:
            raise ValueError(f"data_mix {self.name}: no components")

    def parts(self) -> list[DataMix]:
        """The components' data mixes (where a synthesized task file is handed over)."""
        return [c.mix for c in self.components.values()]

    def restricted(self, captions: bool, tasks: bool) -> WeightedMix:
        """The same mixture with each component cut to captions and/or tasks (for two-stage runs)."""
        parts = {name: Component(c.mix.restricted(captions, tasks), c.weight) for name, c in self.components.items()}
        return dataclasses.replace(
            self,
            components=parts,
            captions=self.captions and captions,
            tasks=self.tasks if tasks else "none",
            reports={},
        )

    def build(
        self, domain: DomainFiles, policy: Policy = "skip", rejects_dir: str | Path | None = None
    ) -> list[Conversation]:
        mixed: list[Conversation] = []
        for name, component in self.components.items():
            rejects = Path(rejects_dir) / name if rejects_dir else None
            conversations = component.mix.build(domain, policy=policy, rejects_dir=rejects)
            chosen = weighted_sample(conversations, component.weight, random.Random(f"{self.seed}:{name}"))
            for copy, conv in chosen:
                suffix = f"#{name}" + (f".{copy}" if copy else "")
                mixed.append(dataclasses.replace(conv, id=f"{conv.id}{suffix}"))
            self.reports[name] = component.mix.reports | {
                "weight": component.weight,
                "read": len(conversations),
                "used": len(chosen),
            }
        self.reports["mixed"] = {"conversations": len(mixed)}
        return mixed


#: what a ``data_mix`` config instantiates to
AnyMix = DataMix | WeightedMix
