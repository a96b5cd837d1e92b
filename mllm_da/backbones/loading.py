"""Build or load a backbone from a ``model=`` preset: hub id or folder, ``tiny`` (materialised to a cached folder,
then loaded by the same ``from_pretrained`` code) or ``random`` (real-size architecture, random init, for GPU
benchmarks).

Loading never runs code that came with a checkpoint. Weights are read from safetensors only
(``use_safetensors=True``; a folder with only pickle weights — ``pytorch_model.bin``, ``*.pt``, ``*.ckpt`` — is
refused before anything is read), the family's own model class is used (never an ``auto_map`` class), and unless
``model.backbone.trust_remote_code=true`` a folder (or cached hub snapshot) whose configs ask for custom code
(``auto_map`` in config.json, tokenizer_config.json, processor or preprocessor config) is refused before
transformers reads it (:func:`check_checkpoint_folder`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as transformers_logging

from mllm_da.backbones.base import Backbone, spec_hash
from mllm_da.backbones.llava_next import LlavaNext
from mllm_da.backbones.mllama import Mllama
from mllm_da.backbones.qwen import Qwen2_5VL, Qwen2VL
from mllm_da.backbones.spec import BackboneSpec, QuantizationBits
from mllm_da.utils.io import build_dir_once
from mllm_da.utils.typed_config import check_value, raise_problems, validate

log = logging.getLogger(__name__)
transformers_logging.disable_progress_bar()  # per-shard bars drown the training log

FAMILIES: dict[str, type[Backbone]] = {cls.family: cls for cls in (Qwen2VL, Qwen2_5VL, LlavaNext, Mllama)}
#: bump when the tiny tokenizer corpus or builder changes, so cached tiny checkpoints are rebuilt
TINY_BUILD_VERSION = 1

ARCHITECTURES = Path(__file__).parent / "architectures"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
#: the configs through which a checkpoint can ask transformers to import its own code (``auto_map``)
CODE_CONFIGS = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "image_processor_config.json",
    "video_preprocessor_config.json",
    "feature_extractor_config.json",
)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


class UnsafeCheckpointError(ValueError):
    """A checkpoint folder that would need code or pickles to load; it is refused before anything is read."""


def _cached_snapshot_files(repo_id: str) -> list[Path]:
    """The config files of a hub id that are in the local cache (nothing is downloaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return []
    found = []
    for name in CODE_CONFIGS:
        try:
            hit = try_to_load_from_cache(repo_id, name)
        except Exception:  # a malformed repo id: from_pretrained will say so
            return []
        if isinstance(hit, str):
            found.append(Path(hit))
    return found


def check_checkpoint_folder(source: str | os.PathLike, trust_remote_code: bool = False) -> None:
    """Refuse a checkpoint that would run code when loaded: custom-code configs (``auto_map``) unless
    ``trust_remote_code``, and a local folder whose weights are pickles only (unpickling can run code; weights
    are read from safetensors). For a hub id only its cached configs are checked."""
    path = Path(source).expanduser()
    is_folder = path.is_dir()
    configs = (
        [path / name for name in CODE_CONFIGS if (path / name).is_file()]
        if is_folder
        else _cached_snapshot_files(str(source))
    )
    if not trust_remote_code:
        for config in configs:
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise UnsafeCheckpointError(f"{config}: not readable JSON ({err}); is {source} a saved model?") from err
            if isinstance(data, dict) and data.get("auto_map"):
                targets = (
                    sorted({str(v) for v in data["auto_map"].values()})
                    if isinstance(data["auto_map"], dict)
                    else [str(data["auto_map"])]
                )
                raise UnsafeCheckpointError(
                    f"{config} asks for custom code (auto_map: {', '.join(targets)}); it is not run. Load it only if "
                    "you trust it: model.backbone.trust_remote_code=true"
                )
    if is_folder:
        safetensors = list(path.glob("*.safetensors")) or list(path.glob("*.safetensors.index.json"))
        if not safetensors:
            pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
            if pickles:
                raise UnsafeCheckpointError(
                    f"{path} holds weights only as pickles ({', '.join(pickles[:5])}), which can run code when read; "
                    "weights are loaded from safetensors only. Convert them where you trust them "
                    "(save_pretrained(..., safe_serialization=True)) and point at that folder"
                )


def family_class(family: str) -> type[Backbone]:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(f"model.family={family!r} is not supported; choose one of {sorted(FAMILIES)}") from None


def tiny_checkpoint(spec: BackboneSpec) -> Path:
    """Build (once) a deterministic tiny checkpoint folder for ``spec`` and return its path."""
    cls = family_class(spec.family)
    key = spec_hash(
        {
            "family": spec.family,
            "tiny": spec.tiny,
            "image": spec.image,
            "seed": spec.seed,
            "version": TINY_BUILD_VERSION,
        }
    )
    folder = Path(spec.cache_dir) / "tiny" / f"{spec.family}-{key}"

    def build(tmp: Path) -> None:
        processor = cls.tiny_processor(spec.tiny, spec.image)
        config = cls.tiny_config(processor.tokenizer, spec.tiny)
        torch.manual_seed(spec.seed)
        cls.model_class()(config).save_pretrained(tmp, safe_serialization=True)
        cls.save_processor(processor, tmp)

    if build_dir_once(folder, build):
        log.info("built tiny %s checkpoint at %s", spec.family, folder)
    return folder


def quantization_config(cls: type[Backbone], bits: int | None, compute_dtype: torch.dtype) -> Any:
    if not bits:
        return None
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=list(cls.quantization_skip_modules),
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(cls.quantization_skip_modules))


def load_backbone(
    spec: BackboneSpec | Mapping[str, Any] | None = None,
    *,
    quantization_bits: int | None = None,
    device: str | torch.device | None = None,
    **fields: Any,
) -> Backbone:
    """Load the model and processor a preset describes and wrap them in the family's adapter.

    Takes a :class:`BackboneSpec`, a mapping, or the spec's fields as keywords (as Hydra's ``instantiate`` of a
    ``model.backbone`` node passes them).
    """
    if spec is None:
        spec = BackboneSpec.from_config(fields)
    elif not isinstance(spec, BackboneSpec):
        spec = BackboneSpec.from_config(spec)
    # a Python caller's spec and bit width, by the rules a config is checked by
    validate(spec, "model.backbone")
    raise_problems(check_value(quantization_bits, QuantizationBits | None, "finetune.quantization_bits")[1])
    cls = family_class(spec.family)
    dtype = DTYPES[spec.dtype]
    if spec.variant == "random":
        return _random_backbone(cls, spec, dtype, device, quantization_bits)
    if spec.variant == "tiny":
        source = str(tiny_checkpoint(spec))
    else:
        assert spec.source  # BackboneSpec.rules: variant=pretrained names a source
        source = spec.source
        check_checkpoint_folder(source, spec.trust_remote_code)
    compute = dtype if isinstance(dtype, torch.dtype) else torch.float32
    kwargs: dict[str, Any] = dict(
        dtype=dtype,
        trust_remote_code=spec.trust_remote_code,
        use_safetensors=True,
    )
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    qconfig = quantization_config(cls, quantization_bits, compute)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": str(device or "cpu")}
    try:
        model = cls.model_class().from_pretrained(source, **kwargs)
        processor = cls.load_processor(source, spec.image)
    except OSError as err:
        raise OSError(
            f"could not load model.source={source!r}: {err}. Offline (HF_HUB_OFFLINE=1) a hub id works only if it is "
            "already in the local cache; otherwise download it first or point model.source at a folder."
        ) from err
    if device is not None and qconfig is None:
        model.to(device)
    return cls(model, processor, spec)


def engine_checkpoint(spec: BackboneSpec) -> str:
    """The folder or hub id an engine that loads weights itself (vLLM) is given: the preset's source, or the
    materialised tiny checkpoint."""
    if spec.variant == "pretrained" and spec.source:
        return spec.source
    if spec.variant == "tiny":
        return str(tiny_checkpoint(spec))
    raise ValueError("the vLLM backend needs a saved checkpoint (variant pretrained or tiny), not variant=random")


def load_prompt_backbone(spec: BackboneSpec | Mapping[str, Any] | None = None, **fields: Any) -> Backbone:
    """The adapter with its processor and chat format but no weights (an empty module stands in for the model):
    what an engine that loads the weights itself (vLLM) needs to render prompts and decode tokens."""
    if spec is None:
        spec = BackboneSpec.from_config(fields)
    elif not isinstance(spec, BackboneSpec):
        spec = BackboneSpec.from_config(spec)
    validate(spec, "model.backbone")
    cls = family_class(spec.family)
    if spec.variant == "random":
        processor = cls.tiny_processor(spec.tiny, spec.image)
    else:
        source = str(tiny_checkpoint(spec)) if spec.variant == "tiny" else str(spec.source)
        if spec.variant == "pretrained":
            check_checkpoint_folder(source, spec.trust_remote_code)
        try:
            processor = cls.load_processor(source, spec.image)
        except OSError as err:
            raise OSError(f"could not load the processor of model.source={source!r}: {err}") from err
    stand_in = torch.nn.Module()
    setattr(stand_in, "config", None)  # no model config to adjust: the engine reads the checkpoint's own  # noqa: B010
    return cls(stand_in, processor, spec)


def _random_backbone(cls, spec, dtype, device, quantization_bits) -> Backbone:
    if quantization_bits:
        raise ValueError(
            "variant=random cannot be quantised: QLoRA needs a saved checkpoint (use variant=tiny/pretrained)"
        )
    path = Path(str(spec.random_config))  # BackboneSpec.rules: variant=random names one
    if not path.is_absolute() and not path.exists():
        path = ARCHITECTURES / path
    if not path.exists():
        raise FileNotFoundError(
            f"model.backbone.random_config: {spec.random_config} not found (looked in {ARCHITECTURES})"
        )
    processor = cls.tiny_processor(spec.tiny, spec.image)
    config = cls.random_config(str(path), processor.tokenizer)
    if spec.attn_implementation:
        config._attn_implementation = spec.attn_implementation
    torch.manual_seed(spec.seed)
    with torch.device(device or "cpu"):
        model = cls.model_class()._from_config(config, dtype=dtype if isinstance(dtype, torch.dtype) else None)
    return cls(model, processor, spec)
