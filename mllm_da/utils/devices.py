"""Which torch device a ``device:`` setting means (evaluation, prediction and synthesis share it)."""

from __future__ import annotations

import torch


def resolve_device(device: str | None) -> str:
    """``auto`` (or null): cuda when a GPU is visible, else cpu; a cuda device without a GPU is refused."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device} but no CUDA GPU is visible; use device=cpu or device=auto")
    return str(device)
