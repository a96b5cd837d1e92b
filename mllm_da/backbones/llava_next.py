"""LLaVA-v1.6 (LLaVA-NeXT) with a Llama-3 language model: anyres tiles, CLIP tower, ``<image>`` expanded to the
tile features plus one newline token per row."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

from mllm_da.backbones.base import Backbone
from mllm_da.backbones.chat_format import LLAMA3_HEADERS
from mllm_da.backbones.fast_image import llava_next_pixel_inputs, pixel_dtype
from mllm_da.backbones.tiny import tokenizer_corpus, train_bpe_tokenizer

LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
    "<image>",
    "<|reserved_special_token_4|>",
)


#: the ``llava_llama_3`` conversation's system prompt (reference §8.1); the presets' chat_format.default_system
#: (conf/model/llava_next_llama3_8b.yaml) and the LLaVA converter's chat template carry it
LLAVA_LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)


def llama3_tokenizer(sizes: Mapping[str, Any], chat_template: str):
    """Offline Llama-3-style tokenizer: header tokens, ``<|eot_id|>`` ends a turn, both image tokens present."""
    return train_bpe_tokenizer(
        tokenizer_corpus(),
        LLAMA3_SPECIALS,
        vocab_size=sizes.get("vocab", 512),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        chat_template=chat_template,
    )


def llama_text_config(tokenizer: Any, sizes: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    hidden = sizes.get("hidden", 128)
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=sizes.get("intermediate", 4 * hidden),
        num_hidden_layers=sizes.get("layers", 2),
        num_attention_heads=sizes.get("heads", 4),
        num_key_value_heads=sizes.get("kv_heads", 2),
        max_position_embeddings=sizes.get("max_positions", 2048),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


class LlavaNext(Backbone):
    family = "llava_next"
    model_class_name = "LlavaNextForConditionalGeneration"
    default_format = dataclasses.replace(LLAMA3_HEADERS, image_text="<image>")
    group_prefixes = (
        ("vision", "model.vision_tower."),
        ("projector", "model.multi_modal_projector."),
        ("projector", "model.image_newline"),
        ("llm", "model.language_model."),
        ("llm", "lm_head."),
    )
    quantization_skip_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    #: 1-D positions restarting per sample; image features are scattered into the image tokens in row order
    supports_packing = True
    #: build pixel inputs with the fast path (fast_image.py, bit-identical to transformers' processor of
    #: spec.image_backend); False: transformers' PIL processor
    fast_pixels: bool = True

    @property
    def image_token(self) -> str:
        return self.chat_format.image_text

    def num_image_tokens(self, width: int, height: int) -> int:
        # the processor's _get_num_multimodal_tokens, without its per-call kwargs merging (costly per image)
        size = self.processor.image_processor.size
        side = size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"])
        count = self.processor._get_number_of_features(height, width, side, side)
        return count - 1 if self.processor.vision_feature_select_strategy == "default" else count

    def image_inputs(
        self, images_per_sample: Sequence[Sequence[Image.Image]], *, compact: bool = False
    ) -> dict[str, torch.Tensor]:
        flat = [img for imgs in images_per_sample for img in imgs]
        ip = self.processor.image_processor
        out = None
        if self.fast_pixels:
            out = llava_next_pixel_inputs(flat, ip, pixel_dtype(self.spec.dtype), self.spec.image_backend)
        if out is None:
            out = ip(images=flat, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_sizes": out["image_sizes"]}

    @classmethod
    def tiny_config(cls, tokenizer: Any, sizes: Mapping[str, Any]) -> Any:
        crop, patch = sizes.get("vision_image_size", 56), sizes.get("vision_patch", 14)
        vision_hidden = sizes.get("vision_hidden", 64)
        vision = dict(
            model_type="clip_vision_model",
            hidden_size=vision_hidden,
            intermediate_size=sizes.get("vision_intermediate", 2 * vision_hidden),
            num_hidden_layers=sizes.get("vision_layers", 2),
            num_attention_heads=sizes.get("vision_heads", 4),
            image_size=crop,
            patch_size=patch,
            projection_dim=vision_hidden,
        )
        config = cls.model_class().config_class(
            vision_config=vision,
            text_config=dict(model_type="llama", **llama_text_config(tokenizer, sizes)),
            image_grid_pinpoints=cls.pinpoints(crop),
            vision_feature_layer=-2 if sizes.get("vision_layers", 2) > 1 else -1,
            vision_feature_select_strategy="default",
            image_seq_length=(crop // patch) ** 2,
        )
        cls.point_config_at_tokenizer(config, tokenizer)
        return config

    @staticmethod
    def pinpoints(crop: int) -> list[list[int]]:
        return [[crop, crop], [crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop]]

    @classmethod
    def point_config_at_tokenizer(cls, config: Any, tokenizer: Any) -> None:
        config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
        text = config.get_text_config()
        text.vocab_size = max(text.vocab_size, len(tokenizer))
        text.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def image_processor(cls, sizes: Mapping[str, Any], image: Mapping[str, Any]) -> LlavaNextImageProcessorPil:
        """The tiny/random presets' image processor: square tiles of the vision tower's size, a 2×2 anyres grid."""
        crop = sizes.get("vision_image_size", 56)
        return LlavaNextImageProcessorPil(
            size={"shortest_edge": crop},
            crop_size={"height": crop, "width": crop},
            image_grid_pinpoints=cls.pinpoints(crop),
            **{k: list(v) if isinstance(v, Sequence) else v for k, v in image.items()},
        )

    @classmethod
    def tiny_processor(cls, sizes: Mapping[str, Any], image: Mapping[str, Any]) -> Any:
        patch = sizes.get("vision_patch", 14)
        tokenizer = llama3_tokenizer(sizes, cls.default_format.to_jinja())
        return LlavaNextProcessor(
            image_processor=cls.image_processor(sizes, image),
            tokenizer=tokenizer,
            patch_size=patch,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=tokenizer.chat_template,
        )

    @classmethod
    def load_processor(cls, folder: str, image: Mapping[str, Any]) -> Any:
        overrides: dict[str, Any] = {
            k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in image.items()
        }
        return LlavaNextProcessor.from_pretrained(folder, **overrides)

    def __init__(self, model, processor, spec):
        # the AdaMLLM checkpoints use <|reserved_special_token_4|> as image token: the processor must agree
        image_text = spec.chat_format.get("image_text")
        if image_text and processor.image_token != image_text:
            processor.image_token = image_text
            processor.image_token_id = processor.tokenizer.convert_tokens_to_ids(image_text)
        super().__init__(model, processor, spec)
        if getattr(model.config, "image_token_index", None) not in (None, self.image_token_id):
            model.config.image_token_index = self.image_token_id
            if hasattr(model, "model"):
                model.model.config.image_token_index = self.image_token_id
