"""Faster, bit-identical pixel inputs for Qwen2-VL / Qwen2.5-VL, LLaVA-NeXT and Mllama (the data loader's
hottest step).

transformers has two families of image processors, and each path reproduces either (``backend``, the model
preset's ``image_backend``), bit for bit, without needing torchvision:

* ``pil``: the ``*ImageProcessorPil`` classes. PIL's resize; rescale in float64, normalise in float32.
* ``torchvision``: the torchvision classes, transformers' default wherever torchvision is installed, so what a
  model is usually served with. The resize is ``torch.nn.functional.interpolate(antialias=True)`` on the uint8
  image exactly as ``torchvision.transforms.v2.functional.resize`` (0.28-0.29) calls it: native uint8 for
  bicubic, and for bilinear on AVX2/AVX512/ARM; other bilinear in float32, then rounded. Rescale + normalise
  is fused as transformers fuses it: ``(float32(x) - mean/rescale) / (std/rescale)``. Torch's resize kernels
  are vectorised, 3x faster than PIL's on this project's CPUs, and the resize is the loader's largest cost.

The backends' pixels differ by one or two 1/255 steps on about 1 % of the values of real-size photos, more at
the edges of extreme upscales (a 1x1 image, 30-pixel strips). ``benchmarks/torchvision_parity.py`` checks both
against transformers' own processors where torchvision is installed.

What the processors spend their time on, and what this module does instead: transformers' PIL Qwen processor
converts each image PIL -> numpy -> PIL -> numpy, rescales in float64, normalises in float32 and patchifies the
float image through a 7-axis transpose, 20-60 ms per real-size image (448-1280 px) on one core. Here:

* the resize runs once per target size on the decoded RGB image and leaves (3, H, W) uint8 planes (torch's
  output is planar already; PIL's is split once), so every later pass moves whole rows of one channel;
* the patch (Qwen) or tile (LLaVA-NeXT, Mllama) transpose is read from the bytes by the first normalising pass;
* normalising is ``_Normaliser``: for ``pil`` a per-channel 256-entry table computed exactly as transformers
  computes each value, gathered once; for ``torchvision`` the same three float32 operations as torchvision;
* zero padding (LLaVA-NeXT's centring on the best pinpoint, Mllama's canvas) is done on the bytes, as the
  processors pad before normalising; batch padding is zeros, not normalised, as transformers pads;
* the output is one tensor per batch in the model's dtype, each image written in place (``_output``), and Qwen's
  temporal-patch duplication is one copy.

Anything outside the settings a path reproduces (another resample filter, no rescale or normalise, non-RGB
input) returns ``None`` and the caller uses transformers' PIL processor. ``tests/test_fast_image.py`` and
``tests/test_performance.py`` check equality.
"""

from __future__ import annotations

import math
import mmap
import platform
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from PIL import Image

#: which transformers image-processor family the pixels reproduce (module docstring)
Backend = Literal["torchvision", "pil"]


@lru_cache(maxsize=16)
def normalisation_table(rescale_factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(channels * 256,) float32: the value the PIL processors' rescale + normalise gives byte ``x`` of channel
    ``c`` at index ``c * 256 + x``."""
    values = (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    return torch.from_numpy(np.ascontiguousarray(((values[None, :] - mean32) / std32).reshape(-1)))


class _Normaliser:
    """The backend's rescale + normalise of uint8 values laid out (..., 3, rows, cols), channel third from last.

    ``pil``: the processors rescale in float64, which a per-channel 256-entry table (:func:`normalisation_table`)
    reproduces exactly; the bytes are widened to table indices, the channel offsets added, and the table gathered.
    ``torchvision``: transformers fuses rescale into normalise (``mean / rescale``, ``std / rescale`` as float32
    tensors) and torchvision computes ``(float32(x) - mean) / std``: the same three float32 operations here, which
    is cheaper than a gather (a bf16 gather runs at about half the speed of these passes).
    """

    def __init__(self, ip, backend: Backend, dtype: torch.dtype):
        self.backend = backend
        mean, std = _as_tuple(ip.image_mean), _as_tuple(ip.image_std)
        if backend == "torchvision":  # transformers' _fuse_mean_std_and_rescale_factor
            self.mean = (torch.tensor(mean) * (1.0 / float(ip.rescale_factor))).view(3, 1, 1)
            self.std = (torch.tensor(std) * (1.0 / float(ip.rescale_factor))).view(3, 1, 1)
        else:
            self.table = normalisation_table(float(ip.rescale_factor), mean, std).to(dtype)

    def values(self, grouped: torch.Tensor) -> torch.Tensor:
        """The normalised values of the uint8 view ``grouped``, contiguous: float32 (torchvision; the caller's
        copy rounds them to its dtype) or the output dtype (pil)."""
        if self.backend == "torchvision":
            return torch.empty(grouped.shape, dtype=torch.float32).copy_(grouped).sub_(self.mean).div_(self.std)
        index = torch.empty(grouped.shape, dtype=torch.int32).copy_(grouped).add_(_CHANNEL_OFFSETS)
        return self.table.index_select(0, index.view(-1)).view(grouped.shape)

    def into(self, grouped: torch.Tensor, out: torch.Tensor) -> None:
        """Write the normalised values of ``grouped`` into the contiguous ``out`` of the same number of elements."""
        if self.backend == "torchvision" and out.dtype == torch.float32:
            out.view(grouped.shape).copy_(grouped).sub_(self.mean).div_(self.std)
        elif self.backend == "torchvision":
            out.view(grouped.shape).copy_(self.values(grouped))
        else:
            index = torch.empty(grouped.shape, dtype=torch.int32).copy_(grouped).add_(_CHANNEL_OFFSETS)
            torch.index_select(self.table, 0, index.view(-1), out=out.view(-1))


def _as_tuple(value: float | Sequence[float], channels: int = 3) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, Sequence) else (float(value),) * channels


# ------------------------------------------------------------------------------------------ shared pieces
_CHANNEL_OFFSETS = (torch.arange(3, dtype=torch.int32) * 256).view(3, 1, 1)


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


def _tiles_into(
    planes: torch.Tensor, rows: int, cols: int, tile: int, normalise: _Normaliser, out: torch.Tensor
) -> None:
    """Normalise the (3, rows*tile, cols*tile) uint8 planes and write them as (rows*cols, 3, tile, tile) tiles in
    row-major tile order into the contiguous ``out``: the tile split reads whole tile rows of bytes."""
    normalise.into(planes.view(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4), out)


def _rgb_bytes(img: Image.Image) -> torch.Tensor:
    """The (H, W, 3) uint8 pixels of an RGB image as a tensor over the bytes PIL exports (read only: nothing here
    writes to it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": the tensor is only read
        return torch.from_numpy(np.asarray(img))


def _resize(img: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    # transformers resizes to the same size too, and PIL returns a copy then: skip it
    return img if img.size == (width, height) else img.resize((width, height), resample=resample)


_TORCH_MODES = {int(Image.Resampling.BICUBIC): "bicubic", int(Image.Resampling.BILINEAR): "bilinear"}


def _native_uint8_bilinear() -> bool:
    # torchvision 0.28-0.29's _do_native_uint8_resize_on_cpu for bilinear
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def _torch_resize(pixels: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 as torchvision's ``resize_image`` (antialias on) resizes the
    image transformers' torchvision backend hands it: unchanged at the same size; bicubic, and bilinear where
    torchvision trusts torch's uint8 kernels (AVX2, AVX512, ARM), on the uint8 image; other bilinear in float32,
    rounded back to uint8. The memory format of the input does not change the result."""
    if tuple(pixels.shape[:2]) == (height, width):
        return pixels
    mode = _TORCH_MODES[resample]
    image = pixels.permute(2, 0, 1).unsqueeze(0)
    if mode == "bicubic" or _native_uint8_bilinear():
        out = torch.nn.functional.interpolate(
            image, size=[height, width], mode=mode, align_corners=False, antialias=True
        )
    else:
        out = (
            torch.nn.functional.interpolate(
                image.float(), size=[height, width], mode=mode, align_corners=False, antialias=True
            )
            .round_()
            .to(torch.uint8)
        )
    return out[0].permute(1, 2, 0)


class _Source:
    """One image to resize (perhaps several times, LLaVA-NeXT) with the backend's resize, as (3, H, W) uint8
    planes: every later step then moves whole rows of one channel (interleaved RGB would make each of them
    gather every third byte). Torch's resize already returns planes; PIL's output is split once."""

    def __init__(self, img: Image.Image, backend: Backend, resample: int):
        self.img, self.resample = img, resample
        self._pixels = _rgb_bytes(img) if backend == "torchvision" else None

    def resized(self, height: int, width: int) -> torch.Tensor:
        if self._pixels is not None:
            pixels = _torch_resize(self._pixels, height, width, self.resample)
        else:
            pixels = _rgb_bytes(_resize(self.img, height, width, self.resample))
        return pixels.permute(2, 0, 1).contiguous()  # a view of torch's planar output; a copy of PIL's bytes


def _paste(planes: torch.Tensor, height: int, width: int, top: int, left: int) -> torch.Tensor:
    """The uint8 (3, height, width) canvas of zeros with ``planes`` at (top, left): transformers' zero padding."""
    if tuple(planes.shape[1:]) == (height, width):
        return planes
    canvas = torch.zeros((3, height, width), dtype=torch.uint8)
    canvas[:, top : top + planes.shape[1], left : left + planes.shape[2]] = planes
    return canvas


def _resample(ip, backend: Backend = "pil") -> int | None:
    """The PIL resample filter ``ip`` resizes with, or ``None`` when the backend has no exact counterpart."""
    resample = getattr(ip, "resample", None)
    if resample is None:
        resample = int(Image.Resampling.BILINEAR)  # what both backends' resize falls back to
    if not isinstance(resample, int):
        return None  # a torchvision mode: not this path
    if backend == "torchvision" and int(resample) not in _TORCH_MODES:
        return None
    return int(resample)


def _normalises(ip) -> bool:
    return bool(getattr(ip, "do_rescale", True)) and bool(getattr(ip, "do_normalize", True))


# -------------------------------------------------------------------------------------------------- Qwen
def qwen_fast_supported(ip) -> bool:
    """Whether ``ip`` (a Qwen2-VL image processor) uses the settings this path reproduces."""
    return (
        bool(getattr(ip, "do_resize", True))
        and bool(getattr(ip, "do_rescale", True))
        and bool(getattr(ip, "do_normalize", True))
        and getattr(ip, "resample", Image.Resampling.BICUBIC) == Image.Resampling.BICUBIC
        and ip.size.get("shortest_edge") is not None
        and ip.size.get("longest_edge") is not None
    )


def qwen_pixel_inputs(
    images: Sequence[Image.Image],
    ip,
    dtype: torch.dtype = torch.float32,
    backend: Backend = "pil",
    temporal_copies: bool = True,
) -> dict[str, torch.Tensor] | None:
    """``pixel_values`` and ``image_grid_thw`` as ``Qwen2VLImageProcessorPil(images)`` (``backend="pil"``) or
    transformers' torchvision ``Qwen2VLImageProcessor(images)`` returns them, or ``None`` when the processor's
    settings or an image's mode are outside this path.

    ``dtype`` other than float32 gives the processor's values rounded to it, exactly what the model's patch
    embedding casts them to: a bf16 model's loader then moves half the bytes (each patch is stored twice,
    once per temporal slot, so pixel tensors are the largest thing in a batch). ``temporal_copies=False`` stores
    each patch once, (patches, 3 * patch * patch): :func:`qwen_temporal_copies` makes the processor's layout.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if not images or not qwen_fast_supported(ip) or not _rgb_only(images):
        return None
    patch, merge, temporal = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
    normalise = _Normaliser(ip, backend, dtype)
    sizes = [
        smart_resize(
            img.height,
            img.width,
            factor=patch * merge,
            min_pixels=ip.size["shortest_edge"],
            max_pixels=ip.size["longest_edge"],
        )
        for img in images
    ]
    grids = [(h // patch, w // patch) for h, w in sizes]
    # one output for the whole batch, each image's rows written in place (no per-image tensors to concatenate);
    # in a data-loader worker it is in shared memory, which saves the copy of the batch's largest tensor (_output)
    copies = temporal if temporal_copies else 1
    pixel_values = _output((sum(gh * gw for gh, gw in grids), 3 * copies * patch * patch), dtype)
    row = 0
    for img, (height, width), (gh, gw) in zip(images, sizes, grids):
        planes = _Source(img, backend, int(Image.Resampling.BICUBIC)).resized(height, width)  # (C, H, W) uint8
        # (C, gh/m, m, p, gw/m, m, p) -> (gh/m, gw/m, m, m, C, p, p): transformers' patch order, read from the
        # bytes by the first normalising pass
        grouped = planes.view(3, gh // merge, merge, patch, gw // merge, merge, patch).permute(1, 4, 2, 5, 0, 3, 6)
        if copies == 1:
            normalise.into(grouped, pixel_values[row : row + gh * gw])
        else:
            values = normalise.values(grouped)
            target = pixel_values[row : row + gh * gw].view(*values.shape[:5], copies, patch, patch)
            target.copy_(values.unsqueeze(5).expand(*values.shape[:5], copies, patch, patch))
        row += gh * gw
    return {"pixel_values": pixel_values, "image_grid_thw": torch.tensor([[1, gh, gw] for gh, gw in grids])}


def qwen_temporal_copies(pixel_values: torch.Tensor, temporal: int) -> torch.Tensor:
    """(patches, 3 * p * p) pixels stored once per patch -> the processor's (patches, 3 * temporal * p * p), each
    channel's patch repeated per temporal slot (an image is a clip of ``temporal`` equal frames)."""
    n, size = pixel_values.shape
    return pixel_values.view(n, 3, 1, size // 3).expand(n, 3, temporal, size // 3).reshape(n, -1)


# -------------------------------------------------------------------------------------------- LLaVA-NeXT
def llava_next_tile(ip, backend: Backend = "pil") -> int | None:
    """The tile side when ``ip`` (a LLaVA-NeXT image processor) uses the settings this path reproduces: the PIL
    class, rescale + normalise + batch padding on, a resample filter the backend has, square tiles that its resize
    and centre crop leave as they are, and pinpoints that are whole tiles; else ``None``."""
    from transformers import LlavaNextImageProcessorPil

    if not isinstance(ip, LlavaNextImageProcessorPil) or not _normalises(ip) or not bool(getattr(ip, "do_pad", True)):
        return None
    if _resample(ip, backend) is None:
        return None
    size, crop = ip.size, ip.crop_size
    if size.get("height") and size.get("width"):
        base = (size["height"], size["width"])
    elif size.get("shortest_edge") and not size.get("longest_edge"):
        base = (size["shortest_edge"], size["shortest_edge"])
    else:
        return None
    tile = (crop.get("height") if crop else None) or size.get("height") or size.get("shortest_edge")
    if not tile:
        return None
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
    images: Sequence[Image.Image], ip, dtype: torch.dtype = torch.float32, backend: Backend = "pil"
) -> dict[str, torch.Tensor] | None:
    """``pixel_values`` (images, max patches, 3, tile, tile) and ``image_sizes`` as
    ``LlavaNextImageProcessorPil(images, return_tensors="pt")`` (or, ``backend="torchvision"``, transformers'
    torchvision ``LlavaNextImageProcessor``) returns them, or ``None`` when the processor's settings or an image's
    mode are outside this path. Patch 0 is the whole image resized to a tile, then the tiles of the image resized
    into its best pinpoint and centred on zeros; patches past an image's count are zeros. ``dtype`` as in
    :func:`qwen_pixel_inputs`."""
    from transformers.image_processing_utils import select_best_resolution

    tile = llava_next_tile(ip, backend) if images else None
    if tile is None or not _rgb_only(images):
        return None
    resample = _resample(ip, backend)
    assert resample is not None, "the caller checks the processor is supported first"
    normalise = _Normaliser(ip, backend, dtype)
    pinpoints = [[int(h), int(w)] for h, w in ip.image_grid_pinpoints]
    bests = [select_best_resolution((img.height, img.width), pinpoints) for img in images]
    counts = [1 + (bh // tile) * (bw // tile) for bh, bw in bests]
    pixel_values = _output((len(images), max(counts), 3, tile, tile), dtype)
    for i, (img, (bh, bw), n) in enumerate(zip(images, bests, counts)):
        target = pixel_values[i]
        source = _Source(img, backend, resample)
        _tiles_into(source.resized(tile, tile), 1, 1, tile, normalise, target[:1])
        height, width = _llava_next_fit(img.height, img.width, (bh, bw))
        top, left = (bh - height) // 2, (bw - width) // 2
        canvas = _paste(source.resized(height, width), bh, bw, top, left)
        _tiles_into(canvas, bh // tile, bw // tile, tile, normalise, target[1:n])
        if n < target.shape[0]:
            target[n:].zero_()
    return {"pixel_values": pixel_values, "image_sizes": torch.tensor([[img.height, img.width] for img in images])}


# ------------------------------------------------------------------------------------------------ Mllama
def mllama_supported(ip, backend: Backend = "pil") -> bool:
    """Whether ``ip`` (an Mllama image processor) uses the settings this path reproduces: the PIL class,
    rescale + normalise on, a resample filter the backend has (its own validation already demands resize, pad,
    square tiles)."""
    from transformers import MllamaImageProcessorPil

    return isinstance(ip, MllamaImageProcessorPil) and _normalises(ip) and _resample(ip, backend) is not None


def mllama_pixel_inputs(
    images_per_sample: Sequence[Sequence[Image.Image]],
    ip,
    dtype: torch.dtype = torch.float32,
    backend: Backend = "pil",
) -> dict | None:
    """``pixel_values`` (samples, max images, max tiles, 3, tile, tile), ``aspect_ratio_ids``,
    ``aspect_ratio_mask`` and ``num_tiles`` as ``MllamaImageProcessorPil(images_per_sample,
    return_tensors="pt")`` (or, ``backend="torchvision"``, transformers' torchvision ``MllamaImageProcessor``)
    returns them, or ``None`` when the processor's settings or an image's mode are outside this path. Each image
    is resized to fit its best tile canvas, zero-padded at the bottom and right, and split into tiles; tiles and
    images past a sample's count are zeros. ``dtype`` as in :func:`qwen_pixel_inputs`."""
    from transformers.models.mllama.image_processing_pil_mllama import (
        get_all_supported_aspect_ratios,
        get_image_size_fit_to_canvas,
        get_optimal_tiled_canvas,
    )

    flat = [img for imgs in images_per_sample for img in imgs]
    if not flat or not mllama_supported(ip, backend) or not _rgb_only(flat):
        return None
    resample = _resample(ip, backend)
    assert resample is not None, "the caller checks the processor is supported first"
    tile, max_tiles = int(ip.size["height"]), int(ip.max_image_tiles)
    normalise = _Normaliser(ip, backend, dtype)
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
            resized = _Source(img, backend, resample).resized(int(height), int(width))
            canvas = _paste(resized, rows * tile, cols * tile, 0, 0)
            n = rows * cols
            _tiles_into(canvas, rows, cols, tile, normalise, pixel_values[i, j, :n])
            if n < max_tiles:
                pixel_values[i, j, n:].zero_()
            ids[i, j] = supported.index((rows, cols)) + 1
            mask[i, j, :n] = 1
            sample_tiles.append(n)
        if len(imgs) < max_images:
            pixel_values[i, len(imgs) :].zero_()
        num_tiles.append(sample_tiles)
    return {"pixel_values": pixel_values, "aspect_ratio_ids": ids, "aspect_ratio_mask": mask, "num_tiles": num_tiles}
