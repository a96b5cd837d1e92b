"""Faster, bit-identical pixel inputs for Qwen2-VL / Qwen2.5-VL, LLaVA-NeXT and Mllama (the data loader's
hottest step).

Qwen: transformers' PIL image processor converts each image PIL -> numpy -> PIL -> numpy, rescales in float64,
normalises in float32 and patchifies the float image through a 7-axis transpose: on real-size images (448-1280
px) that is 20-60 ms per image on one core, which alone keeps the loader under 50 samples/s per core. This path
does the same arithmetic in a cheaper order and gives the same tensors, bit for bit:

* the resize is the same PIL call (bicubic, no reducing gap) on the decoded RGB image;
* the 7-axis patch transpose runs on the uint8 image (a quarter of the bytes);
* rescale + normalise is a per-channel 256-entry table computed exactly as transformers computes each value
  (``float32(float64(x) * rescale_factor)``, then ``(v - mean) / std`` in float32), gathered in one pass;
* the temporal-patch duplication is one contiguous copy.

Anything outside the settings it reproduces (another resample filter, no rescale or normalise, non-RGB input)
returns ``None`` and the caller uses the transformers processor. ``tests/test_performance.py`` checks equality.

LLaVA-NeXT (:func:`llava_next_pixel_inputs`) and Mllama (:func:`mllama_pixel_inputs`) reproduce the PIL processors
(``LlavaNextImageProcessorPil``, ``MllamaImageProcessorPil``) the same way: the same PIL resizes of the RGB image
(anyres best resolution + the base image for LLaVA-NeXT; fit-to-canvas for Mllama), zero padding on the uint8
image (a zero byte normalises to the table's entry 0, as the processor's zero-padded image does), the tile split
as one transpose of bytes, one table gather written straight into the batch tensor, and zeros (not normalised,
as transformers pads) for the batch padding. ``tests/test_fast_image.py`` checks equality.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image


@lru_cache(maxsize=16)
def normalisation_table(rescale_factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(channels * 256,) float32: the value transformers' rescale + normalise gives byte ``x`` of channel ``c``
    at index ``c * 256 + x``."""
    values = (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    return torch.from_numpy(np.ascontiguousarray(((values[None, :] - mean32) / std32).reshape(-1)))


def _as_tuple(value: float | Sequence[float], channels: int = 3) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, Sequence) else (float(value),) * channels


# ------------------------------------------------------------------------------------------ shared pieces
_CHANNEL_OFFSETS = (torch.arange(3, dtype=torch.int32) * 256).view(1, 1, 3, 1, 1)


def pixel_dtype(spec_dtype: str | None) -> torch.dtype:
    """The dtype pixel tensors are built in: the model's half-precision dtype when it has one (its vision tower
    casts them to it first thing), else float32 (the processors' own dtype)."""
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(spec_dtype or "", torch.float32)


def _rgb_only(images: Sequence[Image.Image]) -> bool:
    # the processors composite transparency on white before anything else: such images go the slow way
    return all(img.mode == "RGB" and "transparency" not in img.info for img in images)


#: map large outputs with transparent huge pages where the kernel offers them (False: ordinary torch.empty)
huge_pages: bool = True
#: outputs at least this large are huge-page mappings (glibc's largest mmap threshold: these get fresh pages anyway)
_HUGE_PAGE_MIN_BYTES = 32 << 20


def _output(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch's pixels.

    A batch's pixels are tens of MB (Mllama: samples x 4 tiles x 3 x 560 x 560). glibc serves allocations of 32 MiB
    or more with a fresh mapping every time, whose 4 KiB page faults cost more than computing the values (0.65 ms
    per MB on the 2-core VM of benchmarks/README.md); smaller ones come from its heap, reused without faults. Outputs
    of 32 MiB or more are therefore an anonymous mapping advised to use transparent huge pages (one fault per 2 MiB):
    Mllama's loader +11-27 % samples per CPU-second, Qwen2-VL's +6 % (interleaved A/B, benchmarks/README.md). The
    tensor keeps the mapping alive; it is unmapped when the tensor is freed. In a data-loader worker the batch goes
    to the trainer through shared memory, so it is allocated there instead.
    """
    if torch.utils.data.get_worker_info() is not None:
        return torch.empty(shape, dtype=dtype).share_memory_()
    nbytes = math.prod(shape) * dtype.itemsize
    if huge_pages and nbytes >= _HUGE_PAGE_MIN_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            buffer.madvise(mmap.MADV_HUGEPAGE)
        except (OSError, ValueError, AttributeError):  # THP disabled or not Linux: ordinary pages
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype, count=math.prod(shape)).view(shape)
    return torch.empty(shape, dtype=dtype)


def _tiles_into(pixels: np.ndarray, rows: int, cols: int, tile: int, table: torch.Tensor, out: torch.Tensor) -> None:
    """Normalise the (rows*tile, cols*tile, 3) uint8 image and write it as (rows*cols, 3, tile, tile) tiles in
    row-major tile order into the contiguous ``out``: one byte transpose, one table gather."""
    grouped = np.ascontiguousarray(pixels.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 4, 1, 3))
    index = torch.from_numpy(grouped).to(torch.int32).add_(_CHANNEL_OFFSETS)
    torch.index_select(table, 0, index.view(-1), out=out.view(-1))


def _resize(img: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    # transformers resizes to the same size too, and PIL returns a copy then: skip it
    return img if img.size == (width, height) else img.resize((width, height), resample=resample)


def _paste(img: Image.Image, height: int, width: int, top: int, left: int) -> np.ndarray:
    """The uint8 (height, width, 3) canvas of zeros with ``img`` at (top, left): transformers' zero padding."""
    pixels = np.asarray(img)
    if pixels.shape[:2] == (height, width):
        return pixels
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[top:top + img.height, left:left + img.width] = pixels
    return canvas


def _resample(ip) -> int | None:
    resample = getattr(ip, "resample", None)
    if resample is None:
        return int(Image.BILINEAR)  # what the PIL backend's resize falls back to
    return int(resample) if isinstance(resample, int) else None  # a torchvision mode: not this path


def _normalises(ip) -> bool:
    return bool(getattr(ip, "do_rescale", True)) and bool(getattr(ip, "do_normalize", True))


# -------------------------------------------------------------------------------------------------- Qwen
def qwen_fast_supported(ip) -> bool:
    """Whether ``ip`` (a Qwen2-VL image processor) uses the settings this path reproduces."""
    return (
        bool(getattr(ip, "do_resize", True))
        and bool(getattr(ip, "do_rescale", True))
        and bool(getattr(ip, "do_normalize", True))
        and int(getattr(ip, "resample", Image.BICUBIC)) == int(Image.BICUBIC)
        and ip.size.get("shortest_edge") is not None
        and ip.size.get("longest_edge") is not None
    )


def qwen_pixel_inputs(
    images: Sequence[Image.Image], ip, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor] | None:
    """``pixel_values`` and ``image_grid_thw`` as ``Qwen2VLImageProcessorPil(images)`` returns them, or
    ``None`` when the processor's settings or an image's mode are outside this path.

    ``dtype`` other than float32 gives the processor's values rounded to it, exactly what the model's patch
    embedding casts them to: a bf16 model's loader then moves half the bytes (each patch is stored twice,
    once per temporal slot, so pixel tensors are the largest thing in a batch).
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if not images or not qwen_fast_supported(ip) or not _rgb_only(images):
        return None
    patch, merge, temporal = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
    table = normalisation_table(float(ip.rescale_factor), _as_tuple(ip.image_mean), _as_tuple(ip.image_std))
    table = table.to(dtype)
    offsets = (torch.arange(3, dtype=torch.int32) * 256).view(3, 1, 1)
    sizes = [smart_resize(img.height, img.width, factor=patch * merge, min_pixels=ip.size["shortest_edge"],
                          max_pixels=ip.size["longest_edge"]) for img in images]
    grids = [(h // patch, w // patch) for h, w in sizes]
    # one output for the whole batch, each image's rows written in place (no per-image tensors to concatenate);
    # in a data-loader worker it is in shared memory, which saves the copy of the batch's largest tensor (_output)
    pixel_values = _output((sum(gh * gw for gh, gw in grids), 3 * temporal * patch * patch), dtype)
    row = 0
    for img, (height, width), (gh, gw) in zip(images, sizes, grids):
        if (width, height) != img.size:  # transformers resizes to the same size too: PIL returns a copy then
            img = img.resize((width, height), resample=Image.BICUBIC)
        pixels = np.asarray(img)  # (H, W, C) uint8
        # (gh/m, m, p, gw/m, m, p, C) -> (gh/m, gw/m, m, m, C, p, p): transformers' patch order, on bytes
        grouped = np.ascontiguousarray(
            pixels.reshape(gh // merge, merge, patch, gw // merge, merge, patch, 3).transpose(0, 3, 1, 4, 6, 2, 5)
        )
        index = torch.from_numpy(grouped).to(torch.int32).add_(offsets)
        values = table.index_select(0, index.reshape(-1)).view(index.shape)
        target = pixel_values[row:row + gh * gw].view(*index.shape[:5], temporal, patch, patch)
        target.copy_(values.unsqueeze(5).expand(*values.shape[:5], temporal, patch, patch))
        row += gh * gw
    return {"pixel_values": pixel_values, "image_grid_thw": torch.tensor([[1, gh, gw] for gh, gw in grids])}


# -------------------------------------------------------------------------------------------- LLaVA-NeXT
def llava_next_tile(ip) -> int | None:
    """The tile side when ``ip`` (a LLaVA-NeXT image processor) uses the settings this path reproduces: the PIL
    backend, rescale + normalise + batch padding on, a PIL resample filter, square tiles that its resize and
    centre crop leave as they are, and pinpoints that are whole tiles; else ``None``."""
    from transformers import LlavaNextImageProcessorPil

    if not isinstance(ip, LlavaNextImageProcessorPil) or not _normalises(ip) or not bool(getattr(ip, "do_pad", True)):
        return None
    if _resample(ip) is None:
        return None
    size, crop = ip.size, ip.crop_size
    if size.get("height") and size.get("width"):
        base = (size["height"], size["width"])
    elif size.get("shortest_edge") and not size.get("longest_edge"):
        base = (size["shortest_edge"], size["shortest_edge"])
    else:
        return None
    tile = (crop.get("height") if crop else None) or size.get("height") or size.get("shortest_edge")
    crop_hw = (crop.get("height"), crop.get("width")) if crop else (None, None)
    if base != (tile, tile) or (getattr(ip, "do_center_crop", True) and crop_hw != base):
        return None
    pinpoints = ip.image_grid_pinpoints
    if not pinpoints or any(int(h) % tile or int(w) % tile for h, w in pinpoints):
        return None
    return int(tile)


def _llava_next_fit(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """transformers' ``get_patch_output_size``: the aspect-preserving size inside ``target`` (height, width)."""
    target_height, target_width = target
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_height), target_width
    return target_height, min(math.ceil(width * scale_h), target_width)


def llava_next_pixel_inputs(
    images: Sequence[Image.Image], ip, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor] | None:
    """``pixel_values`` (images, max patches, 3, tile, tile) and ``image_sizes`` as
    ``LlavaNextImageProcessorPil(images, return_tensors="pt")`` returns them, or ``None`` when the processor's
    settings or an image's mode are outside this path. Patch 0 is the whole image resized to a tile, then the
    tiles of the image resized into its best pinpoint and centred on zeros; patches past an image's count are
    zeros. ``dtype`` as in :func:`qwen_pixel_inputs`."""
    from transformers.image_processing_utils import select_best_resolution

    tile = llava_next_tile(ip) if images else None
    if tile is None or not _rgb_only(images):
        return None
    resample = _resample(ip)
    table = normalisation_table(float(ip.rescale_factor), _as_tuple(ip.image_mean), _as_tuple(ip.image_std)).to(dtype)
    pinpoints = [[int(h), int(w)] for h, w in ip.image_grid_pinpoints]
    bests = [select_best_resolution((img.height, img.width), pinpoints) for img in images]
    counts = [1 + (bh // tile) * (bw // tile) for bh, bw in bests]
    pixel_values = _output((len(images), max(counts), 3, tile, tile), dtype)
    for i, (img, (bh, bw), n) in enumerate(zip(images, bests, counts)):
        target = pixel_values[i]
        _tiles_into(np.asarray(_resize(img, tile, tile, resample)), 1, 1, tile, table, target[:1])
        height, width = _llava_next_fit(img.height, img.width, (bh, bw))
        top, left = (bh - height) // 2, (bw - width) // 2
        canvas = _paste(_resize(img, height, width, resample), bh, bw, top, left)
        _tiles_into(canvas, bh // tile, bw // tile, tile, table, target[1:n])
        if n < target.shape[0]:
            target[n:].zero_()
    return {"pixel_values": pixel_values, "image_sizes": torch.tensor([[img.height, img.width] for img in images])}


# ------------------------------------------------------------------------------------------------ Mllama
def mllama_supported(ip) -> bool:
    """Whether ``ip`` (an Mllama image processor) uses the settings this path reproduces: the PIL backend,
    rescale + normalise on, a PIL resample filter (its own validation already demands resize, pad, square
    tiles)."""
    from transformers import MllamaImageProcessorPil

    return isinstance(ip, MllamaImageProcessorPil) and _normalises(ip) and _resample(ip) is not None


def mllama_pixel_inputs(
    images_per_sample: Sequence[Sequence[Image.Image]], ip, dtype: torch.dtype = torch.float32
) -> dict | None:
    """``pixel_values`` (samples, max images, max tiles, 3, tile, tile), ``aspect_ratio_ids``,
    ``aspect_ratio_mask`` and ``num_tiles`` as ``MllamaImageProcessorPil(images_per_sample,
    return_tensors="pt")`` returns them, or ``None`` when the processor's settings or an image's mode are
    outside this path. Each image is resized to fit its best tile canvas, zero-padded at the bottom and right,
    and split into tiles; tiles and images past a sample's count are zeros. ``dtype`` as in
    :func:`qwen_pixel_inputs`."""
    from transformers.models.mllama.image_processing_pil_mllama import (
        get_all_supported_aspect_ratios,
        get_image_size_fit_to_canvas,
        get_optimal_tiled_canvas,
    )

    flat = [img for imgs in images_per_sample for img in imgs]
    if not flat or not mllama_supported(ip) or not _rgb_only(flat):
        return None
    resample = _resample(ip)
    tile, max_tiles = int(ip.size["height"]), int(ip.max_image_tiles)
    table = normalisation_table(float(ip.rescale_factor), _as_tuple(ip.image_mean), _as_tuple(ip.image_std)).to(dtype)
    supported = get_all_supported_aspect_ratios(max_tiles)
    max_images = max(len(imgs) for imgs in images_per_sample)
    pixel_values = _output((len(images_per_sample), max_images, max_tiles, 3, tile, tile), dtype)
    ids = torch.zeros((len(images_per_sample), max_images), dtype=torch.long)
    mask = torch.zeros((len(images_per_sample), max_images, max_tiles), dtype=torch.long)
    mask[:, :, 0] = 1  # transformers marks the first tile of every slot, padding images included
    num_tiles = []
    for i, imgs in enumerate(images_per_sample):
        sample_tiles = []
        for j, img in enumerate(imgs):
            canvas_h, canvas_w = get_optimal_tiled_canvas(img.height, img.width, max_tiles, tile)
            rows, cols = int(canvas_h) // tile, int(canvas_w) // tile
            height, width = get_image_size_fit_to_canvas(img.height, img.width, canvas_h, canvas_w, tile)
            canvas = _paste(_resize(img, int(height), int(width), resample), rows * tile, cols * tile, 0, 0)
            n = rows * cols
            _tiles_into(canvas, rows, cols, tile, table, pixel_values[i, j, :n])
            if n < max_tiles:
                pixel_values[i, j, n:].zero_()
            ids[i, j] = supported.index((rows, cols)) + 1
            mask[i, j, :n] = 1
            sample_tiles.append(n)
        if len(imgs) < max_images:
            pixel_values[i, len(imgs):].zero_()
        num_tiles.append(sample_tiles)
    return {"pixel_values": pixel_values, "aspect_ratio_ids": ids, "aspect_ratio_mask": mask, "num_tiles": num_tiles}
