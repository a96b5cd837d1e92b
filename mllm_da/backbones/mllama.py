"""Llama-3.2-Vision (Mllama): one ``<|image|>`` token per image, image features enter through cross-attention
layers, so the batch carries a cross-attention mask built from the token ids and the tile counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import MllamaImageProcessorPil, MllamaProcessor
from transformers.models.mllama.processing_mllama import (
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)

from mllm_da.backbones.base import Backbone
from mllm_da.backbones.chat_format import LLAMA3_HEADERS
from mllm_da.backbones.fast_image import mllama_pixel_inputs, pixel_dtype
from mllm_da.backbones.llava_next import llama3_tokenizer, llama_text_config


class Mllama(Backbone):
    family = "mllama"
    model_class_name = "MllamaForConditionalGeneration"
    default_format = LLAMA3_HEADERS
    group_prefixes = (
        ("vision", "model.vision_model."),
        ("projector", "model.multi_modal_projector."),
        ("llm", "model.language_model."),
        ("llm", "lm_head."),
    )
    # the CPU int8 kernel cannot take the projector's 5-D input (docs/cpu-feasibility.md §5)
    quantization_skip_modules = ("model.vision_model", "model.multi_modal_projector", "lm_head")
    packing_unsupported_reason = (
        "Mllama's images enter through cross-attention with a per-row (batch, images, tiles) pixel layout and a "
        "cross_attention_mask that transformers derives from image-token spans, so in a packed row the text before "
        "a sample's <|image|> would cross-attend to the previous sample's image; use data.packing=false"
    )
    #: build pixel inputs with the fast path (fast_image.py, bit-identical to transformers' processor of
    #: spec.image_backend); False: transformers' PIL processor
    fast_pixels: bool = True

    @property
    def image_token(self) -> str:
        return "<|image|>"

    def num_image_tokens(self, width: int, height: int) -> int:
        return 1

    def image_inputs(
        self, images_per_sample: Sequence[Sequence[Image.Image]], *, compact: bool = False
    ) -> dict[str, Any]:
        if any(len(imgs) == 0 for imgs in images_per_sample):
            raise ValueError("mllama: a batch must not mix samples with and without images")
        nested = [list(i) for i in images_per_sample]
        ip = self.processor.image_processor
        out = None
        if self.fast_pixels:
            out = mllama_pixel_inputs(nested, ip, pixel_dtype(self.spec.dtype), self.spec.image_backend)
        if out is None:
            out = ip(images=nested, return_tensors="pt")
        return {
            "pixel_values": out["pixel_values"],
            "aspect_ratio_ids": out["aspect_ratio_ids"],
            "aspect_ratio_mask": out["aspect_ratio_mask"],
            "_num_tiles": out["num_tiles"],
        }

    def extra_inputs(self, input_ids, image_inputs, n_images) -> dict[str, torch.Tensor]:
        if "_num_tiles" not in image_inputs:
            return {}
        token_masks = [get_cross_attention_token_mask(row.tolist(), self.image_token_id) for row in input_ids]
        dense = convert_sparse_cross_attention_mask_to_dense(
            token_masks,
            num_tiles=image_inputs["_num_tiles"],
            max_num_tiles=self.processor.image_processor.max_image_tiles,
            length=input_ids.shape[1],
        )
        return {"cross_attention_mask": torch.as_tensor(dense)}

    @classmethod
    def tiny_config(cls, tokenizer: Any, sizes: Mapping[str, Any]) -> Any:
        layers = sizes.get("layers", 2) + 1  # one extra layer is the cross-attention layer
        vision_hidden = sizes.get("vision_hidden", 64)
        tiles = sizes.get("max_tiles", 2)
        vision = dict(
            hidden_size=vision_hidden,
            intermediate_size=sizes.get("vision_intermediate", 2 * vision_hidden),
            num_hidden_layers=sizes.get("vision_layers", 2),
            num_global_layers=1,
            attention_heads=sizes.get("vision_heads", 4),
            image_size=sizes.get("vision_image_size", 56),
            patch_size=sizes.get("vision_patch", 14),
            max_num_tiles=tiles,
            supported_aspect_ratios=cls.aspect_ratios(tiles),
            intermediate_layers_indices=[0],
            vision_output_dim=vision_hidden * 2,
        )
        text = llama_text_config(
            tokenizer,
            {**sizes, "layers": layers},
            cross_attention_layers=[layers // 2],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        config = cls.model_class().config_class(vision_config=vision, text_config=text)
        cls.point_config_at_tokenizer(config, tokenizer)
        return config

    @staticmethod
    def aspect_ratios(max_tiles: int) -> list[list[int]]:
        return [[w, h] for w in range(1, max_tiles + 1) for h in range(1, max_tiles + 1) if w * h <= max_tiles]

    @classmethod
    def point_config_at_tokenizer(cls, config: Any, tokenizer: Any) -> None:
        config.image_token_index = tokenizer.convert_tokens_to_ids("<|image|>")
        text = config.get_text_config()
        text.vocab_size = max(text.vocab_size, len(tokenizer))
        text.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def image_processor(cls, sizes: Mapping[str, Any], image: Mapping[str, Any]) -> MllamaImageProcessorPil:
        """The tiny/random presets' image processor: tiles of the vision tower's size, up to ``max_tiles``."""
        size = sizes.get("vision_image_size", 56)
        return MllamaImageProcessorPil(
            size={"height": size, "width": size},
            max_image_tiles=sizes.get("max_tiles", 2),
            **{k: list(v) if isinstance(v, Sequence) else v for k, v in image.items()},
        )

    @classmethod
    def tiny_processor(cls, sizes: Mapping[str, Any], image: Mapping[str, Any]) -> Any:
        tokenizer = llama3_tokenizer(sizes, cls.default_format.to_jinja())
        return MllamaProcessor(
            image_processor=cls.image_processor(sizes, image),
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
        )

    @classmethod
    def load_processor(cls, folder: str, image: Mapping[str, Any]) -> Any:
        overrides: dict[str, Any] = {
            k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in image.items()
        }
        return MllamaProcessor.from_pretrained(folder, **overrides)
