"""Reading a LLaVA-NeXT checkpoint in the original LLaVA code's format: its state dict (safetensors or ``.bin``),
its config (checked, then mapped to transformers' text, vision and LLaVA-NeXT configs), and its weight names
(mapped one by one to transformers' names). :mod:`mllm_da.backbones.convert_llava` writes the converted folder.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: CLIP ViT-L/14 at 336 px (``openai/clip-vit-large-patch14-336``), the tower LLaVA-NeXT-Llama3 is built on
CLIP_L_336 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_channels=3,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
#: Llama fields of the original config.json that make the text config (the rest are LLaVA's or training state)
LLAMA_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
#: source prefix → target prefix; the vision target is filled in from the model (it differs across versions)
TEXT_RULES = (
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
)
NEWLINE = "model.image_newline"
SOURCE_VISION = "model.vision_tower.vision_tower."
#: buffers some savers wrote that the target model derives itself
DERIVED = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")
#: parts of a CLIPModel folder that are not the vision tower
CLIP_OTHER = re.compile(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)")
EMBEDDINGS = ("model.language_model.embed_tokens.weight", "lm_head.weight")
CLIP_L_DOWNLOAD = "huggingface-cli download openai/clip-vit-large-patch14-336 --local-dir DIR"


class ConversionError(ValueError):
    """The source cannot be converted faithfully; the message names what is wrong and what to do."""


# --------------------------------------------------------------------------------------------------- reading
def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: safetensors (one file or an index of shards) first, else ``.bin``
    pickles read with ``weights_only=True`` (plain tensors only)."""
    from safetensors.torch import load_file

    for index_name, loader in (
        ("model.safetensors.index.json", load_file),
        ("pytorch_model.bin.index.json", _load_bin),
    ):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            return _merge(folder / name for name in shards) if loader is load_file else _merge_bin(folder, shards)
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return _merge(files)
    files = sorted(folder.glob("*.bin"))
    if files:
        return _merge_bin(folder, [f.name for f in files])
    raise ConversionError(f"{folder}: no weights (model.safetensors, shards with an index, or pytorch_model*.bin)")


def _merge(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise ConversionError(f"{file}: a shard named in the index is missing")
        out.update(load_file(str(file)))
    return out


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # an old (non-zip) pickle cannot be memory-mapped
        data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConversionError(f"{path}: not a plain state dict of tensors")
    return dict(data)


def _merge_bin(folder: Path, names: Iterable[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ConversionError(f"{path}: a shard named in the index is missing")
        out.update(_load_bin(path))
    return out


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder}: no config.json; is it a checkpoint folder?")
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------- config
def check_source_config(cfg: Mapping[str, Any], folder: Path) -> None:
    """Refuse what is not an original-format LLaVA-NeXT Llama checkpoint, or what transformers cannot express."""
    if cfg.get("model_type") == "llava_next":
        raise ConversionError(f"{folder} is already a transformers LLaVA-NeXT folder: use it as model.backbone.source")
    if "mm_vision_tower" not in cfg and "mm_projector_type" not in cfg:
        raise ConversionError(
            f"{folder}/config.json has no mm_vision_tower or mm_projector_type: not an original LLaVA checkpoint"
        )
    if (folder / "adapter_config.json").is_file():
        raise ConversionError(f"{folder} holds a LoRA adapter: merge it into the base with the LLaVA code first")
    model_type = cfg.get("model_type", "llava_llama")
    if model_type not in ("llava_llama", "llama", "llava"):
        raise ConversionError(f"model_type {model_type!r}: only Llama language models are converted (llava_llama)")
    wanted = {
        "mm_projector_type": ("mlp2x_gelu", "the LLaVA-NeXT projector is two linear layers with a GELU"),
        "image_aspect_ratio": ("anyres", "transformers' LLaVA-NeXT tiles images the anyres way"),
        "mm_patch_merge_type": ("spatial_unpad", "transformers' LLaVA-NeXT unpads the tile grid and adds newlines"),
    }
    for key, (value, why) in wanted.items():
        if cfg.get(key) != value:
            raise ConversionError(f"{key}={cfg.get(key)!r} cannot be converted: only {value!r} ({why})")
    for key in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if cfg.get(key):
            raise ConversionError(f"{key}=true cannot be converted: transformers' LLaVA-NeXT has no such tokens")
    if cfg.get("mm_vision_select_feature", "patch") not in ("patch", "cls_patch"):
        raise ConversionError(f"mm_vision_select_feature={cfg['mm_vision_select_feature']!r}: only patch or cls_patch")
    pinpoints = cfg.get("image_grid_pinpoints")
    if not (isinstance(pinpoints, list) and pinpoints and all(isinstance(p, list) and len(p) == 2 for p in pinpoints)):
        raise ConversionError(f"image_grid_pinpoints={pinpoints!r}: expected a list of [height, width] pairs")


def text_config(cfg: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """The Llama text config; ``rope_theta`` and ``rope_scaling`` become transformers 5's ``rope_parameters``."""
    fields = {k: cfg[k] for k in LLAMA_FIELDS if cfg.get(k) is not None}
    theta = fields.pop("rope_theta", 10000.0)
    scaling = dict(fields.pop("rope_scaling", None) or {})
    if "type" in scaling:
        scaling["rope_type"] = scaling.pop("type")
    fields["rope_parameters"] = {"rope_type": "default", **scaling, "rope_theta": theta}
    fields.update(model_type="llama", vocab_size=vocab_size, tie_word_embeddings=False)
    return fields


def vision_config(cfg: Mapping[str, Any], tower_folder: Path | None) -> dict[str, Any]:
    """The vision tower's config: from its folder when one is used, else CLIP ViT-L/14-336 when the source names it."""
    if tower_folder is not None:
        data = read_config(tower_folder)
        if data.get("model_type") == "clip":
            data = dict(data.get("vision_config") or {}, model_type="clip_vision_model")
        if data.get("model_type") != "clip_vision_model":
            raise ConversionError(
                f"{tower_folder}/config.json is not a CLIP (vision) config: {data.get('model_type')!r}"
            )
        return {
            k: v
            for k, v in data.items()
            if not k.startswith("_") and k not in ("architectures", "transformers_version")
        }
    name = str(cfg.get("mm_vision_tower", ""))
    if not re.search(r"clip-vit-large-patch14-336/?$", name):
        raise ConversionError(
            f"mm_vision_tower={name!r} is not CLIP ViT-L/14-336: give --vision-tower DIR, a local folder of that tower "
            "(its config.json, and its weights if the checkpoint lacks them)"
        )
    return dict(CLIP_L_336)


def target_config(
    cfg: Mapping[str, Any], vision: Mapping[str, Any], vocab: int, image_token_id: int, pad_token_id: int | None = None
) -> Any:
    """The ``LlavaNextConfig`` of an original config (checked by :func:`check_source_config`)."""
    from transformers import LlavaNextConfig

    text = text_config(cfg, vocab)
    if pad_token_id is not None:
        text["pad_token_id"] = pad_token_id
    return LlavaNextConfig(
        text_config=text,
        vision_config=dict(vision),
        image_token_index=image_token_id,
        projector_hidden_act="gelu",  # mlp2x_gelu: nn.GELU(), the exact (erf) form
        multimodal_projector_bias=True,
        vision_feature_layer=int(cfg.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="full" if cfg.get("mm_vision_select_feature") == "cls_patch" else "default",
        image_grid_pinpoints=[list(p) for p in cfg["image_grid_pinpoints"]],
        image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
        tie_word_embeddings=False,
    )


def tower_folder_for(cfg: Mapping[str, Any], src: Path, given: Path | None) -> Path | None:
    """The folder the vision tower's config (and, when absent from the checkpoint, weights) come from."""
    if given is not None:
        if not (given / "config.json").is_file():
            raise ConversionError(f"--vision-tower {given}: no config.json there")
        return given
    candidates = [src / "vision_tower"]
    if cfg.get("mm_vision_tower"):
        candidates.append(Path(str(cfg["mm_vision_tower"])).expanduser())
    for candidate in candidates:
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate
    return None


# --------------------------------------------------------------------------------------------------- weights
def map_keys(
    source: Mapping[str, torch.Tensor], vision_prefix: str
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Rename the original checkpoint's tensors. Returns (mapped, unmapped source keys, dropped derived buffers)."""
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    dropped: list[str] = []
    for key, tensor in source.items():
        if DERIVED.search(key):
            dropped.append(key)
            continue
        target = None
        if key == NEWLINE:
            target = NEWLINE
        elif key.startswith(SOURCE_VISION + "vision_model."):
            target = vision_prefix + key[len(SOURCE_VISION + "vision_model.") :]
        else:
            for src, dst in TEXT_RULES:
                if key.startswith(src):
                    target = dst + key[len(src) :]
                    break
        if target is None:
            unmapped.append(key)
        else:
            mapped[target] = tensor
    return mapped, unmapped, dropped


def map_tower(tower: Mapping[str, torch.Tensor], vision_prefix: str, folder: Path) -> dict[str, torch.Tensor]:
    """A CLIP folder's vision weights (``vision_model.*``, or bare names as transformers 5 saves a vision model)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in tower.items():
        if DERIVED.search(key) or CLIP_OTHER.search(key):
            continue
        name = key[len("vision_model.") :] if key.startswith("vision_model.") else key
        if name.startswith(("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")):
            out[vision_prefix + name] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"{folder}: keys that are not part of a CLIP vision tower: {', '.join(sorted(unknown)[:20])}"
        )
    return out


def source_name(target: str, vision_prefix: str) -> str:
    """The original checkpoint's name of a target key (for messages)."""
    if target.startswith(vision_prefix):
        return SOURCE_VISION + "vision_model." + target[len(vision_prefix) :]
    for src, dst in TEXT_RULES:
        if target.startswith(dst):
            return src + target[len(dst) :]
    return target


def grow_rows(weight: torch.Tensor, rows: int, new_ids: Iterable[int] = (), known: int | None = None) -> torch.Tensor:
    """``weight`` with rows appended up to ``rows``; the appended rows and the rows of ``new_ids`` (a new token that
    falls in an unused padding row) are set to the mean of the first ``known`` rows (the real tokens' rows)."""
    known = weight.shape[0] if known is None else min(known, weight.shape[0])
    mean = weight[:known].float().mean(dim=0, keepdim=True).to(weight.dtype)
    extra = rows - weight.shape[0]
    out = torch.cat([weight, mean.expand(extra, -1)], dim=0) if extra > 0 else weight
    inside = [i for i in new_ids if i < weight.shape[0]]
    if inside:
        out = out.clone()
        out[inside] = mean
    return out


def describe_keys(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
