"""Images as every reader and backbone sees them: decoded fully to RGB, located safely, unwrapped from datasets."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_WHITE = (255, 255, 255, 255)


class BadImageError(ValueError):
    """An image file is missing or does not decode."""


def load_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode an image (a file, or the bytes of one embedded in a dataset) fully and return it as RGB, so that
    every backbone sees the same pixels.

    Transparent pixels are composited on white (not left as whatever colour hides under alpha 0); 16-bit
    greyscale is scaled from 0..65535 and float images from 0..1 to 0..255; an animation gives its first frame.
    A missing, truncated or undecodable image raises :class:`BadImageError` naming the file.
    """
    opened: io.BytesIO | Path
    if isinstance(source, bytes):
        name, opened = "the embedded image", io.BytesIO(source)
    else:
        name = str(Path(source))
        opened = Path(source)
    try:
        with Image.open(opened) as image:
            image.load()
            return _to_rgb(image)
    except FileNotFoundError as err:
        raise BadImageError(f"{name}: no such image file") from err
    except Exception as err:  # a decoder can fail in many ways on a hostile file; each means "not an image"
        raise BadImageError(f"{name}: cannot decode image ({type(err).__name__}: {err})") from err


def unwrap_image(value: Any) -> tuple[bytes | str | None, str | None]:
    """A stored image value as embedded bytes or a path string, or ``(None, why not)``.

    Accepted: bytes; ``{"bytes": ..., "path": ...}`` (``datasets.Image`` without decoding: the bytes win); a PIL
    image (encoded as PNG); a path string; a one-element list of any of these (the ShareGPT ``images`` form).
    """
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            return None, f"expected one image, got a list of {len(value)}"
        value = value[0]
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        value = buffer.getvalue()
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value), None) if value else (None, "the embedded image is empty")
    if not isinstance(value, str) or not value.strip():
        return None, "no image (null or empty)"
    return value, None


def locate_image(root: Path, text: str) -> tuple[Path, bool, bool]:
    """``(resolved path, inside root?, is a file?)`` of an image path relative to ``root`` (an absolute path replaces
    the root; symlinks are followed). Raises ``OSError``/``RuntimeError`` for a name too long or a symlink loop;
    each reader maps the outcomes to its own reasons."""
    resolved = (root / text).resolve()
    inside = resolved.is_relative_to(root)
    return resolved, inside, inside and resolved.is_file()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "F" or image.mode == "I" or image.mode.startswith("I;16"):
        scale = 255.0 if image.mode == "F" else 255.0 / 65535.0
        values = np.nan_to_num(np.asarray(image, dtype=np.float64)) * scale
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.has_transparency_data:
        canvas = Image.new("RGBA", image.size, _WHITE)
        canvas.alpha_composite(image.convert("RGBA"))
        return canvas.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # converting RGB to RGB would copy it
