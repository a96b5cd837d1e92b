"""The fast LLaVA-NeXT and Mllama pixel paths (mllm_da/backbones/fast_image.py) give what transformers' PIL
processors give, and the adapters' batches are the same with the fast path on or off.

Every comparison is exact (``torch.equal``, dtypes included), not within a tolerance: the fast path runs the same
PIL resize on the same RGB pixels, pads with the same zero bytes, and its per-channel table holds exactly the
processor's arithmetic for each byte (``float32(float64(x) * rescale)``, then ``(v - mean) / std`` in float32), so
no float operation is reordered. Images cover a 1x1 pixel, very wide and very tall strips, RGBA / greyscale /
palette / 16-bit files decoded by ``load_image``, and real sizes (448-1280 px) under real tile sizes (336, 560).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_TINY
from PIL import Image
from transformers import LlavaNextImageProcessorPil, MllamaImageProcessorPil

from mllm_da.backbones import fast_image
from mllm_da.backbones.base import Backbone
from mllm_da.backbones.fast_image import llava_next_pixel_inputs, mllama_pixel_inputs, pixel_dtype
from mllm_da.backbones.llava_next import LlavaNext
from mllm_da.backbones.loading import load_backbone
from mllm_da.backbones.mllama import Mllama
from mllm_da.data.records import Turn, load_image

TINY_IMAGE = {"image_mean": [0.96, 0.96, 0.96], "image_std": [0.5, 0.5, 0.5]}  # conf/model/tiny_*.yaml
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

LLAVA_NEXT_PROCESSORS = {
    "tiny": lambda: LlavaNext.image_processor({"vision_image_size": 56}, TINY_IMAGE),
    "random 336": lambda: LlavaNext.image_processor({"vision_image_size": 336}, {}),
    # llava-hf/llama3-llava-next-8b-hf's preprocessor_config.json
    "checkpoint": lambda: LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_mean=CLIP_MEAN,
        image_std=CLIP_STD, image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
}
MLLAMA_PROCESSORS = {
    "tiny": lambda: Mllama.image_processor({"vision_image_size": 56, "max_tiles": 2}, TINY_IMAGE),
    "random 560": lambda: Mllama.image_processor({"vision_image_size": 560, "max_tiles": 4}, {}),
    # meta-llama/Llama-3.2-11B-Vision-Instruct's preprocessor_config.json
    "checkpoint": lambda: MllamaImageProcessorPil(size={"height": 560, "width": 560}, max_image_tiles=4,
                                                  resample=2, image_mean=CLIP_MEAN, image_std=CLIP_STD),
}
#: (width, height): a pixel, strips, small odd sizes, real sizes, exact tile multiples
SIZES = [(1, 1), (2000, 30), (30, 2000), (100, 37), (448, 448), (1280, 960), (812, 1216), (672, 336), (56, 112)]
#: the images the real tile sizes (336, 560) are checked on, to keep the tests fast: a pixel, the strips, two
#: real sizes, the decoded RGBA and greyscale files
REAL_SIZE_SUBSET = [0, 1, 2, 5, 6, 9, 10]


def subset(preset: str, images: list[Image.Image]) -> list[Image.Image]:
    return images if preset == "tiny" else [images[i] for i in REAL_SIZE_SUBSET]


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Image.Image]:
    """SIZES as RGB pictures, then files of other modes decoded (and made RGB) by load_image."""
    folder = tmp_path_factory.mktemp("fast_image")
    rng = np.random.default_rng(7)
    files = {
        "rgba.png": Image.fromarray(rng.integers(0, 256, (300, 500, 4), dtype=np.uint8), "RGBA"),
        "grey.png": Image.fromarray(rng.integers(0, 256, (640, 480), dtype=np.uint8), "L"),
        "grey16.png": Image.fromarray(rng.integers(0, 65536, (90, 700), dtype=np.uint16)),
        "palette.png": picture(333, 222, 3).convert("P"),
    }
    files["palette.png"].info["transparency"] = 0
    loaded = []
    for name, img in files.items():
        img.save(folder / name)
        loaded.append(load_image(folder / name))
    assert all(img.mode == "RGB" for img in loaded)
    return [picture(w, h, i) for i, (w, h) in enumerate(SIZES)] + loaded


# ---------------------------------------------------------------------------------------------- LLaVA-NeXT
@pytest.mark.parametrize("preset", list(LLAVA_NEXT_PROCESSORS))
def test_fast_llava_next_pixels_equal_the_transformers_processor(preset: str, images):
    ip = LLAVA_NEXT_PROCESSORS[preset]()
    images = subset(preset, images)
    reference = ip(images=images, return_tensors="pt")
    fast = llava_next_pixel_inputs(images, ip)
    assert fast is not None
    assert fast["pixel_values"].shape == reference["pixel_values"].shape  # (images, max patches, 3, tile, tile)
    assert fast["pixel_values"].dtype == reference["pixel_values"].dtype
    assert torch.equal(fast["pixel_values"], reference["pixel_values"])
    assert fast["image_sizes"].dtype == reference["image_sizes"].dtype
    assert torch.equal(fast["image_sizes"], reference["image_sizes"])


def test_fast_llava_next_pixels_in_bf16_are_the_processor_values_rounded_as_the_model_rounds_them(images):
    ip = LLAVA_NEXT_PROCESSORS["tiny"]()
    reference = ip(images=images, return_tensors="pt")["pixel_values"].to(torch.bfloat16)
    fast = llava_next_pixel_inputs(images, ip, torch.bfloat16)["pixel_values"]
    assert fast.dtype == torch.bfloat16
    assert torch.equal(fast, reference)


def test_fast_llava_next_pixels_decline_what_they_do_not_reproduce():
    ip = LLAVA_NEXT_PROCESSORS["tiny"]()
    assert llava_next_pixel_inputs([picture(64, 64, 0).convert("L")], ip) is None  # not RGB
    keyed = picture(64, 64, 0)
    keyed.info["transparency"] = (0, 0, 0)  # the processor would composite it on white
    assert llava_next_pixel_inputs([keyed], ip) is None
    ip.image_grid_pinpoints = [[56, 84]]  # a pinpoint that is not whole tiles
    assert llava_next_pixel_inputs([picture(64, 64, 0)], ip) is None
    ip = LLAVA_NEXT_PROCESSORS["tiny"]()
    ip.do_normalize = False
    assert llava_next_pixel_inputs([picture(64, 64, 0)], ip) is None


# -------------------------------------------------------------------------------------------------- Mllama
def nested(images: list[Image.Image]) -> list[list[Image.Image]]:
    """Samples of several images, then one each: image slots and tiles get padded."""
    if len(images) < 10:
        return [images[:1], images[1:3], images[3:5]] + [[img] for img in images[5:]]
    return [images[:1], images[1:4], images[4:6]] + [[img] for img in images[6:]]


@pytest.mark.parametrize("preset", list(MLLAMA_PROCESSORS))
def test_fast_mllama_pixels_equal_the_transformers_processor(preset: str, images):
    ip = MLLAMA_PROCESSORS[preset]()
    batch = nested(subset(preset, images))
    reference = ip(images=batch, return_tensors="pt")
    fast = mllama_pixel_inputs(batch, ip)
    assert fast is not None
    for key in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
        assert fast[key].shape == reference[key].shape, key
        assert fast[key].dtype == reference[key].dtype, key
        assert torch.equal(fast[key], reference[key]), key
    assert fast["num_tiles"] == reference["num_tiles"]


def test_fast_mllama_pixels_in_bf16_are_the_processor_values_rounded_as_the_model_rounds_them(images):
    ip = MLLAMA_PROCESSORS["tiny"]()
    reference = ip(images=nested(images), return_tensors="pt")["pixel_values"].to(torch.bfloat16)
    fast = mllama_pixel_inputs(nested(images), ip, torch.bfloat16)["pixel_values"]
    assert fast.dtype == torch.bfloat16
    assert torch.equal(fast, reference)


def test_fast_mllama_pixels_decline_what_they_do_not_reproduce():
    ip = MLLAMA_PROCESSORS["tiny"]()
    assert mllama_pixel_inputs([[picture(64, 64, 0).convert("RGBA")]], ip) is None
    ip.do_rescale = False
    assert mllama_pixel_inputs([[picture(64, 64, 0)]], ip) is None


def test_every_output_element_is_written_not_left_as_allocated(images, monkeypatch):
    """The outputs are allocated uninitialised (fresh mappings happen to be zeros): fill them with NaN first, so
    padding that the fast path forgot to zero would show."""
    monkeypatch.setattr(fast_image, "_output", lambda shape, dtype: torch.full(shape, float("nan"), dtype=dtype))
    ip = LLAVA_NEXT_PROCESSORS["tiny"]()
    assert torch.equal(llava_next_pixel_inputs(images, ip)["pixel_values"],
                       ip(images=images, return_tensors="pt")["pixel_values"])
    ip = MLLAMA_PROCESSORS["tiny"]()
    assert torch.equal(mllama_pixel_inputs(nested(images), ip)["pixel_values"],
                       ip(images=nested(images), return_tensors="pt")["pixel_values"])


def test_pixel_dtype_follows_the_model_dtype():
    assert pixel_dtype("bfloat16") == torch.bfloat16
    assert pixel_dtype("float16") == torch.float16
    assert pixel_dtype("float32") == torch.float32
    assert pixel_dtype(None) == torch.float32


# -------------------------------------------------------------------------------- adapters: fast on vs off
@pytest.fixture(scope="module", params=["llava_next", "mllama"])
def backbone(request, work_root: Path) -> Backbone:
    return load_backbone(family=request.param, variant="tiny", tiny=TEST_TINY, image=TINY_IMAGE,
                         cache_dir=str(work_root / "cache"))


def samples(bb: Backbone, images: list[Image.Image]):
    rng = random.Random(0)
    out = []
    for i, img in enumerate(images):
        turns = [Turn("user", "<image>Describe the image."), Turn("assistant", "There are two shapes " * (i % 3 + 1))]
        for _ in range(rng.randint(0, 2)):
            turns += [Turn("user", "How many shapes?"), Turn("assistant", "two " * rng.randint(1, 4))]
        sample = bb.encode(turns, [img.size], sample_id=str(i))
        sample.images = [img]
        out.append(sample)
    return out


def assert_same_batch(fast: dict, slow: dict) -> None:
    assert fast.keys() == slow.keys()
    for key, value in slow.items():
        if isinstance(value, torch.Tensor):
            assert fast[key].dtype == value.dtype, key
            assert torch.equal(fast[key], value), key
        else:
            assert fast[key] == value, key


def test_collate_is_the_same_with_the_fast_path_on_or_off(backbone: Backbone, images, monkeypatch):
    assert backbone.fast_pixels
    data = samples(backbone, images)
    fast = backbone.collate(data)
    padded_left = backbone.collate(data[:4], padding_side="left")
    monkeypatch.setattr(backbone, "fast_pixels", False)
    slow = backbone.collate(data)
    assert "pixel_values" in slow and ("image_sizes" in slow or "aspect_ratio_ids" in slow)
    assert_same_batch(fast, slow)
    assert_same_batch(padded_left, backbone.collate(data[:4], padding_side="left"))
    if backbone.supports_packing:
        monkeypatch.setattr(backbone, "fast_pixels", True)
        packed = backbone.collate_packed(data, capacity=2 * max(s.expanded_length for s in data))
        monkeypatch.setattr(backbone, "fast_pixels", False)
        assert_same_batch(packed, backbone.collate_packed(data, capacity=2 * max(s.expanded_length for s in data)))


def test_collate_falls_back_to_the_processor_for_what_the_fast_path_declines(backbone: Backbone):
    sample = samples(backbone, [picture(90, 60, 1)])[0]
    sample.images = [sample.images[0].convert("L")]
    batch = backbone.collate([sample])  # the processor converts it; the fast path declines it
    assert batch["pixel_values"].dtype == torch.float32
