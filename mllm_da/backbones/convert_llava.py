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
  ``vision_model.*`` keys of a ``CLIPModel`` or ``CLIPVisionModel``, safetensors or ``.bin``), from
  ``SRC/vision_tower/`` (where Open-LLaVA-NeXT saves a LoRA run's tower) or from ``mm_vision_tower`` when that
  names a local folder.
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
import logging
import sys
from pathlib import Path

import torch

from mllm_da.backbones.llava_next import LLAVA_LLAMA3_SYSTEM, LlavaNext
from mllm_da.backbones.llava_source import (
    CLIP_L_DOWNLOAD,
    CLIP_MEAN,
    CLIP_STD,
    EMBEDDINGS,
    ConversionError,
    check_source_config,
    describe_keys,
    grow_rows,
    map_keys,
    map_tower,
    read_config,
    read_state_dict,
    source_name,
    target_config,
    tower_folder_for,
    vision_config,
)
from mllm_da.utils.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)


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

    target_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(dtype or "")
    if dtype and target_dtype is None:
        raise ConversionError(f"dtype {dtype!r}: choose bfloat16, float16 or float32")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ConversionError(f"{dst} exists and is not empty: choose another folder or pass --overwrite")
    cfg = read_config(src)
    check_source_config(cfg, src)
    tower_dir = tower_folder_for(cfg, src, Path(vision_tower).expanduser() if vision_tower else None)

    log.info("reading %s", src)
    source = read_state_dict(src)
    # the target's vision prefix: a throw-away tiny model tells which names this transformers version uses
    probe = LlavaNextConfig(
        text_config=dict(
            model_type="llama",
            vocab_size=8,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            image_size=28,
            patch_size=14,
        ),
    )
    with init_empty_weights():
        probe_keys = set(LlavaNextForConditionalGeneration(probe).state_dict())
    vision_prefix = (
        "model.vision_tower.vision_model."
        if any(k.startswith("model.vision_tower.vision_model.") for k in probe_keys)
        else "model.vision_tower."
    )

    mapped, unmapped, dropped = map_keys(source, vision_prefix)
    del source
    if unmapped:
        raise ConversionError(f"{src}: {len(unmapped)} key(s) with no place in LLaVA-NeXT: {describe_keys(unmapped)}")
    tower_in_checkpoint = any(k.startswith(vision_prefix) for k in mapped)
    tower_origin = "checkpoint"
    if not tower_in_checkpoint:
        if tower_dir is None:
            raise ConversionError(
                f"{src} holds no vision tower weights (the tower was frozen when it was saved): "
                "give --vision-tower DIR, "
                f"a local copy of {cfg.get('mm_vision_tower') or 'the vision tower'} "
                f"(e.g. `{CLIP_L_DOWNLOAD}`)"
            )
        mapped.update(map_tower(read_state_dict(tower_dir), vision_prefix, tower_dir))
        tower_origin = str(tower_dir)
    elif tower_dir is not None:
        log.info("vision tower weights from the checkpoint (trained); %s gives only its config", tower_dir)
    vision = vision_config(cfg, tower_dir)
    if cfg.get("mm_hidden_size") not in (None, vision["hidden_size"]):
        raise ConversionError(
            f"mm_hidden_size={cfg['mm_hidden_size']} but the vision tower's hidden_size is "
            f"{vision['hidden_size']}: give --vision-tower DIR with the tower's config"
        )

    # tokenizer and the image token
    # a tokenizer.json is read directly: AutoTokenizer would also parse config.json, a model type it does not know
    tokenizer = (PreTrainedTokenizerFast if (src / "tokenizer.json").is_file() else AutoTokenizer).from_pretrained(
        str(src)
    )
    rows = mapped[EMBEDDINGS[0]].shape[0] if EMBEDDINGS[0] in mapped else 0
    known = len(tokenizer)
    if rows and known > rows:
        raise ConversionError(f"the tokenizer of {src} has {known} tokens but the embeddings only {rows} rows")
    added = image_token not in tokenizer.get_vocab()
    if added:
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    assert isinstance(image_token_id, int), "one token in, one id out"
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
        raise ConversionError(
            f"{len(missing)} weight(s) the model needs are missing from {src}: {describe_keys(names)}"
        )
    surplus = sorted(set(mapped) - set(expected))
    if surplus:
        raise ConversionError(
            f"weight(s) with no place in the model: {describe_keys(source_name(k, vision_prefix) for k in surplus)}"
        )
    wrong = [
        f"{source_name(k, vision_prefix)} {tuple(mapped[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(v.shape) != tuple(mapped[k].shape)
    ]
    if wrong:
        raise ConversionError(f"shape mismatch (is the config right for these weights?): {describe_keys(wrong, 10)}")
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
    log.info(
        "wrote %s: %d tensors, image token %r = %d (%d new rows), vision tower from %s",
        dst,
        len(mapped),
        image_token,
        image_token_id,
        new_rows,
        tower_origin,
    )
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mllm_da.backbones.convert_llava",
        description="Convert an original-format LLaVA-NeXT checkpoint (e.g. Lin-Chen/open-llava-next-llama3-8b) "
        "into a transformers LLaVA-NeXT folder.",
    )
    parser.add_argument("src", help="folder of the original checkpoint (config.json, weights, tokenizer)")
    parser.add_argument("dst", help="folder to write (safetensors, config, processor, chat template)")
    parser.add_argument(
        "--vision-tower",
        help="CLIP folder for the tower's config, and its weights when the "
        "checkpoint has none (e.g. openai/clip-vit-large-patch14-336)",
    )
    parser.add_argument("--image-token", default="<image>", help="image token (added unless in the vocabulary)")
    parser.add_argument("--system-prompt", default=LLAVA_LLAMA3_SYSTEM, help="system prompt of the chat template")
    parser.add_argument("--no-system-prompt", action="store_true", help="a chat template without system prompt")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="cast (default: keep)")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        convert(
            args.src,
            args.dst,
            vision_tower=args.vision_tower,
            image_token=args.image_token,
            system_prompt=None if args.no_system_prompt else args.system_prompt,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    except ConversionError as err:
        print(f"convert_llava: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
