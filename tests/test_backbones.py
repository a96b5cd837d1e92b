"""Backbone adapters: masking goldens, prompt/template agreement, batches equal the processor's, module groups,
LoRA targets, real-size architectures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, TEST_TINY
from PIL import Image

from mllm_da.backbones.base import IGNORE_INDEX, Backbone
from mllm_da.backbones.loading import ARCHITECTURES, load_backbone
from mllm_da.backbones.loading import FAMILIES as ADAPTERS
from mllm_da.data.records import Turn

IMAGE_SETTINGS = {
    "qwen2_vl": {"min_pixels": 56 * 56, "max_pixels": 112 * 112},
    "qwen2_5_vl": {"min_pixels": 56 * 56, "max_pixels": 112 * 112},
    "llava_next": {},
    "mllama": {},
}

CONVERSATION = (
    Turn("user", "<image>\nDescribe the image."),
    Turn("assistant", "There are two shapes."),
    Turn("user", "Answer with a precise response.\nHow many shapes?"),
    Turn("assistant", "two"),
    Turn("user", "Answer with an informative response.\nHow many shapes?"),
    Turn("assistant", "I count two shapes in the picture."),
)


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request, work_root: Path) -> Backbone:
    return load_backbone(
        family=request.param,
        variant="tiny",
        tiny=TEST_TINY,
        image=IMAGE_SETTINGS[request.param],
        cache_dir=str(work_root / "cache"),
    )


def image(width: int = 112, height: int = 112, colour=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", (width, height), (245, 245, 245))
    img.paste(colour, (width // 4, height // 4, width // 2, height // 2))
    return img


def labelled_text(bb: Backbone, turns, mode: str) -> str:
    sample = bb.encode(turns, [(112, 112)], mode=mode)
    return bb.tokenizer.decode([t for t, lab in zip(sample.input_ids, sample.labels) if lab != IGNORE_INDEX])


def test_assistant_mode_trains_only_answers_and_their_end_token(backbone: Backbone):
    end = backbone.chat_format.turn_end
    expected = f"There are two shapes.{end}two{end}I count two shapes in the picture.{end}"
    assert labelled_text(backbone, CONVERSATION, "assistant") == expected


def test_synthesizer_mode_masks_first_round_and_trains_the_rest_plus_end_of_text(backbone: Backbone):
    f = backbone.chat_format
    expected = (
        f"{f.user_prefix}Answer with a precise response.\nHow many shapes?{f.turn_end}{f.turn_suffix}"
        f"{f.assistant_prefix}two{f.turn_end}{f.turn_suffix}"
        f"{f.user_prefix}Answer with an informative response.\nHow many shapes?{f.turn_end}{f.turn_suffix}"
        f"{f.assistant_prefix}I count two shapes in the picture.{f.turn_end}{f.turn_suffix}"
        f"{f.synthesizer_end}"
    )
    assert f.synthesizer_end
    assert labelled_text(backbone, CONVERSATION, "synthesizer") == expected


def test_python_rendering_equals_the_saved_chat_template(backbone: Backbone):
    text, _ = backbone.render(CONVERSATION)
    messages = [
        {"role": t.role, "content": t.content.replace("<image>", backbone.chat_format.image_text)} for t in CONVERSATION
    ]
    assert backbone.processor.apply_chat_template(messages, tokenize=False) == text
    prompt = backbone.processor.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == backbone.render(CONVERSATION[:1], add_generation_prompt=True)[0]


def test_hf_assistant_mask_agrees_with_ours(backbone: Backbone):
    messages = [
        {"role": t.role, "content": t.content.replace("<image>", backbone.chat_format.image_text)} for t in CONVERSATION
    ]
    out = backbone.tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ours = backbone.encode(CONVERSATION, [(112, 112)])
    assert out["input_ids"] == ours.input_ids
    assert [bool(m) for m in out["assistant_masks"]] == [lab != IGNORE_INDEX for lab in ours.labels]


@pytest.mark.parametrize("size", [(112, 112), (112, 56), (200, 100)])
def test_batch_equals_the_processor_output(backbone: Backbone, size, monkeypatch):
    # the PIL backend's pixels are the processor's bit for bit (test_fast_image checks the torchvision backend)
    monkeypatch.setattr(backbone.spec, "image_backend", "pil")
    img = image(*size)
    turns = CONVERSATION[:2]
    sample = backbone.encode(turns, [img.size])
    sample.images = [img]
    ours = backbone.collate([sample])
    text, _ = backbone.render(turns)
    images = [[img]] if backbone.family == "mllama" else [img]
    ref = backbone.processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
    assert ours["input_ids"].tolist() == ref["input_ids"].tolist()
    assert torch.equal(ours["pixel_values"], ref["pixel_values"])
    for key in ("image_grid_thw", "image_sizes", "aspect_ratio_ids", "cross_attention_mask", "mm_token_type_ids"):
        if key in ref:
            assert torch.equal(torch.as_tensor(ours[key]), torch.as_tensor(ref[key])), key
    assert sample.expanded_length == ours["input_ids"].shape[1]


def test_forward_backward_and_generation_on_a_mixed_size_batch(backbone: Backbone):
    samples = []
    for size, mode in (((112, 112), "assistant"), ((112, 56), "synthesizer")):
        s = backbone.encode(CONVERSATION, [size], mode=mode)
        s.images = [image(*size)]
        samples.append(s)
    batch = backbone.collate(samples)
    out = backbone.model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    gen = backbone.generation_batch([(CONVERSATION[:1], [image()]), (CONVERSATION[:2], [image(112, 56)])])
    assert gen["attention_mask"][:, -1].all(), "generation batches are left-padded"
    ids = backbone.model.generate(**gen, max_new_tokens=3, do_sample=False)
    assert ids.shape[1] == gen["input_ids"].shape[1] + 3 or ids.shape[1] < gen["input_ids"].shape[1] + 3
    backbone.model.zero_grad()


def test_synthesizer_prompt_ends_with_an_open_user_header(backbone: Backbone):
    batch = backbone.generation_batch([(CONVERSATION[:2], [image()])])
    text = backbone.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert text.endswith(
        "There are two shapes."
        + backbone.chat_format.turn_end
        + backbone.chat_format.turn_suffix
        + backbone.chat_format.user_prefix
    )
    assert backbone.stop_token_ids(synthesizer=True) == [
        backbone.tokenizer.convert_tokens_to_ids(backbone.chat_format.synthesizer_end)
    ]


def test_every_parameter_is_in_exactly_one_nonempty_group(backbone: Backbone):
    counts = backbone.group_counts()
    assert all(c.total > 0 for c in counts.values()), counts
    assert sum(c.total for c in counts.values()) == sum(p.numel() for p in backbone.model.parameters())


def test_lora_targets_only_the_language_model(backbone: Backbone):
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(
        backbone.model, LoraConfig(r=2, target_modules=backbone.lora_target_regex, task_type="CAUSAL_LM")
    )
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in wrapped.named_parameters() if ".lora_A" in n}
    assert lora_modules
    assert all(backbone.group_of(name) == "llm" for name in lora_modules)
    assert all("language_model" in name for name in lora_modules)
    wrapped.unload()


@pytest.mark.parametrize(
    ("family", "file", "billions"),
    [
        ("qwen2_vl", "qwen2_vl_2b.json", 2.21),
        ("qwen2_5_vl", "qwen2_5_vl_3b.json", 3.75),
        ("llava_next", "llava_next_llama3_8b.json", 8.36),
        ("mllama", "mllama_11b.json", 10.67),
    ],
)
def test_random_variant_architectures_have_the_real_size(family: str, file: str, billions: float):
    cls = ADAPTERS[family]
    data = {k: v for k, v in json.loads((ARCHITECTURES / file).read_text()).items() if not k.startswith("_")}
    config = cls.model_class().config_class(**data)
    with torch.device("meta"):
        model = cls.model_class()(config)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert params == pytest.approx(billions, rel=0.03)
