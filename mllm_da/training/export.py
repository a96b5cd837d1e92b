"""Export a trained model as a plain transformers folder (merged weights + processor + chat template)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mllm_da.backbones.base import Backbone
from mllm_da.backbones.loading import load_backbone
from mllm_da.training.finetune import FinetuneConfig
from mllm_da.utils.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)


def export_merged(backbone: Backbone, finetune: FinetuneConfig, folder: str | Path) -> Path:
    """Write ``folder`` loadable by ``AutoModelForImageTextToText.from_pretrained``.

    LoRA adapters are merged into the base weights. For QLoRA the base is reloaded in full precision first and
    the adapters (and any fully trained vision/projector weights) are applied to it: merging into 4-bit weights
    would bake the quantisation error in. The adapter alone is saved too, under ``folder/adapter``.

    The folder is built beside ``folder`` and swapped in whole (:func:`~mllm_da.utils.io.atomic_dir`): a run killed
    while exporting leaves the previous export, or none, never a half-written one that loads as a model.
    """
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        _export_into(backbone, finetune, tmp)
        _stop_where_evaluation_stops(backbone, tmp)
    return folder


def _stop_where_evaluation_stops(backbone: Backbone, folder: Path) -> None:
    """Add the chat format's stop tokens to ``generation_config.json``'s ``eos_token_id``: a plain
    ``model.generate`` on the export then stops where evaluate.py's generation stops (a tiny checkpoint's config
    names only the turn end, not ``<|endoftext|>``)."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    eos = config.get("eos_token_id")
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    stops = eos + [i for i in backbone.stop_token_ids() if i not in eos]
    if stops != eos:
        config["eos_token_id"] = stops
        atomic_write_json(path, config)


def _export_into(backbone: Backbone, finetune: FinetuneConfig, folder: Path) -> None:
    model = backbone.model
    if finetune.method == "full":
        backbone.save(folder, model)
        return
    from peft import PeftModel

    assert isinstance(model, PeftModel), "LoRA export expects a PeftModel"
    model.save_pretrained(str(folder / "adapter"))  # peft annotates str; it only joins and creates paths
    if finetune.method == "lora":
        merged = model.merge_and_unload()
        backbone.model = merged
        backbone.save(folder, merged)
        return
    # QLoRA: full-precision base + adapter + trained non-LLM weights, then merge
    trained_extra = {
        _strip_peft(n): p.detach().to(torch.float32).cpu()
        for n, p in model.named_parameters()
        if p.requires_grad and "lora_" not in n
    }
    base = load_backbone(backbone.spec)
    peft_model = PeftModel.from_pretrained(base.model, folder / "adapter")
    merged = peft_model.merge_and_unload()
    if trained_extra:
        missing = set(trained_extra) - set(dict(merged.named_parameters()))
        if missing:
            raise RuntimeError(f"QLoRA export: trained weights not found in the base model: {sorted(missing)[:5]}")
        merged.load_state_dict(trained_extra, strict=False)
    base.model = merged
    base.save(folder, merged)


def _strip_peft(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
