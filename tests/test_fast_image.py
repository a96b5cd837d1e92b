"""The fast LLaVA-NeXT and Mllama pixel paths (mllm_da/backbones/fast_image.py) give what transformers' PIL
processors give, and the adapters' batches are the same with the fast path on or off. The ``torchvision`` backend
of all three paths (Qwen included) gives what the same processors give with torchvision's two primitives in place
of PIL's: the resize (``torchvision.transforms.v2.functional.resize_image``) and the fused rescale + normalise.

Every comparison is exact (``torch.equal``, dtypes included), not within a tolerance: the fast path runs the same
PIL resize on the same RGB pixels, pads with the same zero bytes, and its per-channel table holds exactly the
processor's arithmetic for each byte (``float32(float64(x) * rescale)``, then ``(v - mean) / std`` in float32), so
no float operation is reordered. Images cover a 1x1 pixel, very wide and very tall strips, RGBA / greyscale /
palette / 16-bit files decoded by ``load_image``, and real sizes (448-1280 px) under real tile sizes (336, 560).
"""

from __future__ import annotations

import platform
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_TINY
from PIL import Image
from transformers import LlavaNextImageProcessorPil, MllamaImageProcessorPil
from transformers import image_processing_backends as backends

from mllm_da.backbones import fast_image
from mllm_da.backbones.base import Backbone
from mllm_da.backbones.fast_image import (
    llava_next_pixel_inputs,
    mllama_pixel_inputs,
    pixel_dtype,
    qwen_pixel_inputs,
)
from mllm_da.backbones.llava_next import LlavaNext
from mllm_da.backbones.loading import load_backbone
from mllm_da.backbones.mllama import Mllama
from mllm_da.backbones.qwen import Qwen2VL
from mllm_da.data.records import Turn, load_image

TINY_IMAGE = {"image_mean": [0.96, 0.96, 0.96], "image_std": [0.5, 0.5, 0.5]}  # conf/model/tiny_*.yaml
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

LLAVA_NEXT_PROCESSORS = {
    "tiny": lambda: LlavaNext.image_processor({"vision_image_size": 56}, TINY_IMAGE),
    "random 336": lambda: LlavaNext.image_processor({"vision_image_size": 336}, {}),
    # llava-hf/llama3-llava-next-8b-hf's preprocessor_config.json
    "checkpoint": lambda: LlavaNextImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    ),
}
MLLAMA_PROCESSORS = {
    "tiny": lambda: Mllama.image_processor({"vision_image_size": 56, "max_tiles": 2}, TINY_IMAGE),
    "random 560": lambda: Mllama.image_processor({"vision_image_size": 560, "max_tiles": 4}, {}),
    # meta-llama/Llama-3.2-11B-Vision-Instruct's preprocessor_config.json
    "checkpoint": lambda: MllamaImageProcessorPil(
        size={"height": 560, "width": 560}, max_image_tiles=4, resample=2, image_mean=CLIP_MEAN, image_std=CLIP_STD
    ),
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
    assert torch.equal(
        llava_next_pixel_inputs(images, ip)["pixel_values"], ip(images=images, return_tensors="pt")["pixel_values"]
    )
    ip = MLLAMA_PROCESSORS["tiny"]()
    assert torch.equal(
        mllama_pixel_inputs(nested(images), ip)["pixel_values"],
        ip(images=nested(images), return_tensors="pt")["pixel_values"],
    )


def test_pixel_dtype_follows_the_model_dtype():
    assert pixel_dtype("bfloat16") == torch.bfloat16
    assert pixel_dtype("float16") == torch.float16
    assert pixel_dtype("float32") == torch.float32
    assert pixel_dtype(None) == torch.float32


# ------------------------------------------------------------------------------------- torchvision backend
QWEN_PROCESSORS = {
    "tiny": lambda: (
        Qwen2VL.tiny_processor({"vocab": 300}, {"min_pixels": 12544, "max_pixels": 12544, **TINY_IMAGE}).image_processor
    ),
    "random": lambda: (
        Qwen2VL.tiny_processor({"vocab": 300}, {"min_pixels": 50176, "max_pixels": 1003520}).image_processor
    ),
}


def torchvision_resize(image: np.ndarray, size, resample, **_) -> np.ndarray:
    """torchvision 0.28's ``resize_image`` (antialias on) of the CHW uint8 image, in the place of transformers'
    PIL ``resize``: the image as transformers' torchvision backend holds it (contiguous CHW, a batch of one)."""
    assert image.dtype == np.uint8 and image.shape[0] == 3
    height, width = size
    if image.shape[1:] == (height, width):
        return image
    mode = {int(Image.BICUBIC): "bicubic", int(Image.BILINEAR): "bilinear"}[int(resample)]
    batch = torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0)
    native = (
        mode == "bicubic"
        or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        or (platform.machine() in ("aarch64", "arm64"))
    )
    if native:
        out = torch.nn.functional.interpolate(
            batch, size=[height, width], mode=mode, align_corners=False, antialias=True
        )
    else:
        out = torch.nn.functional.interpolate(
            batch.float(), size=[height, width], mode=mode, align_corners=False, antialias=True
        )
        out = (out.clamp_(0, 255) if mode == "bicubic" else out).round_().to(torch.uint8)
    return out[0].numpy()


def with_torchvision_primitives(ip, monkeypatch):
    """``ip`` (a PIL processor) with torchvision's resize and transformers' fused rescale + normalise (float32
    ``(x - mean/rescale) / (std/rescale)``) in place of PIL's resize and the float64 rescale."""
    monkeypatch.setattr(backends, "np_resize", torchvision_resize)
    monkeypatch.setattr(ip, "rescale", lambda image, scale, **_: image.astype(np.float32))

    def normalize(image, mean, std, **_):
        fused_mean = torch.tensor(mean) * (1.0 / ip.rescale_factor)
        fused_std = torch.tensor(std) * (1.0 / ip.rescale_factor)
        return torch.from_numpy(image).sub_(fused_mean.view(-1, 1, 1)).div_(fused_std.view(-1, 1, 1)).numpy()

    monkeypatch.setattr(ip, "normalize", normalize)
    return ip


#: family -> (processors, fast path, how images are batched, output keys compared)
TORCHVISION_CASES = {
    "qwen": (QWEN_PROCESSORS, qwen_pixel_inputs, list, ("image_grid_thw", "pixel_values")),
    "llava_next": (LLAVA_NEXT_PROCESSORS, llava_next_pixel_inputs, list, ("pixel_values", "image_sizes")),
    "mllama": (
        MLLAMA_PROCESSORS,
        mllama_pixel_inputs,
        nested,
        ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"),
    ),
}


@pytest.mark.parametrize("family, preset", [(f, p) for f, case in TORCHVISION_CASES.items() for p in case[0]])
def test_torchvision_backend_pixels_equal_the_processor_with_torchvision_primitives(
    family, preset, images, monkeypatch
):
    processors, pixel_inputs, batched, keys = TORCHVISION_CASES[family]
    ip = processors[preset]()
    batch = batched(subset(preset, images))
    fast = pixel_inputs(batch, ip, torch.float32, "torchvision")
    reference = with_torchvision_primitives(ip, monkeypatch)(images=batch, return_tensors="pt")
    for key in keys:
        assert torch.equal(fast[key], reference[key]), key


def test_the_two_backends_differ_by_a_pixel_step_or_two_on_real_size_photos():
    """Smooth real-size pictures (photo-like, unlike noise): the backends' pixels are apart by at most two 1/255
    steps, and by half a step or more on few values."""
    rng = np.random.default_rng(3)
    photos = [
        Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)).resize((w, h), 2)
        for w, h in [(1280, 960), (812, 1216), (1000, 750), (640, 1137)]
    ]
    ip = QWEN_PROCESSORS["random"]()
    pil = qwen_pixel_inputs(photos, ip, torch.float32, "pil")["pixel_values"]
    torchvision = qwen_pixel_inputs(photos, ip, torch.float32, "torchvision")["pixel_values"]
    steps = (pil - torchvision).abs() / (ip.rescale_factor / min(ip.image_std))
    assert float(steps.max()) <= 2.01
    assert float((steps >= 0.5).float().mean()) < 0.03


def test_an_unknown_image_backend_is_refused():
    with pytest.raises(ValueError, match="image_backend must be one of"):
        load_backbone(family="qwen2_vl", variant="tiny", image_backend="opencv")


# -------------------------------------------------------------------------------- adapters: fast on vs off
@pytest.fixture(scope="module", params=["llava_next", "mllama"])
def backbone(request, work_root: Path) -> Backbone:
    return load_backbone(
        family=request.param, variant="tiny", tiny=TEST_TINY, image=TINY_IMAGE, cache_dir=str(work_root / "cache")
    )


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
    monkeypatch.setattr(backbone.spec, "image_backend", "pil")  # the backend of the processor it falls back to
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


def test_collate_with_the_torchvision_backend_is_the_processor_with_torchvision_primitives(
    backbone: Backbone, images, monkeypatch
):
    assert backbone.spec.image_backend == "torchvision"  # the presets' default
    data = samples(backbone, images)
    fast = backbone.collate(data)
    monkeypatch.setattr(backbone, "fast_pixels", False)
    with_torchvision_primitives(backbone.processor.image_processor, monkeypatch)
    assert_same_batch(fast, backbone.collate(data))
