"""Convert a LLaVA-NeXT checkpoint in the original LLaVA code's format into a transformers LLaVA-NeXT folder.

The reference post-trains (and tunes its synthesizer from) ``Lin-Chen/open-llava-next-llama3-8b``, which is saved
by the LLaVA / Open-LLaVA-NeXT code (``LlavaLlamaForCausalLM``), not by transformers::

    huggingface-cli download Lin-Chen/open-llava-next-llama3-8b --local-dir ~/models/open-llava-next-llama3-8b
    python -m mllm_da.backbones.convert_llava ~/models/open-llava-next-llama3-8b \\
        data/models/open-llava-next-llama3-8b-hf
    python train.py model=llava_next_llama3_8b ...      # reads data/models/open-llava-next-llama3-8b-hf
                                                        # (or MLLM_DA_LLAVA_NEXT_BASE=<the converted folder>)

What the command does:

* **Weights**, every one mapped by name (an unmapped source key or a missing target key stops the conversion and
  names the keys; shapes are checked against the transformers model before anything is written):

  - ``model.embed_tokens.*``, ``model.layers.*``, ``model.norm.*`` → ``model.language_model.*`` (same suffixes)
  - ``lm_head.*`` → ``lm_head.*``
  - ``model.mm_projector.0.*``, ``model.mm_projector.2.*`` → ``model.multi_modal_projector.linear_1.*``, ``linear_2.*``
  - ``model.image_newline`` → ``model.image_newline``
  - ``model.vision_tower.vision_tower.vision_model.*`` → ``model.vision_tower.*`` (the CLIP vision model)

  Derived buffers (``*.rotary_emb.inv_freq``, ``*.embeddings.position_ids``) are dropped. The vision tower is in
  the checkpoint when it was trained (the reference unfreezes it); when it is not, the command says so and takes
  it from ``--vision-tower DIR`` (a CLIP folder such as a local copy of ``openai/clip-vit-large-patch14-336``:
  ``vision_model.*`` keys of a ``CLIPModel`` or ``CLIPVisionModel``, safetensors or ``.bin``), from ``SRC/vision_tower/``
  (where Open-LLaVA-NeXT saves a LoRA run's tower) or from ``mm_vision_tower`` when that names a local folder.
* **Config**: the text config from the Llama fields of ``config.json``; the vision config of CLIP ViT-L/14-336
  when ``mm_vision_tower`` names it, else the ``config.json`` of the vision-tower folder; ``mm_vision_select_layer``
  → ``vision_feature_layer``, ``mm_vision_select_feature`` ``patch``/``cls_patch`` → ``default``/``full``,
  ``image_grid_pinpoints`` kept, projector ``mlp2x_gelu`` → ``gelu``. Settings transformers' LLaVA-NeXT cannot
  express (another projector, ``image_aspect_ratio`` other than ``anyres``, ``mm_patch_merge_type`` other than
  ``spatial_unpad``, image start/end or patch tokens) are refused.
* **Image token**: the original code splices images in at index -200, which is no token. An image token
  (``--image-token``, default ``<image>``) is added to the tokenizer and one row appended to the input embeddings
  and to ``lm_head``, initialised with the mean of the existing rows (what LLaVA's own
  ``smart_tokenizer_and_embedding_resize`` does for new tokens); ``image_token_index`` points at it. A token already
  in the vocabulary (``--image-token '<|reserved_special_token_4|>'``, as AdaMLLM's released checkpoints do) is used
  as it is, without new rows.
* **Processor**: a ``LlavaNextImageProcessor`` with the source's grid pinpoints, CLIP mean and std, the vision
  tower's crop (336) and bicubic resizing; a ``LlavaNextProcessor`` (patch size, feature strategy, the image
  token) and a chat template generated from the project's own :class:`~mllm_da.backbones.chat_format.ChatFormat`
  for ``llava_llama_3``: Llama-3 headers and its system prompt (``--system-prompt``; ``--no-system-prompt`` leaves
  it out). ``mllm_da_conversion.json`` records the source, the counts and these choices.

Weights are read from safetensors (``model.safetensors`` or shards with an index) or, where a folder has only
pickles, from ``.bin`` files with ``torch.load(weights_only=True)``; the output is safetensors. Nothing is
downloaded and no code from the checkpoint is run. The output folder is written whole or not at all. The tensors are
held in memory once (about 16 GB of RAM for the 8B model in bfloat16), then written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from mllm_da.backbones.llava_next import LLAVA_LLAMA3_SYSTEM

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
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "rope_theta", "rope_scaling", "attention_bias", "attention_dropout", "mlp_bias",
    "bos_token_id", "eos_token_id", "pad_token_id",
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

    for index_name, loader in (("model.safetensors.index.json", load_file), ("pytorch_model.bin.index.json", _load_bin)):
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


def _read_config(folder: Path) -> dict[str, Any]:
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
        raise ConversionError(f"{folder}/config.json has no mm_vision_tower or mm_projector_type: not an original LLaVA checkpoint")
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
        data = _read_config(tower_folder)
        if data.get("model_type") == "clip":
            data = dict(data.get("vision_config") or {}, model_type="clip_vision_model")
        if data.get("model_type") != "clip_vision_model":
            raise ConversionError(f"{tower_folder}/config.json is not a CLIP (vision) config: {data.get('model_type')!r}")
        return {k: v for k, v in data.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")}
    name = str(cfg.get("mm_vision_tower", ""))
    if not re.search(r"clip-vit-large-patch14-336/?$", name):
        raise ConversionError(
            f"mm_vision_tower={name!r} is not CLIP ViT-L/14-336: give --vision-tower DIR, a local folder of that tower "
            "(its config.json, and its weights if the checkpoint lacks them)"
        )
    return dict(CLIP_L_336)


def target_config(cfg: Mapping[str, Any], vision: Mapping[str, Any], vocab: int, image_token_id: int,
                  pad_token_id: int | None = None) -> Any:
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
            target = vision_prefix + key[len(SOURCE_VISION + "vision_model."):]
        else:
            for src, dst in TEXT_RULES:
                if key.startswith(src):
                    target = dst + key[len(src):]
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
        name = key[len("vision_model."):] if key.startswith("vision_model.") else key
        if name.startswith(("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")):
            out[vision_prefix + name] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{folder}: keys that are not part of a CLIP vision tower: {', '.join(sorted(unknown)[:20])}")
    return out


def source_name(target: str, vision_prefix: str) -> str:
    """The original checkpoint's name of a target key (for messages)."""
    if target.startswith(vision_prefix):
        return SOURCE_VISION + "vision_model." + target[len(vision_prefix):]
    for src, dst in TEXT_RULES:
        if target.startswith(dst):
            return src + target[len(dst):]
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


def _describe(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# --------------------------------------------------------------------------------------------------- convert
def convert(
    src: str | Path,
    dst: str | Path,
    *,
    vision_tower: str | Path | None = None,
    image_token: str = "<image>",
    system_prompt: str | None = LLAVA_LLAMA3_SYSTEM,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Convert the original-format LLaVA-NeXT folder ``src`` into a transformers folder ``dst`` (see the module
    docstring). Raises :class:`ConversionError` naming the keys or settings that stop it."""
    from accelerate import init_empty_weights
    from tokenizers import AddedToken
    from transformers import (
        AutoTokenizer,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        PreTrainedTokenizerFast,
    )

    from mllm_da.backbones.llava_next import LlavaNext
    from mllm_da.utils.io import atomic_dir, atomic_write_json

    target_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(dtype or "")
    if dtype and target_dtype is None:
        raise ConversionError(f"dtype {dtype!r}: choose bfloat16, float16 or float32")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ConversionError(f"{dst} exists and is not empty: choose another folder or pass --overwrite")
    cfg = _read_config(src)
    check_source_config(cfg, src)
    tower_dir = tower_folder_for(cfg, src, Path(vision_tower).expanduser() if vision_tower else None)

    log.info("reading %s", src)
    source = read_state_dict(src)
    # the target's vision prefix: a throw-away tiny model tells which names this transformers version uses
    probe = LlavaNextConfig(
        text_config=dict(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1),
        vision_config=dict(model_type="clip_vision_model", hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                           num_attention_heads=1, image_size=28, patch_size=14),
    )
    with init_empty_weights():
        probe_keys = set(LlavaNextForConditionalGeneration(probe).state_dict())
    vision_prefix = "model.vision_tower.vision_model." if any(
        k.startswith("model.vision_tower.vision_model.") for k in probe_keys) else "model.vision_tower."

    mapped, unmapped, dropped = map_keys(source, vision_prefix)
    del source
    if unmapped:
        raise ConversionError(f"{src}: {len(unmapped)} key(s) with no place in LLaVA-NeXT: {_describe(unmapped)}")
    tower_in_checkpoint = any(k.startswith(vision_prefix) for k in mapped)
    tower_origin = "checkpoint"
    if not tower_in_checkpoint:
        if tower_dir is None:
            raise ConversionError(
                f"{src} holds no vision tower weights (the tower was frozen when it was saved): give --vision-tower DIR, "
                f"a local copy of {cfg.get('mm_vision_tower') or 'the vision tower'} "
                f"(e.g. `{CLIP_L_DOWNLOAD}`)"
            )
        mapped.update(map_tower(read_state_dict(tower_dir), vision_prefix, tower_dir))
        tower_origin = str(tower_dir)
    elif tower_dir is not None:
        log.info("vision tower weights from the checkpoint (trained); %s gives only its config", tower_dir)
    vision = vision_config(cfg, tower_dir)
    if cfg.get("mm_hidden_size") not in (None, vision["hidden_size"]):
        raise ConversionError(f"mm_hidden_size={cfg['mm_hidden_size']} but the vision tower's hidden_size is "
                              f"{vision['hidden_size']}: give --vision-tower DIR with the tower's config")

    # tokenizer and the image token
    # a tokenizer.json is read directly: AutoTokenizer would also parse config.json, a model type it does not know
    tokenizer = (PreTrainedTokenizerFast if (src / "tokenizer.json").is_file() else AutoTokenizer).from_pretrained(str(src))
    rows = mapped[EMBEDDINGS[0]].shape[0] if EMBEDDINGS[0] in mapped else 0
    known = len(tokenizer)
    if rows and known > rows:
        raise ConversionError(f"the tokenizer of {src} has {known} tokens but the embeddings only {rows} rows")
    added = image_token not in tokenizer.get_vocab()
    if added:
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    vocab = max(rows, image_token_id + 1)
    new_rows = vocab - rows
    for key in EMBEDDINGS:
        if key in mapped:
            mapped[key] = grow_rows(mapped[key], vocab, [image_token_id] if added else (), known)

    if cfg.get("vocab_size") not in (None, rows):
        log.warning("config vocab_size=%s but the embeddings have %d rows: using the rows", cfg.get("vocab_size"), rows)
    config = target_config(cfg, vision, vocab, image_token_id, tokenizer.pad_token_id)
    patch, crop = vision["patch_size"], vision["image_size"]
    # one dtype throughout: --dtype, else the language model's (a downloaded CLIP tower is often float32)
    weight_dtype = target_dtype or (mapped[EMBEDDINGS[0]].dtype if EMBEDDINGS[0] in mapped else torch.float32)
    for key, tensor in mapped.items():
        if tensor.is_floating_point() and tensor.dtype != weight_dtype:
            mapped[key] = tensor.to(weight_dtype)

    with init_empty_weights():
        model = LlavaNextForConditionalGeneration(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    if missing:
        names = [source_name(k, vision_prefix) for k in missing]
        raise ConversionError(f"{len(missing)} weight(s) the model needs are missing from {src}: {_describe(names)}")
    surplus = sorted(set(mapped) - set(expected))
    if surplus:
        raise ConversionError(f"weight(s) with no place in the model: {_describe(source_name(k, vision_prefix) for k in surplus)}")
    wrong = [f"{source_name(k, vision_prefix)} {tuple(mapped[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if tuple(v.shape) != tuple(mapped[k].shape)]
    if wrong:
        raise ConversionError(f"shape mismatch (is the config right for these weights?): {_describe(wrong, 10)}")
    model.load_state_dict(mapped, strict=True, assign=True)
    model.config.dtype = weight_dtype
    model.config.get_text_config().dtype = weight_dtype

    fmt = dataclasses.replace(LlavaNext.default_format, image_text=image_token, default_system=system_prompt)
    template = fmt.to_jinja()
    tokenizer.chat_template = template
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": crop},
        crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=config.image_grid_pinpoints,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        resample=3,  # bicubic, as CLIP's processor
        do_center_crop=True,
        do_pad=True,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's class token
        image_token=image_token,
        chat_template=template,
    )
    record = {
        "source": str(src),
        "source_architectures": cfg.get("architectures"),
        "mm_vision_tower": cfg.get("mm_vision_tower"),
        "vision_tower_weights": tower_origin,
        "tensors": len(mapped),
        "dropped_buffers": sorted(dropped),
        "image_token": image_token,
        "image_token_index": image_token_id,
        "image_token_added": added,
        "new_embedding_rows": new_rows,
        "new_rows_init": "mean of the existing rows" if new_rows else None,
        "system_prompt": system_prompt,
        "dtype": str(weight_dtype).removeprefix("torch."),
    }
    with atomic_dir(dst) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        processor.save_pretrained(tmp)
        atomic_write_json(tmp / "mllm_da_conversion.json", record)
    log.info("wrote %s: %d tensors, image token %r = %d (%d new rows), vision tower from %s",
             dst, len(mapped), image_token, image_token_id, new_rows, tower_origin)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mllm_da.backbones.convert_llava",
        description="Convert an original-format LLaVA-NeXT checkpoint (e.g. Lin-Chen/open-llava-next-llama3-8b) "
                    "into a transformers LLaVA-NeXT folder.",
    )
    parser.add_argument("src", help="folder of the original checkpoint (config.json, weights, tokenizer)")
    parser.add_argument("dst", help="folder to write (safetensors, config, processor, chat template)")
    parser.add_argument("--vision-tower", help="CLIP folder for the tower's config, and its weights when the "
                                               "checkpoint has none (e.g. openai/clip-vit-large-patch14-336)")
    parser.add_argument("--image-token", default="<image>", help="image token (added unless in the vocabulary)")
    parser.add_argument("--system-prompt", default=LLAVA_LLAMA3_SYSTEM, help="system prompt of the chat template")
    parser.add_argument("--no-system-prompt", action="store_true", help="a chat template without system prompt")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="cast (default: keep)")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        convert(args.src, args.dst, vision_tower=args.vision_tower, image_token=args.image_token,
                system_prompt=None if args.no_system_prompt else args.system_prompt, dtype=args.dtype,
                max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    except ConversionError as err:
        print(f"convert_llava: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
