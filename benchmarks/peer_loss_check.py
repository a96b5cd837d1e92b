"""Loss and logits of a Qwen2-VL folder on one fixed image + text input, printed as JSON (torch + transformers only).

``peer_llamafactory.py`` runs it in both venvs, on our tiny checkpoint (the project's transformers) and on its copy
converted for LLaMA-Factory's transformers, to show that the conversion kept the model: the two must agree.
"""

from __future__ import annotations

import json
import sys

import torch
import transformers
from transformers import Qwen2VLForConditionalGeneration


def main(folder: str) -> None:
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    config = model.config
    vision = config.vision_config
    grid = (1, 8, 8)  # one 112 x 112 image: 8 x 8 patches of 14 px, 16 image tokens after the 2 x 2 merge
    n_image_tokens = grid[1] * grid[2] // vision.spatial_merge_size**2
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixel_values = torch.randn(grid[1] * grid[2], patch)
    text = torch.arange(7, 47)
    input_ids = torch.cat(
        [
            text[:5],
            torch.tensor([config.vision_start_token_id]),
            torch.full((n_image_tokens,), config.image_token_id),
            torch.tensor([config.vision_end_token_id]),
            text[5:],
        ]
    )[None]
    extra = {}
    if int(transformers.__version__.split(".")[0]) >= 5:  # transformers 5 wants the image-token mask for M-RoPE
        extra["mm_token_type_ids"] = (input_ids == config.image_token_id).long()
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=pixel_values,
            image_grid_thw=torch.tensor([grid]),
            labels=input_ids,
            **extra,
        )
    print(json.dumps({"loss": float(out.loss), "logits_sum": float(out.logits.double().abs().sum())}))


if __name__ == "__main__":
    main(sys.argv[1])
