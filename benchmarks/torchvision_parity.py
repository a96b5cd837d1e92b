"""How the fast pixel paths' two backends compare with transformers' own image processors, on real-size images.

    python benchmarks/torchvision_parity.py              # needs torchvision (not a dependency of mllm-da)
    python benchmarks/torchvision_parity.py --n 32 --models qwen2_vl_2b

For each preset (its real image settings) and :mod:`benchmarks.workload` JPEGs plus odd sizes (a pixel, strips):

* ``fast pil`` vs ``*ImageProcessorPil``: must be equal, bit for bit;
* ``fast torchvision`` vs transformers' torchvision ``*ImageProcessor`` (``AutoImageProcessor``'s default where
  torchvision is installed): must be equal, bit for bit;
* ``fast torchvision`` vs ``*ImageProcessorPil``: how far the two backends' pixels are apart.

Prints one table (elements compared, elements that differ at all, elements that differ by half a pixel step or
more, the largest difference in pixel steps: the difference of normalised values times std / rescale) and writes
``benchmarks/results/torchvision_parity-<device>.json``.
Exits 1 when a pair that must be equal is not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import environment, print_table, write_result  # noqa: E402
from benchmarks.data_pipeline import PRESETS, processor_backbone  # noqa: E402
from benchmarks.workload import WorkloadSpec, conversations  # noqa: E402
from mllm_da.backbones.fast_image import llava_next_pixel_inputs, mllama_pixel_inputs, qwen_pixel_inputs  # noqa: E402
from mllm_da.data.records import load_image  # noqa: E402

ODD_SIZES = [(1, 1), (2000, 30), (30, 2000), (100, 37), (56, 112)]


def torchvision_processor(pil_processor: Any) -> Any:
    """transformers' torchvision image processor with the PIL one's settings (saved, then loaded back)."""
    import transformers

    name = type(pil_processor).__name__.removesuffix("Pil")
    with tempfile.TemporaryDirectory() as folder:
        pil_processor.save_pretrained(folder)
        return getattr(transformers, name).from_pretrained(folder)


def fast(model: str, images: list[Image.Image], ip: Any, backend: str) -> torch.Tensor:
    if model.startswith("qwen"):
        return qwen_pixel_inputs(images, ip, torch.float32, backend)["pixel_values"]
    if model.startswith("llava_next"):
        return llava_next_pixel_inputs(images, ip, torch.float32, backend)["pixel_values"]
    return mllama_pixel_inputs([[img] for img in images], ip, torch.float32, backend)["pixel_values"]


def processed(model: str, images: list[Image.Image], ip: Any) -> torch.Tensor:
    nested = [[img] for img in images] if model.startswith("mllama") else images
    return ip(images=nested, return_tensors="pt")["pixel_values"]


def compare(
    name: str, model: str, images: str, a: torch.Tensor, b: torch.Tensor, pixel_unit: float, exact: bool
) -> dict:
    row = {"model": model, "images": images, "pair": name, "elements": a.numel(), "must_be_equal": exact}
    if a.shape != b.shape:
        return row | {
            "differ": a.numel(),
            "differ_by_a_step": a.numel(),
            "max_diff_steps": float("inf"),
            "ok": not exact,
        }
    steps = (a - b).abs() / pixel_unit
    differ = int((a != b).sum())
    return row | {
        "differ": differ,
        "differ_by_a_step": int((steps >= 0.5).sum()),
        "max_diff_steps": round(float(steps.max()), 3) if a.numel() else 0.0,
        "ok": differ == 0 or not exact,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PRESETS))
    parser.add_argument("--n", type=int, default=24, help="workload images per preset")
    args = parser.parse_args(argv)
    try:
        import torchvision
    except ImportError:
        sys.exit("torchvision_parity: needs torchvision (pip install torchvision matching your torch)")
    rng = np.random.default_rng(0)
    groups = {
        "workload": [load_image(c.images[0]) for c in conversations(WorkloadSpec(n=args.n))],
        "odd sizes": [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ODD_SIZES],
    }
    rows = []
    for model in args.models:
        backbone, _ = processor_backbone(model)
        pil_ip = backbone.processor.image_processor
        tv_ip = torchvision_processor(pil_ip)
        # one pixel step in normalised units, for the channel with the largest step: std / rescale is per channel
        pixel_unit = float(pil_ip.rescale_factor) / float(np.min(np.atleast_1d(pil_ip.image_std)))
        for group, images in groups.items():
            fast_pil, fast_tv = fast(model, images, pil_ip, "pil"), fast(model, images, pil_ip, "torchvision")
            reference_pil, reference_tv = processed(model, images, pil_ip), processed(model, images, tv_ip)
            rows += [
                compare("fast pil = PIL processor", model, group, fast_pil, reference_pil, pixel_unit, True),
                compare(
                    "fast torchvision = torchvision processor", model, group, fast_tv, reference_tv, pixel_unit, True
                ),
                compare("fast torchvision vs PIL processor", model, group, fast_tv, reference_pil, pixel_unit, False),
            ]
    result = {
        "benchmark": "torchvision_parity",
        **environment(),
        "images": {k: len(v) for k, v in groups.items()},
        "torchvision": torchvision.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "runs": rows,
    }
    result["table"] = print_table(
        rows,
        ["model", "images", "pair", "elements", "differ", "differ_by_a_step", "max_diff_steps", "ok"],
        title=f"pixel parity: {args.n} workload JPEGs, {len(ODD_SIZES)} odd sizes; torch CPU "
        f"capability {result['cpu_capability']}; steps of 1/255 of the pixel range",
    )
    write_result(f"torchvision_parity-{result['device']}", result)
    if not all(r["ok"] for r in rows):
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
