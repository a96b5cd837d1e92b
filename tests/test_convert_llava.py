"""The original-format LLaVA-NeXT converter (mllm_da/backbones/convert_llava.py) on a tiny checkpoint built here in
the LLaVA code's layout: every tensor is carried over, the converted model computes what the original weights
compute (text logits against a plain Llama; image logits against a hand-built LLaVA-NeXT forward), the image token
expands, the chat template has the llava_llama_3 system prompt, and unmapped or missing keys are refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import CONF
from PIL import Image
from safetensors.torch import save_file

from mllm_da.backbones.convert_llava import LLAVA_LLAMA3_SYSTEM, ConversionError, convert, main

TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    hidden_act="silu",
)
VISION = dict(
    hidden_size=24,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=28,
    patch_size=14,
    projection_dim=24,
)
PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]  # LLaVA's 1x2, 2x1, 2x2, 3x1, 1x3 grids of 28 px
SOURCE_TOWER = "model.vision_tower.vision_tower.vision_model."
CHAT = {"image_text": "<image>", "default_system": LLAVA_LLAMA3_SYSTEM}


def _randomise(state: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Weights far from their init (norms near 1, the rest N(0, 0.2)), so that a wrong mapping changes logits."""
    out = {}
    for name, t in state.items():
        noise = torch.randn(t.shape, generator=generator)
        out[name] = (
            (1 + 0.1 * noise) if ("norm" in name or "layrnorm" in name) and name.endswith("weight") else 0.2 * noise
        )
    return out


def _clip_prefix(model: torch.nn.Module) -> str:
    return "vision_model." if any(k.startswith("vision_model.") for k in model.state_dict()) else ""


def _original_tokenizer():
    """A Llama-3-style tokenizer without any image token and with LLaVA's added ``<pad>``, as Open-LLaVA-NeXT
    saves it."""
    from mllm_da.backbones.llava_next import LLAMA3_SPECIALS
    from mllm_da.backbones.tiny import tokenizer_corpus, train_bpe_tokenizer

    specials = [s for s in LLAMA3_SPECIALS if s not in ("<image>", "<|finetune_right_pad_id|>")] + ["<pad>"]
    return train_bpe_tokenizer(
        tokenizer_corpus(n_scenes=200),
        specials,
        vocab_size=400,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<pad>",
    )


def _write_original(folder: Path, tensors: dict[str, torch.Tensor], config: dict, tokenizer, shards: int = 2) -> Path:
    """Save a checkpoint as the LLaVA code does: original key names, sharded safetensors with an index."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> SimpleNamespace:
    """A tiny LLaVA-NeXT-Llama3 checkpoint in the original layout (tower trained, so inside it), its CLIP folder
    (``.bin`` with CLIPModel extras, as a downloaded tower), and the same folder converted."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("convert_llava")
    g = torch.Generator().manual_seed(0)
    tokenizer = _original_tokenizer()
    vocab = len(tokenizer)
    text_cfg = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **TEXT)
    llama = _randomise(LlamaForCausalLM(text_cfg).state_dict(), g)
    vision_cfg = CLIPVisionConfig(**VISION)
    clip_model = CLIPVisionModel(vision_cfg)
    bare = len(_clip_prefix(clip_model))
    clip = {k[bare:]: v for k, v in _randomise(clip_model.state_dict(), g).items()}  # names inside vision_model.
    projector = {
        "model.mm_projector.0.weight": 0.2 * torch.randn(32, 24, generator=g),
        "model.mm_projector.0.bias": 0.2 * torch.randn(32, generator=g),
        "model.mm_projector.2.weight": 0.2 * torch.randn(32, 32, generator=g),
        "model.mm_projector.2.bias": 0.2 * torch.randn(32, generator=g),
        "model.image_newline": torch.randn(32, generator=g),
    }
    tensors = {**llama, **{SOURCE_TOWER + k: v for k, v in clip.items()}, **projector}

    clip_dir = root / "clip-vit-tiny"
    clip_dir.mkdir()
    vision_cfg.save_pretrained(clip_dir)
    torch.save(
        {
            **{f"vision_model.{k}": v for k, v in clip.items()},
            "logit_scale": torch.tensor(2.6),
            "text_projection.weight": torch.zeros(4, 8),
        },
        clip_dir / "pytorch_model.bin",
    )

    config = dict(
        text_cfg.to_dict(),
        architectures=["LlavaLlamaForCausalLM"],
        model_type="llava_llama",
        rope_scaling=None,
        rope_theta=TEXT["rope_theta"],
        pad_token_id=tokenizer.pad_token_id,
        mm_vision_tower=str(clip_dir),
        mm_hidden_size=24,
        mm_projector_type="mlp2x_gelu",
        image_aspect_ratio="anyres",
        image_grid_pinpoints=PINPOINTS,
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_patch_merge_type="spatial_unpad",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        unfreeze_mm_vision_tower=True,
        torch_dtype="float32",
        tokenizer_model_max_length=6144,
        tokenizer_padding_side="right",
        use_mm_proj=True,
    )
    config.pop("rope_parameters", None)
    src = _write_original(root / "open-llava-next-tiny", tensors, config, tokenizer)
    dst = convert(src, root / "open-llava-next-tiny-hf")
    return SimpleNamespace(
        root=root,
        src=src,
        dst=dst,
        tensors=tensors,
        config=config,
        tokenizer=tokenizer,
        vocab=vocab,
        text_cfg=text_cfg,
        vision_cfg=vision_cfg,
        clip_dir=clip_dir,
        clip=clip,
    )


@pytest.fixture(scope="module")
def converted(original):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(original.dst, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(original.dst)


def _expected_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The test's own statement of where each original tensor lands in transformers' model."""
    keys = set(model.state_dict())
    tower = (
        "model.vision_tower.vision_model."
        if any(k.startswith("model.vision_tower.vision_model.") for k in keys)
        else "model.vision_tower."
    )
    out = {}
    for name, t in tensors.items():
        if name.startswith(SOURCE_TOWER):
            out[tower + name[len(SOURCE_TOWER) :]] = t
        elif name.startswith("model.mm_projector."):
            layer = {"0": "linear_1", "2": "linear_2"}[name.split(".")[2]]
            out[f"model.multi_modal_projector.{layer}.{name.split('.')[-1]}"] = t
        elif name == "model.image_newline" or name.startswith("lm_head."):
            out[name] = t
        else:
            out["model.language_model." + name[len("model.") :]] = t
    return out


def _llama(original):
    from transformers import LlamaForCausalLM

    llama = LlamaForCausalLM(original.text_cfg).eval()
    llama.load_state_dict(
        {
            k: v
            for k, v in original.tensors.items()
            if k.startswith(("model.embed", "model.layers", "model.norm", "lm_head"))
        }
    )
    return llama


def test_every_tensor_equals_its_source_and_the_image_token_gets_mean_rows(original, converted):
    model, processor = converted
    state = model.state_dict()
    expected = _expected_state(model, original.tensors)
    assert set(state) == set(expected)
    v = original.vocab
    for name, source in expected.items():
        if name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert state[name].shape == (v + 1, source.shape[1])
            assert torch.equal(state[name][:v], source), name
            assert torch.allclose(state[name][v], source.mean(dim=0)), name  # the new row: the mean row
        else:
            assert torch.equal(state[name], source), name
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == v == model.config.image_token_index and len(processor.tokenizer) == v + 1
    assert processor.tokenizer("a <image> b", add_special_tokens=False)["input_ids"].count(image_id) == 1
    cfg = model.config
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    assert cfg.image_grid_pinpoints == PINPOINTS and cfg.vision_config.hidden_size == 24
    ip = processor.image_processor
    assert ip.image_grid_pinpoints == PINPOINTS and ip.crop_size["height"] == 28 and ip.size["shortest_edge"] == 28
    assert list(ip.image_mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    record = json.loads((original.dst / "mllm_da_conversion.json").read_text())
    assert record["new_embedding_rows"] == 1 and record["vision_tower_weights"] == "checkpoint"


def test_text_logits_equal_the_original_llama_weights(original, converted):
    model, processor = converted
    ids = processor.tokenizer("How many shapes are there? The answer is two.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        reference = _llama(original)(input_ids=ids).logits
    assert ours.shape[-1] == original.vocab + 1
    torch.testing.assert_close(ours[..., : original.vocab], reference)
    assert reference.std() > 0.5  # weights far from init: a misplaced tensor would show


def _reference_image_features(original, pixel_values: torch.Tensor, height: int, width: int, grid: tuple[int, int]):
    """LLaVA-NeXT's image features written out by hand from the original tensors: CLIP layer -2 without its class
    token, mlp2x_gelu, then the spatial_unpad layout (global tile, then the grid's rows unpadded as the LLaVA code
    does, each row ended by image_newline)."""
    from transformers import CLIPVisionModel

    clip = CLIPVisionModel(original.vision_cfg).eval()
    clip.load_state_dict({_clip_prefix(clip) + k: v for k, v in original.clip.items()})
    t = original.tensors
    with torch.no_grad():
        hidden = clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        feats = F.linear(
            F.gelu(F.linear(hidden, t["model.mm_projector.0.weight"], t["model.mm_projector.0.bias"])),
            t["model.mm_projector.2.weight"],
            t["model.mm_projector.2.bias"],
        )
    side = 28 // 14
    rows_total, cols_total = grid[0] * side, grid[1] * side
    rows, cols = range(rows_total), range(cols_total)
    if width / height > cols_total / rows_total:  # wider than the grid: padding rows removed
        pad = (rows_total - int(height * cols_total / width)) // 2
        rows = range(pad, rows_total - pad)
    else:
        pad = (cols_total - int(width * rows_total / height)) // 2
        cols = range(pad, cols_total - pad)
    out = [feats[0]]
    for r in rows:
        for c in cols:
            tile = 1 + (r // side) * grid[1] + c // side
            out.append(feats[tile, (r % side) * side + c % side][None])
        out.append(t["model.image_newline"][None])
    return torch.cat(out)


def test_image_prompt_expands_and_logits_equal_a_hand_built_llava_forward(original, converted):
    model, processor = converted
    image = Image.new("RGB", (56, 40), (230, 230, 230))
    image.paste((200, 30, 30), (5, 5, 30, 25))
    text = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nHow many shapes?"}], add_generation_prompt=True
    )
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    image_id = model.config.image_token_index
    ids = inputs["input_ids"][0]
    positions = (ids == image_id).nonzero().flatten()
    # 56x40 fits the 2x2 grid (56x56) best: 4 global tokens + 2 unpadded rows of 4 tokens and a newline each
    assert len(positions) == 4 + 2 * (4 + 1)
    assert positions.tolist() == list(range(positions[0].item(), positions[0].item() + len(positions)))
    prefix = processor.tokenizer.decode(ids[: positions[0]])
    assert prefix.endswith("<|start_header_id|>user<|end_header_id|>\n\n") and LLAVA_LLAMA3_SYSTEM in prefix

    features = _reference_image_features(original, inputs["pixel_values"][0], 40, 56, grid=(2, 2))
    embed = original.tensors["model.embed_tokens.weight"]
    embeds = embed[ids.clamp(max=original.vocab - 1)].clone()
    embeds[positions] = features
    with torch.no_grad():
        reference = _llama(original)(inputs_embeds=embeds[None]).logits
        ours = model(**inputs).logits
    torch.testing.assert_close(ours[..., : original.vocab], reference, rtol=1e-4, atol=1e-4)


def test_the_project_loader_reads_it_with_the_llava_llama_3_system_prompt(original, converted):
    from mllm_da.backbones.loading import load_backbone
    from mllm_da.data.records import Turn

    model, processor = converted
    bb = load_backbone(
        family="llava_next",
        variant="pretrained",
        source=str(original.dst),
        dtype="float32",
        chat_format=CHAT,
        cache_dir=str(original.root / "cache"),
    )
    ours = bb.model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())
    assert bb.image_token_id == model.config.image_token_index
    turns = [Turn("user", "<image>\nHow many shapes?")]
    rendered, _ = bb.render(turns, add_generation_prompt=True)
    assert rendered.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        + LLAVA_LLAMA3_SYSTEM
        + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nHow many shapes?"
    )
    template = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nHow many shapes?"}], add_generation_prompt=True
    )
    assert template == rendered  # the saved template is the project's own format
    sample = bb.encode(turns, [(56, 40)])
    assert (
        sample.expanded_length
        == len(sample.input_ids) - 1 + 14
        == len(sample.input_ids) + bb.num_image_tokens(56, 40) - 1
    )
    # the preset that names this kind of folder prompts with the same system prompt and image token
    preset = yaml.safe_load((CONF / "model" / "llava_next_llama3_8b.yaml").read_text())
    assert preset["backbone"]["chat_format"] == CHAT
    alternative = yaml.safe_load((CONF / "model" / "llava_next_llama3_8b_hf.yaml").read_text())
    assert alternative["backbone"]["chat_format"].get("default_system", "absent") is None


def test_a_checkpoint_without_its_tower_names_the_flag_and_reads_the_tower_folder(original, tmp_path):
    no_tower = {k: v for k, v in original.tensors.items() if not k.startswith(SOURCE_TOWER)}
    config = dict(original.config, mm_vision_tower="openai/clip-vit-large-patch14-336", unfreeze_mm_vision_tower=False)
    src = _write_original(tmp_path / "frozen-tower", no_tower, config, original.tokenizer, shards=1)
    with pytest.raises(
        ConversionError, match=r"no vision tower weights.*--vision-tower DIR.*openai/clip-vit-large-patch14-336"
    ):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the tower from a CLIP folder (pickled .bin with CLIPModel extras), and an image token that is already a token
    dst = convert(src, tmp_path / "out", vision_tower=original.clip_dir, image_token="<|reserved_special_token_4|>")
    from transformers import LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(dst, dtype=torch.float32)
    state = model.state_dict()
    for name, source in _expected_state(model, original.tensors).items():
        assert torch.equal(state[name], source), name  # the tower equals the CLIP folder's, no rows added
    assert model.config.image_token_index == original.tokenizer.convert_tokens_to_ids("<|reserved_special_token_4|>")
    record = json.loads((dst / "mllm_da_conversion.json").read_text())
    assert record["new_embedding_rows"] == 0 and record["vision_tower_weights"] == str(original.clip_dir)
    assert "<|reserved_special_token_4|>" in (dst / "chat_template.jinja").read_text()


def test_an_unmapped_or_missing_key_is_refused_with_its_name(original, tmp_path, capsys):
    extra = dict(original.tensors, **{"model.mm_projector.4.weight": torch.zeros(2, 2)})
    src = _write_original(tmp_path / "extra", extra, original.config, original.tokenizer, shards=1)
    with pytest.raises(ConversionError, match=r"model\.mm_projector\.4\.weight"):
        convert(src, tmp_path / "out")
    assert main([str(src), str(tmp_path / "out")]) == 2
    assert "model.mm_projector.4.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    shutil.rmtree(src)
    missing = {k: v for k, v in original.tensors.items() if k != "model.layers.1.mlp.down_proj.weight"}
    src = _write_original(tmp_path / "missing", missing, original.config, original.tokenizer, shards=1)
    with pytest.raises(ConversionError, match=r"missing.*model\.layers\.1\.mlp\.down_proj\.weight"):
        convert(src, tmp_path / "out")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mm_projector_type", "linear"),
        ("mm_patch_merge_type", "flat"),
        ("image_aspect_ratio", "pad"),
        ("mm_use_im_start_end", True),
    ],
)
def test_settings_transformers_cannot_express_are_refused(original, tmp_path, key, value):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(dict(original.config, **{key: value})))
    with pytest.raises(ConversionError, match=key):
        convert(src, tmp_path / "out")


def test_an_open_llava_next_llama3_config_gives_the_llava_next_llama3_8b_architecture():
    """The config the LLaVA trainer writes for Lin-Chen/open-llava-next-llama3-8b (reconstructed from its training
    script's flags and Llama-3-8B-Instruct, with the added <pad>) becomes the architecture of the random preset."""
    from accelerate import init_empty_weights
    from transformers import LlavaNextForConditionalGeneration

    from mllm_da.backbones.llava_source import check_source_config, target_config, vision_config
    from mllm_da.backbones.loading import ARCHITECTURES

    cfg = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "vocab_size": 128257,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
        "tie_word_embeddings": False,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_hidden_size": 1024,
        "mm_projector_type": "mlp2x_gelu",
        "image_aspect_ratio": "anyres",
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "unfreeze_mm_vision_tower": True,
    }
    check_source_config(cfg, Path("."))
    config = target_config(cfg, vision_config(cfg, None), vocab=128258, image_token_id=128257, pad_token_id=128256)
    arch = json.loads((ARCHITECTURES / "llava_next_llama3_8b.json").read_text())
    text, vision = config.text_config, config.vision_config
    for key, value in arch["text_config"].items():
        if key not in ("model_type", "vocab_size", "rope_parameters"):
            assert getattr(text, key) == value, key
    assert text.rope_parameters["rope_theta"] == 500000.0 and text.vocab_size == 128258
    for key, value in arch["vision_config"].items():
        assert getattr(vision, key) == value, key
    for key in (
        "image_grid_pinpoints",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "image_seq_length",
        "projector_hidden_act",
    ):
        assert getattr(config, key) == arch[key], key
    with init_empty_weights():
        model = LlavaNextForConditionalGeneration(config)
    # llava-hf's 8,355,276,800 (vocabulary padded to 128320 rows) less the 62 rows this vocabulary does not pad
    assert sum(p.numel() for p in model.parameters()) == 8_355_276_800 - 62 * 4096 * 2
