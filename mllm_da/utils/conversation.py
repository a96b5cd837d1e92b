"""The conversation types every layer speaks: turns with an ``<image>`` placeholder, and a record of them.

They live at the bottom so that chat formats (backbones), readers (data), the toy domain and the synthesis stages
share one definition without importing each other. Validation of what a file holds is the readers' job
(:mod:`mllm_da.data.records`): a :class:`Conversation` built there is trusted everywhere downstream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: where an image sits in a turn's text (LLaVA and LLaMA-Factory both write it so)
IMAGE_PLACEHOLDER = "<image>"

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """One message; ``content`` marks each image's position with :data:`IMAGE_PLACEHOLDER`."""

    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """A validated record. ``images`` are resolved absolute paths, one per placeholder, in placeholder order.

    Lists are accepted for ``turns`` and ``images`` and stored as tuples, so a conversation is immutable and
    hashable. ``source`` (``file:line`` or ``file#index``) says where it came from; it is not part of equality, so
    a conversation written out and read back compares equal.
    """

    id: str
    turns: tuple[Turn, ...]
    images: tuple[Path, ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "turns", tuple(self.turns))
        object.__setattr__(self, "images", tuple(Path(image) for image in self.images))

    def to_sharegpt(self, image_root: str | os.PathLike) -> dict[str, Any]:
        """The LLaMA-Factory ShareGPT form, images relative to ``image_root`` (which must contain them all)."""
        root = Path(image_root).resolve()
        images = []
        for image in self.images:
            resolved = image.resolve()
            if not resolved.is_relative_to(root):
                raise ValueError(f"{self.source or self.id}: image {image} is not inside image_root {root}")
            images.append(resolved.relative_to(root).as_posix())
        return {
            "id": self.id,
            "messages": [{"role": turn.role, "content": turn.content} for turn in self.turns],
            "images": images,
        }
