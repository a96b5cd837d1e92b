"""The nodes of synth.py's, evaluate.py's and predict.py's configs (conf/synth.yaml, evaluate.yaml, predict.yaml
and the synthesizer / filter groups) as typed configs. Defaults equal the YAML's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mllm_da.config.train_nodes import BadRecords
from mllm_da.utils.typed_config import option

SYNTH_STAGES = ("tune_synthesizer", "synthesize", "filter", "all")
Progress = Literal["auto", True, False]


def _rules_kind(node: Any) -> bool:
    return node.get("kind") == "rules"


def _llm_backend(node: Any) -> bool:
    return node.get("backend") == "llm"


def _toy_source(node: Any) -> bool:
    return node.get("source") == "toy"


@dataclass
class SynthesizerConfig:
    """A ``synthesizer=`` preset: a model that writes tasks (tuned first or not) or the rule-based writer."""

    name: str
    kind: Literal["model", "rules"]
    #: a folder holding an already-tuned synthesizer: used as is, no tuning
    checkpoint: str | None = None
    #: rules only: questions per image
    questions: int | None = option(None, ge=1, when=_rules_kind)


@dataclass
class SamplingConfig:
    temperature: float = option(0.0, ge=0.0)
    top_p: float = option(1.0, gt=0.0, le=1.0)
    seed: int = option(0, ge=0)
    greedy_answers: bool = False


@dataclass
class VLLMEngineConfig:
    """``synthesis.vllm`` / ``filter.vllm``: the ``vllm.LLM`` engine (null: vLLM's default, or the reference's
    context length 6144 for synthesis and ``filter.max_length`` for the judge)."""

    tensor_parallel_size: int = option(1, ge=1)
    gpu_memory_utilization: float = option(0.9, gt=0.0, le=1.0)
    max_model_len: int | None = option(None, ge=1)
    #: null: the model preset's dtype (synthesis) or filter.model.dtype (judge)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] | None = None
    enforce_eager: bool = False
    max_num_seqs: int | None = option(None, ge=1)
    #: any other vllm.LLM argument by name
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelfCheckConfig:
    """``synthesis.self_check``: the synthesizer answers each triplet's question once more, directly and greedily;
    the filter keeps a triplet only when that answer agrees with its precise answer."""

    enabled: bool = False
    max_new_tokens: int = option(32, ge=1)


@dataclass
class SynthesisConfig:
    """``synthesis``: batches, shards and decoding of the synthesizer's generation."""

    batch_size: int = option(32, ge=1)
    max_new_tokens: int = option(512, ge=1)
    limit: int | None = option(None, ge=1)
    num_shards: int = option(1, ge=1)
    shard_index: int | None = option(None, ge=0)
    processes: int = option(1, ge=1)
    device: str = "auto"
    progress: Progress = "auto"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    #: the hint every synthesizer output is made to start with; null: the synthesizer picks (the reference)
    first_hint: Literal["informative", "precise"] | None = None
    self_check: SelfCheckConfig = field(default_factory=SelfCheckConfig)
    reference_answer_cut: bool = False
    threads: int | None = option(None, ge=1)
    #: hf (transformers' generate) or vllm (one engine per worker process, settings in vllm)
    backend: Literal["hf", "vllm"] = "hf"
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    #: extra attempts of a failing batch before its records are tried alone and recorded as failed
    batch_retries: int = option(2, ge=0)
    #: only merge the shards' batches (written by other jobs or nodes) and go on; refused while any is missing
    merge_only: bool = False

    def rules(self, path: str) -> list[str]:
        return sharding_problems(path, self.num_shards, self.shard_index, self.processes, self.merge_only)


@dataclass
class FilterConfig:
    """A ``filter=`` preset: the consistency filter of synthesized triplets."""

    backend: Literal["llm", "heuristic", "none"]
    #: llm only: the judge model (variant, source, dtype, tiny sizes)
    model: dict[str, Any] | None = None
    prompt_file: str | None = None
    batch_size: int = option(16, ge=1, when=_llm_backend)
    max_new_tokens: int = option(2, ge=1, when=_llm_backend)
    max_length: int = option(8192, ge=1, when=_llm_backend)
    stop_token: str = "<|end_of_text|>"
    device: str = "auto"
    #: llm only: the judge's engine, hf (transformers) or vllm (settings in vllm)
    engine: Literal["hf", "vllm"] = "hf"
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    batch_retries: int = option(2, ge=0, when=_llm_backend)
    #: llm only: batches go to shard (batch % num_shards); shard_index judges one shard (a job of a multirun),
    #: processes > 1 one judge per worker process here, merge_only merges the shards' judgements or refuses
    num_shards: int = option(1, ge=1)
    shard_index: int | None = option(None, ge=0)
    processes: int = option(1, ge=1)
    merge_only: bool = False

    def rules(self, path: str) -> list[str]:
        sharded = self.num_shards > 1 or self.shard_index is not None or self.processes > 1 or self.merge_only
        if sharded and self.backend != "llm":
            return [f"{path}.num_shards/shard_index/processes/merge_only shard the LLM judge; use filter=llm"]
        return sharding_problems(path, self.num_shards, self.shard_index, self.processes, self.merge_only)


def sharding_problems(
    path: str, num_shards: int, shard_index: int | None, processes: int, merge_only: bool
) -> list[str]:
    """The rules synthesis's and the filter's shard settings share."""
    if merge_only and shard_index is not None:
        return [f"{path}.merge_only merges every shard; it cannot go with {path}.shard_index"]
    if shard_index is not None and not shard_index < num_shards:
        return [f"{path}.shard_index={shard_index} must lie in [0, num_shards={num_shards})"]
    if shard_index is not None and processes > 1:
        return [f"{path}.shard_index runs one shard in this process; it cannot go with processes > 1"]
    if processes > num_shards:
        return [f"{path}.processes={processes} needs at least as many shards; set {path}.num_shards"]
    return []


@dataclass
class VisionFlanConfig:
    root: str | None = None
    caption_file: str | None = None
    precise_file: str | None = None
    informative_file: str | None = None
    image_root: str | None = None


@dataclass
class SeedDataConfig:
    """``seed_data``: what a synthesizer is tuned on (the toy seed set or the reference's VisionFLAN files)."""

    source: Literal["toy", "visionflan"] = "toy"
    n_images: int = option(2000, ge=1, when=_toy_source)
    questions_per_image: int = option(3, ge=1, when=_toy_source)
    question_types: list[str] | None = None
    answer_types: list[str] | None = None
    balanced_types: bool = False
    blank_fraction: float = option(0.1, ge=0.0, le=1.0)
    dev_fraction: float = option(0.1, ge=0.0, lt=1.0)
    seed: int = option(0, ge=0, when=_toy_source)
    allow_on_other_domains: bool = False
    visionflan: VisionFlanConfig = field(default_factory=VisionFlanConfig)


@dataclass
class TuneConfig:
    """``tune``: the synthesizer's tuning run (None: the model preset's recipe)."""

    enabled: bool = True
    steps: int | None = option(300, ge=1)
    epochs: int | None = option(None, ge=1)
    micro_batch_size: int | None = option(None, ge=1)
    global_batch_size: int | None = option(None, ge=1)
    lr: float | None = option(None, gt=0.0)
    overrides: list[str] = field(default_factory=list)

    def rules(self, path: str) -> list[str]:
        if self.steps is None and self.epochs is None:
            return [f"tune needs {path}.steps or {path}.epochs"]
        micro, batch = self.micro_batch_size, self.global_batch_size
        if micro and batch and batch % micro:
            return [f"{path}.global_batch_size={batch} is not a multiple of {path}.micro_batch_size={micro}"]
        return []


@dataclass
class FormattingConfig:
    inverse_tasks: bool = False
    templates_file: str | None = None


@dataclass
class QualityConfig:
    blind_sample: int = option(64, ge=0)


@dataclass
class SynthRoot:
    """conf/synth.yaml's top-level values; its nodes are SYNTH_NODES (``tune`` is checked when a synthesizer is
    tuned, ``model`` when it is a model: config_checks)."""

    EXTRA_KEYS = "*"

    stage: Literal[SYNTH_STAGES] = "all"  # type: ignore[valid-type]
    bad_records: BadRecords = "skip"
    seed: int = option(0, ge=0)


@dataclass
class GenerationRoot:
    """What evaluate.yaml and predict.yaml share: the model, the generation backend, batches and device."""

    EXTRA_KEYS = "*"

    backend: Literal["hf", "vllm", "auto"] = "hf"
    batch_size: int = option(8, ge=1)
    seed: int = option(0, ge=0)
    device: str = "auto"
    progress: Progress = "auto"
    vllm: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateRoot(GenerationRoot):
    """conf/evaluate.yaml's top level (benchmark names are checked against ``benchmark`` in config_checks)."""

    limit: int | None = option(None, ge=0)
    max_new_tokens: int | None = option(None, ge=1)
    bad_rows: Literal["fail", "skip"] | None = None
    shuffle_images: bool = False


@dataclass
class PredictRoot(GenerationRoot):
    """conf/predict.yaml's top level."""

    max_new_tokens: int = option(32, ge=1)
    progress: Progress = False


#: synth.py's nodes checked whatever runs
SYNTH_NODES: dict[str, type] = {
    "synthesizer": SynthesizerConfig,
    "synthesis": SynthesisConfig,
    "filter": FilterConfig,
    "seed_data": SeedDataConfig,
    "formatting": FormattingConfig,
    "quality": QualityConfig,
}
