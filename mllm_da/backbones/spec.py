"""What a ``model=`` preset's ``backbone`` node says, as a typed config (mllm_da/utils/typed_config.py), and the
option types the backbone layer shares with the configs (variant, dtype, truncation, QLoRA bits)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mllm_da.backbones.fast_image import Backend
from mllm_da.utils.typed_config import load, option, validate

Variant = Literal["pretrained", "tiny", "random"]
Dtype = Literal["float32", "bfloat16", "float16", "auto"]
#: data.truncation: drop over-long samples, or cut their text after the last image
Truncation = Literal["drop", "cut_text"]
#: finetune.quantization_bits of QLoRA (bitsandbytes NF4 or int8)
QuantizationBits = Literal[4, 8]


@dataclass
class BackboneSpec:
    """What a ``model=`` preset says. ``source`` is a hub id or folder (pretrained) or a config JSON (random).

    A typed config (mllm_da/utils/typed_config.py): built from a preset it is checked at start; built in Python,
    by the same rules in ``__post_init__``."""

    family: str
    variant: Variant = "pretrained"
    source: str | None = None
    #: architecture JSON for variant=random: a path, or a file name in mllm_da/backbones/architectures/
    random_config: str | None = None
    dtype: Dtype = "float32"
    attn_implementation: str | None = "sdpa"
    trust_remote_code: bool = False
    #: tiny variant sizes (hidden size, layers, vision sizes...), see each family's ``tiny_config``
    tiny: dict[str, Any] = field(default_factory=dict)
    #: image-processor settings (Qwen min/max pixels, mean/std, ...), applied on top of the checkpoint's
    image: dict[str, Any] = field(default_factory=dict)
    #: which transformers image-processor family the pixels reproduce bit for bit (backbones/fast_image.py):
    #: "torchvision" (transformers' default where torchvision is installed, so what models are served with; torch's
    #: vectorised resize) or "pil" (the *ImageProcessorPil classes)
    image_backend: Backend = option("torchvision")
    #: changes to the family's chat format (for example LLaVA-NeXT's image token or a system prompt)
    chat_format: dict[str, Any] = field(default_factory=dict)
    seed: int = option(0, ge=0)
    cache_dir: str = ".cache/mllm_da"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], path: str = "model.backbone") -> BackboneSpec:
        return load(cfg, cls, path)

    def __post_init__(self) -> None:
        validate(self, "model.backbone", rules=False)  # the variant's needs (rules) when it is loaded

    def rules(self, path: str) -> list[str]:
        if self.variant == "random" and not self.random_config:
            return [f"{path}.random_config must name an architecture JSON for variant=random"]
        if self.variant == "pretrained" and not self.source:
            return [f"{path}.source must name a hub id or a local folder for variant=pretrained"]
        return []
