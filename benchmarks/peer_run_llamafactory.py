"""One LLaMA-Factory training run with the step probe, for ``peer_llamafactory.py`` (runs in LLaMA-Factory's venv).

    PEER_PROBE_OUT=probe.json benchmarks/.venv-llamafactory/bin/python benchmarks/peer_run_llamafactory.py args.json

``args.json`` holds LLaMA-Factory's training arguments (what its YAML files hold); they go to
``llamafactory.train.tuner.run_exp`` unchanged. One CPU-machine fix is applied first: transformers builds Qwen2-VL's
processor with a video processor whose class needs torchvision, and torchvision's PyPI wheels are CUDA builds that do
not load with the CPU torch, so ``AutoProcessor`` would fail and LLaMA-Factory would go on without a processor and
refuse the images. Where torchvision is missing, the processor is built from the same folder's tokenizer and image
processor alone (the image processor is the one ``AutoImageProcessor`` gives, as LLaMA-Factory would use it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_probe  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration  # noqa: E402
from transformers.processing_utils import ProcessorMixin  # noqa: E402
from transformers.utils import is_torchvision_available  # noqa: E402


class Qwen2VLImageOnlyProcessor(transformers.Qwen2VLProcessor):
    """Qwen2-VL's processor without the video processor (its class needs torchvision)."""

    attributes = ["image_processor", "tokenizer"]
    tokenizer_class = "PreTrainedTokenizerFast"

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **_: Any):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def image_only_fallback() -> None:
    """``AutoProcessor.from_pretrained`` builds the image-only processor where torchvision is missing."""
    original = transformers.AutoProcessor.from_pretrained

    def from_pretrained(name: str, *args: Any, **kwargs: Any) -> Any:
        # the folder's own model_type (transformers 4.57's Qwen2VLConfig answers its text config's)
        model_type = json.loads((Path(name) / "config.json").read_text()).get("model_type")
        if is_torchvision_available() or model_type != "qwen2_vl":
            return original(name, *args, **kwargs)
        kwargs.pop("use_fast", None)
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        image_processor = AutoImageProcessor.from_pretrained(name, **kwargs)
        return Qwen2VLImageOnlyProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)

    transformers.AutoProcessor.from_pretrained = from_pretrained  # type: ignore[method-assign]


def main() -> None:
    args = json.loads(Path(sys.argv[1]).read_text())
    peer_probe.install(Qwen2VLForConditionalGeneration)
    image_only_fallback()
    from llamafactory.train.tuner import run_exp

    run_exp(args)


if __name__ == "__main__":
    main()
