"""Performance features keep results unchanged: the fast Qwen pixel path, packed batches, the optimiser and
compile switches, the packing collator and the benchmarks' pieces (correctness, not timing)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_TINY
from PIL import Image

from mllm_da.backbones.base import IGNORE_INDEX, Backbone, pack_bins
from mllm_da.backbones.fast_image import qwen_pixel_inputs, qwen_temporal_copies
from mllm_da.backbones.loading import load_backbone
from mllm_da.backbones.qwen import Qwen2VL
from mllm_da.data.datamodule import (
    Collator,
    ConversationDataModule,
    length_grouped_batches,
    padding_fraction,
)
from mllm_da.data.records import Turn

PACKABLE = ("qwen2_vl", "qwen2_5_vl", "llava_next")
IMAGE_SETTINGS = {
    "qwen2_vl": {"min_pixels": 56 * 56, "max_pixels": 112 * 112},
    "qwen2_5_vl": {"min_pixels": 56 * 56, "max_pixels": 112 * 112},
    "llava_next": {},
    "mllama": {},
}


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "image",
    [
        {"min_pixels": 50176, "max_pixels": 1003520},
        {"min_pixels": 12544, "max_pixels": 12544, "image_mean": [0.96] * 3, "image_std": [0.5] * 3},
    ],
)
def test_fast_qwen_pixels_equal_the_transformers_processor_bit_for_bit(image):
    ip = Qwen2VL.tiny_processor({"vocab": 300}, image).image_processor
    images = [
        picture(w, h, i)
        for i, (w, h) in enumerate([(1280, 960), (448, 448), (100, 37), (2000, 300), (812, 1216), (224, 224)])
    ]
    reference = ip(images=images, return_tensors="pt")
    fast = qwen_pixel_inputs(images, ip)
    assert fast is not None
    assert torch.equal(fast["image_grid_thw"], reference["image_grid_thw"])
    assert fast["pixel_values"].dtype == reference["pixel_values"].dtype
    assert torch.equal(fast["pixel_values"], reference["pixel_values"])


def test_fast_qwen_pixels_in_bf16_are_the_processor_values_rounded_as_the_model_rounds_them():
    ip = Qwen2VL.tiny_processor({"vocab": 300}, {"min_pixels": 3136, "max_pixels": 50176}).image_processor
    images = [picture(200, 150, 1), picture(90, 300, 2)]
    reference = ip(images=images, return_tensors="pt")["pixel_values"].to(torch.bfloat16)
    fast = qwen_pixel_inputs(images, ip, torch.bfloat16)
    assert fast["pixel_values"].dtype == torch.bfloat16
    assert torch.equal(fast["pixel_values"], reference)


def test_fast_qwen_pixels_decline_what_they_do_not_reproduce():
    ip = Qwen2VL.tiny_processor({"vocab": 300}, {"min_pixels": 3136, "max_pixels": 12544}).image_processor
    assert qwen_pixel_inputs([picture(64, 64, 0).convert("L")], ip) is None
    ip.resample = Image.BILINEAR
    assert qwen_pixel_inputs([picture(64, 64, 0)], ip) is None


def test_pack_bins_first_fit_decreasing_within_capacity():
    lengths = [5, 9, 3, 7, 2, 12]
    bins = pack_bins(lengths, 12)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 12 for b in bins)
    assert bins == [[5], [1, 2], [3, 0], [4]]
    assert pack_bins([20, 1], 10) == [[0], [1]]  # an item over capacity gets its own bin


def tiny(family: str, work_root: Path) -> Backbone:
    bb = load_backbone(
        family=family,
        variant="tiny",
        tiny=TEST_TINY,
        image=IMAGE_SETTINGS[family],
        cache_dir=str(work_root / "cache"),
        attn_implementation="eager",
    )
    bb.model.eval()
    return bb


@pytest.fixture(scope="module", params=PACKABLE)
def backbone(request, work_root: Path) -> Backbone:
    return tiny(request.param, work_root)


def samples(bb: Backbone, n: int = 5):
    rng = random.Random(0)
    out = []
    for i in range(n):
        turns = [Turn("user", "<image>Describe the image."), Turn("assistant", "There are two shapes " * (i + 1))]
        for _ in range(rng.randint(0, 3)):
            turns += [Turn("user", "How many shapes?"), Turn("assistant", "two " * rng.randint(1, 6))]
        size = rng.choice([(112, 112), (84, 56), (56, 112)])
        sample = bb.encode(turns, [size], sample_id=str(i))
        sample.images = [picture(*size, i)]
        out.append(sample)
    return out


def model_loss(bb: Backbone, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return bb.model(**bb.model_inputs(batch)).loss


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_batch_gives_the_padded_batch_loss(backbone: Backbone, attn: str):
    backbone.model.set_attn_implementation(attn)
    data = samples(backbone)
    padded = backbone.collate(data)
    longest = max(s.expanded_length for s in data)
    packed = backbone.collate_packed(data, capacity=2 * longest)
    assert packed["input_ids"].shape[0] < len(data)  # some rows hold two samples or more
    assert "attention_mask" not in packed
    assert int(packed["_real_tokens"]) == int(padded["attention_mask"].sum())
    # the same labelled tokens (each sample's first label is never used by the shifted loss)
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(model_loss(backbone, packed), model_loss(backbone, padded), rtol=1e-4, atol=1e-5)


def test_packing_a_family_that_cannot_be_packed_says_why(work_root: Path):
    mllama = tiny("mllama", work_root)
    with pytest.raises(ValueError, match="data.packing"):
        mllama.collate_packed(samples(mllama, 2), capacity=4096)
    with pytest.raises(ValueError, match="cross-attend"):
        ConversationDataModule(mllama, [], cutoff_len=512, packing=True)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_packed_positions_equal_get_rope_index(family: str, work_root: Path):
    backbone = tiny(family, work_root)
    for sample in samples(backbone, 3):
        batch = backbone.collate([sample])
        reference, _ = backbone.model.model.get_rope_index(
            batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"],
        )
        ids, _ = backbone.expand(sample)
        ours = backbone.sample_position_ids(ids, sample.images)
        assert torch.equal(ours[1:], reference[:, 0])
        assert torch.equal(ours[0], torch.arange(len(ids)))


def test_collator_packs_when_asked_and_keeps_sample_ids(backbone: Backbone):
    data = samples(backbone, 4)
    batch = Collator(backbone, pack_capacity=4096)(data)
    assert batch["input_ids"].shape[0] == 1
    assert sorted(batch["sample_ids"]) == sorted(s.id for s in data)


def test_length_grouping_reduces_padding_on_a_long_tailed_distribution():
    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(7, 0.5)) for _ in range(4000)]
    naive = padding_fraction(lengths, length_grouped_batches(lengths, 8, random.Random(1), False))
    grouped = padding_fraction(lengths, length_grouped_batches(lengths, 8, random.Random(1), True))
    assert grouped < naive / 3


def test_compile_switch_compiles_in_place_and_keeps_parameter_names(work_root: Path):
    from mllm_da.training.finetune import FinetuneConfig
    from mllm_da.training.module import MLLMModule, OptimConfig

    optim = OptimConfig(lr=1e-5, weight_decay=0.0, warmup_ratio=0.03)
    plain = MLLMModule(tiny("qwen2_vl", work_root), FinetuneConfig(), optim)
    compiled = MLLMModule(tiny("qwen2_vl", work_root), FinetuneConfig(), optim, compile=True)
    assert getattr(plain.model, "_compiled_call_impl", None) is None
    assert compiled.model._compiled_call_impl is not None  # compiled lazily, on the first call
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints and export unchanged


def test_module_counts_real_tokens_and_samples_of_packed_batches(backbone: Backbone):
    from mllm_da.training.module import batch_tokens

    data = samples(backbone, 4)
    padded, packed = Collator(backbone)(data), Collator(backbone, pack_capacity=4096)(data)
    assert batch_tokens(packed) == batch_tokens(padded) == sum(len(backbone.expand(s)[0]) for s in data)
    assert len(packed["sample_ids"]) == 4 and packed["input_ids"].shape[0] == 1


SIZES = [(1, 1), (30, 2000), (2000, 30), (100, 37), (224, 224), (448, 336), (1280, 960), (812, 1216), (4000, 3000)]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava_next"])
def test_image_token_counts_equal_the_processor_s(family: str, work_root: Path):
    """num_image_tokens skips the processor's per-call kwargs merging; the counts stay the processor's."""
    backbone = tiny(family, work_root)
    limits = {"qwen2_vl": (50176, 1003520), "qwen2_5_vl": (3136, 12845056)}.get(family)
    if limits:  # real-size pixel limits
        ip = backbone.processor.image_processor
        ip.min_pixels, ip.max_pixels = limits
        ip.size = {"shortest_edge": limits[0], "longest_edge": limits[1]}
    expected = backbone.processor._get_num_multimodal_tokens(image_sizes=[[h, w] for w, h in SIZES])
    assert [backbone.num_image_tokens(w, h) for w, h in SIZES] == expected["num_image_tokens"]


def test_expand_repeats_each_placeholder_as_the_token_by_token_definition(backbone: Backbone):
    for sample in samples(backbone, 4):
        counts = iter([backbone.num_image_tokens(img.width, img.height) for img in sample.images])
        ids, labels = [], []
        for tok, lab in zip(sample.input_ids, sample.labels):
            n = next(counts) if tok == backbone.image_token_id else 1
            ids += [tok] * n
            labels += [lab] * n if n == 1 else [IGNORE_INDEX] * n
        assert backbone.expand(sample) == (ids, labels)


def test_compact_batches_give_the_model_the_same_inputs(backbone: Backbone, monkeypatch):
    """The training loader's batches (compact: Qwen stores each patch once) become the full batch's inputs in
    model_inputs, padded or packed, with the fast path on or off; the loss is the same."""
    data = samples(backbone, 4)
    for fast in (True, False):
        monkeypatch.setattr(backbone, "fast_pixels", fast)
        for collate in (backbone.collate, lambda s, **kw: backbone.collate_packed(s, 4096, **kw)):
            full = backbone.model_inputs(collate(data))
            compact_batch = collate(data, compact=True)
            compact = backbone.model_inputs(compact_batch)
            assert full.keys() == compact.keys()
            for key, value in full.items():
                assert torch.equal(value, compact[key]) if isinstance(value, torch.Tensor) else value == compact[key]
            if backbone.family.startswith("qwen"):  # each patch once: half the pixel bytes in the loader
                assert compact_batch["pixel_values"].shape[1] * 2 == full["pixel_values"].shape[1]
    assert torch.equal(model_loss(backbone, Collator(backbone)(data)), model_loss(backbone, backbone.collate(data)))


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
def test_qwen_pixels_stored_once_repeat_to_the_processor_layout(backend: str):
    ip = Qwen2VL.tiny_processor({"vocab": 300}, {"min_pixels": 3136, "max_pixels": 50176}).image_processor
    images = [picture(200, 150, 1), picture(90, 300, 2)]
    full = qwen_pixel_inputs(images, ip, torch.bfloat16, backend)
    once = qwen_pixel_inputs(images, ip, torch.bfloat16, backend, temporal_copies=False)
    assert once["pixel_values"].shape[1] * ip.temporal_patch_size == full["pixel_values"].shape[1]
    assert torch.equal(qwen_temporal_copies(once["pixel_values"], ip.temporal_patch_size), full["pixel_values"])
