"""What one ``conf/benchmark/<name>.yaml`` says (:class:`BenchmarkSpec`) and the specs of a selection.

A spec is checked when it is built: a known metric, a label space that fits it, a source, sane limits. Unknown
keys are refused (a typo would otherwise be silently ignored). :func:`benchmark_specs` picks the selected names
from the composed ``benchmark`` node, which holds every definition in ``conf/benchmark/`` (discovered, see
:mod:`mllm_da.utils.conf`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mllm_da.evaluation.labels import check_label_kind, label_builder, label_kind
from mllm_da.evaluation.scorers import SCORERS

BadRows = Literal["fail", "skip"]

#: generation budget per metric when a benchmark does not set one: short answers (a word, a yes/no, a letter) get
#: 32 tokens, ingredient lists 256 (the reference's budget for them), free text (ROUGE-L) the reference's 1,024
DEFAULT_MAX_NEW_TOKENS: Mapping[str, int] = {
    "vqa_open_closed": 32,
    "multiple_choice": 32,
    "multi_label_f1": 256,
    "multi_label_recall": 256,
    "rouge_l": 1024,
}


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: where its rows are, how to read them, and how to score them.

    ``source`` is a local file or folder (the usual case: a local copy of the AdaptLLM datasets) or a hub id;
    ``hub_id`` is tried when ``source`` is not on disk. ``config``/``split`` select the hub configuration and
    split; ``disk_subset`` names the task's folder inside a ``save_to_disk`` copy. ``limit`` keeps the first
    rows of the split (row indices, which seed the MC fallback, are unchanged by it).
    """

    name: str
    metric: str
    source: str | None = None
    hub_id: str | None = None
    config: str | None = None
    split: str = "test"
    disk_subset: str | None = None
    image_root: str | None = None
    image_field: str = "image"
    prompt_field: str = "input"
    label_field: str = "label"
    id_field: str | None = "id"
    #: rows with this field get a per-value breakdown of the metric (the toy's question types)
    group_field: str | None = "question_type"
    #: the label space: the dotted path of a function of ``label_file``'s JSON (:mod:`mllm_da.evaluation.labels`)
    label_space: str | None = None
    label_file: str | None = None
    #: null: the metric's default (:data:`DEFAULT_MAX_NEW_TOKENS`), so a short-answer benchmark never waits for
    #: 1,024 tokens of a model that does not stop
    max_new_tokens: int | None = None
    limit: int | None = None
    bad_rows: BadRows = "fail"
    #: decode every row's image at load time, so that a truncated or undecodable image is a bad row (skipped or an
    #: error by ``bad_rows``) before any generation starts, not a crash in the middle of it
    check_images: bool = True
    #: the domains that run this benchmark by default, and its place among theirs (``domain.benchmarks``,
    #: discovered by :func:`mllm_da.utils.conf.domain_benchmarks`); not used when loading or scoring
    domains: tuple[str, ...] = ()
    order: int = 0

    def __post_init__(self) -> None:
        where = f"benchmark {self.name!r}"
        if not self.name or "/" in self.name:
            raise ValueError(f"{where}: name must be non-empty and contain no '/' (it names output files)")
        if self.metric not in SCORERS:
            raise ValueError(f"{where}: metric {self.metric!r} is not one of {sorted(SCORERS)}")
        needs_labels = SCORERS[self.metric].needs_labels
        if needs_labels and self.label_space is None:
            raise ValueError(
                f"{where}: metric {self.metric} needs label_space (a label-space function, "
                "e.g. mllm_da.evaluation.labels.foodseg103_labels) and its label_file"
            )
        if self.label_space is not None:
            builder = label_builder(self.label_space)
            check_label_kind(where, self.metric, needs_labels, label_kind(builder))
            if not self.label_file:
                raise ValueError(f"{where}: label_space {self.label_space} needs label_file (the JSON label list)")
        if not self.source and not self.hub_id:
            raise ValueError(f"{where}: set source (a local file or folder) or hub_id")
        if self.bad_rows not in ("fail", "skip"):
            raise ValueError(f"{where}: bad_rows must be 'fail' or 'skip', got {self.bad_rows!r}")
        object.__setattr__(self, "domains", tuple(self.domains))
        max_new_tokens = self.max_new_tokens
        if max_new_tokens is None:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS[self.metric]
            object.__setattr__(self, "max_new_tokens", max_new_tokens)
        if max_new_tokens < 1:
            raise ValueError(f"{where}: max_new_tokens must be >= 1, got {max_new_tokens}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"{where}: limit must be >= 0 or null, got {self.limit}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> BenchmarkSpec:
        """Build from a config node, refusing unknown keys (a typo would otherwise be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in dict(cfg).items() if k != "_target_"}
        unknown = set(data) - names
        if unknown:
            raise ValueError(
                f"benchmark {data.get('name', '?')!r}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}"
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def fingerprint(self) -> dict[str, Any]:
        """What decides a benchmark's rows and prompts: a resumed predictions file must share it."""
        keys = (
            "source",
            "hub_id",
            "config",
            "split",
            "disk_subset",
            "image_field",
            "prompt_field",
            "label_field",
            "metric",
            "max_new_tokens",
        )
        return {k: getattr(self, k) for k in keys}


def benchmark_specs(
    definitions: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    *,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    bad_rows: BadRows | None = None,
) -> list[BenchmarkSpec]:
    """The specs named in ``names`` (a domain's ``benchmarks`` list) from the composed ``benchmark`` node.

    ``limit`` / ``max_new_tokens`` / ``bad_rows``, when given, override every selected benchmark's own value.
    """
    specs = []
    for name in names:
        if name not in definitions:
            raise ValueError(f"benchmark {name!r} is not defined; defined: {sorted(definitions)} (conf/benchmark/)")
        node = definitions[name]
        if node.get("name", name) != name:
            raise ValueError(f"benchmark {name!r}: its name field says {node.get('name')!r}")
        specs.append(
            BenchmarkSpec.from_config(
                {"name": name, **node}, limit=limit, max_new_tokens=max_new_tokens, bad_rows=bad_rows
            )
        )
    return specs
