"""Qwen2-VL and Qwen2.5-VL: ChatML, ``<|image_pad|>`` expanded to one token per 2×2 merged patch group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.processing_utils import ProcessorMixin

from mllm_da.backbones.base import Backbone
from mllm_da.backbones.chat_format import QWEN_CHATML
from mllm_da.backbones.fast_image import pixel_dtype, qwen_pixel_inputs, qwen_temporal_copies
from mllm_da.backbones.tiny import mrope_section, tokenizer_corpus, train_bpe_tokenizer

QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


class _ImageOnlyMixin:
    """Qwen's processors insist on a video processor, whose class needs torchvision; we only need images."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class Qwen2VLImageOnlyProcessor(_ImageOnlyMixin, Qwen2VLProcessor):
    pass


class Qwen2_5_VLImageOnlyProcessor(_ImageOnlyMixin, Qwen2_5_VLProcessor):
    pass


class Qwen2VL(Backbone):
    family = "qwen2_vl"
    model_class_name = "Qwen2VLForConditionalGeneration"
    processor_class: type = Qwen2VLImageOnlyProcessor
    default_format = QWEN_CHATML
    group_prefixes = (
        ("projector", "model.visual.merger."),
        ("vision", "model.visual."),
        ("llm", "model.language_model."),
        ("llm", "lm_head."),
    )
    quantization_skip_modules = ("model.visual", "lm_head")
    #: build pixel inputs with the fast path (fast_image.py, bit-identical to transformers' processor of
    #: spec.image_backend); False: transformers' PIL processor
    fast_pixels: bool = True

    @property
    def image_token(self) -> str:
        return "<|image_pad|>"

    def num_image_tokens(self, width: int, height: int) -> int:
        # the processor's _get_num_multimodal_tokens, without its per-call kwargs merging (costly per image)
        rows, cols = self.image_grid(width, height)
        return rows * cols // self.processor.image_processor.merge_size**2

    def image_inputs(
        self, images_per_sample: Sequence[Sequence[Image.Image]], *, compact: bool = False
    ) -> dict[str, torch.Tensor]:
        """``compact``: each patch once (3 * p * p values), not once per temporal slot; :meth:`model_inputs`
        repeats it on the model's device, where the copy costs next to nothing (the loader gain is measured in
        benchmarks/README.md)."""
        flat = [img for imgs in images_per_sample for img in imgs]
        ip = self.processor.image_processor
        # pixels in the model's half-precision dtype when it has one: the same values the model casts them to
        out = None
        if self.fast_pixels:
            out = qwen_pixel_inputs(
                flat, ip, pixel_dtype(self.spec.dtype), self.spec.image_backend, temporal_copies=not compact
            )
        if out is None:
            out = ip(images=flat, return_tensors="pt")
            if compact:
                n, temporal = out["pixel_values"].shape[0], ip.temporal_patch_size
                out["pixel_values"] = out["pixel_values"].view(n, 3, temporal, -1)[:, :, 0].reshape(n, -1)
        merge = ip.merge_size
        counts = (out["image_grid_thw"].prod(-1) // merge**2).tolist()
        expected = [self.num_image_tokens(i.width, i.height) for i in flat]
        if counts != expected:
            raise RuntimeError(f"image token counts {counts} differ from the planned {expected}")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        inputs = super().model_inputs(batch)
        pixels = inputs.get("pixel_values")
        ip = self.processor.image_processor
        temporal = int(ip.temporal_patch_size)
        if pixels is not None and temporal > 1 and pixels.shape[-1] == 3 * ip.patch_size**2:  # compact
            inputs["pixel_values"] = qwen_temporal_copies(pixels, temporal)
        return inputs

    # ------------------------------------------------------------------------------------------ packing
    supports_packing = True

    def image_grid(self, width: int, height: int) -> tuple[int, int]:
        """(rows, columns) of patches the image processor makes of an image of this size."""
        ip = self.processor.image_processor
        h, w = smart_resize(
            height,
            width,
            factor=ip.patch_size * ip.merge_size,
            min_pixels=ip.size["shortest_edge"],
            max_pixels=ip.size["longest_edge"],
        )
        return h // ip.patch_size, w // ip.patch_size

    def sample_position_ids(self, ids, images) -> torch.Tensor:
        """(4, len): the text positions transformers reads packing segments from, then the M-RoPE
        (temporal, height, width) positions exactly as ``get_rope_index`` computes them for one sample."""
        merge = self.processor.image_processor.merge_size
        grids = iter([self.image_grid(img.width, img.height) for img in images])
        mrope = torch.empty((3, len(ids)), dtype=torch.long)
        pos = j = 0
        while j < len(ids):
            if ids[j] == self.image_token_id:
                gh, gw = next(grids)
                rows, cols = gh // merge, gw // merge
                n = rows * cols
                mrope[0, j : j + n] = pos
                mrope[1, j : j + n] = torch.arange(rows).repeat_interleave(cols) + pos
                mrope[2, j : j + n] = torch.arange(cols).repeat(rows) + pos
                j += n
                pos += max(gh, gw) // merge
            else:
                k = j
                while k < len(ids) and ids[k] != self.image_token_id:
                    k += 1
                mrope[:, j:k] = torch.arange(k - j) + pos
                pos += k - j
                j = k
        return torch.cat([torch.arange(len(ids)).unsqueeze(0), mrope])

    def extra_inputs(self, input_ids, image_inputs, n_images) -> dict[str, torch.Tensor]:
        # transformers 5.x Qwen2-VL needs the token types whenever image_grid_thw is given
        return {"mm_token_type_ids": (input_ids == self.image_token_id).long()}

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def vision_config(cls, sizes: Mapping[str, Any], hidden: int) -> dict[str, Any]:
        return dict(
            depth=sizes.get("vision_layers", 2),
            embed_dim=sizes.get("vision_hidden", 64),
            hidden_size=hidden,
            num_heads=sizes.get("vision_heads", 4),
            mlp_ratio=sizes.get("vision_mlp_ratio", 4),
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )

    @classmethod
    def tiny_config(cls, tokenizer: Any, sizes: Mapping[str, Any]) -> Any:
        hidden, heads = sizes.get("hidden", 128), sizes.get("heads", 4)
        text = dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=sizes.get("intermediate", 4 * hidden),
            num_hidden_layers=sizes.get("layers", 2),
            num_attention_heads=heads,
            num_key_value_heads=sizes.get("kv_heads", 2),
            max_position_embeddings=sizes.get("max_positions", 2048),
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "default",
                "mrope_section": mrope_section(hidden // heads),
                "rope_theta": 10000.0,
            },
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )
        config = cls.model_class().config_class(text_config=text, vision_config=cls.vision_config(sizes, hidden))
        cls.point_config_at_tokenizer(config, tokenizer)
        return config

    @classmethod
    def point_config_at_tokenizer(cls, config: Any, tokenizer: Any) -> None:
        ids = tokenizer.convert_tokens_to_ids
        config.image_token_id = ids("<|image_pad|>")
        config.video_token_id = ids("<|video_pad|>")
        config.vision_start_token_id = ids("<|vision_start|>")
        config.vision_end_token_id = ids("<|vision_end|>")
        text = config.get_text_config()
        text.vocab_size = max(text.vocab_size, len(tokenizer))
        text.pad_token_id = tokenizer.pad_token_id
        text.eos_token_id = ids("<|im_end|>")

    @classmethod
    def image_processor(cls, image: Mapping[str, Any], base: Any | None = None) -> Qwen2VLImageProcessorPil:
        kwargs: dict[str, Any] = dict(patch_size=14, temporal_patch_size=2, merge_size=2)
        if base is not None:
            kwargs.update(base.to_dict())
            for key in ("image_processor_type", "processor_class", "_processor_class"):
                kwargs.pop(key, None)
        kwargs.update(
            {k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v) for k, v in image.items()}
        )
        if "min_pixels" in image or "max_pixels" in image:
            kwargs["size"] = {
                "shortest_edge": kwargs.get("min_pixels", 56 * 56),
                "longest_edge": kwargs.get("max_pixels", 28 * 28 * 1280),
            }
        return Qwen2VLImageProcessorPil(**kwargs)

    @classmethod
    def tiny_processor(cls, sizes: Mapping[str, Any], image: Mapping[str, Any]) -> Any:
        tokenizer = train_bpe_tokenizer(
            tokenizer_corpus(),
            QWEN_SPECIALS,
            vocab_size=sizes.get("vocab", 512),
            bos_token=None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            chat_template=cls.default_format.to_jinja(),
        )
        return cls.processor_class(cls.image_processor(image), tokenizer, chat_template=tokenizer.chat_template)

    @classmethod
    def load_processor(cls, folder: str, image: Mapping[str, Any]) -> Any:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        base = Qwen2VLImageProcessorPil.from_pretrained(folder)
        return cls.processor_class(cls.image_processor(image, base), tokenizer, chat_template=tokenizer.chat_template)

    @classmethod
    def save_processor(cls, processor: Any, folder: Path) -> None:
        # tokenizer + image processor files, as the hub checkpoints have them, so plain transformers reloads
        # them (AutoProcessor with torchvision; AutoTokenizer + AutoImageProcessor without)
        processor.tokenizer.save_pretrained(folder)
        processor.image_processor.save_pretrained(folder)


class Qwen2_5VL(Qwen2VL):
    family = "qwen2_5_vl"
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    processor_class = Qwen2_5_VLImageOnlyProcessor

    @classmethod
    def vision_config(cls, sizes: Mapping[str, Any], hidden: int) -> dict[str, Any]:
        depth = sizes.get("vision_layers", 2)
        vision_hidden = sizes.get("vision_hidden", 64)
        return dict(
            depth=depth,
            hidden_size=vision_hidden,
            intermediate_size=sizes.get("vision_intermediate", 2 * vision_hidden),
            num_heads=sizes.get("vision_heads", 4),
            out_hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=sizes.get("vision_window", 112),
            fullatt_block_indexes=[depth - 1],
        )
