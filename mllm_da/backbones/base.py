"""The one backbone interface. Everything that differs between model families lives in a subclass of
:class:`Backbone` (one file per family) and its Hydra config; nothing else in the project tests a family name.

A backbone turns a conversation into training tensors (with assistant-only or synthesizer masking), builds
generation batches, knows its module groups (vision / projector / llm) and LoRA targets, and loads or exports
checkpoints. The model is always loaded through ``from_pretrained`` (hub id or folder); ``tiny`` and ``random``
variants are materialised to a folder first, so the real loading code is what the tests exercise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from PIL import Image

from mllm_da.backbones.chat_format import ChatFormat, MaskMode
from mllm_da.backbones.spec import BackboneSpec, Dtype, QuantizationBits, Truncation, Variant  # noqa: F401 - their old home
from mllm_da.utils.conversation import Turn
from mllm_da.utils.typed_config import Rules, check_value, raise_problems

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
GROUPS = ("vision", "projector", "llm")
#: LoRA only on the language model's linear layers: a plain name list would also hit vision MLPs/attention.
LLM_LORA_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class EncodedSample:
    """One tokenised conversation before image expansion: each image is one placeholder token in ``input_ids``."""

    input_ids: list[int]
    labels: list[int]
    images: list[Image.Image]
    expanded_length: int
    id: str = ""


@dataclass
class GroupCounts:
    total: int = 0
    trainable: int = 0


class Backbone(ABC):
    """Family adapter. Subclasses set the class attributes and implement the image-tensor methods."""

    family: ClassVar[str]
    model_class_name: ClassVar[str]
    default_format: ClassVar[ChatFormat]
    #: (group, parameter-name prefix) pairs; the first matching prefix wins, so put nested groups first
    group_prefixes: ClassVar[tuple[tuple[str, str], ...]]
    #: where a LoRA-wrapped or quantised model keeps the original names
    lora_target_regex: ClassVar[str] = LLM_LORA_REGEX
    #: modules never quantised by QLoRA (vision tower, projector, head), as bitsandbytes skip prefixes
    quantization_skip_modules: ClassVar[tuple[str, ...]] = ("lm_head",)

    def __init__(self, model: torch.nn.Module, processor: Any, spec: BackboneSpec):
        self.model = model
        self.processor = processor
        self.spec = spec
        self.chat_format = dataclasses.replace(self.default_format, **spec.chat_format)
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"{spec.family}: image token {self.image_token!r} is not in the tokenizer's vocabulary")

    # ----------------------------------------------------------------------------------------------- facts
    @property
    @abstractmethod
    def image_token(self) -> str:
        """The single token each image placeholder becomes before expansion."""

    @classmethod
    def model_class(cls) -> type[Any]:
        import transformers

        return getattr(transformers, cls.model_class_name)

    def stop_token_ids(self, synthesizer: bool = False) -> list[int]:
        """Token ids that end generation: the turn end, or the synthesizer's end-of-text (reference §2.2)."""
        strings = [self.chat_format.synthesizer_end] if synthesizer else list(self.chat_format.stop_strings)
        ids = [self.tokenizer.convert_tokens_to_ids(s) for s in strings if s]
        return [i for i in ids if i is not None]

    # ------------------------------------------------------------------------------------- module groups
    def group_of(self, parameter_name: str) -> str:
        """vision / projector / llm for a parameter name, also inside a PEFT wrapper."""
        name = re.sub(r"^(base_model\.model\.)+", "", parameter_name)
        name = name.replace(".base_layer.", ".")
        for group, prefix in self.group_prefixes:
            if name.startswith(prefix):
                return group
        raise KeyError(f"{self.family}: parameter {parameter_name!r} belongs to no module group")

    def group_parameters(self, model: torch.nn.Module | None = None) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
        groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {g: [] for g in GROUPS}
        for name, param in (model or self.model).named_parameters():
            groups[self.group_of(name)].append((name, param))
        return groups

    def group_counts(self, model: torch.nn.Module | None = None) -> dict[str, GroupCounts]:
        counts = {g: GroupCounts() for g in GROUPS}
        for group, params in self.group_parameters(model).items():
            for _, p in params:
                counts[group].total += p.numel()
                counts[group].trainable += p.numel() if p.requires_grad else 0
        return counts

    def group_module_prefixes(self, group: str) -> list[str]:
        return [prefix.rstrip(".") for g, prefix in self.group_prefixes if g == group]

    # ---------------------------------------------------------------------------------------- encoding
    def render(self, turns: Sequence[Turn], mode: MaskMode = "assistant", add_generation_prompt: bool = False):
        return self.chat_format.render(turns, mode=mode, add_generation_prompt=add_generation_prompt)

    def encode(
        self,
        turns: Sequence[Turn],
        image_sizes: Sequence[tuple[int, int]],
        *,
        mode: MaskMode = "assistant",
        sample_id: str = "",
    ) -> EncodedSample:
        """Tokenise a conversation and label exactly the characters that carry loss.

        Only the images' (width, height) are needed here, so lengths can be planned without decoding pixels;
        the caller attaches the decoded images to ``EncodedSample.images`` before collation.
        """
        text, spans = self.render(turns, mode=mode)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = enc["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        for i, (start, end) in enumerate(enc["offset_mapping"]):
            if end > start and any(s <= start < e for s, e in spans):
                labels[i] = ids[i]
        for i, tok in enumerate(ids):
            if tok == self.image_token_id:
                labels[i] = IGNORE_INDEX
        n_placeholders = sum(1 for t in ids if t == self.image_token_id)
        if n_placeholders != len(image_sizes):
            raise ValueError(
                f"record {sample_id or '?'}: {n_placeholders} image token(s) in the text "
                f"but {len(image_sizes)} image(s)"
            )
        extra = sum(self.num_image_tokens(w, h) - 1 for w, h in image_sizes)
        return EncodedSample(ids, labels, [], len(ids) + extra, sample_id)

    def truncate(self, sample: EncodedSample, cutoff_len: int, policy: str) -> EncodedSample | None:
        """Apply the cutoff without ever cutting through image tokens; ``None`` means drop the sample.

        ``policy='drop'`` drops any sample longer than the cutoff; ``'cut_text'`` cuts text after the last image
        block when what remains still has a trained token.
        """
        if sample.expanded_length <= cutoff_len:
            return sample
        raise_problems(check_value(policy, Truncation, "data.truncation", Rules())[1])  # a Python caller's value
        if policy == "drop":
            return None
        extra = sample.expanded_length - len(sample.input_ids)
        keep = cutoff_len - extra
        positions = [i for i, t in enumerate(sample.input_ids) if t == self.image_token_id]
        if keep <= 0 or (positions and positions[-1] >= keep):
            return None
        labels = sample.labels[:keep]
        if all(label == IGNORE_INDEX for label in labels):
            return None
        return dataclasses.replace(
            sample, input_ids=sample.input_ids[:keep], labels=labels, expanded_length=keep + extra
        )

    @abstractmethod
    def num_image_tokens(self, width: int, height: int) -> int:
        """How many tokens one image of this size becomes in the sequence."""

    @abstractmethod
    def image_inputs(
        self, images_per_sample: Sequence[Sequence[Image.Image]], *, compact: bool = False
    ) -> dict[str, torch.Tensor]:
        """Pixel tensors for a batch, in the model's own layout; ``compact`` lets the adapter leave to
        :meth:`model_inputs` what is cheaper on the model's device (see the adapter)."""

    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The model's keyword inputs from a collated batch, on the batch's device: bookkeeping keys (``_x``,
        ``sample_ids``) dropped and whatever a ``compact`` batch left undone done here."""
        return {k: v for k, v in batch.items() if k != "sample_ids" and not k.startswith("_")}

    def extra_inputs(
        self, input_ids: torch.Tensor, image_inputs: Mapping[str, torch.Tensor], n_images: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """Inputs derived from the expanded ids (Qwen's token types, Mllama's cross-attention mask)."""
        return {}

    def expand(self, sample: EncodedSample) -> tuple[list[int], list[int]]:
        """``input_ids`` and ``labels`` with each image placeholder repeated to the image's token count, labelled
        -100 (a one-token image keeps its own label); the text between placeholders is copied as slices."""
        counts = [self.num_image_tokens(img.width, img.height) for img in sample.images]
        positions = [i for i, tok in enumerate(sample.input_ids) if tok == self.image_token_id]
        ids: list[int] = []
        labels: list[int] = []
        start = 0
        for pos, n in zip(positions, counts, strict=True):
            ids += sample.input_ids[start:pos]
            labels += sample.labels[start:pos]
            ids += [self.image_token_id] * n
            labels += [sample.labels[pos]] if n == 1 else [IGNORE_INDEX] * n
            start = pos + 1
        ids += sample.input_ids[start:]
        labels += sample.labels[start:]
        return ids, labels

    def collate(
        self, samples: Sequence[EncodedSample], padding_side: str = "right", *, compact: bool = False
    ) -> dict[str, torch.Tensor]:
        """Expand image tokens, pad, and add pixel tensors. Labels are padded with -100. A ``compact`` batch (the
        training loader's) goes to the model through :meth:`model_inputs`."""
        images_per_sample = [s.images for s in samples]
        pixel = self.image_inputs(images_per_sample, compact=compact) if any(images_per_sample) else {}
        rows_ids, rows_labels = [], []
        for s in samples:
            ids, labs = self.expand(s)
            rows_ids.append(ids)
            rows_labels.append(labs)
        width = max(len(r) for r in rows_ids)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(samples), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(zip(rows_ids, rows_labels)):
            n = len(ids)
            sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
            input_ids[row, sl] = torch.tensor(ids)
            labels[row, sl] = torch.tensor(labs)
            attention[row, sl] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        batch.update({k: v for k, v in pixel.items() if not k.startswith("_")})  # "_x": helper data, not inputs
        batch.update(self.extra_inputs(input_ids, pixel, [len(i) for i in images_per_sample]))
        return batch

    # ------------------------------------------------------------------------------------------ packing
    #: several samples may share a row (positions restart per sample, no cross-sample attention); see collate_packed
    supports_packing: ClassVar[bool] = False
    #: why a family cannot be packed (the error message of collate_packed)
    packing_unsupported_reason: ClassVar[str] = "this family's inputs have no packed form"

    def sample_position_ids(self, ids: Sequence[int], images: Sequence[Image.Image]) -> torch.Tensor:
        """Position ids of one expanded sample, from 0, shape (rows, len): one row (1-D RoPE) by default."""
        return torch.arange(len(ids)).unsqueeze(0)

    def collate_packed(
        self, samples: Sequence[EncodedSample], capacity: int, *, compact: bool = False
    ) -> dict[str, Any]:
        """Pack the samples into as few rows of at most ``capacity`` tokens as first-fit decreasing finds, with
        no attention across samples.

        Instead of an attention mask the batch carries ``position_ids`` that restart at 0 for every sample;
        transformers (5.x) turns restarts into a block-diagonal causal mask for SDPA and eager attention and into
        variable-length kernels for flash attention. Each sample's first label is -100, so no token learns to
        predict the next sample. The row-tail padding is its own segment with labels -100. Same samples, same
        loss as :meth:`collate` (the loss is the mean over labelled tokens either way); ``_real_tokens`` counts
        the non-padding tokens; ``use_cache=False`` because transformers reads packed positions only without a
        KV cache. ``compact`` as in :meth:`collate`.
        """
        if not self.supports_packing:
            raise ValueError(f"{self.family}: data.packing=true is not supported: {self.packing_unsupported_reason}")
        expanded = [self.expand(s) for s in samples]
        bins = pack_bins([len(ids) for ids, _ in expanded], capacity)
        order = [i for b in bins for i in b]
        images_in_order = [samples[i].images for i in order]  # images follow their tokens, row by row
        pixel = self.image_inputs(images_in_order, compact=compact) if any(images_in_order) else {}
        width = max(sum(len(expanded[i][0]) for i in b) for b in bins)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
        labels = torch.full((len(bins), width), IGNORE_INDEX, dtype=torch.long)
        position_rows: torch.Tensor | None = None
        real = 0
        for row, members in enumerate(bins):
            at = 0
            for i in members:
                ids, labs = expanded[i]
                n = len(ids)
                positions = self.sample_position_ids(ids, samples[i].images)
                if position_rows is None:
                    position_rows = torch.zeros((positions.shape[0], len(bins), width), dtype=torch.long)
                input_ids[row, at : at + n] = torch.tensor(ids)
                labels[row, at + 1 : at + n] = torch.tensor(labs[1:])
                position_rows[:, row, at : at + n] = positions
                at += n
            real += at
            if position_rows is not None and at < width:  # the padding tail: a segment of its own
                position_rows[:, row, at:] = torch.arange(width - at)
        assert position_rows is not None  # every bin holds at least one sample
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_rows[0] if position_rows.shape[0] == 1 else position_rows,
        }
        batch.update({k: v for k, v in pixel.items() if not k.startswith("_")})
        batch.update(self.extra_inputs(input_ids, pixel, [len(i) for i in images_in_order]))
        batch["_real_tokens"] = torch.tensor(real)
        batch["use_cache"] = False  # transformers detects packed segments only without a KV cache
        return batch

    def generation_prompt_ids(self, turns: Sequence[Turn], prefill: str = "") -> list[int]:
        """A generation prompt's token ids (one image token per image, not yet expanded): the turns rendered
        with the open assistant header, or the open user header after an assistant turn (reference §2.2), then
        ``prefill``, text the continuation is made to start with (tokenised with the rest, as in training). Any
        engine (transformers or vLLM) gets these same ids."""
        text, _ = self.render(turns, add_generation_prompt=turns[-1].role == "user")
        if turns[-1].role == "assistant":
            text += self.chat_format.user_prefix
        return list(self.tokenizer(text + prefill, add_special_tokens=False)["input_ids"])

    def generation_batch(
        self, prompts: Sequence[tuple[Sequence[Turn], Sequence[Image.Image]]], prefill: str = ""
    ) -> dict[str, torch.Tensor]:
        """A left-padded batch of prompts ending with the open assistant header (or an open user header when
        the last turn is an assistant turn, as the synthesizer prompt of reference §2.2 needs), then ``prefill``."""
        samples = []
        for turns, images in prompts:
            ids = self.generation_prompt_ids(turns, prefill)
            extra = sum(self.num_image_tokens(i.width, i.height) - 1 for i in images)
            samples.append(EncodedSample(ids, [IGNORE_INDEX] * len(ids), list(images), len(ids) + extra))
        batch = self.collate(samples, padding_side="left")
        batch.pop("labels")
        return batch

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    @abstractmethod
    def tiny_config(cls, tokenizer: Any, sizes: Mapping[str, Any]) -> Any:
        """A transformers config of this family, sized by ``sizes``, with token ids from ``tokenizer``."""

    @classmethod
    @abstractmethod
    def tiny_processor(cls, sizes: Mapping[str, Any], image: Mapping[str, Any]) -> Any:
        """Processor with an offline tokenizer and this family's chat template."""

    @classmethod
    @abstractmethod
    def load_processor(cls, folder: str, image: Mapping[str, Any]) -> Any:
        """Load the processor saved in ``folder`` (or a hub id), applying image-setting overrides."""

    @classmethod
    def random_config(cls, config_path: str, tokenizer: Any) -> Any:
        """A real-size config from a JSON kept in the repo, with token ids pointed at ``tokenizer``."""
        config_cls = cls.model_class().config_class
        data = {k: v for k, v in json.loads(Path(config_path).read_text()).items() if not k.startswith("_")}
        config = config_cls(**data)
        cls.point_config_at_tokenizer(config, tokenizer)
        return config

    @classmethod
    def point_config_at_tokenizer(cls, config: Any, tokenizer: Any) -> None:
        """Override special-token ids so that a random-init real-size model works with a tiny tokenizer."""
        return None

    @classmethod
    def save_processor(cls, processor: Any, folder: Path) -> None:
        processor.save_pretrained(folder)

    def save(self, folder: str | Path, model: torch.nn.Module | None = None) -> Path:
        """Write a plain-transformers folder: weights as safetensors, processor, chat template."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # a plain transformers model (a LoRA model is merged before it is saved); nn.Module's stubs lack save_pretrained
        cast("PreTrainedModel", model or self.model).save_pretrained(folder, safe_serialization=True)
        self.save_processor(self.processor, folder)
        return folder


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped first-fit decreasing into bins of total length at most ``capacity`` (a longer item gets a
    bin of its own); deterministic for equal lengths."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def spec_hash(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
