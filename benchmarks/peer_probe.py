"""Step timing inside a training process, the same for both trainers of ``peer_llamafactory.py``.

Imported by ``peer_run_ours.py`` (the project's venv) and ``peer_run_llamafactory.py`` (LLaMA-Factory's venv), so it
needs torch and the standard library only. It wraps the forward of the transformers model class both trainers
build (``Qwen2VLForConditionalGeneration``) to count each training batch's samples, real (attention-mask) and padded
tokens, and records wall and CPU time after every optimiser step through torch's global optimiser hook. Nothing in
either trainer is changed; at exit it writes one JSON (``PEER_PROBE_OUT``) with the launch time the driver passed
(``PEER_LAUNCH_TIME``, its ``time.time()`` just before starting the process) and the peak RSS of the process.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import resource
import time
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


class StepProbe:
    """Per-step counts and times of one training process."""

    def __init__(self, out_path: str, launch_time: float) -> None:
        self.out_path = out_path
        self.launch_time = launch_time
        self.first_forward_time: float | None = None
        self.pending = {"samples": 0, "real_tokens": 0, "padded_tokens": 0, "forwards": 0}
        self.steps: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    def on_forward(self, module: torch.nn.Module, kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        if self.first_forward_time is None:
            self.first_forward_time = time.time()
            param = next(module.parameters())
            self.info.update(
                dtype=str(param.dtype),
                trainable_parameters=sum(p.numel() for p in module.parameters() if p.requires_grad),
                gradient_checkpointing=bool(getattr(module, "is_gradient_checkpointing", False)),
                attn_implementation=str(getattr(getattr(module, "config", None), "_attn_implementation", "")),
                torch_threads=torch.get_num_threads(),
            )
        input_ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        self.pending["samples"] += int(input_ids.shape[0])
        self.pending["padded_tokens"] += int(input_ids.numel())
        self.pending["real_tokens"] += int(mask.sum()) if mask is not None else int(input_ids.numel())
        self.pending["forwards"] += 1

    def on_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if not self.steps:
            self.info["optimizer"] = type(optimizer).__name__
            self.info["optimizer_defaults"] = {
                k: v for k, v in optimizer.defaults.items() if isinstance(v, (bool, int, float, str, type(None)))
            }
        self.steps.append({"wall": time.time(), "cpu": time.process_time(), **self.pending})
        self.pending = dict.fromkeys(self.pending, 0)

    def write(self) -> None:
        result = {
            "launch_time": self.launch_time,
            "first_forward_time": self.first_forward_time,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "info": self.info,
            "steps": self.steps,
        }
        with open(self.out_path, "w") as f:
            json.dump(result, f)


def install(model_class: type[torch.nn.Module]) -> StepProbe:
    """Pin one CPU thread and start recording; the JSON is written when the process exits."""
    torch.set_num_threads(1)
    probe = StepProbe(os.environ["PEER_PROBE_OUT"], float(os.environ.get("PEER_LAUNCH_TIME", time.time())))
    forward = model_class.forward

    @functools.wraps(forward)
    def counted_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        probe.on_forward(self, kwargs)
        return forward(self, *args, **kwargs)

    model_class.forward = counted_forward  # type: ignore[method-assign]
    register_optimizer_step_post_hook(probe.on_step)
    atexit.register(probe.write)
    return probe
